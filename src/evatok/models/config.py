"""Typed configuration of the Q-Former tokenizer, stored with its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from evatok.assignment import AssignmentSpace


@dataclass
class TokenizerConfig:
    """Sizes of the tokenizer. Defaults are the S-B model on 16x128x128 clips of EVATok.

    EVATok is Xiong et al., "EVATok: Adaptive Length Video Tokenization for Efficient Visual
    Autoregressive Generation", CVPR 2026. Choices where that paper is silent: code dimension 8 with an l2-normalised codebook,
    commitment weight 0.25, MLP ratio 4, and the query pooling grids described in
    ``evatok.models.tokenizer.pooling_grids``.
    """

    frames: int = 16
    height: int = 128
    width: int = 128
    channels: int = 3
    patch_frames: int = 4
    patch_height: int = 8
    patch_width: int = 8
    candidates: tuple[int, ...] = (32, 64, 128, 256, 512)
    encoder_width: int = 512
    encoder_layers: int = 6
    encoder_heads: int = 8
    decoder_width: int = 768
    decoder_layers: int = 12
    decoder_heads: int = 12
    mlp_ratio: float = 4.0
    codebook_size: int = 16384
    code_dim: int = 8
    commitment_weight: float = 0.25
    # Softmax temperature of the entropy term over cosine similarities to the codebook.
    entropy_temperature: float = 0.01
    # A code unused for this many training steps is restarted from a recent encoder output;
    # 0 disables the restart.
    dead_code_patience: int = 100

    def __post_init__(self) -> None:
        self.candidates = tuple(int(count) for count in self.candidates)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot build a tokenizer."""
        for name in ("frames", "height", "width", "channels", "patch_frames", "patch_height",
                     "patch_width", "encoder_width", "encoder_layers", "encoder_heads",
                     "decoder_width", "decoder_layers", "decoder_heads", "codebook_size",
                     "code_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"tokenizer config {name}={getattr(self, name)} must be at least 1")
        for size, patch in (("frames", "patch_frames"), ("height", "patch_height"),
                            ("width", "patch_width")):
            if getattr(self, size) % getattr(self, patch):
                raise ValueError(
                    f"tokenizer config {size}={getattr(self, size)} is not a multiple of "
                    f"{patch}={getattr(self, patch)}: change one so that patches tile the clip"
                )
        for width, heads in (("encoder_width", "encoder_heads"), ("decoder_width", "decoder_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"tokenizer config {width}={getattr(self, width)} is not divisible by "
                    f"{heads}={getattr(self, heads)}"
                )
        if self.dead_code_patience < 0:
            raise ValueError(f"tokenizer config dead_code_patience={self.dead_code_patience} is negative")
        # Raises on empty, unsorted or non-positive candidate lists.
        AssignmentSpace(self.candidates, self.num_blocks)

    @property
    def num_blocks(self) -> int:
        """Number of temporal blocks, one per ``patch_frames`` frames."""
        return self.frames // self.patch_frames

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns) of one block."""
        return self.height // self.patch_height, self.width // self.patch_width

    @property
    def patches_per_block(self) -> int:
        """Number of 3D patches in one block."""
        rows, cols = self.grid
        return rows * cols

    @property
    def patch_dim(self) -> int:
        """Number of pixel values in one patch."""
        return self.channels * self.patch_frames * self.patch_height * self.patch_width

    @property
    def max_tokens_per_block(self) -> int:
        """Largest candidate count."""
        return self.candidates[-1]

    @property
    def space(self) -> AssignmentSpace:
        """The assignment space of this tokenizer."""
        return AssignmentSpace(self.candidates, self.num_blocks)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        data = asdict(self)
        data["candidates"] = list(self.candidates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        """Build a config from a dict, rejecting unknown keys by name."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown tokenizer config keys {unknown}: valid keys are {sorted(known)}"
            )
        return cls(**data)
