"""Decoding real and synthetic files: counts, streams, rotation, pixel formats and errors."""

from __future__ import annotations

import csv
import gc
import os
import shutil
import signal
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from evatok.video import VideoDecodeError, count_frames, iter_frames, probe
from evatok.video.io import FrameSampler, iter_decoded
from video_fixtures import quadrant_frame, write_audio_only, write_video

RED, GREEN, BLUE = (220, 30, 30), (30, 220, 30), (30, 30, 220)
# One real file per container or codec kind, with the frame count MANIFEST.tsv records.
REAL_FILES = [
    "elastictok__flower.mp4",
    "intel__asl_gestures_again.mkv",
    "moviepy__big_buck_bunny_432_433.webm",
    "moviepy__clip1024.flv",
    "intel__preview_people-detection.gif",
    "openh264__BA1_FT_C.264",
    "openh264__BA1_Sony_D.jsv",
]


def read_tsv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}


def assert_close(pixel: np.ndarray, expected: tuple[int, int, int], tolerance: int = 4) -> None:
    difference = np.abs(pixel.astype(int) - np.array(expected)).max()
    assert difference <= tolerance, f"pixel {pixel.tolist()} differs from {expected} by {difference}"


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_counts_and_shape(clips_dir: Path, videos_dir: Path, name: str) -> None:
    row = read_tsv(videos_dir / "MANIFEST.tsv")[name]
    info = probe(clips_dir / name)
    assert info.codec == row["codec"]
    assert (info.width, info.height) == (int(row["width"]), int(row["height"]))
    assert count_frames(clips_dir / name) == (int(row["frames"]), int(row["frames"]))
    first = next(iter_frames(clips_dir / name))
    assert first.image.dtype == np.uint8
    assert first.image.shape == (int(row["height"]), int(row["width"]), 3)


def test_raw_h264_timed_at_25_fps(clips_dir: Path) -> None:
    path = clips_dir / "openh264__BA1_FT_C.264"
    assert probe(path).fps == 25.0
    times = [decoded.time for decoded in iter_decoded(path)][:3]
    assert times == [0.0, 0.04, 0.08]


def read_edge_frame_counts(path: Path) -> dict[str, int]:
    """Return {file: frames} for EDGE.tsv rows of decodable files.

    Its header names only five columns, so rows are read by position: file, source, license,
    bytes, width, height, fps, frames, ...
    """
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    return {row[0]: int(row[7]) for row in rows if row[0].startswith("short/")}


def test_edge_short_counts_match_edge_tsv(videos_dir: Path) -> None:
    expected = read_edge_frame_counts(videos_dir / "edge" / "EDGE.tsv")
    assert len(expected) == 11
    for name, frames in expected.items():
        assert count_frames(videos_dir / "edge" / name) == (frames, frames), name


def test_undecodable_edge_file_raises(videos_dir: Path) -> None:
    path = videos_dir / "edge" / "undecodable" / "decord__corrupted.mp4"
    with pytest.raises(VideoDecodeError) as caught:
        count_frames(path)
    assert caught.value.path == path
    assert "Invalid data" in caught.value.reason


@pytest.mark.parametrize(
    ("rotation", "hflip", "corners", "mirrored"),
    [
        # corners: top-left, top-right, bottom-left, bottom-right of the displayed frame.
        (90, False, (GREEN, (128,) * 3, RED, BLUE), False),
        (-90, False, (BLUE, RED, (128,) * 3, GREEN), False),
        (180, False, ((128,) * 3, BLUE, GREEN, RED), False),
        (0, True, (GREEN, RED, (128,) * 3, BLUE), True),
        (90, True, ((128,) * 3, GREEN, BLUE, RED), True),
    ],
)
def test_display_matrix_applied(tmp_path: Path, rotation: int, hflip: bool, corners: tuple, mirrored: bool) -> None:
    path = write_video(tmp_path / "rotated.mp4", [quadrant_frame(32, 64, 128)] * 2, rotation=rotation, hflip=hflip)
    info = probe(path)
    assert info.rotation == rotation % 360
    assert info.mirrored is mirrored
    image = next(iter_frames(path)).image
    expected_shape = (64, 32, 3) if rotation % 180 else (32, 64, 3)
    assert image.shape == expected_shape
    assert (info.display_height, info.display_width) == expected_shape[:2]
    for pixel, colour in zip((image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]), corners, strict=True):
        assert_close(pixel, colour)


def test_rotated_resize_uses_display_size(tmp_path: Path) -> None:
    path = write_video(tmp_path / "portrait.mp4", [quadrant_frame(32, 64, 128)] * 2, rotation=90)
    resized = next(iter_frames(path, shorter_side=16)).image
    assert resized.shape == (32, 16, 3)
    cropped = next(iter_frames(path, size=(16, 16))).image
    assert cropped.shape == (16, 16, 3)


def test_pixel_aspect_ratio_applied(tmp_path: Path, clips_dir: Path) -> None:
    path = write_video(tmp_path / "anamorphic.mp4", [quadrant_frame(32, 40, 128)] * 2, sample_aspect_ratio=Fraction(2, 1))
    info = probe(path)
    assert info.pixel_aspect == 2.0
    assert (info.display_width, info.display_height) == (80, 32)
    image = next(iter_frames(path)).image
    assert image.shape == (32, 80, 3)
    assert_close(image[0, 30], RED)
    assert_close(image[0, 50], GREEN)
    # A conformance stream whose VUI sets a pixel aspect of 80/33.
    real = probe(clips_dir / "openh264__SarVui.264")
    assert (real.width, real.display_width, real.display_height) == (176, 427, 144)


@pytest.mark.parametrize(("height", "width", "pix_fmt"), [(17, 33, "yuv444p"), (30, 50, "yuv420p")])
def test_odd_size_has_no_garbage_columns(tmp_path: Path, height: int, width: int, pix_fmt: str) -> None:
    path = write_video(tmp_path / "odd.mp4", [quadrant_frame(height, width, 200)] * 2, pix_fmt=pix_fmt)
    image = next(iter_frames(path)).image
    assert image.shape == (height, width, 3)
    # The last column is inside the right quadrants; 4:2:0 chroma blurs one pixel at the edge.
    assert_close(image[0, -1], GREEN)
    assert_close(image[-1, -1], (200, 200, 200))
    assert_close(image[-1, 0], BLUE)


def test_ten_bit_decodes_to_eight_bit(tmp_path: Path) -> None:
    path = write_video(tmp_path / "ten.mp4", [quadrant_frame(32, 48, 128)] * 2, pix_fmt="yuv420p10le")
    assert probe(path).pix_fmt == "yuv420p10le"
    image = next(iter_frames(path)).image
    assert image.dtype == np.uint8
    assert_close(image[0, 0], RED)
    assert_close(image[-1, -1], (128, 128, 128))


def test_gray_becomes_equal_channels(tmp_path: Path) -> None:
    gray = np.full((32, 48), 100, dtype=np.uint8)
    path = write_video(tmp_path / "gray.mkv", [gray] * 2, codec="ffv1", pix_fmt="gray", input_format="gray")
    assert probe(path).pix_fmt == "gray"
    image = next(iter_frames(path)).image
    assert image.shape == (32, 48, 3)
    assert np.array_equal(image, np.full((32, 48, 3), 100, dtype=np.uint8))


def test_alpha_composited_over_black(tmp_path: Path) -> None:
    rgba = np.zeros((32, 48, 4), dtype=np.uint8)
    rgba[:, :24] = (255, 0, 0, 0)  # transparent red must come out black
    rgba[:, 24:] = (200, 100, 50, 128)  # half transparent
    path = write_video(tmp_path / "alpha.mov", [rgba] * 2, codec="png", pix_fmt="rgba", input_format="rgba")
    assert probe(path).pix_fmt == "rgba"
    image = next(iter_frames(path)).image
    assert image[0, 0].tolist() == [0, 0, 0]
    assert image[0, -1].tolist() == [100, 50, 25]


def test_vfr_sampled_by_timestamps(tmp_path: Path) -> None:
    times_ms = [0, 40, 80, 120, 500, 540, 1000, 1010, 1020, 1500]
    frames = [quadrant_frame(32, 32, 20 * i) for i in range(10)]
    path = write_video(tmp_path / "vfr.mkv", frames, times_ms=times_ms)
    times = [round(decoded.time, 3) for decoded in iter_decoded(path)]
    assert times == [t / 1000 for t in times_ms]
    # 2 fps: one frame per half-second slot, the first that falls in it.
    assert [frame.index for frame in iter_frames(path, fps=2)] == [0, 4, 6, 9]
    assert [frame.index for frame in iter_frames(path, frame_stride=3)] == [0, 3, 6, 9]


def test_sampler_rejects_both_rules() -> None:
    with pytest.raises(ValueError, match="choose one"):
        FrameSampler(frame_stride=2, fps=3.0)
    with pytest.raises(ValueError, match="positive"):
        FrameSampler(fps=0.0)


def test_video_stream_found_after_audio(tmp_path: Path) -> None:
    path = write_video(tmp_path / "audio_first.mkv", [quadrant_frame(32, 64, 128)] * 3, audio_first=True)
    info = probe(path)
    assert [stream.type for stream in info.streams] == ["audio", "video"]
    assert info.has_audio
    assert count_frames(path) == (3, 3)


def test_bad_files_raise_one_error_type(tmp_path: Path, clips_dir: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    audio_only = write_audio_only(tmp_path / "audio.m4a")
    truncated = tmp_path / "truncated.mp4"
    shutil.copy(clips_dir / "elastictok__flower.mp4", truncated)
    with truncated.open("r+b") as handle:
        handle.truncate(truncated.stat().st_size // 2)

    cases = {
        tmp_path / "missing.mp4": "file not found",
        empty: "empty file",
        text: "open failed",
        audio_only: "no video stream (streams found: audio aac)",
        truncated: "open failed",
        tmp_path: "not a regular file",
    }
    for path, reason in cases.items():
        with pytest.raises(VideoDecodeError) as caught:
            probe(path)
        assert reason in caught.value.reason, path
        assert str(path) in str(caught.value)
        with pytest.raises(VideoDecodeError):
            count_frames(path)


def test_truncated_raw_stream_keeps_decodable_frames(tmp_path: Path, clips_dir: Path) -> None:
    source = clips_dir / "openh264__BA1_FT_C.264"
    truncated = tmp_path / "cut.264"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    decoded, _ = count_frames(truncated)
    assert 0 < decoded < 299


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_after_decoding_does_not_hang(clips_dir: Path) -> None:
    """A forked child (a DataLoader worker) collecting a parent's swscale context must not block."""
    with av.open(str(clips_dir / "moviepy__big_buck_bunny_432_433.webm")) as container:
        frame = next(container.decode(video=0))
    reformatter = VideoReformatter()
    reformatter.reformat(frame, format="rgb24", width=640, height=360, interpolation="AREA")
    cycle: list[object] = [reformatter]
    cycle.append(cycle)
    del reformatter, cycle, frame

    pid = os.fork()
    if pid == 0:
        gc.collect()
        os._exit(0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung while freeing the parent's swscale context")
