"""The training engine: configs, schedule, EMA, data sharding, non-finite steps and exact resume."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from evatok.training import NonFiniteLossError, Trainer, load_config
from evatok.training.ema import EMA
from evatok.training.engine import list_checkpoints, step_generator
from evatok.training.progress import read_step_log
from evatok.training.sampler import ShardedBatchSampler
from evatok.training.schedule import cosine_with_warmup_factor
from evatok.training.toy import ToyRecipe

CLI = "import sys; from evatok.cli import main; sys.exit(main(sys.argv[1:]))"

TOY_OVERRIDES = [
    "train.steps=8",
    "train.batch_size=4",
    "train.grad_accum_steps=2",
    "train.lr=1e-2",
    "train.warmup_steps=2",
    "train.ema_decay=0.9",
    "data.synthetic_samples=28",
    "run.log_every=2",
    "run.save_every=100",
    "run.progress_bar=false",
    "run.trackers=[]",
]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `evatok ARGS` in a new Python process and fail with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"evatok {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_config_overrides_and_types(tmp_path: Path) -> None:
    config = load_config(None, ["train.lr=3e-4", f"run.dir={tmp_path}", "toy.heads=2"])
    assert config.train.lr == pytest.approx(3e-4)
    assert config.run.dir == str(tmp_path)
    assert config.toy.heads == 2
    assert config.train.betas == [0.9, 0.95]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="dotted `key=value`"):
        load_config(None, ["train.lr"])
    with pytest.raises(ValueError, match="train.mixed_precision"):
        load_config(None, ["train.mixed_precision=fp8"])
    with pytest.raises(Exception, match="not_a_key"):
        load_config(None, ["train.not_a_key=1"])
    with pytest.raises(Exception, match="steps"):
        load_config(None, ["train.steps=ten"])
    with pytest.raises(FileNotFoundError, match="no_such_preset"):
        load_config("no_such_preset.yaml")


def test_schedule_warmup_and_cosine_ends() -> None:
    kwargs = {"total_steps": 110, "warmup_steps": 10, "min_ratio": 0.01}
    assert cosine_with_warmup_factor(0, **kwargs) == pytest.approx(0.1)
    assert cosine_with_warmup_factor(9, **kwargs) == pytest.approx(1.0)
    assert cosine_with_warmup_factor(10, **kwargs) == pytest.approx(1.0)
    assert cosine_with_warmup_factor(60, **kwargs) == pytest.approx(0.01 + 0.99 * 0.5)
    assert cosine_with_warmup_factor(110, **kwargs) == pytest.approx(0.01)
    assert cosine_with_warmup_factor(500, **kwargs) == pytest.approx(0.01)


def test_ema_update_and_state_round_trip() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # decay min(0.5, 1/10) = 0.1: 1 + 0.9 * (3 - 1)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 2.8))
    ema.update(model)  # decay min(0.5, 2/11)
    expected = 2.8 + (1 - 2 / 11) * (3.0 - 2.8)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), expected))

    restored = EMA(nn.Linear(2, 1, bias=False), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 2
    assert restored.decay == 0.5
    assert torch.equal(restored.model.weight, ema.model.weight)


def test_sampler_shards_without_duplicates() -> None:
    size, batch, processes = 27, 4, 2
    per_process = [
        list(ShardedBatchSampler(size, batch_size=batch, num_processes=processes, process_index=rank, seed=3, epoch=1))
        for rank in range(processes)
    ]
    assert [len(batches) for batches in per_process] == [3, 3]
    seen = [index for batches in per_process for batch in batches for index in batch]
    assert len(seen) == 24
    assert len(set(seen)) == 24
    assert all(0 <= index < size for index in seen)

    resumed = list(
        ShardedBatchSampler(size, batch_size=batch, num_processes=processes, process_index=1, seed=3, epoch=1, start_batch=2)
    )
    assert resumed == per_process[1][2:]

    next_epoch = list(ShardedBatchSampler(size, batch_size=batch, num_processes=processes, process_index=0, seed=3, epoch=2))
    assert next_epoch != per_process[0]


def test_sampler_rejects_dataset_below_one_batch() -> None:
    with pytest.raises(ValueError, match="fewer than one global batch of 8"):
        ShardedBatchSampler(7, batch_size=4, num_processes=2, process_index=0, seed=0, epoch=0)


def test_step_generator_depends_on_position() -> None:
    def draw(seed: int, step: int, micro: int, rank: int) -> list[int]:
        return torch.randint(0, 625, (16,), generator=step_generator(seed, step, micro, rank)).tolist()

    assert draw(0, 5, 0, 0) == draw(0, 5, 0, 0)
    assert draw(0, 5, 0, 0) != draw(0, 5, 0, 1)
    assert draw(0, 5, 0, 0) != draw(0, 6, 0, 0)
    assert draw(0, 5, 0, 0) != draw(0, 5, 1, 0)
    assert draw(0, 5, 0, 0) != draw(1, 5, 0, 0)


def test_nonfinite_loss_skips_step(tmp_path: Path) -> None:
    config = load_config(None, [*TOY_OVERRIDES, f"run.dir={tmp_path}", "toy.nan_steps=[3]"])
    trainer = Trainer(ToyRecipe(config), config)
    before = {}

    original_step = trainer.train_step

    def recording_step(micro_batches: list) -> dict[str, float]:
        if trainer.state.step == 3:
            before.update({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        terms = original_step(micro_batches)
        if trainer.state.step == 3:
            for key, value in trainer.model.state_dict().items():
                assert torch.equal(value, before[key]), f"{key} changed on a skipped step"
        return terms

    trainer.train_step = recording_step
    state = trainer.fit()
    records = read_step_log(tmp_path / "steps.jsonl")
    assert [r["step"] for r in records] == list(range(8))
    assert records[3]["skipped"] == 1.0
    assert math.isnan(records[3]["loss"])
    assert all(r["skipped"] == 0.0 for i, r in enumerate(records) if i != 3)
    assert state.nonfinite_total == 1
    assert state.nonfinite_in_row == 0


def test_nonfinite_losses_in_a_row_stop_run(tmp_path: Path) -> None:
    config = load_config(
        None, [*TOY_OVERRIDES, f"run.dir={tmp_path}", "toy.nan_steps=[2,3,4]", "train.max_nonfinite_in_row=3"]
    )
    trainer = Trainer(ToyRecipe(config), config)
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row"):
        trainer.fit()
    assert trainer.state.step == 5


@pytest.mark.slow
def test_resume_in_new_process_matches_straight_run(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli("train", "toy", *TOY_OVERRIDES, f"run.dir={straight}")
    run_cli("train", "toy", *TOY_OVERRIDES, f"run.dir={resumed}", "run.stop_after_steps=4")
    assert [p.name for p in list_checkpoints(resumed)] == ["step_00000004"]
    assert not (resumed / "final").exists()
    run_cli("train", "toy", *TOY_OVERRIDES, f"run.dir={resumed}")

    expected = read_step_log(straight / "steps.jsonl")
    actual = read_step_log(resumed / "steps.jsonl")
    assert [r["step"] for r in actual] == list(range(8))
    for want, got in zip(expected, actual, strict=True):
        for key in ("loss", "l1", "grad_norm", "lr"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), f"step {want['step']} {key}"

    want_ema = load_file(str(straight / "final" / "model.safetensors"))
    got_ema = load_file(str(resumed / "final" / "model.safetensors"))
    for key, value in want_ema.items():
        assert torch.allclose(got_ema[key], value, atol=1e-6), key


def test_misspelt_override_key_is_value_error() -> None:
    from evatok.training import load_config

    with pytest.raises(ValueError, match="Did you mean: 'steps'"):
        load_config("micro", ["train.stesp=60"])
