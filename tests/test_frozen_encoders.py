"""Tests for the frozen V-JEPA2 / VideoMAE encoders, the alignment loss and the semantic discriminator."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import VideoMAEConfig, VJEPA2Config

from evatok.losses import alignment_loss
from evatok.models.frozen_encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AlignmentProjector,
    FrozenVideoMAE,
    FrozenVJEPA2,
    PretrainedWeightsMissingError,
    resample_feature_grid,
    to_model_input,
)
from evatok.models.semantic_disc import SemanticDiscriminator
from evatok.video.io import iter_frames


def tiny_vjepa2_config() -> VJEPA2Config:
    """Return a V-JEPA2 config with hidden size 32, 2 blocks, 32-pixel crops and 8-pixel patches."""
    return VJEPA2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        crop_size=32,
        patch_size=8,
        tubelet_size=2,
        frames_per_clip=4,
        pred_hidden_size=16,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
        num_pooler_layers=1,
    )


def tiny_videomae_config() -> VideoMAEConfig:
    """Return a VideoMAE config with hidden size 32, 2 blocks, 4 frames of 32x32 and 8-pixel patches."""
    return VideoMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_frames=4,
        tubelet_size=2,
    )


def real_clip(clips_dir: Path, frames: int = 5) -> torch.Tensor:
    """Return the first frames of a real clip as (1, 3, T, 40, 48) in [-1, 1]."""
    path = sorted(clips_dir.iterdir())[0]
    decoded = itertools.islice(iter_frames(path, size=(40, 48)), frames)
    array = np.stack([frame.image for frame in decoded])
    assert array.shape == (frames, 40, 48, 3)
    video = torch.from_numpy(array).permute(3, 0, 1, 2).unsqueeze(0).float()
    return video / 127.5 - 1.0


def test_model_input_normalisation() -> None:
    video = torch.zeros(2, 3, 4, 32, 32)
    video[:, 0] = 1.0
    video[:, 1] = -1.0
    pixels = to_model_input(video, frames=4, size=32)
    assert pixels.shape == (2, 4, 3, 32, 32)
    # -1, 0 and 1 map to 0, 0.5 and 1 before the mean/std step.
    expected = [
        (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
        (0.5 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
    ]
    for channel, value in enumerate(expected):
        assert torch.allclose(
            pixels[:, :, channel], torch.full_like(pixels[:, :, channel], value), atol=1e-6
        )


def test_model_input_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match="B, 3, T, H, W"):
        to_model_input(torch.zeros(1, 4, 3, 32, 32), frames=4, size=32)


def test_vjepa2_grid_shape_and_frozen(clips_dir: Path) -> None:
    torch.manual_seed(0)
    encoder = FrozenVJEPA2.from_config(tiny_vjepa2_config())
    video = real_clip(clips_dir).requires_grad_(True)
    features = encoder(video, layer=-1)
    # 5 frames round up to 6 (3 tubelets of 2), 32x32 crops give 4x4 patches.
    assert features.shape == (1, 32, 3, 4, 4)
    features.square().mean().backward()
    assert video.grad is not None
    assert video.grad.abs().sum() > 0
    assert all(not parameter.requires_grad for parameter in encoder.parameters())
    assert all(parameter.grad is None for parameter in encoder.parameters())


def test_vjepa2_stays_in_eval_mode() -> None:
    encoder = FrozenVJEPA2.from_config(tiny_vjepa2_config())
    encoder.train()
    assert not encoder.model.training


def test_vjepa2_layers_differ() -> None:
    torch.manual_seed(0)
    encoder = FrozenVJEPA2.from_config(tiny_vjepa2_config())
    video = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        embedding = encoder(video, layer=0)
        last = encoder(video, layer=-1)
    assert embedding.shape == last.shape == (1, 32, 2, 4, 4)
    assert not torch.allclose(embedding, last)


def test_resample_grid_identity_and_shape() -> None:
    features = torch.randn(2, 8, 3, 4, 4)
    same = resample_feature_grid(features, (3, 4, 4))
    assert same.shape == (2, 48, 8)
    # Raster order (t, h, w): token 1 is t=0, h=0, w=1.
    assert torch.equal(same[:, 1], features[:, :, 0, 0, 1])
    resized = resample_feature_grid(features, (6, 8, 2))
    assert resized.shape == (2, 6 * 8 * 2, 8)


def test_resample_grid_constant_field() -> None:
    features = torch.ones(1, 4, 2, 2, 2) * torch.arange(4.0).view(1, 4, 1, 1, 1)
    tokens = resample_feature_grid(features, (5, 3, 7))
    expected = torch.arange(4.0).expand(1, 105, 4)
    assert torch.allclose(tokens, expected)


def test_alignment_loss_exact_extremes() -> None:
    target = torch.randn(2, 10, 16)
    assert alignment_loss(target * 3.0, target).item() == pytest.approx(-1.0, abs=1e-6)
    assert alignment_loss(-0.5 * target, target).item() == pytest.approx(1.0, abs=1e-6)


def test_alignment_loss_orthogonal_is_zero() -> None:
    projected = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    target = torch.tensor([[[0.0, 5.0], [1.0, 0.0]]])
    assert alignment_loss(projected, target).item() == pytest.approx(0.0, abs=1e-7)


def test_alignment_loss_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="resample the target"):
        alignment_loss(torch.zeros(1, 4, 8), torch.zeros(1, 5, 8))


def test_alignment_gradients_reach_projector_only() -> None:
    torch.manual_seed(0)
    encoder = FrozenVJEPA2.from_config(tiny_vjepa2_config())
    projector = AlignmentProjector(in_dim=24, out_dim=32)
    decoder_features = torch.randn(2, 2 * 3 * 3, 24, requires_grad=True)
    video = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    target = resample_feature_grid(encoder(video, layer=1), (2, 3, 3))
    loss = alignment_loss(projector(decoder_features), target)
    loss.backward()
    assert -1.0 <= loss.item() <= 1.0
    assert decoder_features.grad is not None
    assert all(parameter.grad is not None for parameter in projector.parameters())
    assert all(parameter.grad is None for parameter in encoder.parameters())


def test_videomae_layers_shape() -> None:
    torch.manual_seed(0)
    encoder = FrozenVideoMAE.from_config(tiny_videomae_config())
    # 7 frames of 40x48 are resampled to the 4 frames of 32x32 VideoMAE's position table needs.
    video = torch.rand(2, 3, 7, 40, 48) * 2 - 1
    features = encoder(video, [1, 2])
    assert [tuple(tokens.shape) for tokens in features] == [(2, 32, 32), (2, 32, 32)]


def test_videomae_rejects_bad_layer() -> None:
    encoder = FrozenVideoMAE.from_config(tiny_videomae_config())
    with pytest.raises(ValueError, match="layer index 5"):
        encoder(torch.zeros(1, 3, 4, 32, 32), [5])


def test_semantic_disc_logits_and_grads(clips_dir: Path) -> None:
    torch.manual_seed(0)
    discriminator = SemanticDiscriminator.from_config(
        tiny_videomae_config(), layers=[0, 1, 2], head_width=16
    )
    video = real_clip(clips_dir).requires_grad_(True)
    logits = discriminator(video)
    assert len(logits) == 3
    # 32 tokens, halved by the stride-2 convolution.
    assert all(tuple(item.shape) == (1, 16) for item in logits)
    sum(item.mean() for item in logits).backward()
    assert video.grad is not None
    assert video.grad.abs().sum() > 0
    for head in discriminator.heads:
        assert all(parameter.grad is not None for parameter in head.parameters())
    assert all(parameter.grad is None for parameter in discriminator.encoder.parameters())
    trainable = {
        name for name, parameter in discriminator.named_parameters() if parameter.requires_grad
    }
    assert trainable
    assert all(name.startswith("heads.") for name in trainable)


def test_semantic_disc_rejects_empty_layers() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SemanticDiscriminator.from_config(tiny_videomae_config(), layers=[])


@pytest.mark.parametrize(
    ("loader", "model_id"),
    [
        (FrozenVJEPA2.from_pretrained, "facebook/vjepa2-vitl-fpc64-256"),
        (FrozenVideoMAE.from_pretrained, "MCG-NJU/videomae-base"),
    ],
)
def test_missing_weights_error_names_id(
    loader: object, model_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsMissingError) as caught:
        loader(model_id)
    message = str(caught.value)
    assert model_id in message
    assert f"huggingface-cli download {model_id}" in message
    assert "local folder" in message


def test_missing_local_folder_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(PretrainedWeightsMissingError, match="no-such-model"):
        FrozenVJEPA2.from_pretrained(missing)
