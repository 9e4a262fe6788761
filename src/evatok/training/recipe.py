"""The interface between the training engine and one stage of the method."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset, default_collate


@dataclass
class LossOutput:
    """The scalar to minimise, its terms for logging, and values handed to the next phase."""

    loss: torch.Tensor
    # Scalar terms (already weighted or not, as the recipe names them) for the log and console.
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    # Detached tensors the discriminator phase needs, such as the reconstruction.
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """Context of one micro-batch's loss computation: position, seeded generator and helpers."""

    step: int
    micro_step: int
    # Seeded from (seed, step, micro-step, process), so random choices survive a resume.
    generator: torch.Generator
    accelerator: Accelerator
    # The discriminator without its DDP wrapper, for the model's adversarial term; None if absent.
    discriminator: nn.Module | None = None


class Recipe(ABC):
    """One training stage: its model, data and losses; the engine does the rest."""

    def __init__(self, config: DictConfig) -> None:
        self.config = config

    @abstractmethod
    def build_model(self) -> nn.Module:
        """Build the model that the optimizer trains and the EMA averages."""

    @abstractmethod
    def build_dataset(self) -> Dataset:
        """Build the training dataset (the engine shards and shuffles it)."""

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> LossOutput:
        """Compute the model's loss on one micro-batch."""

    def build_discriminator(self) -> nn.Module | None:
        """Build an adversary trained in its own phase, or None."""
        return None

    def discriminator_active(self, step: int) -> bool:
        """Return whether the discriminator phase runs at optimizer step `step`."""
        return False

    def discriminator_loss(
        self, discriminator: nn.Module, batch: Any, cache: dict[str, Any], ctx: StepContext
    ) -> LossOutput:
        """Compute the discriminator's loss from the batch and the model phase's cache."""
        raise NotImplementedError(f"{type(self).__name__} has no discriminator phase")

    def collate(self, samples: list[Any]) -> Any:
        """Stack samples into a batch."""
        return default_collate(samples)

    def batch_size_of(self, batch: Any) -> int:
        """Return the number of samples in a batch (for throughput)."""
        if isinstance(batch, torch.Tensor):
            return int(batch.shape[0])
        if isinstance(batch, dict):
            return self.batch_size_of(next(iter(batch.values())))
        if isinstance(batch, (list, tuple)):
            return self.batch_size_of(batch[0])
        raise TypeError(f"cannot find the batch size of a {type(batch).__name__}: override batch_size_of")

    def move_batch(self, batch: Any, device: torch.device) -> Any:
        """Move every tensor in the batch to `device`."""
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self.move_batch(v, device) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.move_batch(v, device) for v in batch)
        return batch

    def after_optimizer_step(self, model: nn.Module, ctx: StepContext) -> None:
        """Update the unwrapped model after an applied optimizer step (on every process)."""
        return None

    def interval_stats(self, accelerator: Accelerator) -> dict[str, float]:
        """Return statistics gathered since the last log (called on every process together)."""
        return {}

    def save_final(self, model: nn.Module, ema_model: nn.Module | None, directory: Path) -> None:
        """Write the trained weights (the EMA ones when present) as safetensors."""
        directory.mkdir(parents=True, exist_ok=True)
        weights = (ema_model or model).state_dict()
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "model.safetensors"))
