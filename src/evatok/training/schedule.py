"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup_factor(
    step: int, *, total_steps: int, warmup_steps: int, min_ratio: float
) -> float:
    """Return the multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    peak_lr: float,
    min_lr: float,
) -> LambdaLR:
    """Build a LambdaLR that warms up linearly to `peak_lr`, then decays to `min_lr` by a cosine."""
    if peak_lr <= 0 or min_lr < 0 or min_lr > peak_lr:
        raise ValueError(
            f"invalid learning rates lr={peak_lr}, min_lr={min_lr}: need 0 <= min_lr <= lr and lr > 0"
        )
    min_ratio = min_lr / peak_lr

    def factor(step: int) -> float:
        return cosine_with_warmup_factor(
            step, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=min_ratio
        )

    return LambdaLR(optimizer, factor)
