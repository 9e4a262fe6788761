"""`evatok inspect` on real files and folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from evatok.cli import main


def test_inspect_edge_folder(videos_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["inspect", str(videos_dir / "edge"), "--frames", "16", "--size", "64"])
    output = capsys.readouterr().out
    assert status == 1  # one file is rejected
    assert "clip spec: 16x64x64 every frame, short videos: pad" in output
    assert "undecodable/decord__corrupted.mp4\n  rejected: decoding failed after 28 frames" in output
    assert "openh264__QCIF_2P_I_allIPCM.264\n" in output
    assert "  frames: 2 decoded, 2 sampled\n  clips: 1 padded (2 of 16 frames real)" in output
    assert "summary: 12 files, 11 readable, 1 rejected, 11 short (pad), 11 clips, 1 other files ignored (suffix not a video suffix)" in output


def test_inspect_single_file_with_stride(clips_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = clips_dir / "moviepy__big_buck_bunny_432_433.webm"
    status = main(["inspect", str(path), "--frames", "8", "--size", "64x96", "--stride", "2", "--short", "skip"])
    output = capsys.readouterr().out
    assert status == 0
    assert "  video: vp8 yuv420p 1280x720, 24.000 fps" in output
    assert "  streams: #0 video vp8 1280x720 yuv420p; #1 audio vorbis 44100 Hz stereo" in output
    assert "  frames: 24 decoded, 12 sampled" in output
    assert "  clips: 1, last 4 sampled frames dropped" in output


def test_inspect_rejects_bad_options(clips_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = clips_dir / "elastictok__flower.mp4"
    assert main(["inspect", str(path), "--stride", "2", "--fps", "3"]) == 2
    assert "choose one sampling rule" in capsys.readouterr().out
    assert main(["inspect", str(clips_dir / "missing.mp4")]) == 2


def test_inspect_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import torch

    from evatok.codec import encode_video
    from evatok.models import Tokenizer
    from evatok.presets import tokenizer_config

    torch.manual_seed(0)
    model = Tokenizer(tokenizer_config("micro")).eval()
    tokens = encode_video(model, np.zeros((20, 32, 32, 3), dtype=np.uint8), (8, 4, 2, 2))
    path = tmp_path / "clip.safetensors"
    tokens.save(path)

    status = main(["inspect", str(path)])
    output = capsys.readouterr().out
    assert status == 0
    assert f"token file: {path}" in output
    assert "source frames: 20 (last clip: 4 of 16 frames real)" in output


def test_inspect_rejects_corrupt_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    status = main(["inspect", str(path)])
    output = capsys.readouterr().out
    assert status == 1
    assert "  rejected: " in output
