"""Whole-video encode/decode on real files, assignments per clip, and the mp4 writer."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from evatok.codec import (
    AssignmentIndex,
    ClipAssignments,
    clip_spec,
    decode_video,
    describe_token_file,
    describe_tokens,
    encode_video,
    fit_frames,
    frame_psnr,
    iter_decoded_clips,
    parse_assignment,
    reconstruct_video,
    resolve_assignment,
)
from evatok.models import Tokenizer
from evatok.presets import tokenizer_config
from evatok.tokens import TokenizedVideo
from evatok.video.clips import from_model_output, read_video
from evatok.video.io import VideoDecodeError
from evatok.video.writer import VideoWriter, side_by_side, write_video
from video_fixtures import luma_psnr, read_mp4

# 56 frames at 24 fps: three full clips of 16 frames and a tail clip with 8 real frames.
FLOWER = "elastictok__flower.mp4"
# 17 frames of raw H.264: one full clip and a tail clip with a single real frame.
ONE_FRAME_TAIL = "openh264__BA1_Sony_D.jsv"
# 10 frames, fewer than one clip.
SHORT = "short/openh264__Static.264"


@pytest.fixture(scope="module")
def micro() -> Tokenizer:
    """Return the untrained micro tokenizer (16x32x32 clips, counts 2, 4, 8) with fixed weights."""
    torch.manual_seed(0)
    return Tokenizer(tokenizer_config("micro")).eval()


@pytest.fixture(scope="module")
def flower_tokens(micro: Tokenizer, clips_dir: Path) -> TokenizedVideo:
    return encode_video(micro, clips_dir / FLOWER, (8, 4, 2, 2), batch_size=3)


def cropped_input(clips_dir: Path, name: str, model: Tokenizer) -> np.ndarray:
    """Return the real frames of a file at the model's clip size, as the codec reads them."""
    clips = read_video(clips_dir / name, clip_spec(model.config))
    return np.concatenate([clip.frames[: clip.num_valid] for clip in clips])


# ----- whole-video round trips -------------------------------------------------------------------


def test_round_trip_keeps_frame_count(micro, flower_tokens):
    tokens = flower_tokens
    assert tokens.num_clips == 4
    assert tokens.source_frames == 56
    assert tokens.fps == 24.0
    assert (tokens.frames, tokens.height, tokens.width) == (16, 32, 32)
    assert tokens.assignments.tolist() == [[8, 4, 2, 2]] * 4
    assert tokens.num_tokens == 4 * 16

    frames = decode_video(micro, tokens)
    assert frames.dtype == np.uint8
    assert frames.shape == (56, 32, 32, 3)


def test_decode_matches_model_per_clip(micro, flower_tokens):
    frames = decode_video(micro, flower_tokens, batch_size=1)
    with torch.no_grad():
        for clip in range(flower_tokens.num_clips):
            blocks = flower_tokens.padded_blocks(slice(clip, clip + 1))
            video = micro.decode(blocks, flower_tokens.assignments[clip : clip + 1])
            expected = from_model_output(video[0])
            start = clip * 16
            real = min(16, 56 - start)
            assert np.array_equal(frames[start : start + real], expected[:real]), f"clip {clip}"


def test_batch_size_does_not_change_output(micro, clips_dir):
    per_clip = [(8, 4, 2, 2), 2, AssignmentIndex(5), (2, 8, 2, 8)]
    one = encode_video(micro, clips_dir / FLOWER, per_clip, batch_size=1)
    four = encode_video(micro, clips_dir / FLOWER, per_clip, batch_size=4)
    assert torch.equal(one.ids, four.ids)
    assert torch.equal(one.assignments, four.assignments)
    alone = decode_video(micro, one, batch_size=1)
    together = decode_video(micro, one, batch_size=4)
    # A mixed-assignment batch pads shorter blocks, which changes float summation order, so a
    # value may round to the neighbouring uint8 level.
    assert np.abs(alone.astype(int) - together.astype(int)).max() <= 1


def test_tail_clip_of_one_frame(micro, clips_dir):
    tokens = encode_video(micro, clips_dir / ONE_FRAME_TAIL, 4)
    assert tokens.num_clips == 2
    assert tokens.source_frames == 17
    assert tokens.fps == 25.0
    assert decode_video(micro, tokens).shape == (17, 32, 32, 3)


def test_video_shorter_than_clip(micro, videos_dir):
    tokens = encode_video(micro, videos_dir / "edge" / SHORT, 2)
    assert tokens.num_clips == 1
    assert tokens.source_frames == 10
    assert decode_video(micro, tokens).shape == (10, 32, 32, 3)


def test_frame_stride_halves_frames(micro, clips_dir):
    tokens = encode_video(micro, clips_dir / FLOWER, 2, frame_stride=2)
    assert tokens.source_frames == 28
    assert tokens.num_clips == 2
    assert tokens.fps == 12.0
    assert decode_video(micro, tokens).shape == (28, 32, 32, 3)


def test_frames_input_matches_file(micro, clips_dir, flower_tokens):
    frames = cropped_input(clips_dir, FLOWER, micro)
    assert frames.shape == (56, 32, 32, 3)
    tokens = encode_video(micro, frames, (8, 4, 2, 2), source_fps=24.0)
    assert torch.equal(tokens.ids, flower_tokens.ids)
    assert torch.equal(tokens.assignments, flower_tokens.assignments)
    assert tokens.source_frames == 56
    assert tokens.fps == 24.0
    from_tensor = encode_video(micro, torch.from_numpy(frames), (8, 4, 2, 2))
    assert torch.equal(from_tensor.ids, flower_tokens.ids)
    assert from_tensor.fps is None


def test_fit_frames_crops_centre():
    # Thirds of a 32x96 frame: red, green, blue. Covering 32x32 keeps the scale, so the
    # centre crop is exactly the green third.
    frames = np.zeros((3, 32, 96, 3), dtype=np.uint8)
    frames[:, :, :32] = (200, 0, 0)
    frames[:, :, 32:64] = (0, 200, 0)
    frames[:, :, 64:] = (0, 0, 200)
    fitted = fit_frames(frames, 32, 32)
    assert fitted.shape == (3, 32, 32, 3)
    assert np.all(fitted == np.array([0, 200, 0], dtype=np.uint8))


def test_fit_frames_resizes_flat_frames():
    shrunk = fit_frames(np.full((2, 48, 80, 3), 77, dtype=np.uint8), 32, 32)
    assert shrunk.shape == (2, 32, 32, 3)
    assert np.all(shrunk == 77)
    enlarged = fit_frames(np.full((1, 10, 20, 3), 150, dtype=np.uint8), 32, 32)
    assert enlarged.shape == (1, 32, 32, 3)
    assert np.all(enlarged == 150)


def test_in_memory_frames_of_other_size(micro):
    frames = np.full((20, 48, 80, 3), 90, dtype=np.uint8)
    tokens = encode_video(micro, frames, 4, source_fps=30.0, frame_stride=2)
    assert tokens.source_frames == 10
    assert tokens.fps == 15.0
    assert decode_video(micro, tokens).shape == (10, 32, 32, 3)


def test_iter_decoded_clips_yields_real_frames(micro, flower_tokens):
    sizes = [len(frames) for frames in iter_decoded_clips(micro, flower_tokens, batch_size=2)]
    assert sizes == [16, 16, 16, 8]


def test_model_training_flag_restored(micro, clips_dir):
    micro.train()
    try:
        encode_video(micro, clips_dir / ONE_FRAME_TAIL, 2)
        assert micro.training
    finally:
        micro.eval()


# ----- assignments -------------------------------------------------------------------------------


def test_per_clip_assignments(micro, clips_dir):
    space = micro.config.space
    tokens = encode_video(micro, clips_dir / FLOWER, [(8, 4, 2, 2), 2, AssignmentIndex(5), (2, 8, 2, 8)])
    assert tokens.assignments.tolist() == [
        [8, 4, 2, 2],
        [2, 2, 2, 2],
        list(space.assignment(5)),
        [2, 8, 2, 8],
    ]
    assert space.assignment(5) == (2, 2, 4, 8)
    assert tokens.num_tokens == 16 + 8 + 16 + 20


def test_per_clip_assignment_count_checked(micro, clips_dir):
    with pytest.raises(ValueError, match="got 3 per-clip assignments, but the video has more clips"):
        encode_video(micro, clips_dir / FLOWER, [2, 2, AssignmentIndex(0)])
    with pytest.raises(ValueError, match="got 5 per-clip assignments, but the video has 4 clips"):
        encode_video(micro, clips_dir / FLOWER, [(2, 2, 2, 2)] * 5)
    # A flat sequence of ints is always one assignment, never one uniform count per clip.
    with pytest.raises(ValueError, match="has 3 blocks, expected 4"):
        encode_video(micro, clips_dir / FLOWER, [2, 2, 2])


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ((8, 4, 2), "has 3 blocks, expected 4"),
        ((8, 4, 2, 3), "count 3 at block 3, which is not a candidate"),
        (5, "uniform token count 5 is not a candidate"),
        (AssignmentIndex(81), "index 81 is out of range"),
        ([], "the assignment is empty"),
    ],
)
def test_invalid_assignments_rejected(micro, choice, message):
    with pytest.raises(ValueError, match=message):
        ClipAssignments(micro.config.space, choice)


def test_resolve_assignment_forms(micro):
    space = micro.config.space
    assert resolve_assignment(space, (8, 4, 2, 2)) == (8, 4, 2, 2)
    assert resolve_assignment(space, 4) == (4, 4, 4, 4)
    assert resolve_assignment(space, AssignmentIndex(0)) == (2, 2, 2, 2)
    assert resolve_assignment(space, AssignmentIndex(80)) == (8, 8, 8, 8)


def test_parse_assignment_text(micro):
    space = micro.config.space
    assert parse_assignment("8,4,2,2", space) == (8, 4, 2, 2)
    assert parse_assignment("4", space) == (4, 4, 4, 4)
    assert parse_assignment("index:5", space) == (2, 2, 4, 8)
    assert parse_assignment("8,8,8,8; 4;index:2", space) == [(8, 8, 8, 8), (4, 4, 4, 4), (2, 2, 2, 8)]
    # Per-clip uniform counts stay one assignment per clip.
    assert parse_assignment("2;4", space) == [(2, 2, 2, 2), (4, 4, 4, 4)]
    for text in ("", "a,b", "index:x", "8,,8"):
        with pytest.raises(ValueError, match="invalid assignment"):
            parse_assignment(text, space)
    with pytest.raises(ValueError, match="not a candidate"):
        parse_assignment("8;3", space)


# ----- errors ------------------------------------------------------------------------------------


def test_decode_rejects_other_geometry(flower_tokens):
    other = Tokenizer(tokenizer_config("micro", ["tokenizer.height=64", "tokenizer.width=64"]))
    with pytest.raises(ValueError, match="clips of 16x32x32 instead of 16x64x64"):
        decode_video(other, flower_tokens)
    bigger_codebook = Tokenizer(tokenizer_config("micro", ["tokenizer.codebook_size=128"]))
    with pytest.raises(ValueError, match="codebook size 64 instead of 128"):
        decode_video(bigger_codebook, flower_tokens)


def test_missing_and_undecodable_files(micro, tmp_path, videos_dir):
    with pytest.raises(ValueError, match="not found"):
        encode_video(micro, tmp_path / "missing.mp4", 2)
    with pytest.raises(VideoDecodeError):
        encode_video(micro, videos_dir / "edge" / "undecodable" / "decord__corrupted.mp4", 2)
    with pytest.raises(ValueError, match="sample_fps needs frame timestamps"):
        encode_video(micro, np.zeros((4, 32, 32, 3), dtype=np.uint8), 2, sample_fps=3.0)
    with pytest.raises(ValueError, match="expected uint8 RGB frames"):
        encode_video(micro, np.zeros((4, 32, 32, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match="no frames to encode"):
        encode_video(micro, np.zeros((0, 32, 32, 3), dtype=np.uint8), 2)


# ----- reconstruction and description ------------------------------------------------------------


def test_reconstruct_writes_side_by_side(micro, clips_dir, tmp_path):
    out = tmp_path / "flower.mp4"
    result = reconstruct_video(micro, clips_dir / FLOWER, (8, 4, 2, 2), out=out, batch_size=3, crf=0)
    assert result.num_frames == 56
    assert result.fps == 24.0
    assert result.tokens.source_frames == 56

    written = read_mp4(out)
    assert written.shape == (56, 32, 64, 3)
    original = cropped_input(clips_dir, FLOWER, micro)
    reconstruction = decode_video(micro, result.tokens, batch_size=3)
    # crf 0 is lossless in YUV, but yuv420p stores colour at half resolution. That blurs the
    # noise-like output of an untrained model, so compare luma (BT.601 weights), which is kept.
    assert luma_psnr(written[:, :, :32], original) > 35.0
    assert luma_psnr(written[:, :, 32:], reconstruction) > 35.0
    expected_psnr = float(frame_psnr(original, reconstruction).mean())
    assert result.psnr_db == pytest.approx(expected_psnr, abs=1e-9)


def test_describe_token_file(flower_tokens, tmp_path):
    path = tmp_path / "flower.safetensors"
    flower_tokens.save(path)
    text = describe_token_file(path)
    assert f"token file: {path}" in text
    assert "clips: 4 of 16x32x32 (frames x height x width), 24 fps, center crop" in text
    assert "source frames: 56 (last clip: 8 of 16 frames real)" in text
    assert "assignment: (8, 4, 2, 2) for every clip" in text
    assert "tokens: 16 per clip, 64 in all" in text
    assert "codebook size: 64" in text


def test_describe_mixed_assignments(micro):
    tokens = encode_video(micro, np.zeros((40, 32, 32, 3), dtype=np.uint8), [2, 4, (8, 2, 2, 2)])
    lines = "\n".join(describe_tokens(tokens))
    assert "assignments: 3 distinct; clip 0: (2, 2, 2, 2), clip 1: (4, 4, 4, 4)" in lines
    assert "tokens: 8 to 16 per clip, mean 12.7, 38 in all" in lines
    assert "unknown fps" in lines


# ----- writer ------------------------------------------------------------------------------------


def test_writer_pads_odd_sizes(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(7, 33, 21, 3), dtype=np.uint8)
    assert write_video(tmp_path / "odd.mp4", frames, fps=30000 / 1001) == 7
    with av.open(str(tmp_path / "odd.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(30000, 1001)
        assert stream.codec_context.pix_fmt == "yuv420p"
    assert read_mp4(tmp_path / "odd.mp4").shape == (7, 34, 22, 3)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "out.mp4", 25)
    with pytest.raises(ValueError, match="positive number of frames per second"):
        VideoWriter(tmp_path / "out.mp4", 0)
    with pytest.raises(ValueError, match="all frames need one size"):
        with VideoWriter(tmp_path / "sizes.mp4", 25) as writer:
            writer.write(np.zeros((16, 16, 3), dtype=np.uint8))
            writer.write(np.zeros((16, 18, 3), dtype=np.uint8))
    assert not (tmp_path / "sizes.mp4").exists()
    with pytest.raises(ValueError, match="no frame was written"):
        write_video(tmp_path / "empty.mp4", [], fps=25)
    assert not (tmp_path / "empty.mp4").exists()


def test_side_by_side_shapes():
    left = np.zeros((2, 4, 6, 3), dtype=np.uint8)
    right = np.full((2, 4, 6, 3), 255, dtype=np.uint8)
    joined = side_by_side(left, right)
    assert joined.shape == (2, 4, 12, 3)
    assert np.all(joined[:, :, :6] == 0)
    assert np.all(joined[:, :, 6:] == 255)
    with pytest.raises(ValueError, match="differ in shape"):
        side_by_side(left, right[:, :, :5])
