"""Write uint8 RGB frames to an H.264 mp4 with PyAV, and compose frames side by side.

The stream is H.264 (libx264) in yuv420p, which most players accept. yuv420p stores colour at
half resolution, so both sides must be even: an odd height or width is padded by repeating the
last row or column. Frame i gets timestamp i / fps, so the file contains exactly the frames given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

logger = logging.getLogger(__name__)

# libx264 constant rate factor: 0 is lossless, 51 the worst; 18 is close to visually lossless.
DEFAULT_CRF = 18


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Join two frames (H, W, 3) or videos (T, H, W, 3) of equal shape along the width."""
    if left.shape != right.shape:
        raise ValueError(
            f"side-by-side frames differ in shape: {left.shape} and {right.shape}; "
            "resize or crop them to the same size first"
        )
    return np.concatenate([left, right], axis=-2)


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row and column of an (H, W, 3) frame so that H and W are even."""
    pad_rows = frame.shape[0] % 2
    pad_cols = frame.shape[1] % 2
    if not pad_rows and not pad_cols:
        return frame
    return np.pad(frame, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")


def frame_rate(fps: float) -> Fraction:
    """Return ``fps`` as the nearest fraction with a denominator of at most 1001.

    That denominator represents NTSC rates such as 30000/1001 exactly.
    """
    if not fps > 0:
        raise ValueError(f"frame rate {fps} is invalid: give a positive number of frames per second")
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Stream uint8 RGB frames (H, W, 3) of one size into an H.264 yuv420p mp4.

    Use as a context manager; the file is complete once the ``with`` block ends without error.
    """

    def __init__(self, path: str | Path, fps: float, *, crf: int = DEFAULT_CRF) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ValueError(
                f"cannot write {self.path}: folder {self.path.parent} does not exist; create it first"
            )
        if not 0 <= crf <= 51:
            raise ValueError(f"crf {crf} is invalid: libx264 accepts 0 (lossless) to 51")
        self.rate = frame_rate(fps)
        self.crf = crf
        self.frames_written = 0
        self._size: tuple[int, int] | None = None
        self._container: av.container.OutputContainer | None = av.open(str(self.path), "w")
        self._stream: av.video.stream.VideoStream | None = None

    def _open_stream(self, height: int, width: int) -> av.video.stream.VideoStream:
        assert self._container is not None
        stream = self._container.add_stream("libx264", rate=self.rate, options={"crf": str(self.crf)})
        stream.height, stream.width = height + height % 2, width + width % 2
        stream.pix_fmt = "yuv420p"
        self._size = (height, width)
        if height % 2 or width % 2:
            logger.info("%s: padding %dx%d frames to even sizes for yuv420p", self.path, height, width)
        return stream

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB frame (H, W, 3); every frame must have the first frame's size."""
        if self._container is None:
            raise ValueError(f"{self.path} is already closed: open a new VideoWriter")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 RGB frame (H, W, 3), got {frame.dtype} {frame.shape}")
        if self._stream is None:
            self._stream = self._open_stream(frame.shape[0], frame.shape[1])
        elif frame.shape[:2] != self._size:
            raise ValueError(
                f"frame {self.frames_written} of {self.path} is {frame.shape[0]}x{frame.shape[1]}, "
                f"but the video is {self._size[0]}x{self._size[1]}: all frames need one size"
            )
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_to_even(frame)), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self.rate
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def write_all(self, frames: Iterable[np.ndarray]) -> None:
        """Append every frame of a (T, H, W, 3) array or an iterable of (H, W, 3) frames."""
        for frame in frames:
            self.write(frame)

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self._container is None:
            return
        if self._stream is None:
            self._discard()
            raise ValueError(f"no frame was written to {self.path}: an mp4 needs at least one frame")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def _discard(self) -> None:
        """Close the container without flushing the encoder and delete the partial file."""
        if self._container is not None:
            self._container.close()
            self._container = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # Keep the original error rather than one from flushing a broken stream.
        self._discard()


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, *, crf: int = DEFAULT_CRF) -> int:
    """Write uint8 RGB frames to an H.264 mp4 and return the number of frames written."""
    with VideoWriter(path, fps, crf=crf) as writer:
        writer.write_all(frames)
    return writer.frames_written
