"""Discriminators for adversarial tokenizer training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TransformerPatchGAN(nn.Module):
    """A PatchGAN whose trunk is a transformer over 3D patches: one real/fake logit per patch.

    A strided Conv3d cuts a clip (batch, channels, frames, height, width) in [-1, 1] into
    non-overlapping patches of `patch_size` (time, height, width) and embeds them. Learned
    position embeddings are added, `depth` pre-norm transformer layers mix all patches, and a
    linear head gives one logit per patch: (batch, frames / pt, height / ph, width / pw).

    The buffers `lecam_real_ema` and `lecam_fake_ema` hold the running means of the logits that the
    LeCam regularization compares against; they are saved with the weights so a resume continues
    them exactly.
    """

    def __init__(
        self,
        frames: int,
        height: int,
        width: int,
        patch_size: Sequence[int] = (4, 8, 8),
        channels: int = 3,
        model_width: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != 3:
            raise ValueError(f"invalid discriminator patch size {patch_size}: give (time, height, width)")
        for name, size, step in (("frames", frames, patch[0]), ("height", height, patch[1]), ("width", width, patch[2])):
            if size % step:
                raise ValueError(
                    f"discriminator clip {name}={size} is not a multiple of the patch size {step}: "
                    "change loss.disc_patch_size"
                )
        if model_width % heads:
            raise ValueError(f"discriminator width {model_width} is not divisible by {heads} heads")
        self.grid = (frames // patch[0], height // patch[1], width // patch[2])
        num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_embedding = nn.Conv3d(channels, model_width, kernel_size=patch, stride=patch)
        self.position = nn.Parameter(0.02 * torch.randn(1, num_patches, model_width))
        layer = nn.TransformerEncoderLayer(
            model_width,
            heads,
            dim_feedforward=int(model_width * mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.trunk = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(model_width)
        self.head = nn.Linear(model_width, 1)
        self.register_buffer("lecam_real_ema", torch.zeros(()))
        self.register_buffer("lecam_fake_ema", torch.zeros(()))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Return one logit per patch, shape (batch, frames / pt, height / ph, width / pw)."""
        tokens = self.patch_embedding(video).flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.position.shape[1]:
            raise ValueError(
                f"discriminator built for a {self.grid} patch grid got a clip of shape "
                f"{tuple(video.shape)}: build it for this clip size"
            )
        hidden = self.trunk(tokens + self.position)
        logits = self.head(self.norm(hidden)).squeeze(-1)
        return logits.view(video.shape[0], *self.grid)

    @torch.no_grad()
    def update_lecam_ema(self, real_logits: torch.Tensor, fake_logits: torch.Tensor, decay: float) -> None:
        """Move the LeCam running means toward this batch's mean logits."""
        self.lecam_real_ema.lerp_(real_logits.detach().float().mean(), 1.0 - decay)
        self.lecam_fake_ema.lerp_(fake_logits.detach().float().mean(), 1.0 - decay)
