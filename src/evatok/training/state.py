"""The training position that checkpoints save beside the weights and optimizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainState:
    """Optimizer steps done, the data position, and counters that must survive a resume."""

    step: int = 0
    epoch: int = 0
    # Global batches already taken from the current epoch (identical on every process).
    batches_in_epoch: int = 0
    # Micro-batches since the start, counting all processes' samples once.
    samples_seen: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    train_seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the fields written by `state_dict`."""
        for key, value in state.items():
            setattr(self, key, value)
