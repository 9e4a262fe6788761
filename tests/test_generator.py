"""The AR generator: config, preset sizes, causality, KV cache, guidance, filters and weights."""

from __future__ import annotations

import pytest
import torch

from evatok.generation.sampling import (
    DecodingSession,
    SamplingSettings,
    filter_logits,
    generate_clips,
    padded_block_ids,
    sample_sequences,
)
from evatok.models.generator import GENERATOR_PRESETS, Generator, GeneratorConfig
from evatok.models.tokenizer import PAD_ID, Tokenizer
from evatok.presets import tokenizer_config

MICRO_VOCAB = dict(codebook_size=64, candidates=(2, 4, 8), num_blocks=4, num_classes=3)
# The vocabulary of EVATok's UCF-101 generators: 16384 codes, five counts, 4 blocks, 101 classes.
PAPER_VOCAB = dict(codebook_size=16384, candidates=(32, 64, 128, 256, 512), num_blocks=4, num_classes=101)


@pytest.fixture(scope="module")
def model() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig.from_preset("micro", **MICRO_VOCAB)).eval()


def random_sequence(model: Generator, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.vocab.size, (2, length), generator=generator)
    tokens[:, 0] = torch.tensor([model.vocab.class_id(0), model.vocab.class_id(2)])
    return tokens


# ----- config and sizes --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [("gpt-b", 99e6), ("327m", 327e6), ("633m", 633e6)])
def test_preset_parameter_counts(name: str, expected: float) -> None:
    with torch.device("meta"):
        generator = Generator(GeneratorConfig.from_preset(name, **PAPER_VOCAB))
    count = generator.num_parameters()
    assert abs(count - expected) / expected < 0.05


def test_tiny_preset_size() -> None:
    # The tiny tokenizer has 2048 codes and counts (4, 8, 16, 24, 32).
    config = GeneratorConfig.from_preset("tiny", codebook_size=2048, candidates=(4, 8, 16, 24, 32), num_classes=10)
    with torch.device("meta"):
        count = Generator(config).num_parameters()
    assert 2e6 <= count <= 5e6


def test_parameter_count_formula(model: Generator) -> None:
    config = model.config
    vocab, width, hidden = model.vocab.size, config.width, config.hidden
    per_layer = 4 * width * width + 3 * width * hidden + 2 * width
    assert model.num_parameters() == 2 * vocab * width + config.depth * per_layer + width


def test_every_preset_builds() -> None:
    for name in GENERATOR_PRESETS:
        with torch.device("meta"):
            Generator(GeneratorConfig.from_preset(name, **MICRO_VOCAB))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 30, "heads": 4}, "head size"),
        ({"width": 12, "heads": 4}, "not an even integer"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"class_names": ("a", "b")}, "2 class_names but num_classes=3"),
        ({"class_names": ("a", "b", "a")}, "repeat a name"),
        ({"candidates": (4, 2)}, "not strictly increasing"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"mlp_hidden": 0}, "mlp_hidden=0"),
    ],
)
def test_config_rejects_invalid(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorConfig.from_preset("micro", **{**MICRO_VOCAB, **overrides})


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown generator config keys \\['depht'\\]"):
        GeneratorConfig.from_dict({"depht": 3})
    with pytest.raises(ValueError, match="unknown generator preset 'huge'"):
        GeneratorConfig.from_preset("huge")


def test_config_dict_round_trip() -> None:
    config = GeneratorConfig.from_preset("micro", **MICRO_VOCAB, class_names=("a", "b", "c"))
    assert GeneratorConfig.from_dict(config.to_dict()) == config


# ----- forward -----------------------------------------------------------------------------------


def test_forward_is_causal(model: Generator) -> None:
    tokens = random_sequence(model, 20)
    changed = tokens.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % model.vocab.size
    with torch.no_grad():
        original = model(tokens)
        edited = model(changed)
    assert original.shape == (2, 20, model.vocab.size)
    assert torch.allclose(original[:, :12], edited[:, :12], atol=1e-5)
    assert not torch.allclose(original[:, 12:], edited[:, 12:], atol=1e-3)


def test_forward_rejects_bad_input(model: Generator) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[model.vocab.size]]))
    with pytest.raises(ValueError, match="exceed the maximum sequence length 37"):
        model(torch.zeros(1, 38, dtype=torch.long))


def test_cached_logits_match_full_forward(model: Generator) -> None:
    tokens = random_sequence(model, model.vocab.max_sequence_length)
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        # A prefill of several tokens, then one token per call, as in sampling.
        pieces = [model(tokens[:, :5], cache=cache)]
        pieces += [model(tokens[:, i : i + 1], cache=cache) for i in range(5, 20)]
        pieces.append(model(tokens[:, 20:], cache=cache))
    assert cache.length == tokens.shape[1]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_cache_greedy_equals_uncached(model: Generator, cfg_scale: float) -> None:
    classes = [0, 1, 2, 1]
    cached = sample_sequences(model, classes, SamplingSettings(greedy=True, cfg_scale=cfg_scale))
    uncached = sample_sequences(
        model, classes, SamplingSettings(greedy=True, cfg_scale=cfg_scale, use_cache=False)
    )
    assert torch.equal(cached, uncached)


def test_cache_sampling_equals_uncached(model: Generator) -> None:
    settings = SamplingSettings(temperature=1.3, top_k=20, top_p=0.95)
    uncached_settings = SamplingSettings(temperature=1.3, top_k=20, top_p=0.95, use_cache=False)
    cached = sample_sequences(model, [0, 1, 2], settings, generator=torch.Generator().manual_seed(4))
    uncached = sample_sequences(model, [0, 1, 2], uncached_settings, generator=torch.Generator().manual_seed(4))
    assert torch.equal(cached, uncached)


# ----- guidance ----------------------------------------------------------------------------------


def session_logits(model: Generator, classes: list[int], steps: list[int], **options) -> torch.Tensor:
    session = DecodingSession(model, classes, **options)
    with torch.no_grad():
        session.logits()
        for token in steps:
            session.append(torch.full((len(classes),), token))
        return session.logits()


def test_guidance_scale_one_equals_conditional(model: Generator) -> None:
    steps = [model.vocab.length_id(4), 3, 9]
    conditional = session_logits(model, [0, 2], steps)
    guided = session_logits(model, [0, 2], steps, cfg_scale=1.0, batch_null_rows=True)
    assert torch.allclose(guided, conditional, atol=1e-5)


def test_guidance_formula(model: Generator) -> None:
    vocab = model.vocab
    steps = [vocab.length_id(2), 7, 1]
    guided = session_logits(model, [1, 2], steps, cfg_scale=3.0)
    prefix = torch.tensor([[vocab.class_id(1), *steps], [vocab.class_id(2), *steps]])
    null_prefix = torch.tensor([[vocab.null_class_id, *steps]] * 2)
    with torch.no_grad():
        conditional = model(prefix)[:, -1]
        unconditional = model(null_prefix)[:, -1]
    assert torch.allclose(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-4)
    assert not torch.allclose(guided, conditional, atol=1e-3)


# ----- filters -----------------------------------------------------------------------------------


def test_top_k_keeps_k_largest() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, float("-inf")]])
    kept = torch.isfinite(filter_logits(logits, 1.0, 2, 1.0))
    assert kept[0].tolist() == [False, True, False, True, False]


def test_top_p_keeps_smallest_reaching_set() -> None:
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probabilities.log()
    assert torch.isfinite(filter_logits(logits, 1.0, None, 0.5))[0].tolist() == [True, False, False, False]
    assert torch.isfinite(filter_logits(logits, 1.0, None, 0.6))[0].tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, 1.0, None, 0.9))[0].tolist() == [True, True, True, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, 1.0, None, 0.6))[0].tolist() == [False, True, False, True]


def test_temperature_scales_logits() -> None:
    logits = torch.tensor([[2.0, -4.0]])
    assert torch.equal(filter_logits(logits, 0.5, None, 1.0), torch.tensor([[4.0, -8.0]]))


def test_settings_reject_invalid() -> None:
    with pytest.raises(ValueError, match="temperature=0"):
        SamplingSettings(temperature=0)
    with pytest.raises(ValueError, match="top_p=0"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="top_k=-1"):
        SamplingSettings(top_k=-1)


def test_same_seed_same_samples(model: Generator) -> None:
    first = sample_sequences(model, [0, 1], generator=torch.Generator().manual_seed(7))
    second = sample_sequences(model, [0, 1], generator=torch.Generator().manual_seed(7))
    other = sample_sequences(model, [0, 1], generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


# ----- weights and decoding ----------------------------------------------------------------------


def test_weights_round_trip(model: Generator, tmp_path) -> None:
    named = Generator(GeneratorConfig.from_preset("micro", **MICRO_VOCAB, class_names=("x", "y", "z")))
    named.load_state_dict(model.state_dict())
    named.save_pretrained(tmp_path / "gen")
    loaded = Generator.load(tmp_path / "gen")
    assert loaded.config == named.config
    assert loaded.config.class_names == ("x", "y", "z")
    tokens = random_sequence(model, 15)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    from_hub_mixin = Generator.from_pretrained(str(tmp_path / "gen"))
    assert from_hub_mixin.config == named.config
    with pytest.raises(FileNotFoundError, match="no generator weights"):
        Generator.load(tmp_path / "missing")


def test_generated_clips_decode(model: Generator) -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer(tokenizer_config("micro")).eval()
    clips = generate_clips(model, [0, 1, 2], generator=torch.Generator().manual_seed(2))
    blocks, assignments = padded_block_ids(clips)
    assert assignments.tolist() == [list(clip.assignment) for clip in clips]
    for block, ids in enumerate(blocks):
        assert ids.shape[1] == int(assignments[:, block].max())
        for row, clip in enumerate(clips):
            assert ids[row, clip.assignment[block] :].eq(PAD_ID).all()
    with torch.no_grad():
        video = tokenizer.decode(blocks, assignments)
    assert video.shape == (3, 3, 16, 32, 32)
    assert bool(torch.isfinite(video).all())
