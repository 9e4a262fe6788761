"""Semantic discriminator: trainable 1D-CNN heads on frozen VideoMAE features of several layers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import VideoMAEConfig

from evatok.models.frozen_encoders import VIDEOMAE_DEFAULT_ID, FrozenVideoMAE


class TokenConvHead(nn.Module):
    """1D-CNN over the token axis that maps (B, N, D) features to (B, N') real/fake logits."""

    def __init__(self, in_dim: int, width: int = 256, kernel_size: int = 3) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.layers = nn.Sequential(
            nn.Conv1d(in_dim, width, kernel_size, padding=padding),
            nn.GroupNorm(min(32, width), width),
            nn.LeakyReLU(0.2),
            nn.Conv1d(width, width, kernel_size, stride=2, padding=padding),
            nn.GroupNorm(min(32, width), width),
            nn.LeakyReLU(0.2),
            nn.Conv1d(width, 1, kernel_size, padding=padding),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return per-position logits (B, N') for token features (B, N, D)."""
        return self.layers(tokens.transpose(1, 2)).squeeze(1)


class SemanticDiscriminator(nn.Module):
    """Discriminator that scores videos from frozen VideoMAE features, one trainable head per layer.

    Only the heads have trainable parameters. Gradients reach the input video, so the generator
    loss can be taken through it, but VideoMAE's weights never receive any.
    """

    def __init__(
        self,
        encoder: FrozenVideoMAE,
        layers: list[int],
        head_width: int = 256,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError(
                "SemanticDiscriminator needs at least one VideoMAE layer index, got an empty list"
            )
        self.encoder = encoder
        self.layers = list(layers)
        self.heads = nn.ModuleList(
            TokenConvHead(encoder.hidden_size, head_width, kernel_size) for _ in self.layers
        )

    @classmethod
    def from_pretrained(
        cls, layers: list[int], source: str | Path = VIDEOMAE_DEFAULT_ID, head_width: int = 256
    ) -> SemanticDiscriminator:
        """Build on pretrained VideoMAE weights (hub id or local folder)."""
        return cls(FrozenVideoMAE.from_pretrained(source), layers, head_width)

    @classmethod
    def from_config(
        cls, config: VideoMAEConfig, layers: list[int], head_width: int = 256
    ) -> SemanticDiscriminator:
        """Build on a randomly initialised VideoMAE from a transformers config (for tests)."""
        return cls(FrozenVideoMAE.from_config(config), layers, head_width)

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Return one logits tensor (B, N') per configured layer for `video` (B, C, T, H, W) in [-1, 1]."""
        features = self.encoder(video, self.layers)
        return [head(tokens) for head, tokens in zip(self.heads, features, strict=True)]
