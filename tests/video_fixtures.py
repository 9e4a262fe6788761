"""Small synthetic videos written with PyAV, for tests that need exact pixel and timing facts."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def quadrant_frame(height: int, width: int, value: int = 0) -> np.ndarray:
    """Return an RGB frame with four flat quadrants: red, green, blue and grey `value` at bottom right."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = height // 2, width // 2
    image[:top, :left] = (220, 30, 30)
    image[:top, left:] = (30, 220, 30)
    image[top:, :left] = (30, 30, 220)
    image[top:, left:] = value
    return image


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv444p",
    rate: int = 25,
    input_format: str = "rgb24",
    rotation: int | None = None,
    hflip: bool = False,
    times_ms: Sequence[int] | None = None,
    audio_first: bool = False,
    sample_aspect_ratio: Fraction | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode frames into `path` and return it.

    `times_ms` gives each frame's timestamp in milliseconds (variable frame rate); `audio_first`
    adds a silent AAC stream before the video stream. libx264 runs lossless (qp 0) by default.
    """
    if options is None:
        options = {"qp": "0"} if codec == "libx264" else {}
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=8000) if audio_first else None
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if sample_aspect_ratio is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if times_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None or hflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format=input_format)
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            _write_silence(container, audio, seconds=len(frames) / rate)
    return path


def _write_silence(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    samples = max(1024, int(seconds * stream.rate))
    frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), dtype=np.float32), format="fltp", layout="mono")
    frame.sample_rate = stream.rate
    frame.pts = 0
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: Path, seconds: float = 0.5) -> Path:
    """Write a file with one silent AAC stream and no video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        _write_silence(container, stream, seconds)
    return path


def read_mp4(path: Path) -> np.ndarray:
    """Decode every frame of a file as uint8 RGB (N, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def luma_psnr(x: np.ndarray, y: np.ndarray) -> float:
    """Return the PSNR (dB) of the BT.601 luma of two uint8 RGB videos."""
    weights = np.array([0.299, 0.587, 0.114])
    mse = float(np.mean((x.astype(np.float64) @ weights - y.astype(np.float64) @ weights) ** 2))
    return 10.0 * np.log10(255.0**2 / mse)
