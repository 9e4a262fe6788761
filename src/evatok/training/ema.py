"""Exponential moving average of model weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """An EMA copy of a model's parameters (float32), with persistent buffers copied as they are.

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the n updates made so far, so the
    average is not dominated by the random initial weights in short runs. The update count is
    part of the state and is restored on resume.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"invalid EMA decay {decay}: use a value in (0, 1)")
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        """Return the decay the next update will use."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward `model`'s current weights."""
        decay = self.current_decay()
        ema_params = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].lerp_(param.detach().float(), 1.0 - decay)
        # Non-persistent buffers (scratch state such as a restart pool) may change shape and are
        # not part of the weights, so only the ones in the state dict are copied.
        persistent = set(model.state_dict())
        ema_buffers = dict(self.model.named_buffers())
        for name, buffer in model.named_buffers():
            if name in persistent:
                ema_buffers[name].copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Return the averaged weights, the decay and the update count."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "weights": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state written by `state_dict`."""
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(state["weights"])
