"""Clips: counts from decoded frames, short-video policy, crops, whole videos and tensor layout."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from evatok.video import (
    ClipSpec,
    from_model_output,
    index_clips,
    iter_clips,
    read_clip,
    read_video,
    to_model_input,
)
from video_fixtures import write_video


def numbered_frames(count: int, height: int = 32, width: int = 48) -> list[np.ndarray]:
    """Return flat grey frames whose value encodes their number (10, 20, 30, ...)."""
    return [np.full((height, width, 3), 10 * (i + 1), dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="module")
def twenty_frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("clips") / "twenty.mp4", numbered_frames(20))


def frame_values(frames: np.ndarray) -> list[int]:
    """Return each frame's grey level rounded to the nearest 10 (YUV conversion moves it by 1-2)."""
    return [10 * int(round(frame.mean() / 10)) for frame in frames]


def test_clip_spec_validation() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        ClipSpec(num_frames=0)
    with pytest.raises(ValueError, match="short_policy"):
        ClipSpec(short_policy="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="choose one"):
        ClipSpec(frame_stride=2, fps=4.0)


def test_clips_hold_consecutive_sampled_frames(twenty_frames: Path) -> None:
    spec = ClipSpec(num_frames=4, height=16, width=16, frame_stride=2)
    clips = list(iter_clips(twenty_frames, spec))
    # 10 sampled frames make two full clips; the 2-frame tail is dropped.
    assert len(clips) == 2
    assert clips[0].frames.shape == (4, 16, 16, 3)
    assert clips[0].frame_indices == [0, 2, 4, 6]
    assert clips[1].frame_indices == [8, 10, 12, 14]
    assert frame_values(clips[1].frames) == [90, 110, 130, 150]
    assert clips[1].start_time == pytest.approx(8 / 25)
    assert clips[0].fps == pytest.approx(12.5)


def test_read_video_pads_tail_and_keeps_count(twenty_frames: Path) -> None:
    spec = ClipSpec(num_frames=8, height=16, width=16)
    clips = read_video(twenty_frames, spec)
    assert [clip.num_valid for clip in clips] == [8, 8, 4]
    assert sum(clip.num_valid for clip in clips) == 20
    tail = clips[-1]
    assert frame_values(tail.frames) == [170, 180, 190, 200, 200, 200, 200, 200]
    assert tail.valid_mask.tolist() == [True] * 4 + [False] * 4


def test_index_matches_iterated_clips(twenty_frames: Path) -> None:
    spec = ClipSpec(num_frames=6, height=16, width=16)
    index = index_clips(twenty_frames, spec)
    assert (index.decoded_frames, index.sampled_frames, index.num_clips) == (20, 20, 3)
    assert index.num_clips == len(list(iter_clips(twenty_frames, spec)))
    with_tail = index_clips(twenty_frames, spec, include_tail=True)
    assert with_tail.num_clips == len(read_video(twenty_frames, spec)) == 4
    assert with_tail.num_valid(3) == 2


def test_read_clip_by_number(twenty_frames: Path) -> None:
    spec = ClipSpec(num_frames=4, height=16, width=16)
    clip = read_clip(twenty_frames, spec, 3)
    assert clip.clip_number == 3
    assert clip.frame_indices == [12, 13, 14, 15]
    with pytest.raises(IndexError):
        read_clip(twenty_frames, spec, 5)


def test_short_video_policy_pad_and_skip(tmp_path: Path, videos_dir: Path) -> None:
    short = videos_dir / "edge" / "short" / "openh264__Static.264"  # 10 frames
    padded = list(iter_clips(short, ClipSpec(num_frames=16, height=32, width=32)))
    assert len(padded) == 1
    assert padded[0].num_valid == 10
    assert np.array_equal(padded[0].frames[10], padded[0].frames[15])
    skip = ClipSpec(num_frames=16, height=32, width=32, short_policy="skip")
    assert list(iter_clips(short, skip)) == []
    assert read_video(short, skip) == []
    index = index_clips(short, skip)
    assert (index.short, index.num_clips) == (True, 0)


def test_resize_covers_then_center_crops(tmp_path: Path) -> None:
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 20:60] = 255  # only the centre half is white
    path = write_video(tmp_path / "wide.mp4", [image] * 4)
    clip = next(iter_clips(path, ClipSpec(num_frames=4, height=20, width=20)))
    # 40x80 shrinks to 20x40, and the centred 20x20 window is the white band.
    assert clip.frames.shape == (4, 20, 20, 3)
    assert clip.frames[:, :, 1:-1].min() >= 250


def test_random_crop_is_seeded(tmp_path: Path) -> None:
    image = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (32, 1, 3))
    path = write_video(tmp_path / "ramp.mp4", [image] * 2)
    spec = ClipSpec(num_frames=2, height=32, width=16, crop="random")
    first = read_clip(path, spec, 0, rng=np.random.default_rng(7)).frames
    again = read_clip(path, spec, 0, rng=np.random.default_rng(7)).frames
    assert np.array_equal(first, again)
    lefts = {int(read_clip(path, spec, 0, rng=np.random.default_rng(s)).frames[0, 0, 0, 0]) for s in range(8)}
    assert len(lefts) > 1
    with pytest.raises(ValueError, match="rng"):
        read_clip(path, spec, 0)


def test_model_tensor_round_trip() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    tensor = to_model_input(frames)
    assert tensor.shape == (3, 4, 8, 8)
    assert tensor.dtype == torch.float32
    assert tensor.min() >= -1.0
    assert tensor.max() <= 1.0
    assert np.array_equal(from_model_output(tensor), frames)
    assert from_model_output(torch.full((3, 1, 1, 1), 5.0)).tolist() == [[[[255, 255, 255]]]]
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(frames.astype(np.float32))


def test_memory_flat_in_video_length(clips_dir: Path) -> None:
    """Streaming 720 frames of 1280x720 keeps about one clip in memory at a time, not the whole video."""
    path = clips_dir / "moviepy__big_buck_bunny_0_30.webm"
    spec = ClipSpec(num_frames=8, height=64, width=64, frame_stride=4)
    tracemalloc.start()
    count = sum(1 for _ in iter_clips(path, spec))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 22  # 180 sampled frames
    # One 1280x720 RGB frame is 2.7 MB; the whole video would be about 2 GB.
    assert peak < 12 * 2**20
