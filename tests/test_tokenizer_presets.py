"""Tests of the YAML presets: loading, overrides, validation and model sizes."""

from __future__ import annotations

import pytest
import torch

from evatok.models import Tokenizer, TokenizerConfig
from evatok.presets import load_preset, preset_names, tokenizer_config


def test_shipped_presets():
    assert {"micro", "tiny", "paper"} <= set(preset_names())


def test_paper_preset_matches_paper():
    config = tokenizer_config("paper")
    assert (config.frames, config.height, config.width) == (16, 128, 128)
    assert config.candidates == (32, 64, 128, 256, 512)
    assert config.num_blocks == 4
    assert config.grid == (16, 16)
    assert config.codebook_size == 16384
    assert (config.encoder_width, config.encoder_layers, config.encoder_heads) == (512, 6, 8)
    assert (config.decoder_width, config.decoder_layers, config.decoder_heads) == (768, 12, 12)
    assert len(config.space) == 625


def test_paper_parameter_count_near_145m():
    # The meta device builds the module without allocating its 145M parameters.
    with torch.device("meta"):
        model = Tokenizer(tokenizer_config("paper"))
    count = model.num_parameters()
    assert abs(count - 145e6) / 145e6 < 0.05, count


@pytest.mark.parametrize("name", ["micro", "tiny"])
def test_small_presets_run(name):
    torch.manual_seed(0)
    config = tokenizer_config(name)
    model = Tokenizer(config).eval()
    video = torch.zeros(1, config.channels, config.frames, config.height, config.width)
    assignment = config.space.uniform(config.candidates[-1])
    with torch.no_grad():
        assert model.decode(model.encode(video, assignment)).shape == video.shape


def test_preset_sizes_ordered():
    with torch.device("meta"):
        sizes = [Tokenizer(tokenizer_config(name)).num_parameters() for name in ("micro", "tiny", "paper")]
    assert sizes == sorted(sizes)
    assert sizes[1] < 5e6


def test_dotted_overrides():
    config = tokenizer_config("tiny", ["tokenizer.encoder_width=64", "tokenizer.candidates=[2,4]"])
    assert config.encoder_width == 64
    assert config.candidates == (2, 4)
    raw = load_preset("tiny", ["train.steps=10"])
    assert raw.train.steps == 10
    assert raw.tokenizer.height == 64


def test_preset_from_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("tokenizer:\n  height: 32\n  width: 32\n  candidates: [1, 2]\n")
    config = tokenizer_config(path)
    assert (config.height, config.width, config.candidates) == (32, 32, (1, 2))
    assert config.encoder_width == TokenizerConfig().encoder_width


def test_preset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_preset("huge")
    with pytest.raises(ValueError, match="not found"):
        load_preset(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="has no '='"):
        load_preset("tiny", ["tokenizer.height"])
    with pytest.raises(ValueError, match="unknown tokenizer config keys \\['hieght'\\]"):
        tokenizer_config("tiny", ["tokenizer.hieght=32"])
    with pytest.raises(ValueError, match="height=60 is not a multiple of patch_height=8"):
        tokenizer_config("tiny", ["tokenizer.height=60"])
    with pytest.raises(ValueError, match="encoder_width=100 is not divisible by encoder_heads=3"):
        tokenizer_config("tiny", ["tokenizer.encoder_width=100", "tokenizer.encoder_heads=3"])
    with pytest.raises(ValueError, match="not strictly increasing"):
        tokenizer_config("tiny", ["tokenizer.candidates=[8,4]"])


def test_every_listed_preset_has_tokenizer() -> None:
    names = preset_names()
    assert "demo" in names
    assert not [name for name in names if name.startswith("generator-")]
    for name in names:
        assert tokenizer_config(name).num_blocks == 4, name
    # The demo preset changes the tiny one through `base: tiny`.
    assert tokenizer_config("demo") == tokenizer_config("tiny")
