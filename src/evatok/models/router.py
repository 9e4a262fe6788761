"""The router: a ViT that predicts a clip's token-count assignment class in one forward pass.

The clip is cut into 3D patches (``patch_frames x patch_height x patch_width``), each patch is
embedded by a linear layer, a learned [CLS] token is prepended, learned position embeddings are
added, and a pre-norm transformer encoder runs over the sequence. A linear head on the final
[CLS] state gives one logit per assignment class of the ``AssignmentSpace`` (class index =
base-m digits of the per-block counts, block 1 most significant).

EVATok (Xiong et al., CVPR 2026) states only a ViT-S-sized router of about 20M parameters. Chosen
here: ``patch_frames`` equals the tokenizer's block length (4 frames), so no patch straddles two
blocks. The paper preset uses 16x16 spatial patches, width 384, 6 heads and MLP ratio 4 (the ViT-S
sizes) with depth 11 instead of 12, which gives 21.0M parameters on 16x128x128 clips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from evatok.assignment import Assignment, AssignmentSpace
from evatok.models.weights import WEIGHTS_NAME, ConfigInWeightsMixin


@dataclass
class RouterConfig:
    """Input geometry, assignment space and transformer sizes of a router."""

    frames: int = 16
    height: int = 128
    width: int = 128
    channels: int = 3
    patch_frames: int = 4
    patch_height: int = 16
    patch_width: int = 16
    candidates: tuple[int, ...] = (32, 64, 128, 256, 512)
    num_blocks: int = 4
    model_width: int = 384
    depth: int = 11
    heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # Frame sampling of the training clips, copied from the label store by the training recipe.
    # `evatok route` cuts clips with it.
    frame_stride: int = 1
    fps: float | None = None

    def __post_init__(self) -> None:
        self.candidates = tuple(int(count) for count in self.candidates)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot build a router."""
        for name in ("frames", "height", "width", "channels", "patch_frames", "patch_height",
                     "patch_width", "num_blocks", "model_width", "depth", "heads", "frame_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"router config {name}={getattr(self, name)} must be at least 1")
        for size, patch in (("frames", "patch_frames"), ("height", "patch_height"), ("width", "patch_width")):
            if getattr(self, size) % getattr(self, patch):
                raise ValueError(
                    f"router config {size}={getattr(self, size)} is not a multiple of "
                    f"{patch}={getattr(self, patch)}: change one so that patches tile the clip"
                )
        if self.model_width % self.heads:
            raise ValueError(
                f"router config model_width={self.model_width} is not divisible by heads={self.heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"router config dropout={self.dropout} must lie in [0, 1)")
        AssignmentSpace(self.candidates, self.num_blocks)

    @property
    def space(self) -> AssignmentSpace:
        """The assignment space whose classes the router predicts."""
        return AssignmentSpace(self.candidates, self.num_blocks)

    @property
    def num_patches(self) -> int:
        """Number of 3D patches of one clip (the sequence length without [CLS])."""
        return (
            (self.frames // self.patch_frames)
            * (self.height // self.patch_height)
            * (self.width // self.patch_width)
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        data = asdict(self)
        data["candidates"] = list(self.candidates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouterConfig:
        """Build a config from a dict, rejecting unknown keys by name."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown router config keys {unknown}: valid keys are {sorted(known)}")
        return cls(**data)


class Router(nn.Module, ConfigInWeightsMixin, PyTorchModelHubMixin, library_name="evatok"):
    """ViT classifier from a clip (B, C, T, H, W) in [-1, 1] to assignment-class logits."""

    config_class = RouterConfig
    config_metadata_key = "evatok_router_config"

    def __init__(self, config: RouterConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = RouterConfig()
        elif isinstance(config, dict):
            config = RouterConfig.from_dict(config)
        self.config = config
        self.space = config.space
        width = config.model_width
        patch = (config.patch_frames, config.patch_height, config.patch_width)
        # A strided Conv3d is the linear embedding of non-overlapping 3D patches.
        self.patch_embed = nn.Conv3d(config.channels, width, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.zeros(1, config.num_patches + 1, width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, config.heads, dim_feedforward=int(width * config.mlp_ratio),
                dropout=config.dropout, activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.space.size)
        if not self.cls_token.is_meta:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, video: Tensor) -> Tensor:
        """Return (B, classes) logits for clips (B, C, T, H, W) in [-1, 1]."""
        config = self.config
        expected = (config.channels, config.frames, config.height, config.width)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"router input has shape {tuple(video.shape)}, expected (batch, {', '.join(map(str, expected))}): "
                "cut clips with the router's frames, height and width"
            )
        tokens = self.patch_embed(video).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        hidden = torch.cat([cls, tokens], dim=1) + self.position
        for layer in self.layers:
            hidden = layer(hidden)
        return self.head(self.norm(hidden[:, 0]))

    @torch.no_grad()
    def top_k(self, video: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
        """Return the (B, k) class indices with the highest probability and those probabilities."""
        k = min(int(k), self.space.size)
        probabilities = self(video).float().softmax(dim=-1)
        values, indices = probabilities.topk(k, dim=-1)
        return indices, values

    def predict(self, video: Tensor) -> list[Assignment]:
        """Return the most probable assignment of every clip of a batch (B, C, T, H, W)."""
        indices, _ = self.top_k(video, 1)
        return [self.space.assignment(int(index)) for index in indices[:, 0]]

    def predict_top_k(self, video: Tensor, k: int = 5) -> list[list[Assignment]]:
        """Return the ``k`` most probable assignments of every clip, most probable first."""
        indices, _ = self.top_k(video, k)
        return [[self.space.assignment(int(index)) for index in row] for row in indices]

    def num_parameters(self) -> int:
        """Return the number of parameters."""
        return sum(parameter.numel() for parameter in self.parameters())

    # ----- weights -------------------------------------------------------------------------


    @classmethod
    def load(cls, location: str | Path, device: str = "cpu") -> Router:
        """Load a router from a safetensors file, a folder holding one, or a training run folder."""
        location = Path(location)
        for candidate in (location, location / WEIGHTS_NAME, location / "final" / WEIGHTS_NAME):
            if candidate.is_file():
                return cls.from_safetensors(candidate, device=device).eval()
        raise FileNotFoundError(
            f"no router weights at {location}: give {WEIGHTS_NAME}, a folder with it, or a run folder "
            f"of `evatok train router` (which writes final/{WEIGHTS_NAME})"
        )
