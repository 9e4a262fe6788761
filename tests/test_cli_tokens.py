"""`evatok encode`, `decode` and `reconstruct` on real clips, across processes, and their errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch

from evatok.cli import main
from evatok.cli.tokens import load_tokenizer
from evatok.codec import decode_video, encode_video
from evatok.models import Tokenizer
from evatok.presets import tokenizer_config
from evatok.tokens import TokenizedVideo
from video_fixtures import luma_psnr, read_mp4

# 56 frames at 24 fps: three full clips of 16 frames and a tail clip with 8 real frames.
FLOWER = "elastictok__flower.mp4"
# 49 frames at 24 fps: three full clips and a tail clip with 1 real frame.
BRIDGE = "infotok__bridgev2_datacol2_toykitchen7_pnp_push_sweep_01.mp4"

RUN_CLI = "import sys; from evatok.cli import main; sys.exit(main(sys.argv[1:]))"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    """Run `evatok ARGS` in a new Python process."""
    return subprocess.run(
        [sys.executable, "-c", RUN_CLI, *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Return a folder with a micro tokenizer written by save_pretrained."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(3)
    Tokenizer(tokenizer_config("micro")).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_encode_and_decode_in_separate_processes(checkpoint, clips_dir, tmp_path):
    tokens_path = tmp_path / "flower.safetensors"
    encoded = run_cli("encode", clips_dir / FLOWER, "--tokenizer", checkpoint, "--assignment", "8,4,2,2",
                      "--out", tokens_path)
    assert encoded.returncode == 0, encoded.stderr
    assert "source frames: 56 (last clip: 8 of 16 frames real)" in encoded.stdout
    assert "UNTRAINED" not in encoded.stderr

    video_path = tmp_path / "flower.mp4"
    decoded = run_cli("decode", tokens_path, "--tokenizer", checkpoint, "--out", video_path, "--crf", "0")
    assert decoded.returncode == 0, decoded.stderr
    assert "56 frames of 32x32" in decoded.stdout

    model = Tokenizer.from_pretrained(str(checkpoint))
    tokens = TokenizedVideo.load(tokens_path)
    expected_tokens = encode_video(model, clips_dir / FLOWER, (8, 4, 2, 2))
    assert torch.equal(tokens.ids, expected_tokens.ids)
    assert tokens.source_frames == 56
    written = read_mp4(video_path)
    assert written.shape == (56, 32, 32, 3)
    # crf 0 keeps luma exactly, but yuv420p halves colour resolution, so compare luma.
    assert luma_psnr(written, decode_video(model, tokens)) > 35.0


def test_reconstruct_writes_side_by_side(clips_dir, tmp_path, capsys):
    out = tmp_path / "bridge.mp4"
    tokens_out = tmp_path / "bridge.safetensors"
    status = main(["reconstruct", str(clips_dir / BRIDGE), "--tokenizer", "preset:micro",
                   "--assignment", "4", "--out", str(out), "--tokens-out", str(tokens_out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "UNTRAINED" in captured.err
    assert "PSNR" in captured.out
    assert "over 49 frames, 4 clips, 16 tokens per clip" in captured.out

    written = read_mp4(out)
    assert written.shape == (49, 32, 64, 3)
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == 24
    tokens = TokenizedVideo.load(tokens_out)
    assert tokens.source_frames == 49
    assert tokens.assignments.tolist() == [[4, 4, 4, 4]] * 4


def test_reconstruct_several_videos(clips_dir, tmp_path, capsys):
    videos = [clips_dir / FLOWER, clips_dir / BRIDGE]
    status = main(["reconstruct", *map(str, videos), "--tokenizer", "preset:micro",
                   "--out", str(tmp_path), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.count("PSNR") == 3  # one line per video and the summary
    assert "summary: 2 of 2 videos reconstructed, mean PSNR" in captured.out
    assert read_mp4(tmp_path / "elastictok__flower.mp4").shape == (56, 32, 64, 3)
    assert len(read_mp4(tmp_path / f"{Path(BRIDGE).stem}.mp4")) == 49


def test_preset_weights_follow_seed():
    first, untrained = load_tokenizer("preset:micro", seed=0)
    second, _ = load_tokenizer("preset:micro", seed=0)
    other, _ = load_tokenizer("preset:micro", seed=1)
    assert untrained
    weights = first.patch_embedding.weight
    assert torch.equal(weights, second.patch_embedding.weight)
    assert not torch.equal(weights, other.patch_embedding.weight)


def test_load_tokenizer_from_checkpoint(checkpoint):
    from_folder, untrained = load_tokenizer(str(checkpoint))
    from_file, _ = load_tokenizer(str(checkpoint / "model.safetensors"))
    assert not untrained
    assert not from_folder.training
    assert torch.equal(from_folder.head.weight, from_file.head.weight)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["encode", "{missing}", "--out", "{out}"], "video file .*missing.mp4 not found"),
        (["encode", "{flower}", "--assignment", "8,4,2", "--out", "{out}"], "has 3 blocks, expected 4"),
        (["encode", "{flower}", "--assignment", "8,4,2,3", "--out", "{out}"],
         "count 3 at block 3, which is not a candidate: choose one of \\(2, 4, 8\\)"),
        (["encode", "{flower}", "--assignment", "index:81", "--out", "{out}"], "index 81 is out of range"),
        (["encode", "{flower}", "--out", "{tmp}/no/such/folder/out.safetensors"], "does not exist; create it"),
        (["reconstruct", "{flower}", "--assignment", "2;4", "--out", "{tmp}/r.mp4"],
         "got 2 per-clip assignments, but the video has more clips"),
        (["decode", "{tmp}/none.safetensors", "--out", "{tmp}/d.mp4"], "token file .*none.safetensors not found"),
    ],
)
def test_invalid_input_reported(arguments, message, clips_dir, tmp_path, capsys):
    values = {
        "missing": str(tmp_path / "missing.mp4"),
        "flower": str(clips_dir / FLOWER),
        "out": str(tmp_path / "out.safetensors"),
        "tmp": str(tmp_path),
    }
    argv = [argument.format(**values) for argument in arguments] + ["--tokenizer", "preset:micro"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert not (tmp_path / "r.mp4").exists()


def test_tokens_of_another_geometry_rejected(clips_dir, tmp_path, capsys):
    tokens = tmp_path / "micro.safetensors"
    assert main(["encode", str(clips_dir / FLOWER), "--tokenizer", "preset:micro", "--out", str(tokens)]) == 0
    status = main(["decode", str(tokens), "--tokenizer", "preset:tiny", "--out", str(tmp_path / "d.mp4")])
    error = capsys.readouterr().err
    assert status == 2
    assert f"token file {tokens}: the tokens were encoded by another tokenizer" in error
    assert "clips of 16x32x32 instead of 16x64x64" in error
    assert "decode them with the tokenizer that encoded them" in error
    assert not (tmp_path / "d.mp4").exists()


def test_missing_tokenizer_and_bad_files(clips_dir, videos_dir, tmp_path, capsys):
    out = str(tmp_path / "out.safetensors")
    assert main(["encode", str(clips_dir / FLOWER), "--tokenizer", str(tmp_path / "none"), "--out", out]) == 2
    assert "not found: give a folder written by save_pretrained" in capsys.readouterr().err

    assert main(["encode", str(clips_dir / FLOWER), "--tokenizer", str(tmp_path), "--out", out]) == 2
    assert "has no model.safetensors" in capsys.readouterr().err

    assert main(["encode", str(clips_dir / FLOWER), "--tokenizer", "preset:nope", "--out", out]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err

    corrupt = videos_dir / "edge" / "undecodable" / "decord__corrupted.mp4"
    assert main(["encode", str(corrupt), "--tokenizer", "preset:micro", "--out", out]) == 1
    assert "decoding failed" in capsys.readouterr().err

    status = main(["encode", str(clips_dir / FLOWER), "--tokenizer", "preset:micro", "--assignment", "a,b", "--out", out])
    assert status == 2
    assert "invalid assignment 'a,b'" in capsys.readouterr().err
