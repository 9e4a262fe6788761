"""Cut decoded videos into fixed-size clips: sampling, resize and crop, and the short-video policy.

A clip is `num_frames` consecutive sampled frames (see `FrameSampler` for the sampling rules),
resized so the displayed frame covers height x width and then cropped to exactly that size.
Clips do not overlap: clip k contains sampled frames [k * num_frames, (k + 1) * num_frames).

Short-video policy, the same in `iter_clips`, `read_video`, `index_clips` and the datasets: a video
with fewer sampled frames than `num_frames` is either padded ("pad": the last frame is repeated and
`num_valid` counts the real frames) or skipped ("skip": it yields no clip, which is logged).
The partial tail of a longer video is dropped by `iter_clips` unless `include_tail=True`, which
`read_video` sets so that a whole video can be encoded and cropped back to its exact length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from evatok.video.io import DisplayTransform, FrameSampler, count_frames, frame_to_rgb, iter_sampled

logger = logging.getLogger(__name__)

ShortPolicy = Literal["pad", "skip"]
CropMode = Literal["center", "random"]


@dataclass(frozen=True)
class ClipSpec:
    """Shape and sampling of the clips cut from a video.

    `frame_stride` keeps every n-th decoded frame; `fps` instead samples by timestamps at that
    rate (set one of them). `crop="random"` picks one crop window per clip, for training.
    """

    num_frames: int = 16
    height: int = 128
    width: int = 128
    frame_stride: int = 1
    fps: float | None = None
    short_policy: ShortPolicy = "pad"
    crop: CropMode = "center"

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClipSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.short_policy not in ("pad", "skip"):
            raise ValueError(f"ClipSpec.short_policy must be 'pad' or 'skip', got {self.short_policy!r}")
        if self.crop not in ("center", "random"):
            raise ValueError(f"ClipSpec.crop must be 'center' or 'random', got {self.crop!r}")
        FrameSampler(frame_stride=self.frame_stride, fps=self.fps)  # validates the sampling pair

    def describe(self) -> str:
        """Return a short human-readable form, e.g. '16x128x128 every 2nd frame'."""
        if self.fps is not None:
            rule = f"at {self.fps:g} fps"
        elif self.frame_stride == 1:
            rule = "every frame"
        else:
            rule = f"every {self.frame_stride} frames"
        return f"{self.num_frames}x{self.height}x{self.width} {rule}"


@dataclass
class Clip:
    """A clip of uint8 RGB frames (T, H, W, 3) and where it came from.

    Frames at positions >= `num_valid` are padding (copies of the last real frame).
    """

    frames: np.ndarray
    num_valid: int
    clip_number: int
    start_index: int
    start_time: float
    source: Path
    fps: float
    frame_indices: list[int] = field(default_factory=list)

    @property
    def valid_mask(self) -> np.ndarray:
        """Return a bool (T,) array that is True for real frames."""
        mask = np.zeros(len(self.frames), dtype=bool)
        mask[: self.num_valid] = True
        return mask


@dataclass(frozen=True)
class ClipIndex:
    """Clip count of one video, computed from the frames that actually decode."""

    path: Path
    num_frames: int
    decoded_frames: int
    sampled_frames: int
    num_clips: int
    tail_frames: int
    short: bool

    def num_valid(self, clip_number: int) -> int:
        """Return how many frames of clip `clip_number` are real (the rest are padding)."""
        if not 0 <= clip_number < self.num_clips:
            raise IndexError(f"{self.path}: clip {clip_number} out of range 0..{self.num_clips - 1}")
        if self.short:
            return self.sampled_frames
        full_clips = self.num_clips - (1 if self.tail_frames else 0)
        return self.tail_frames if clip_number >= full_clips else self.num_frames


def count_clips(sampled_frames: int, spec: ClipSpec, include_tail: bool = False) -> tuple[int, bool]:
    """Return (number of clips, is_short) for a video with this many sampled frames."""
    if sampled_frames < spec.num_frames:
        return (1 if spec.short_policy == "pad" and sampled_frames > 0 else 0), True
    full, tail = divmod(sampled_frames, spec.num_frames)
    return full + (1 if include_tail and tail else 0), False


def index_clips(path: str | Path, spec: ClipSpec, include_tail: bool = False) -> ClipIndex:
    """Decode a file (without colour conversion) and count the clips it yields under `spec`."""
    decoded, sampled = count_frames(path, frame_stride=spec.frame_stride, fps=spec.fps)
    num_clips, short = count_clips(sampled, spec, include_tail)
    tail = sampled % spec.num_frames if include_tail and not short else 0
    if short and spec.short_policy == "skip":
        logger.info("%s: skipped, %d sampled frames < %d per clip", path, sampled, spec.num_frames)
    return ClipIndex(Path(path), spec.num_frames, decoded, sampled, num_clips, tail, short)


def crop_window(
    height: int, width: int, spec: ClipSpec, rng: np.random.Generator | None
) -> tuple[int, int]:
    """Return the (top, left) corner of the crop for a frame of height x width."""
    if spec.crop == "random":
        if rng is None:
            raise ValueError("ClipSpec.crop='random' needs an rng (numpy.random.Generator)")
        return int(rng.integers(0, height - spec.height + 1)), int(rng.integers(0, width - spec.width + 1))
    return (height - spec.height) // 2, (width - spec.width) // 2


def crop_clip(frames: np.ndarray, spec: ClipSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """Crop resized (T, H, W, 3) frames to spec.height x spec.width with one window for all."""
    top, left = crop_window(frames.shape[1], frames.shape[2], spec, rng)
    return np.ascontiguousarray(frames[:, top : top + spec.height, left : left + spec.width])


def _pad(frames: list[np.ndarray], num_frames: int) -> np.ndarray:
    """Stack frames and repeat the last one up to num_frames."""
    stacked = np.stack(frames)
    if len(frames) < num_frames:
        repeat = np.repeat(stacked[-1:], num_frames - len(frames), axis=0)
        stacked = np.concatenate([stacked, repeat])
    return stacked


def iter_clips(
    path: str | Path,
    spec: ClipSpec,
    *,
    include_tail: bool = False,
    rng: np.random.Generator | None = None,
    first_clip: int = 0,
    max_clips: int | None = None,
    crop: bool = True,
) -> Iterator[Clip]:
    """Yield consecutive clips of a file, decoding as a stream (memory flat in video length).

    `first_clip` and `max_clips` select a range of clip numbers; frames before it are decoded
    but not converted to RGB. `crop=False` returns the resized frames before cropping (used by
    the decode cache, which crops on load). Raises VideoDecodeError for undecodable files.
    """
    path = Path(path)
    buffer: list[np.ndarray] = []
    indices: list[int] = []
    start_time = 0.0
    rate = 0.0
    sampled = 0
    emitted = 0
    transform: DisplayTransform | None = None
    reformatter = VideoReformatter()
    first_sampled = first_clip * spec.num_frames

    def finish(frames: list[np.ndarray], number: int) -> Clip:
        stacked = _pad(frames, spec.num_frames)
        if crop:
            stacked = crop_clip(stacked, spec, rng)
        return Clip(stacked, len(frames), number, indices[0], start_time, path, rate, list(indices))

    for decoded in iter_sampled(path, spec.frame_stride, spec.fps):
        rate = decoded.fps
        if transform is None:
            transform = DisplayTransform.from_frame(decoded.frame, decoded.pixel_aspect)
        position = sampled
        sampled += 1
        if position < first_sampled:
            continue
        if not buffer:
            start_time = decoded.time
            indices = []
        cover = (spec.height, spec.width)
        buffer.append(frame_to_rgb(decoded.frame, transform, cover=cover, reformatter=reformatter))
        indices.append(decoded.index)
        if len(buffer) == spec.num_frames:
            yield finish(buffer, position // spec.num_frames)
            buffer = []
            emitted += 1
            if max_clips is not None and emitted >= max_clips:
                return

    if sampled < spec.num_frames:
        if spec.short_policy == "skip":
            logger.info("%s: skipped, %d sampled frames < %d per clip", path, sampled, spec.num_frames)
            return
        if buffer:
            yield finish(buffer, 0)
        return
    if include_tail and buffer:
        yield finish(buffer, sampled // spec.num_frames)


def read_clip(
    path: str | Path, spec: ClipSpec, clip_number: int, rng: np.random.Generator | None = None, crop: bool = True
) -> Clip:
    """Decode clip `clip_number` of a file, including a padded short or tail clip."""
    for clip in iter_clips(path, spec, include_tail=True, rng=rng, first_clip=clip_number, max_clips=1, crop=crop):
        return clip
    raise IndexError(f"{path}: clip {clip_number} does not exist for {spec.describe()}")


def read_video(path: str | Path, spec: ClipSpec) -> list[Clip]:
    """Read a whole video as consecutive clips, the tail clip padded with its valid count kept.

    The sum of `num_valid` over the clips is the number of sampled frames, so an output built from
    these clips can be cut back to the input's exact length. Holds the whole video in memory.
    """
    return list(iter_clips(path, spec, include_tail=True))


def to_model_input(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert uint8 frames (T, H, W, 3) to a float tensor (3, T, H, W) in [-1, 1]."""
    tensor = torch.as_tensor(frames)
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def from_model_output(video: torch.Tensor) -> np.ndarray:
    """Convert a float tensor (3, T, H, W) in [-1, 1] back to uint8 frames (T, H, W, 3).

    Values outside [-1, 1] are clipped; the mapping rounds to the nearest uint8 level.
    """
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) tensor, got shape {tuple(video.shape)}")
    levels = video.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return levels.to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu().numpy()
