"""Frozen pretrained video encoders (V-JEPA2, VideoMAE) used by the stage 4 losses.

Both take our video tensors, float (B, C, T, H, W) in [-1, 1], and convert them to the model's
input: frames resized to its image size, ImageNet mean/std normalisation and (B, T, C, H, W)
layout. Their weights never train, but gradients still flow back to the input video.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import VideoMAEConfig, VideoMAEModel, VJEPA2Config, VJEPA2Model

logger = logging.getLogger(__name__)

VJEPA2_DEFAULT_ID = "facebook/vjepa2-vitl-fpc64-256"
VIDEOMAE_DEFAULT_ID = "MCG-NJU/videomae-base"

# ImageNet statistics: the V-JEPA2 video processor in transformers 5.25 uses them by default.
# NOTE: VideoMAE's processor class defaults to mean = std = 0.5; the ImageNet values for
# MCG-NJU/videomae-base are assumed to match its preprocessor_config.json, which was not verified offline.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsMissingError(RuntimeError):
    """Pretrained encoder weights could not be loaded from the given id or path."""


def load_pretrained(model_class: type, source: str | Path) -> nn.Module:
    """Load `model_class` weights from a hub id or local folder, or raise a message on how to provide them.

    With HF_HUB_OFFLINE=1 only local files and the Hugging Face cache are read.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        model = model_class.from_pretrained(str(source), local_files_only=offline)
    except (OSError, ValueError) as error:
        raise PretrainedWeightsMissingError(
            f"Failed to load pretrained weights for {model_class.__name__} from '{source}': {error}. "
            f"Provide them in one of two ways: set the encoder's path in the config to a local folder "
            f"that holds config.json and the weights, or run `huggingface-cli download {source}` on a "
            f"machine with network access and copy the Hugging Face cache here (point HF_HOME at it)."
        ) from error
    logger.info("Loaded %s weights from %s", model_class.__name__, source)
    return model


def freeze(module: nn.Module) -> nn.Module:
    """Put `module` in eval mode and turn off gradients for all its parameters."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def to_model_input(video: torch.Tensor, frames: int, size: int) -> torch.Tensor:
    """Convert (B, C, T, H, W) in [-1, 1] to normalised (B, frames, C, size, size) pixel values.

    Frames and time are resampled trilinearly to the target grid, so non-square frames are
    stretched rather than centre-cropped as the checkpoints' own processors do.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(
            f"expected a video tensor of shape (B, 3, T, H, W), got {tuple(video.shape)}"
        )
    video = video.float()
    if tuple(video.shape[2:]) != (frames, size, size):
        video = F.interpolate(
            video, size=(frames, size, size), mode="trilinear", align_corners=False
        )
    mean = video.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = video.new_tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    pixels = ((video + 1.0) / 2.0 - mean) / std
    return pixels.permute(0, 2, 1, 3, 4).contiguous()


class FrozenVJEPA2(nn.Module):
    """Frozen V-JEPA2 encoder that returns one layer's patch features as a (B, D, T', H', W') grid."""

    def __init__(self, model: VJEPA2Model) -> None:
        super().__init__()
        self.model = freeze(model)
        config = model.config
        self.image_size = int(config.crop_size)
        self.patch_size = int(config.patch_size)
        self.tubelet_size = int(config.tubelet_size)
        self.hidden_size = int(config.hidden_size)

    @classmethod
    def from_pretrained(cls, source: str | Path = VJEPA2_DEFAULT_ID) -> FrozenVJEPA2:
        """Build from pretrained weights (hub id or local folder)."""
        return cls(load_pretrained(VJEPA2Model, source))

    @classmethod
    def from_config(cls, config: VJEPA2Config) -> FrozenVJEPA2:
        """Build from a transformers config with random weights (for tests)."""
        return cls(VJEPA2Model(config))

    def train(self, mode: bool = True) -> FrozenVJEPA2:
        """Keep the encoder in eval mode whatever the caller's mode."""
        super().train(mode)
        self.model.eval()
        return self

    def input_frames(self, frames: int) -> int:
        """Return the frame count fed to the model: `frames` rounded up to a whole tubelet."""
        return max(self.tubelet_size, -(-frames // self.tubelet_size) * self.tubelet_size)

    def forward(self, video: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Encode `video` (B, C, T, H, W) in [-1, 1] and return hidden_states[layer] as (B, D, T', H', W').

        hidden_states[0] is the patch embedding and hidden_states[i] the output of block i, so -1
        is the last block before the final layer norm.
        """
        frames = self.input_frames(video.shape[2])
        pixels = to_model_input(video, frames, self.image_size)
        output = self.model(
            pixel_values_videos=pixels, skip_predictor=True, output_hidden_states=True
        )
        tokens = output.hidden_states[layer]
        grid = (
            frames // self.tubelet_size,
            self.image_size // self.patch_size,
            self.image_size // self.patch_size,
        )
        batch, count, dim = tokens.shape
        if count != grid[0] * grid[1] * grid[2]:
            raise ValueError(f"V-JEPA2 returned {count} tokens, expected a {grid} patch grid")
        return tokens.transpose(1, 2).reshape(batch, dim, *grid)


class FrozenVideoMAE(nn.Module):
    """Frozen VideoMAE encoder that returns the token features of chosen layers."""

    def __init__(self, model: VideoMAEModel) -> None:
        super().__init__()
        self.model = freeze(model)
        config = model.config
        self.image_size = int(config.image_size)
        # VideoMAE's sinusoidal position table is sized for exactly `num_frames` input frames.
        self.num_frames = int(config.num_frames)
        self.num_layers = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)

    @classmethod
    def from_pretrained(cls, source: str | Path = VIDEOMAE_DEFAULT_ID) -> FrozenVideoMAE:
        """Build from pretrained weights (hub id or local folder)."""
        return cls(load_pretrained(VideoMAEModel, source))

    @classmethod
    def from_config(cls, config: VideoMAEConfig) -> FrozenVideoMAE:
        """Build from a transformers config with random weights (for tests)."""
        return cls(VideoMAEModel(config))

    def train(self, mode: bool = True) -> FrozenVideoMAE:
        """Keep the encoder in eval mode whatever the caller's mode."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, video: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """Encode `video` (B, C, T, H, W) in [-1, 1] and return hidden_states[i] (B, N, D) for each i in `layers`.

        hidden_states[0] is the patch embedding and hidden_states[i] the output of block i.
        """
        for index in layers:
            if not -self.num_layers - 1 <= index <= self.num_layers:
                raise ValueError(
                    f"VideoMAE layer index {index} is out of range for {self.num_layers} blocks"
                )
        pixels = to_model_input(video, self.num_frames, self.image_size)
        output = self.model(pixel_values=pixels, output_hidden_states=True)
        return [output.hidden_states[index] for index in layers]


def resample_feature_grid(features: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Resample a (B, D, T, H, W) feature grid to (B, T'*H'*W', D) tokens on `grid` = (T', H', W').

    Trilinear interpolation of the feature grid; the tokens come out in (t, h, w) raster order.
    """
    if tuple(features.shape[2:]) != tuple(grid):
        features = F.interpolate(
            features.float(), size=tuple(grid), mode="trilinear", align_corners=False
        )
    return features.flatten(2).transpose(1, 2)


class AlignmentProjector(nn.Module):
    """Trainable MLP that maps decoder features (B, N, D_dec) to the frozen encoder's width D_enc."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or max(in_dim, out_dim)
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return projected features (B, N, D_enc)."""
        return self.layers(features)
