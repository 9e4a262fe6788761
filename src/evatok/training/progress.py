"""Console progress bar, interval averages and tracker-friendly config flattening."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

# Terms shown on the console bar when present, in this order; the rest go only to the trackers.
CONSOLE_KEYS = ("loss", "l1", "lpips", "adv", "vq", "entropy", "disc/loss", "usage")


class MeanMeter:
    """Running means of named scalars over a logging interval."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        """Add one step's values."""
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        """Return the mean of each name over the steps that reported it."""
        return {key: self.sums[key] / self.counts[key] for key in self.sums}


class ProgressBar:
    """A tqdm bar with the latest loss terms, clips per second and the ETA (main process only)."""

    def __init__(self, *, total: int, initial: int, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()
        self.samples = 0
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True) if enabled else None

    def update(self, terms: dict[str, float], *, samples: int) -> None:
        """Advance one step and show its terms."""
        if self.bar is None:
            return
        self.samples += samples
        shown = {key: f"{terms[key]:.4g}" for key in CONSOLE_KEYS if key in terms}
        shown["clips/s"] = f"{self.samples / max(time.perf_counter() - self.start, 1e-9):.2f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


class StepLog:
    """Per-step terms as JSON lines in the run folder, cut back to the resume step on resume."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_from(self, step: int) -> None:
        """Drop records of steps >= `step` (written after the checkpoint a run resumes from)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [
            line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] < step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, step: int, terms: dict[str, float]) -> None:
        """Append one step's terms."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **terms}) + "\n")


def read_step_log(path: Path) -> list[dict[str, float]]:
    """Read the records written by StepLog, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def flatten_for_tracker(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config into dotted keys with scalar values (TensorBoard hparams need these)."""
    flat: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(flatten_for_tracker(value, f"{prefix}{key}."))
        return flat
    key = prefix.rstrip(".")
    if tree is None or isinstance(tree, (list, tuple)):
        flat[key] = str(tree)
    else:
        flat[key] = tree
    return flat
