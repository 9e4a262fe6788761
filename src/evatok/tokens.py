"""TokenizedVideo: the code ids of a video's clips with their assignments and clip geometry.

File format (version 1): a safetensors file with two int32 tensors and JSON metadata.
- ``ids``: every code id in one 1D array, clip by clip and, inside a clip, block by block.
- ``assignments``: (num_clips, num_blocks) token counts; row c gives the counts of clip c.
- metadata key ``evatok_tokens``: JSON with ``format_version``, ``codebook_size``, ``candidates``,
  ``frames``, ``height``, ``width``, ``fps`` (null when unknown), ``crop`` and ``source_frames``.

A video of ``source_frames`` frames is covered by consecutive clips of ``frames`` frames; the last
clip is padded, and decoding crops back to ``source_frames``. Geometry is always stored, never
inferred from token counts. Loading validates everything and raises ValueError with the reason.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from evatok.models.tokenizer import PAD_ID, TokenizerEncoding

FORMAT_VERSION = 1
METADATA_KEY = "evatok_tokens"


@dataclass
class TokenizedVideo:
    """Code ids of consecutive clips of one video, their assignments and the clip geometry."""

    ids: Tensor  # (total tokens,) long: clip by clip, block by block
    assignments: Tensor  # (num_clips, num_blocks) long
    codebook_size: int
    candidates: tuple[int, ...]
    frames: int  # frames per clip
    height: int  # clip height in pixels, after resize and crop
    width: int  # clip width in pixels, after resize and crop
    fps: float | None  # frame rate of the clips; None when unknown
    crop: str  # how frames were cropped to height x width, e.g. "center"
    source_frames: int  # frames of the video the clips cover; decoding returns this many
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.ids = torch.as_tensor(self.ids).long().flatten()
        self.assignments = torch.as_tensor(self.assignments).long()
        self.candidates = tuple(int(count) for count in self.candidates)
        self.validate()

    # ----- shape -------------------------------------------------------------------------------

    @property
    def num_clips(self) -> int:
        """Number of clips."""
        return self.assignments.shape[0]

    @property
    def num_blocks(self) -> int:
        """Number of temporal blocks per clip."""
        return self.assignments.shape[1]

    @property
    def num_tokens(self) -> int:
        """Number of code ids over all clips."""
        return self.ids.numel()

    def validate(self) -> None:
        """Raise ValueError with the reason when ids, lengths or geometry are inconsistent."""
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"token format version {self.format_version} is not supported: "
                f"this evatok reads version {FORMAT_VERSION}"
            )
        if self.assignments.ndim != 2 or self.assignments.shape[0] < 1 or self.assignments.shape[1] < 1:
            raise ValueError(
                f"assignments have shape {tuple(self.assignments.shape)}, expected (num_clips, num_blocks) "
                "with at least one clip and one block"
            )

        if self.codebook_size < 1:
            raise ValueError(f"codebook_size is {self.codebook_size}, expected at least 1")
        for name in ("frames", "height", "width", "source_frames"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}, expected at least 1")
        if self.frames % self.num_blocks:
            raise ValueError(
                f"frames={self.frames} is not a multiple of the {self.num_blocks} blocks per clip"
            )
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps is {self.fps}, expected a positive frame rate or None")

        covered = self.num_clips * self.frames
        if not covered - self.frames < self.source_frames <= covered:
            raise ValueError(
                f"source_frames={self.source_frames} does not fit {self.num_clips} consecutive clips "
                f"of {self.frames} frames: expected a count in [{covered - self.frames + 1}, {covered}]"
            )

        invalid_counts = sorted({int(c) for c in self.assignments.flatten()} - set(self.candidates))
        if invalid_counts:
            raise ValueError(
                f"assignments contain token counts {invalid_counts} that are not candidates {self.candidates}"
            )
        expected_tokens = int(self.assignments.sum())
        if self.ids.numel() != expected_tokens:
            raise ValueError(
                f"there are {self.ids.numel()} code ids but the assignments need {expected_tokens}: "
                "the file is truncated or its ids and assignments do not belong together"
            )

        if self.ids.numel() and (int(self.ids.min()) < 0 or int(self.ids.max()) >= self.codebook_size):
            bad = self.ids[(self.ids < 0) | (self.ids >= self.codebook_size)][0].item()
            raise ValueError(
                f"code id {bad} is outside the codebook [0, {self.codebook_size - 1}]"
            )

    # ----- access ------------------------------------------------------------------------------

    def clip_ids(self, clip: int) -> list[Tensor]:
        """Return the code ids of every block of one clip."""
        offsets = self.assignments.flatten().cumsum(0).tolist()
        start_index = clip * self.num_blocks
        starts = [0, *offsets][start_index : start_index + self.num_blocks]
        counts = self.assignments[clip].tolist()
        return [self.ids[start : start + count] for start, count in zip(starts, counts, strict=True)]

    def padded_blocks(self, clips: slice | None = None) -> list[Tensor]:
        """Return one (num_clips, max count) id tensor per block, PAD_ID beyond each count."""
        indices = range(self.num_clips)[clips or slice(None)]
        per_clip = [self.clip_ids(clip) for clip in indices]
        blocks = []
        for block in range(self.num_blocks):
            width = max(int(self.assignments[clip, block]) for clip in indices)
            padded = torch.full((len(per_clip), width), PAD_ID, dtype=torch.long)
            for row, ids in enumerate(per_clip):
                padded[row, : ids[block].numel()] = ids[block]
            blocks.append(padded)
        return blocks

    @classmethod
    def from_encoding(
        cls,
        encoding: TokenizerEncoding,
        *,
        codebook_size: int,
        candidates: tuple[int, ...],
        frames: int,
        height: int,
        width: int,
        fps: float | None,
        crop: str,
        source_frames: int | None = None,
    ) -> TokenizedVideo:
        """Collect the clips of an encoding (one batch row per clip, in order) into one video."""
        num_clips = encoding.assignment.shape[0]
        ids = [torch.cat(encoding.ids_of(clip)).cpu() for clip in range(num_clips)]
        return cls(
            ids=torch.cat(ids),
            assignments=encoding.assignment.cpu(),
            codebook_size=codebook_size,
            candidates=candidates,
            frames=frames,
            height=height,
            width=width,
            fps=fps,
            crop=crop,
            source_frames=num_clips * frames if source_frames is None else source_frames,
        )

    # ----- files -------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """Return the JSON metadata stored in the file header."""
        return {
            "format_version": self.format_version,
            "codebook_size": self.codebook_size,
            "candidates": list(self.candidates),
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "fps": self.fps,
            "crop": self.crop,
            "source_frames": self.source_frames,
        }

    def save(self, path: str | Path) -> None:
        """Write the tokens to ``path`` (safetensors); the file appears complete or not at all."""
        path = Path(path)
        tensors = {
            "ids": self.ids.to(torch.int32).contiguous(),
            "assignments": self.assignments.to(torch.int32).contiguous(),
        }
        header = {METADATA_KEY: json.dumps(self.metadata())}
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata=header)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    @classmethod
    def load(cls, path: str | Path) -> TokenizedVideo:
        """Read and validate a token file; raise ValueError naming the file and the reason."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"token file {path} not found")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                names = set(handle.keys())
                tensors = {name: handle.get_tensor(name) for name in names & {"ids", "assignments"}}
        except Exception as error:  # safetensors raises several types for malformed files
            raise ValueError(f"token file {path} is not a readable safetensors file: {error}") from error
        try:
            return cls.from_parts(header, tensors)
        except ValueError as error:
            raise ValueError(f"token file {path} is invalid: {error}") from error

    @classmethod
    def from_parts(cls, header: dict[str, str], tensors: dict[str, Tensor]) -> TokenizedVideo:
        """Build from a file's metadata and tensors, raising ValueError on anything malformed."""
        if METADATA_KEY not in header:
            raise ValueError(f"metadata key '{METADATA_KEY}' is missing: not an evatok token file")
        try:
            meta = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as error:
            raise ValueError(f"metadata is not valid JSON: {error}") from error
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"token format version {version!r} is not supported: this evatok reads version "
                f"{FORMAT_VERSION}"
            )
        for name in ("ids", "assignments"):
            if name not in tensors:
                raise ValueError(f"tensor '{name}' is missing")
            if tensors[name].dtype not in (torch.int32, torch.int64):
                raise ValueError(f"tensor '{name}' has dtype {tensors[name].dtype}, expected int32")
        if tensors["ids"].ndim != 1:
            raise ValueError(f"tensor 'ids' has shape {tuple(tensors['ids'].shape)}, expected 1D")

        fields = {
            "codebook_size": int,
            "frames": int,
            "height": int,
            "width": int,
            "source_frames": int,
            "crop": str,
        }
        values: dict[str, Any] = {}
        for name, kind in fields.items():
            value = meta.get(name)
            # bool is a subclass of int in Python, and true/false is never a valid size.
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"metadata field '{name}' is {value!r}, expected {kind.__name__}")
            values[name] = value
        fps = meta.get("fps")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))):
            raise ValueError(f"metadata field 'fps' is {fps!r}, expected a number or null")
        candidates = meta.get("candidates")
        if not isinstance(candidates, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in candidates
        ):
            raise ValueError(f"metadata field 'candidates' is {candidates!r}, expected a list of ints")
        return cls(
            ids=tensors["ids"],
            assignments=tensors["assignments"],
            candidates=tuple(candidates),
            fps=None if fps is None else float(fps),
            **values,
        )
