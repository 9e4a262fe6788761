"""The training loop on Accelerate: one code path for one CPU process and for many GPUs or nodes."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from evatok.training.config import save_resolved_config
from evatok.training.ema import EMA
from evatok.training.progress import MeanMeter, ProgressBar, StepLog, flatten_for_tracker
from evatok.training.recipe import LossOutput, Recipe, StepContext
from evatok.training.sampler import ShardedBatchSampler
from evatok.training.schedule import build_scheduler
from evatok.training.state import TrainState

logger = logging.getLogger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"


class NonFiniteLossError(RuntimeError):
    """Raised when too many optimizer steps in a row had a non-finite loss or gradient."""


def step_generator(seed: int, step: int, micro_step: int, process_index: int) -> torch.Generator:
    """Return a generator seeded only by its position in the run, so a resume draws the same values."""
    sequence = np.random.SeedSequence([seed, step, micro_step, process_index])
    return torch.Generator().manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Return the complete checkpoints of a run folder, oldest first."""
    folder = run_dir / CHECKPOINTS_DIRNAME
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def use_cpu(device: str) -> bool:
    """Return whether to force the CPU: on request, or when torch finds no accelerator device."""
    if device == "cpu":
        return True
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None:
        return not accelerator_api.is_available()
    return not torch.cuda.is_available()


def warn_if_launch_started_one_process(num_processes: int) -> None:
    """Warn when `accelerate launch --cpu --num_processes N` started a single process.

    Accelerate 1.16 starts several CPU processes only through mpirun (--mpirun_hostfile). Without
    it, it sets MASTER_ADDR and runs one plain process, which would silently train alone.
    """
    launched_for_several = "MASTER_ADDR" in os.environ and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    started_by_a_launcher = any(
        key in os.environ for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    )
    if num_processes == 1 and launched_for_several and not started_by_a_launcher:
        logger.warning(
            "accelerate launch --cpu started only one process (it needs mpirun for more); for N CPU "
            "processes use `torchrun --nproc_per_node N $(which evatok) train ...` or "
            "`accelerate launch --multi_gpu --num_processes N $(which evatok) train ... train.device=cpu`"
        )


class Trainer:
    """Trains a recipe's model (and optional discriminator) with AdamW, EMA and exact resume."""

    def __init__(self, recipe: Recipe, config: DictConfig) -> None:
        self.recipe = recipe
        self.config = config
        self.run_dir = Path(config.run.dir)
        train = config.train
        self.accelerator = Accelerator(
            cpu=use_cpu(train.device),
            mixed_precision=train.mixed_precision,
            log_with=list(config.run.trackers) or None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=train.find_unused_parameters)],
            # The scheduler counts optimizer steps of the whole job, not steps times processes.
            step_scheduler_with_optimizer=False,
        )
        warn_if_launch_started_one_process(self.accelerator.num_processes)
        # Same initial weights on every process; data order and per-step draws have their own seeds.
        set_seed(train.seed)
        self.state = TrainState()
        self._build()

    def _build(self) -> None:
        train = self.config.train
        accelerator = self.accelerator
        model = self.recipe.build_model()
        self.ema = EMA(model, train.ema_decay) if train.ema_decay > 0 else None
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay
        )
        scheduler = build_scheduler(
            optimizer, total_steps=train.steps, warmup_steps=train.warmup_steps, peak_lr=train.lr, min_lr=train.min_lr
        )
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)

        discriminator = self.recipe.build_discriminator()
        self.discriminator = None
        if discriminator is not None:
            disc_lr = train.disc_lr if train.disc_lr is not None else train.lr
            disc_optimizer = torch.optim.AdamW(
                # A semantic discriminator contains a frozen encoder, and only its heads train.
                [p for p in discriminator.parameters() if p.requires_grad], lr=disc_lr, betas=tuple(train.betas), weight_decay=train.weight_decay
            )
            self.discriminator, self.disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)

        if self.ema is not None:
            self.ema.model.to(accelerator.device)
            accelerator.register_for_checkpointing(self.ema)
        accelerator.register_for_checkpointing(self.state)
        self.dataset: Dataset = self.recipe.build_dataset()

    # ----- data -----

    def _batches(self) -> Iterator[Any]:
        """Yield micro-batches forever, advancing the data position in the train state."""
        train = self.config.train
        while True:
            # Datasets with random crops seed them by epoch; workers copy the dataset per epoch.
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.state.epoch)
            sampler = ShardedBatchSampler(
                len(self.dataset),
                batch_size=train.batch_size,
                num_processes=self.accelerator.num_processes,
                process_index=self.accelerator.process_index,
                seed=train.seed,
                epoch=self.state.epoch,
                start_batch=self.state.batches_in_epoch,
            )
            loader = DataLoader(
                self.dataset,
                batch_sampler=sampler,
                collate_fn=self.recipe.collate,
                num_workers=train.num_workers,
                persistent_workers=False,
                # Creating a loader iterator draws a worker base seed. Drawn from this generator, it
                # leaves the global RNG (dropout) untouched, so a resume mid-epoch stays exact.
                generator=torch.Generator().manual_seed(train.seed * 1_000_003 + self.state.epoch),
            )
            for batch in loader:
                self.state.batches_in_epoch += 1
                yield self.recipe.move_batch(batch, self.accelerator.device)
            self.state.epoch += 1
            self.state.batches_in_epoch = 0

    # ----- checkpoints -----

    def save_checkpoint(self) -> Path:
        """Save everything needed for an exact resume into checkpoints/step_NNNNNNNN."""
        final = self.run_dir / CHECKPOINTS_DIRNAME / f"step_{self.state.step:08d}"
        staging = final.with_name(final.name + ".tmp")
        accelerator = self.accelerator
        if accelerator.is_main_process:
            if staging.exists():
                shutil.rmtree(staging)
            # Every process writes its own RNG file here, so the folder must exist before any does.
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # Written under a temporary name first, so a crash never leaves a partial checkpoint
            # that a later resume would pick.
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            for old in list_checkpoints(self.run_dir)[: -self.config.run.keep_checkpoints]:
                shutil.rmtree(old)
            logger.info("saved checkpoint %s", final)
        accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore the model, EMA, optimizers, scheduler, scaler, RNG states and data position."""
        self.accelerator.load_state(str(path))
        logger.info("resumed from %s at step %d", path, self.state.step)

    # ----- one step -----

    def _all_finite(self, value: torch.Tensor) -> bool:
        """Return whether `value` is finite on every process (all take the same branch after it)."""
        flag = torch.tensor([1.0 if bool(torch.isfinite(value).all()) else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).min() > 0)

    def _phase(
        self,
        module: nn.Module,
        compute: Callable[[Any, StepContext], LossOutput],
        optimizer: torch.optim.Optimizer,
        micro_batches: list[Any],
        name: str,
    ) -> tuple[dict[str, float], list[dict[str, Any]], bool]:
        """Run forward and backward over the micro-batches, then one optimizer step.

        Returns the mean terms, the caches for the next phase, and whether the step was applied.
        """
        accelerator = self.accelerator
        train = self.config.train
        accum = len(micro_batches)
        terms: dict[str, float] = {}
        caches: list[dict[str, Any]] = []
        finite = True
        for micro, batch in enumerate(micro_batches):
            ctx = StepContext(
                step=self.state.step,
                micro_step=micro,
                generator=step_generator(train.seed, self.state.step, micro, accelerator.process_index),
                accelerator=accelerator,
                discriminator=self._frozen_discriminator(),
            )
            # Gradients are averaged across processes only on the last micro-batch.
            sync_context = accelerator.no_sync(module) if micro < accum - 1 else contextlib.nullcontext()
            with sync_context:
                with accelerator.autocast():
                    output: LossOutput = compute(batch, ctx)
                caches.append(output.cache)
                for key, value in output.terms.items():
                    terms[key] = terms.get(key, 0.0) + float(value.detach().float()) / accum
                terms["loss"] = terms.get("loss", 0.0) + float(output.loss.detach().float()) / accum
                if not self._all_finite(output.loss.detach()):
                    finite = False
                    logger.warning(
                        "non-finite %s loss at step %d (micro-batch %d, process %d): %s",
                        name, self.state.step, micro, accelerator.process_index,
                        {k: float(v.detach().float()) for k, v in output.terms.items()} | {"loss": float(output.loss.detach().float())},
                    )
                    # Without backward no gradient hook fires, so DDP stays consistent across ranks.
                    continue
                accelerator.backward(output.loss / accum)

        applied = False
        if finite:
            grad_norm = accelerator.clip_grad_norm_(module.parameters(), train.grad_clip) if train.grad_clip > 0 else None
            if grad_norm is not None:
                terms["grad_norm"] = float(grad_norm)
            # Under fp16 the grad scaler skips inf/NaN gradients itself and lowers its scale.
            if grad_norm is not None and not math.isfinite(float(grad_norm)) and train.mixed_precision != "fp16":
                logger.warning("non-finite %s gradient norm at step %d: skipping the step", name, self.state.step)
            else:
                optimizer.step()
                applied = True
        optimizer.zero_grad(set_to_none=True)
        return terms, caches, applied

    def _frozen_discriminator(self) -> nn.Module | None:
        """Return the discriminator without its DDP wrapper, for adversarial terms of the model."""
        if self.discriminator is None:
            return None
        return self.accelerator.unwrap_model(self.discriminator)

    def train_step(self, micro_batches: list[Any]) -> dict[str, float]:
        """Run one optimizer step of the model and, when active, one of the discriminator."""

        def model_loss(batch: Any, ctx: StepContext) -> LossOutput:
            return self.recipe.training_loss(self.model, batch, ctx)

        terms, caches, applied = self._phase(self.model, model_loss, self.optimizer, micro_batches, "model")
        if applied:
            self.scheduler.step()
            self.state.nonfinite_in_row = 0
            self.recipe.after_optimizer_step(
                self.accelerator.unwrap_model(self.model),
                StepContext(
                    step=self.state.step,
                    micro_step=len(micro_batches),
                    generator=step_generator(self.config.train.seed, self.state.step, len(micro_batches), self.accelerator.process_index),
                    accelerator=self.accelerator,
                ),
            )
            if self.ema is not None and self.state.step >= self.config.train.ema_start_step:
                self.ema.update(self.accelerator.unwrap_model(self.model))
        else:
            # Keep the schedule aligned with the step count even when a step is skipped.
            self.scheduler.step()
            self.state.nonfinite_in_row += 1
            self.state.nonfinite_total += 1

        if self.discriminator is not None and self.recipe.discriminator_active(self.state.step):
            cache_iter = iter(caches)

            def disc_loss(batch: Any, ctx: StepContext) -> LossOutput:
                return self.recipe.discriminator_loss(self.discriminator, batch, next(cache_iter), ctx)

            disc_terms, _, _ = self._phase(self.discriminator, disc_loss, self.disc_optimizer, micro_batches, "discriminator")
            terms.update({f"disc/{k}": v for k, v in disc_terms.items()})

        terms["lr"] = self.scheduler.get_last_lr()[0]
        terms["skipped"] = 0.0 if applied else 1.0
        return terms

    # ----- the run -----

    def fit(self) -> TrainState:
        """Train to `train.steps` optimizer steps, resuming from the newest checkpoint if allowed."""
        config = self.config
        accelerator = self.accelerator
        if config.run.resume:
            checkpoints = list_checkpoints(self.run_dir)
            if checkpoints:
                self.load_checkpoint(checkpoints[-1])
        if accelerator.is_main_process:
            save_resolved_config(config, self.run_dir / "config.yaml")
        if config.run.trackers:
            accelerator.init_trackers("logs", config=flatten_for_tracker(OmegaConf.to_container(config, resolve=True)))

        total = config.train.steps
        accum = config.train.grad_accum_steps
        meter = MeanMeter()
        bar = ProgressBar(total=total, initial=self.state.step, enabled=config.run.progress_bar and accelerator.is_main_process)
        batches = self._batches()
        interval_start = time.perf_counter()
        interval_samples = 0
        first_step = self.state.step
        invocation_start = time.perf_counter()
        step_log = StepLog(self.run_dir / "steps.jsonl", enabled=accelerator.is_main_process)
        step_log.truncate_from(self.state.step)
        try:
            while self.state.step < total:
                step_start = time.perf_counter()
                micro_batches = [next(batches) for _ in range(accum)]
                terms = self.train_step(micro_batches)
                step_samples = sum(self.recipe.batch_size_of(b) for b in micro_batches) * accelerator.num_processes
                self.state.samples_seen += step_samples
                interval_samples += step_samples
                self.state.train_seconds += time.perf_counter() - step_start
                step_log.append(self.state.step, terms)
                meter.add(terms)
                self.state.step += 1
                bar.update(terms, samples=step_samples)

                if self.state.nonfinite_in_row >= config.train.max_nonfinite_in_row:
                    raise NonFiniteLossError(
                        f"{self.state.nonfinite_in_row} optimizer steps in a row had a non-finite loss or "
                        f"gradient (last at step {self.state.step - 1}); lower train.lr, enable "
                        "gradient clipping, or raise train.max_nonfinite_in_row"
                    )
                if self.state.step % config.run.log_every == 0 or self.state.step == total:
                    elapsed = time.perf_counter() - interval_start
                    self._log_interval(meter, interval_samples / max(elapsed, 1e-9))
                    meter = MeanMeter()
                    interval_start = time.perf_counter()
                    interval_samples = 0
                stopping = self._should_stop(first_step, invocation_start)
                if self.state.step % config.run.save_every == 0 or self.state.step == total or stopping:
                    self.save_checkpoint()
                if stopping:
                    logger.info("stopping at step %d of %d as run.stop_after_* requests", self.state.step, total)
                    break
        finally:
            bar.close()
        self._finish(complete=self.state.step >= total)
        return self.state

    def _should_stop(self, first_step: int, invocation_start: float) -> bool:
        """Return whether this invocation's step or time limit is reached (the same on every process)."""
        run = self.config.run
        if run.stop_after_steps is not None and self.state.step - first_step >= run.stop_after_steps:
            return True
        if run.stop_after_seconds is None:
            return False
        # One process past the limit stops all of them, so every process stops after the same step.
        over = torch.tensor([1.0 if time.perf_counter() - invocation_start >= run.stop_after_seconds else 0.0])
        return bool(self.accelerator.reduce(over.to(self.accelerator.device), reduction="sum") > 0) \
            if self.accelerator.num_processes > 1 else bool(over.item() > 0)

    def _log_interval(self, meter: MeanMeter, clips_per_second: float) -> None:
        """Average the interval's terms across processes and send them to the trackers."""
        accelerator = self.accelerator
        means = meter.means()
        keys = sorted(means)
        values = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=accelerator.device)
        values = accelerator.reduce(values, reduction="mean") if accelerator.num_processes > 1 else values
        record = {f"train/{k}": float(v) for k, v in zip(keys, values.tolist(), strict=True)}
        record.update({f"train/{k}": v for k, v in self.recipe.interval_stats(accelerator).items()})
        record["train/clips_per_second"] = clips_per_second
        record["train/samples_seen"] = float(self.state.samples_seen)
        if self.config.run.trackers:
            accelerator.log(record, step=self.state.step)
        logger.info("step %d: %s", self.state.step, {k: round(v, 5) for k, v in record.items()})

    def _finish(self, complete: bool) -> None:
        """Write the final weights (when the run reached its last step) and close the trackers."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if complete and accelerator.is_main_process:
            ema_model = self.ema.model if self.ema is not None else None
            self.recipe.save_final(accelerator.unwrap_model(self.model), ema_model, self.run_dir / "final")
        accelerator.end_training()

