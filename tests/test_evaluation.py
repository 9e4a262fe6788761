"""`evatok eval`: assignment rules and a reconstruction run of a small tokenizer on real clips."""

from __future__ import annotations

import json

import pytest
import torch

from evatok.assignment import AssignmentSpace
from evatok.cli import main as cli_main
from evatok.evaluation import AssignmentRule, _fvd_plan
from evatok.models.tokenizer import Tokenizer
from evatok.presets import tokenizer_config

CLIPS = ["decord__flipping_a_pancake.mkv", "elastictok__flower.mp4"]


def test_rule_parses_uniform_and_tuple():
    space = AssignmentSpace(candidates=(32, 64, 128, 256, 512), num_blocks=4)
    assert AssignmentRule.parse("uniform:256", space) == AssignmentRule(
        "uniform", (256, 256, 256, 256)
    )
    assert AssignmentRule.parse("128", space).counts == (128, 128, 128, 128)
    assert AssignmentRule.parse("32,64,128,512", space) == AssignmentRule(
        "fixed", (32, 64, 128, 512)
    )


def test_rule_rejects_invalid_counts():
    space = AssignmentSpace(candidates=(32, 64, 128, 256, 512), num_blocks=4)
    with pytest.raises(ValueError, match="invalid assignment rule"):
        AssignmentRule.parse("many", space)
    with pytest.raises(ValueError):
        AssignmentRule.parse("32,64,100,512", space)


def test_fvd_plan_states_reason():
    assert _fvd_plan(None, 16, 100, 8) == (False, "disabled")
    sentinel = object()
    assert _fvd_plan(sentinel, 8, 100, 8)[1] == "clips have 8 frames; FVD uses 16"
    assert _fvd_plan(sentinel, 16, 3, 8)[1] == "only 3 clips; rFVD needs at least 8"
    assert _fvd_plan(sentinel, 16, 8, 8) == (True, "computed")


@pytest.mark.slow
def test_eval_command_writes_metrics(tmp_path, clips_dir, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in CLIPS:
        (videos / name).symlink_to(clips_dir / name)
    torch.manual_seed(0)
    Tokenizer(tokenizer_config("micro")).save_pretrained(tmp_path / "checkpoint")
    out = tmp_path / "result.json"

    with pytest.warns(UserWarning, match="only 2 samples"):
        status = cli_main(
            [
                "eval",
                str(tmp_path / "checkpoint"),
                str(videos),
                "--assignment",
                "2,4,8,8",
                "--max-clips-per-video",
                "1",
                "--fvd-min-clips",
                "2",
                "--split",
                "test-clips",
                "--out",
                str(out),
            ]
        )
    assert status == 0
    printed = capsys.readouterr().out
    assert "| clips | PSNR (dB) | SSIM | LPIPS | rFVD | tokens per clip |" in printed

    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["clips"] == 2
    assert summary["tokens"] == 22.0
    assert 0.0 < summary["psnr"] < 60.0
    assert -1.0 <= summary["ssim"] <= 1.0
    assert summary["lpips"] > 0.0
    assert summary["rfvd"] > 0.0
    assert [row["path"].split("/")[-1] for row in result["clips"]] == CLIPS
    assert [row["assignment"] for row in result["clips"]] == [[2, 4, 8, 8], [2, 4, 8, 8]]
    protocol = result["protocol"]
    assert protocol["assignment"] == "fixed (2, 4, 8, 8)"
    assert protocol["fvd"]["split"] == "test-clips"
    assert protocol["fvd"]["frames"] == 16
    assert protocol["fvd"]["weights_sha256"]
    assert protocol["lpips"]["network"] == "lpips-alex"
