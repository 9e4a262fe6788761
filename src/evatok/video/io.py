"""Decode video files with PyAV into uint8 RGB frames as players show them.

Rules that hold for every reader in `evatok.video`:

- The first video stream that is not an attached picture (cover art) is decoded, wherever it sits
  among the audio and subtitle streams.
- Raw H.264 elementary streams (.264, .h264, .jsv) have no container and usually no timestamps.
  They are opened with FFmpeg's "h264" demuxer and timed at the demuxer's rate, which is
  `DEFAULT_RAW_FPS` (25 fps) unless the stream's timing information sets another.
- The display matrix (rotation and mirroring) is applied, so a phone video recorded upright comes
  out upright. Only multiples of 90 degrees are applied exactly; other angles snap to the nearest.
- Formats with alpha (GIF frames, PNG, QuickTime RLE, FFV1, ...) are composited over black:
  `rgb * alpha / 255`. Fully transparent pixels become black whatever colour they stored.
  NOTE: WebM VP8/VP9 alpha travels beside the picture, and FFmpeg's built-in VP8/VP9 decoders
  (which PyAV uses) ignore it, so those frames come out opaque.
- Any file that cannot be opened or decoded raises `VideoDecodeError`, which names the file and
  the reason.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from av.video.reformatter import VideoReformatter

logger = logging.getLogger(__name__)

RAW_H264_SUFFIXES = frozenset({".264", ".h264", ".jsv"})
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".gif", ".ts", ".mpg", ".mpeg"}
    | RAW_H264_SUFFIXES
)
DEFAULT_RAW_FPS = 25.0

# A swscale context with slice threads that sits in an unreachable reference cycle would be freed
# by the garbage collector of a forked child, such as a DataLoader worker, where its threads do
# not exist, and freeing it there blocks forever (seen with PyAV 18.1). Collecting before each
# fork frees such objects in the parent instead.
os.register_at_fork(before=gc.collect)

# FFmpeg AVColorSpace values that swscale can convert with its own coefficients. Frames tagged
# otherwise (or untagged) use swscale's default, BT.601.
_SWSCALE_COLORSPACES = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020"}


class VideoDecodeError(Exception):
    """A video file that cannot be opened or decoded: missing, empty, truncated, corrupt, ..."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep the two-argument constructor picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a container: its index, type ("video", "audio", ...), codec and a summary."""

    index: int
    type: str
    codec: str | None
    detail: str


@dataclass(frozen=True)
class VideoInfo:
    """Header facts about a file's video stream, plus the rotation read from its first frame."""

    path: Path
    container: str
    codec: str
    pix_fmt: str
    width: int
    height: int
    rotation: int
    mirrored: bool
    pixel_aspect: float
    display_width: int
    display_height: int
    fps: float
    duration: float | None
    header_frames: int | None
    has_audio: bool
    streams: tuple[StreamInfo, ...]


@dataclass(frozen=True)
class Frame:
    """A decoded frame: uint8 RGB (H, W, 3), its position among decoded frames and its time (s)."""

    image: np.ndarray
    index: int
    time: float


@dataclass(frozen=True)
class DisplayTransform:
    """Pixel aspect ratio, axis swap and flips that turn a coded frame into the displayed frame.

    `pixel_aspect` is the sample aspect ratio (pixel width / pixel height) of the coded frame:
    a coded width w is displayed as round(w * pixel_aspect) before any rotation.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    pixel_aspect: float = 1.0

    @classmethod
    def from_frame(cls, frame: av.VideoFrame, pixel_aspect: float = 1.0) -> DisplayTransform:
        """Read the frame's display-matrix side data, or return the identity when there is none."""
        for side_data in frame.side_data:
            if "DISPLAYMATRIX" in str(side_data.type):
                matrix = struct.unpack("<9i", bytes(side_data))
                return cls.from_matrix(matrix, pixel_aspect)
        return cls(pixel_aspect=pixel_aspect)

    @classmethod
    def from_matrix(cls, matrix: tuple[int, ...], pixel_aspect: float = 1.0) -> DisplayTransform:
        """Build the transform from FFmpeg's 3x3 display matrix (row-major, 16.16 fixed point).

        FFmpeg maps a source pixel (x, y) to (a*x + c*y, b*x + d*y) with a, b, c, d the entries
        0, 1, 3 and 4. The matrix is snapped to the nearest multiple of 90 degrees.
        """
        a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
        if abs(a) + abs(d) >= abs(b) + abs(c):
            return cls(transpose=False, flip_rows=d < 0, flip_cols=a < 0, pixel_aspect=pixel_aspect)
        # x' = c*y and y' = b*x: the displayed rows come from source columns.
        return cls(transpose=True, flip_rows=b < 0, flip_cols=c < 0, pixel_aspect=pixel_aspect)

    @property
    def is_identity(self) -> bool:
        """Return True when no axis swap or flip is needed (the pixel aspect aside)."""
        return not (self.transpose or self.flip_rows or self.flip_cols)

    @property
    def mirrored(self) -> bool:
        """Return True when the display includes a mirror image (negative determinant)."""
        return self.transpose != (self.flip_rows != self.flip_cols)

    @property
    def rotation(self) -> int:
        """Return the counter-clockwise rotation in degrees (0, 90, 180 or 270), mirror aside."""
        if not self.transpose:
            if self.flip_rows and self.flip_cols:
                return 180
            return 180 if self.flip_rows else 0
        return 90 if self.flip_rows else 270

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        """Return (width, height) of the displayed frame for a coded width x height."""
        width = max(1, round(width * self.pixel_aspect))
        return (height, width) if self.transpose else (width, height)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Return the (H, W, C) image as displayed, contiguous in memory."""
        if self.is_identity:
            return image
        if self.transpose:
            image = image.transpose(1, 0, 2)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


def _ffmpeg_error_text(error: Exception) -> str:
    return str(error).strip() or type(error).__name__


def _pick_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _describe_stream(stream: av.stream.Stream) -> StreamInfo:
    codec = stream.codec_context.name if stream.codec_context is not None else None
    if stream.type == "video":
        pix_fmt = stream.codec_context.pix_fmt if stream.codec_context is not None else None
        detail = f"{stream.codec_context.width}x{stream.codec_context.height} {pix_fmt or '?'}"
    elif stream.type == "audio":
        detail = f"{stream.codec_context.sample_rate} Hz {stream.codec_context.layout.name}"
    else:
        detail = ""
    return StreamInfo(index=stream.index, type=stream.type, codec=codec, detail=detail)


@contextmanager
def open_video(path: str | Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open a file and yield (container, video stream), or raise VideoDecodeError."""
    path = Path(path)
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    options = {"format": "h264"} if path.suffix.lower() in RAW_H264_SUFFIXES else {}
    try:
        container = av.open(str(path), metadata_errors="ignore", **options)
    except av.error.FFmpegError as error:
        reason = f"open failed, so the file is corrupt, truncated or not a video: {_ffmpeg_error_text(error)}"
        raise VideoDecodeError(path, reason) from error
    try:
        stream = _pick_video_stream(container)
        if stream is None:
            found = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}"
                              for s in container.streams) or "none"
            raise VideoDecodeError(path, f"no video stream (streams found: {found})")
        # NOTE: FFmpeg picks the decoder thread count from the CPU count, so many DataLoader
        # workers decoding at once can oversubscribe the CPUs.
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def stream_fps(stream: av.video.stream.VideoStream) -> float:
    """Return the stream's nominal frame rate, falling back to `DEFAULT_RAW_FPS`."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return DEFAULT_RAW_FPS


class DecodedFrame(NamedTuple):
    """A frame straight from the decoder, with its decode index, time (s) and stream facts."""

    frame: av.VideoFrame
    index: int
    time: float
    fps: float
    pixel_aspect: float


def stream_pixel_aspect(stream: av.video.stream.VideoStream) -> float:
    """Return the sample aspect ratio (pixel width / height), or 1.0 when unset or invalid."""
    for ratio in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if isinstance(ratio, Fraction) and ratio > 0:
            return float(ratio)
    return 1.0


def iter_decoded(path: str | Path) -> Iterator[DecodedFrame]:
    """Yield every frame that decodes, in order, with its index, time and the stream's facts.

    Frames without a timestamp (raw H.264) are timed as index / fps. A decoder or demuxer error
    raises VideoDecodeError, also after some frames; a file in which no frame decodes raises too.
    Only one frame is held at a time.
    """
    path = Path(path)
    with open_video(path) as (container, stream):
        fps = stream_fps(stream)
        pixel_aspect = stream_pixel_aspect(stream)
        frames = container.decode(stream)
        index = 0
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.FFmpegError as error:
                raise VideoDecodeError(
                    path, f"decoding failed after {index} frames: {_ffmpeg_error_text(error)}"
                ) from error
            time = frame.time if frame.time is not None else index / fps
            yield DecodedFrame(frame, index, float(time), fps, pixel_aspect)
            index += 1
    if index == 0:
        raise VideoDecodeError(path, "no frame decodes (the file may be truncated or corrupt)")


class FrameSampler:
    """Select decoded frames either every `frame_stride`-th frame or at a target `fps`.

    With `fps`, time is cut into slots of 1/fps seconds from the first frame's timestamp, and the
    first decoded frame in each slot is kept. Slots with no frame are skipped, so a target above
    the source rate keeps every frame once and never repeats one. Timestamps, not frame counts,
    decide, so variable-frame-rate files are sampled evenly in time.
    """

    def __init__(self, frame_stride: int = 1, fps: float | None = None) -> None:
        if fps is not None and frame_stride != 1:
            raise ValueError(
                f"frame_stride={frame_stride} and fps={fps} were both set: choose one sampling rule"
            )
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        if fps is not None and not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, got {fps}")
        self.frame_stride = frame_stride
        self.fps = fps
        self._start_time: float | None = None
        self._last_slot = -1

    def keep(self, index: int, time: float) -> bool:
        """Return True when the frame at this decode index and time (s) is sampled."""
        if self.fps is None:
            return index % self.frame_stride == 0
        if self._start_time is None:
            self._start_time = time
        # The small epsilon keeps frames that sit exactly on a slot edge from rounding down.
        slot = math.floor((time - self._start_time) * self.fps + 1e-6)
        if slot > self._last_slot:
            self._last_slot = slot
            return True
        return False

    def sampled_rate(self, source_fps: float) -> float:
        """Return the nominal rate (frames/s) of the sampled sequence."""
        if self.fps is None:
            return source_fps / self.frame_stride
        return min(self.fps, source_fps)


def iter_sampled(path: str | Path, frame_stride: int = 1, fps: float | None = None) -> Iterator[DecodedFrame]:
    """Yield the frames the sampling rule keeps, with `fps` set to the sampled sequence's rate."""
    sampler = FrameSampler(frame_stride=frame_stride, fps=fps)
    for decoded in iter_decoded(path):
        if sampler.keep(decoded.index, decoded.time):
            yield decoded._replace(fps=sampler.sampled_rate(decoded.fps))


def scaled_size(width: int, height: int, cover: tuple[int, int] | None, shorter_side: int | None) -> tuple[int, int]:
    """Return (width, height) after scaling to cover (height, width) or to a shorter side."""
    if cover is not None:
        scale = max(cover[0] / height, cover[1] / width)
        # ceil keeps the result at least as large as the target, so a crop always fits.
        return max(cover[1], math.ceil(width * scale - 1e-6)), max(cover[0], math.ceil(height * scale - 1e-6))
    if shorter_side is not None:
        scale = shorter_side / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


def frame_to_rgb(
    frame: av.VideoFrame,
    transform: DisplayTransform,
    cover: tuple[int, int] | None = None,
    shorter_side: int | None = None,
    reformatter: VideoReformatter | None = None,
) -> np.ndarray:
    """Convert a decoded frame to displayed uint8 RGB (H, W, 3), optionally resized.

    `cover=(height, width)` scales the displayed frame, aspect kept, until it covers that size.
    `shorter_side` scales its shorter side to that length. Scaling uses swscale's area filter when
    shrinking (antialiased) and bicubic when enlarging, and happens before rotation, which is
    equivalent and cheaper. Pass one `reformatter` for all frames of a stream: it keeps the
    swscale context, which is several times faster than building one per frame.
    """
    if reformatter is None:
        reformatter = VideoReformatter()
    display_w, display_h = transform.display_size(frame.width, frame.height)
    out_w, out_h = scaled_size(display_w, display_h, cover, shorter_side)
    if transform.transpose:
        out_w, out_h = out_h, out_w
    shrinking = out_w * out_h < frame.width * frame.height
    options = {"width": out_w, "height": out_h, "interpolation": "AREA" if shrinking else "BICUBIC"}
    has_alpha = any(component.is_alpha for component in frame.format.components)
    colorspace = _SWSCALE_COLORSPACES.get(int(frame.colorspace))
    if colorspace is not None:
        options["src_colorspace"] = colorspace
    converted = reformatter.reformat(frame, format="rgba" if has_alpha else "rgb24", **options)
    if has_alpha:
        rgba = converted.to_ndarray().astype(np.uint16)
        # Integer rounding of rgb * alpha / 255.
        rgb = ((rgba[..., :3] * rgba[..., 3:4] + 127) // 255).astype(np.uint8)
    else:
        rgb = converted.to_ndarray()
    return transform.apply(rgb)


def iter_frames(
    path: str | Path,
    *,
    frame_stride: int = 1,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    shorter_side: int | None = None,
) -> Iterator[Frame]:
    """Yield sampled frames of a file as displayed uint8 RGB, one at a time.

    `size=(height, width)` resizes each frame to cover that size and centre-crops it to exactly
    that size; `shorter_side` only resizes. Without either, frames keep their displayed size.
    Raises VideoDecodeError for files that cannot be decoded.
    """
    if size is not None and shorter_side is not None:
        raise ValueError("set either size=(height, width) or shorter_side, not both")
    transform: DisplayTransform | None = None
    reformatter = VideoReformatter()
    for decoded in iter_sampled(path, frame_stride=frame_stride, fps=fps):
        if transform is None:
            transform = DisplayTransform.from_frame(decoded.frame, decoded.pixel_aspect)
        image = frame_to_rgb(decoded.frame, transform, cover=size, shorter_side=shorter_side, reformatter=reformatter)
        if size is not None:
            image = center_crop(image, size[0], size[1])
        yield Frame(image=image, index=decoded.index, time=decoded.time)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return the centred height x width window of an (H, W, ...) array."""
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


def count_frames(path: str | Path, frame_stride: int = 1, fps: float | None = None) -> tuple[int, int]:
    """Decode a whole file without colour conversion and return (decoded, sampled) frame counts."""
    sampler = FrameSampler(frame_stride=frame_stride, fps=fps)
    decoded = sampled = 0
    for frame in iter_decoded(path):
        decoded += 1
        sampled += sampler.keep(frame.index, frame.time)
    return decoded, sampled


def probe(path: str | Path) -> VideoInfo:
    """Read a file's header and decode its first frame for the pixel format and rotation."""
    path = Path(path)
    with open_video(path) as (container, stream):
        context = stream.codec_context
        try:
            first = next(container.decode(stream))
        except StopIteration:
            raise VideoDecodeError(path, "no frame decodes (the file may be truncated or corrupt)") from None
        except av.error.FFmpegError as error:
            raise VideoDecodeError(path, f"decoding the first frame failed: {_ffmpeg_error_text(error)}") from error
        transform = DisplayTransform.from_frame(first, stream_pixel_aspect(stream))
        display_w, display_h = transform.display_size(first.width, first.height)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return VideoInfo(
            path=path,
            container=container.format.name,
            codec=context.name,
            pix_fmt=first.format.name,
            width=first.width,
            height=first.height,
            rotation=transform.rotation,
            mirrored=transform.mirrored,
            pixel_aspect=transform.pixel_aspect,
            display_width=display_w,
            display_height=display_h,
            fps=stream_fps(stream),
            duration=duration,
            header_frames=stream.frames or None,
            has_audio=bool(container.streams.audio),
            streams=tuple(_describe_stream(s) for s in container.streams),
        )
