"""Tests of the assignment space: index order, lengths, validation and length statistics."""

from __future__ import annotations

import math
import random

import pytest

from evatok.assignment import AssignmentSpace

PAPER = AssignmentSpace((32, 64, 128, 256, 512), 4)


def test_paper_space_size_and_order():
    assignments = list(PAPER)
    assert len(PAPER) == 625
    assert len(assignments) == 625
    assert assignments[0] == (32, 32, 32, 32)
    assert assignments[1] == (32, 32, 32, 64)
    assert assignments[5] == (32, 32, 64, 32)
    assert assignments[125] == (64, 32, 32, 32)
    assert assignments[624] == (512, 512, 512, 512)


def test_index_round_trip_all():
    for index, assignment in enumerate(PAPER):
        assert PAPER.index(assignment) == index
        assert PAPER.assignment(index) == assignment


def test_index_is_base_m_digits():
    # Digits (block 1 first) 1, 0, 4, 2 in base 5.
    assert PAPER.index((64, 32, 512, 128)) == 1 * 125 + 0 * 25 + 4 * 5 + 2


def test_length_statistics_exact():
    assert PAPER.mean_length == pytest.approx(793.6, rel=0, abs=1e-12)
    # Per-block variance: E[k^2] - E[k]^2 = 69836.8 - 198.4^2 = 30474.24; four blocks add up.
    assert PAPER.std_length == pytest.approx(math.sqrt(4 * 30474.24), rel=1e-12)
    assert round(PAPER.std_length, 1) == 349.1


def test_length_statistics_match_enumeration():
    lengths = PAPER.lengths()
    mean = sum(lengths) / len(lengths)
    std = math.sqrt(sum((length - mean) ** 2 for length in lengths) / len(lengths))
    assert mean == pytest.approx(PAPER.mean_length, rel=1e-12)
    assert std == pytest.approx(PAPER.std_length, rel=1e-12)
    assert min(lengths) == PAPER.min_length == 128
    assert max(lengths) == PAPER.max_length == 2048


def test_uniform_assignments():
    assert PAPER.uniform(256) == (256, 256, 256, 256)
    assert PAPER.length(PAPER.uniform(256)) == 1024
    assert PAPER.uniform_assignments()[0] == (32, 32, 32, 32)
    assert len(PAPER.uniform_assignments()) == 5


def test_other_space():
    space = AssignmentSpace((2, 4, 8), 2)
    assert list(space) == [(a, b) for a in (2, 4, 8) for b in (2, 4, 8)]
    assert space.index((8, 2)) == 6
    assert space.assignment(7) == (8, 4)


def test_sample_is_valid_and_seeded():
    first = [PAPER.sample(random.Random(3)) for _ in range(5)]
    second = [PAPER.sample(random.Random(3)) for _ in range(5)]
    assert first == second
    assert all(sample in PAPER for sample in first)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ((32, 32, 32), "assignment (32, 32, 32) has 3 blocks, expected 4: give one token count per block"),
        (
            (32, 33, 32, 32),
            "assignment (32, 33, 32, 32) has count 33 at block 1, which is not a candidate: "
            "choose one of (32, 64, 128, 256, 512)",
        ),
    ],
)
def test_validate_messages(assignment, message):
    with pytest.raises(ValueError) as error:
        PAPER.validate(assignment)
    assert str(error.value) == message
    assert assignment not in PAPER


def test_index_out_of_range_message():
    with pytest.raises(ValueError) as error:
        PAPER.assignment(625)
    assert str(error.value) == "assignment index 625 is out of range: it must lie in [0, 624]"


@pytest.mark.parametrize(
    ("candidates", "blocks", "message"),
    [
        ((), 4, "candidates is empty: give at least one token count per block"),
        ((0, 4), 4, "candidates (0, 4) contain a count below 1: counts must be positive"),
        ((8, 4), 4, "candidates (8, 4) are not strictly increasing: sort them and remove duplicates"),
        ((4, 4), 4, "candidates (4, 4) are not strictly increasing: sort them and remove duplicates"),
        ((4, 8), 0, "num_blocks is 0: it must be at least 1"),
    ],
)
def test_space_construction_messages(candidates, blocks, message):
    with pytest.raises(ValueError) as error:
        AssignmentSpace(candidates, blocks)
    assert str(error.value) == message
