"""Generation vocabulary and grammar: id layout, sequence round trips, and masks under forced logits."""

from __future__ import annotations

import math

import pytest
import torch

from evatok.generation.grammar import GrammarState
from evatok.generation.sampling import SamplingSettings, generate_clips, sample_sequences
from evatok.generation.vocab import GenerationVocab
from evatok.models.generator import Generator, GeneratorConfig

# The micro tokenizer's vocabulary: 64 codes, counts {2, 4, 8}, 4 blocks; 3 classes.
VOCAB = GenerationVocab(codebook_size=64, candidates=(2, 4, 8), num_blocks=4, num_classes=3)


@pytest.fixture(scope="module")
def model() -> Generator:
    torch.manual_seed(0)
    config = GeneratorConfig.from_preset("micro", codebook_size=64, candidates=(2, 4, 8), num_blocks=4, num_classes=3)
    return Generator(config).eval()


def random_clip(generator: torch.Generator) -> tuple[int, tuple[int, ...], list[torch.Tensor]]:
    assignment = tuple(VOCAB.candidates[int(i)] for i in torch.randint(0, 3, (4,), generator=generator))
    blocks = [torch.randint(0, 64, (count,), generator=generator) for count in assignment]
    return int(torch.randint(0, 3, (1,), generator=generator)), assignment, blocks


def check_valid(sequences: torch.Tensor) -> list[tuple[int, ...]]:
    """Parse every row (parse raises on any grammar error) and return the assignments."""
    assignments = []
    for row in sequences:
        parsed = VOCAB.parse(row)
        for ids in parsed.block_ids:
            assert int(ids.min()) >= 0
            assert int(ids.max()) < VOCAB.codebook_size
        assignments.append(parsed.assignment)
    return assignments


# ----- vocabulary --------------------------------------------------------------------------------


def test_vocab_id_layout() -> None:
    assert VOCAB.first_length_id == 64
    assert VOCAB.first_class_id == 67
    assert VOCAB.null_class_id == 70
    assert VOCAB.pad_id == 71
    assert VOCAB.size == 72
    assert VOCAB.length_id(4) == 65
    assert VOCAB.class_id(2) == 69
    assert VOCAB.max_sequence_length == 1 + 4 * 9
    assert VOCAB.sequence_length((2, 4, 8, 2)) == 1 + 4 + 16


def test_vocab_rejects_bad_ids() -> None:
    with pytest.raises(ValueError, match="class index 3 is out of range"):
        VOCAB.class_id(3)
    with pytest.raises(ValueError, match="token count 3 is not a candidate"):
        VOCAB.length_id(3)
    with pytest.raises(ValueError, match="num_classes=0"):
        GenerationVocab(64, (2, 4), 4, 0)


def test_sequence_round_trip() -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        class_index, assignment, blocks = random_clip(generator)
        sequence = VOCAB.encode(class_index, assignment, blocks)
        assert sequence.numel() == VOCAB.sequence_length(assignment)
        parsed = VOCAB.parse(torch.cat([sequence, torch.full((5,), VOCAB.pad_id)]))
        assert parsed.class_index == class_index
        assert parsed.assignment == assignment
        for got, expected in zip(parsed.block_ids, blocks, strict=True):
            assert torch.equal(got, expected)


def test_sequence_layout_exact() -> None:
    blocks = [torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10])]
    sequence = VOCAB.encode(1, (2, 2, 4, 2), blocks)
    expected = [68, 64, 1, 2, 64, 3, 4, 65, 5, 6, 7, 8, 64, 9, 10]
    assert sequence.tolist() == expected


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: [VOCAB.pad_id, *s[1:]], "not a class token"),
        (lambda s: [VOCAB.null_class_id, *s[1:]], "not a class token"),
        (lambda s: [s[0], 5, *s[2:]], "length token of block 0"),
        (lambda s: [*s[:3], VOCAB.class_id(0), *s[4:]], "do not all hold code ids"),
        (lambda s: [*s[:3], VOCAB.pad_id, *s[4:]], "do not all hold code ids"),
        (lambda s: s[:-1], "do not all hold code ids"),
        (lambda s: s[:4], "ends before the length token"),
        (lambda s: [*s, 3], "continues after its last block"),
        (lambda s: [*s, VOCAB.length_id(2)], "continues after its last block"),
    ],
)
def test_parse_rejects_malformed(edit, message) -> None:
    blocks = [torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10])]
    sequence = VOCAB.encode(1, (2, 2, 4, 2), blocks).tolist()
    with pytest.raises(ValueError, match=message):
        VOCAB.parse(torch.tensor(edit(sequence)))


def test_encode_rejects_wrong_counts() -> None:
    blocks = [torch.tensor([1, 2])] * 3 + [torch.tensor([1, 2, 3])]
    with pytest.raises(ValueError, match="block 3 has 3 code ids but the assignment gives it 2"):
        VOCAB.encode(0, (2, 2, 2, 2), blocks)
    with pytest.raises(ValueError, match="outside the codebook"):
        VOCAB.encode(0, (2, 2, 2, 2), [torch.tensor([1, 64])] * 4)


# ----- grammar state -----------------------------------------------------------------------------


def test_grammar_allowed_sets_follow_sequence() -> None:
    state = GrammarState(VOCAB, 1)
    sequence = VOCAB.encode(0, (2, 4, 2, 8), [torch.arange(count) for count in (2, 4, 2, 8)])
    for token in sequence[1:].tolist():
        allowed = state.allowed()[0]
        assert bool(allowed[token])
        if VOCAB.is_code(token):
            assert int(allowed.sum()) == VOCAB.codebook_size
        else:
            assert allowed.nonzero()[:, 0].tolist() == [64, 65, 66]
        state.advance(torch.tensor([token]))
    assert bool(state.done[0])
    assert state.allowed()[0].nonzero()[:, 0].tolist() == [VOCAB.pad_id]


@pytest.mark.parametrize("token", [VOCAB.class_id(0), VOCAB.null_class_id, VOCAB.pad_id, 3, -1, VOCAB.size])
def test_grammar_rejects_forbidden_first_token(token: int) -> None:
    state = GrammarState(VOCAB, 2)
    with pytest.raises(ValueError, match="row 1 got id"):
        state.advance(torch.tensor([VOCAB.length_id(2), token]))


def test_grammar_rejects_length_inside_block() -> None:
    state = GrammarState(VOCAB, 1)
    state.advance(torch.tensor([VOCAB.length_id(4)]))
    state.advance(torch.tensor([7]))
    with pytest.raises(ValueError, match="block 0 with 3 codes owed"):
        state.advance(torch.tensor([VOCAB.length_id(2)]))


def test_mask_logits_keeps_one_finite_id() -> None:
    state = GrammarState(VOCAB, 3)
    logits = torch.full((3, VOCAB.size), float("nan"))
    logits[1] = float("inf")
    logits[2] = float("-inf")
    masked = state.mask_logits(logits)
    for row in masked:
        assert torch.isfinite(row).nonzero()[:, 0].tolist() == [64, 65, 66]


# ----- sampling under forced logits --------------------------------------------------------------


def forced(values: dict[int, float], default: float = 0.0):
    """Return a logits hook that replaces every logit with fixed values per id."""

    def hook(logits: torch.Tensor) -> torch.Tensor:
        forced_logits = torch.full_like(logits, default)
        for token, value in values.items():
            forced_logits[:, token] = value
        return forced_logits

    return hook


ADVERSARIAL_HOOKS = {
    "prefers pad": forced({VOCAB.pad_id: 1e9}),
    "prefers class tokens": forced({VOCAB.class_id(i): 1e9 for i in range(3)} | {VOCAB.null_class_id: 1e9}),
    "prefers codes everywhere": forced({i: 50.0 for i in range(64)}),
    "prefers length tokens everywhere": forced({VOCAB.length_id(8): 1e9}),
    "nan everywhere": forced({}, default=float("nan")),
    "inf everywhere": forced({}, default=float("inf")),
    "minus inf on codes and lengths": forced({i: float("-inf") for i in range(67)} | {70: 1e30}),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_HOOKS))
@pytest.mark.parametrize("greedy", [True, False])
def test_forced_bad_logits_give_valid_sequences(model: Generator, name: str, greedy: bool) -> None:
    settings = SamplingSettings(greedy=greedy, top_k=5, top_p=0.9)
    sequences = sample_sequences(
        model, [0, 1, 2, 0], settings, generator=torch.Generator().manual_seed(0),
        logits_hook=ADVERSARIAL_HOOKS[name],
    )
    assignments = check_valid(sequences)
    assert len(assignments) == 4


def test_forced_greedy_sequence_exact(model: Generator) -> None:
    hook = forced({VOCAB.length_id(4): 30.0, 5: 20.0, VOCAB.pad_id: 40.0})
    sequences = sample_sequences(model, [2], SamplingSettings(greedy=True), logits_hook=hook)
    expected = [VOCAB.class_id(2)] + ([VOCAB.length_id(4)] + [5] * 4) * 4
    assert sequences[0].tolist() == expected


def test_mixed_lengths_in_batch(model: Generator) -> None:
    def hook(logits: torch.Tensor) -> torch.Tensor:
        forced_logits = torch.zeros_like(logits)
        forced_logits[0, VOCAB.length_id(2)] = 10.0
        forced_logits[1, VOCAB.length_id(8)] = 10.0
        forced_logits[2, VOCAB.length_id(4)] = 10.0
        return forced_logits

    sequences = sample_sequences(model, [0, 1, 2], SamplingSettings(greedy=True), logits_hook=hook)
    assert check_valid(sequences) == [(2, 2, 2, 2), (8, 8, 8, 8), (4, 4, 4, 4)]
    assert sequences.shape == (3, VOCAB.max_sequence_length)
    assert sequences[0, 13:].tolist() == [VOCAB.pad_id] * (37 - 13)
    assert sequences[2, 21:].tolist() == [VOCAB.pad_id] * (37 - 21)


def test_untrained_model_samples_valid(model: Generator) -> None:
    settings_list = [
        SamplingSettings(),
        SamplingSettings(temperature=2.0, top_k=10),
        SamplingSettings(temperature=0.5, top_p=0.8, cfg_scale=2.5),
        SamplingSettings(greedy=True, cfg_scale=1.75, use_cache=False),
    ]
    totals = set()
    for index, settings in enumerate(settings_list):
        clips = generate_clips(model, [0, 1, 2] * 4, settings, generator=torch.Generator().manual_seed(index))
        for clip in clips:
            assert clip.sequence.numel() == VOCAB.sequence_length(clip.assignment)
            assert torch.equal(clip.sequence, VOCAB.encode(clip.class_index, clip.assignment, clip.block_ids))
            totals.add(clip.num_tokens)
    assert [clip.class_index for clip in clips] == [0, 1, 2] * 4
    # An untrained model spreads its probability, so sampled lengths differ between clips.
    assert len(totals) > 1


def test_untrained_model_with_amplified_logits(model: Generator) -> None:
    # Large logits make the untrained model's preferences extreme without touching the mask.
    hook = lambda logits: logits * 1e6  # noqa: E731
    sequences = sample_sequences(model, [0, 1], SamplingSettings(), logits_hook=hook,
                                 generator=torch.Generator().manual_seed(3))
    assert len(check_valid(sequences)) == 2
    assert math.isfinite(float(sequences.float().sum()))
