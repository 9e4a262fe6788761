"""The assignment space: one token count per temporal block, drawn from a fixed candidate list.

An assignment is a tuple ``(k_1, ..., k_T)`` with every ``k_t`` taken from the candidate counts.
Its class index (the label the router predicts) reads the assignment as a number in base
``m = len(candidates)``: the digit of block ``t`` is the position of ``k_t`` in the sorted
candidates, and block 1 is the most significant digit. For the space of EVATok (Xiong et al.,
CVPR 2026), ``candidates=(32, 64, 128, 256, 512)`` and ``num_blocks=4``, index 0 is
``(32, 32, 32, 32)``, index 1 is ``(32, 32, 32, 64)``, index 5 is ``(32, 32, 64, 32)`` and
index 624 is ``(512, 512, 512, 512)``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

Assignment = tuple[int, ...]


@dataclass(frozen=True)
class AssignmentSpace:
    """Candidate token counts per block and the number of blocks of a clip."""

    candidates: tuple[int, ...] = (32, 64, 128, 256, 512)
    num_blocks: int = 4

    def __post_init__(self) -> None:
        candidates = tuple(int(count) for count in self.candidates)
        object.__setattr__(self, "candidates", candidates)
        if not candidates:
            raise ValueError("candidates is empty: give at least one token count per block")
        if any(count < 1 for count in candidates):
            raise ValueError(f"candidates {candidates} contain a count below 1: counts must be positive")
        if any(b <= a for a, b in zip(candidates, candidates[1:], strict=False)):
            raise ValueError(
                f"candidates {candidates} are not strictly increasing: sort them and remove duplicates"
            )
        if int(self.num_blocks) < 1:
            raise ValueError(f"num_blocks is {self.num_blocks}: it must be at least 1")
        object.__setattr__(self, "num_blocks", int(self.num_blocks))

    @property
    def size(self) -> int:
        """Number of assignments, ``len(candidates) ** num_blocks``."""
        return len(self.candidates) ** self.num_blocks

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Assignment]:
        """Yield every assignment in index order."""
        return iter(itertools.product(self.candidates, repeat=self.num_blocks))

    def __contains__(self, assignment: object) -> bool:
        try:
            self.validate(assignment)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return True

    def validate(self, assignment: Sequence[int]) -> Assignment:
        """Return ``assignment`` as a tuple of ints, or raise ValueError naming the invalid entry."""
        values = tuple(int(count) for count in assignment)
        if len(values) != self.num_blocks:
            raise ValueError(
                f"assignment {values} has {len(values)} blocks, expected {self.num_blocks}: "
                "give one token count per block"
            )
        for block, count in enumerate(values):
            if count not in self.candidates:
                raise ValueError(
                    f"assignment {values} has count {count} at block {block}, "
                    f"which is not a candidate: choose one of {self.candidates}"
                )
        return values

    def index(self, assignment: Sequence[int]) -> int:
        """Return the class index of ``assignment`` (base-m digits, block 1 most significant)."""
        values = self.validate(assignment)
        base = len(self.candidates)
        index = 0
        for count in values:
            index = index * base + self.candidates.index(count)
        return index

    def assignment(self, index: int) -> Assignment:
        """Return the assignment with class index ``index``."""
        index = int(index)
        if not 0 <= index < self.size:
            raise ValueError(
                f"assignment index {index} is out of range: it must lie in [0, {self.size - 1}]"
            )
        base = len(self.candidates)
        digits = []
        for _ in range(self.num_blocks):
            index, digit = divmod(index, base)
            digits.append(self.candidates[digit])
        return tuple(reversed(digits))

    def length(self, assignment: Sequence[int]) -> int:
        """Return the total token count of ``assignment``."""
        return sum(self.validate(assignment))

    def lengths(self) -> list[int]:
        """Return the total token count of every assignment, in index order."""
        return [sum(assignment) for assignment in self]

    def uniform(self, count: int) -> Assignment:
        """Return the assignment that gives every block ``count`` tokens."""
        return self.validate((count,) * self.num_blocks)

    def uniform_assignments(self) -> list[Assignment]:
        """Return the uniform assignments, one per candidate count, shortest first."""
        return [self.uniform(count) for count in self.candidates]

    def sample(self, rng: random.Random | None = None) -> Assignment:
        """Draw an assignment uniformly at random from the space."""
        rng = rng or random.Random()
        return tuple(rng.choice(self.candidates) for _ in range(self.num_blocks))

    @property
    def min_length(self) -> int:
        """Smallest total token count."""
        return self.candidates[0] * self.num_blocks

    @property
    def max_length(self) -> int:
        """Largest total token count."""
        return self.candidates[-1] * self.num_blocks

    @property
    def mean_length(self) -> float:
        """Mean total token count when every assignment is equally likely."""
        return self.num_blocks * sum(self.candidates) / len(self.candidates)

    @property
    def std_length(self) -> float:
        """Standard deviation of the total token count when every assignment is equally likely."""
        m = len(self.candidates)
        mean = sum(self.candidates) / m
        variance = sum((count - mean) ** 2 for count in self.candidates) / m
        # Blocks are drawn independently, so the variances of the per-block counts add up.
        return math.sqrt(self.num_blocks * variance)
