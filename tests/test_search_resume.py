"""`evatok search` end to end: SIGKILL at several moments then resume, and two processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evatok.search import LabelStore

VIDEOS = ("clips/elastictok__flower.mp4", "clips/infotok__0_360p.mp4")  # 3 clips each at 16 frames
RUN_MAIN = "import sys; from evatok.cli import main; sys.exit(main())"
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def video_folder(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for name in VIDEOS:
        (folder / Path(name).name).symlink_to(videos_dir / name)
    return folder


def search_args(videos: Path, out: Path) -> list[str]:
    return [
        "search", "--proxy", "preset:micro", "--videos", str(videos), "--out", str(out),
        "--strategy", "prefix", "--clips-per-shard", "1", "--stats-pairs", "8", "--batch-size", "8",
        "--threads", "1", "--no-progress",
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_to_end(videos: Path, out: Path) -> None:
    command = [sys.executable, "-c", RUN_MAIN, *search_args(videos, out)]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def reference(video_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("reference") / "labels"
    run_to_end(video_folder, out)
    return LabelStore(out).read()


def shard_files(store: LabelStore) -> dict[str, tuple[int, int]]:
    """Return (inode, mtime_ns) of every finished shard."""
    files = {}
    for path in store.shards_dir.glob("*.parquet"):
        stat = path.stat()
        files[path.name] = (stat.st_ino, stat.st_mtime_ns)
    return files


def kill_when(videos: Path, out: Path, ready) -> bool:
    """Start a search, SIGKILL it once ``ready()`` holds; return whether it was still running."""
    command = [sys.executable, "-c", RUN_MAIN, *search_args(videos, out)]
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while process.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        running = process.poll() is None
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    return running


def assert_same_rows(frame, reference) -> None:
    assert frame["clip_key"].tolist() == reference["clip_key"].tolist()
    assert frame["assignment_index"].tolist() == reference["assignment_index"].tolist()
    for column in ("lpips", "mse", "psnr"):
        assert np.abs(frame[column].to_numpy() - reference[column].to_numpy()).max() < 1e-6, column


@pytest.mark.slow
def test_search_resumes_after_sigkill(video_folder: Path, tmp_path: Path, reference) -> None:
    out = tmp_path / "labels"
    store = LabelStore(out)

    # Kill during start-up: as soon as the reward statistics exist, before or at the first shard.
    kill_when(video_folder, out, lambda: store.stats_path.is_file())
    kept = shard_files(store)

    # Kill in the middle: once two more shards than before are finished.
    killed_mid_run = kill_when(video_folder, out, lambda: len(shard_files(store)) >= len(kept) + 2)
    assert killed_mid_run, "the search finished before it could be killed"
    kept = shard_files(store)
    assert 2 <= len(kept) < 6

    run_to_end(video_folder, out)

    after = shard_files(store)
    for name, identity in kept.items():
        assert after[name] == identity, f"finished shard {name} was rewritten"
    assert len(after) == 6
    assert not list(store.shards_dir.glob("*.tmp"))
    assert not list(store.index_dir.glob("*.tmp"))
    frame = store.read()
    assert not frame.duplicated(["clip_key", "assignment_index"]).any()
    assert_same_rows(frame, reference)


@pytest.mark.slow
def test_search_two_processes_equal_one(video_folder: Path, tmp_path: Path, reference) -> None:
    out = tmp_path / "labels"
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.is_file():
        pytest.skip(f"accelerate launcher not found at {launcher}")
    script = tmp_path / "evatok_main.py"
    script.write_text(RUN_MAIN + "\n")
    command = [
        # Accelerate 1.16 starts a single process for `--cpu --num_processes 2`; `--multi_gpu`
        # with no visible GPU starts two CPU processes on the gloo backend.
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *search_args(video_folder, out),
    ]
    env = {**environment(), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    store = LabelStore(out)
    names = store.shard_names()
    assert {name.split("-")[1] for name in names} == {"0000", "0001"}
    assert len(names) == 6
    assert_same_rows(store.read(), reference)
