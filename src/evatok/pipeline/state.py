"""The run folder's record of the pipeline: stage status and wall time, in ``pipeline.json``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evatok.sharded import atomic_write_text

STATE_NAME = "pipeline.json"

# Stages in the order they run; each one reads only outputs of earlier stages.
STAGES = ("split", "proxy", "labels", "router", "tokenizer", "baseline", "eval", "report")


def now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a killed process never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@dataclass
class PipelineState:
    """Status of every stage, saved after each change."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: Path, header: dict[str, Any]) -> PipelineState:
        """Load the run's state or start a new one; `header` (preset, videos, command) is refreshed."""
        path = run_dir / STATE_NAME
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update(header)
        stages = data.setdefault("stages", {})
        for name in STAGES:
            stages.setdefault(name, {"status": "pending", "seconds": None, "finished": None})
        data.setdefault("notes", [])
        state = cls(path, data)
        state.save()
        return state

    def save(self) -> None:
        """Write the state atomically."""
        write_json_atomic(self.path, self.data)

    def status(self, stage: str) -> str:
        """Return a stage's status: pending, running, done or skipped."""
        return self.data["stages"][stage]["status"]

    def is_finished(self, stage: str) -> bool:
        """Return whether a stage is done or was skipped on purpose."""
        return self.status(stage) in ("done", "skipped")

    def start(self, stage: str) -> float:
        """Mark a stage as running and return the start time (seconds since the epoch)."""
        entry = self.data["stages"][stage]
        entry["status"] = "running"
        entry["started"] = now_iso()
        self.save()
        return time.time()

    def finish(self, stage: str, started: float, status: str = "done", **extra: Any) -> None:
        """Mark a stage as done (or skipped) with its wall time of this invocation and any extra fields.

        A stage resumed after an interruption records the seconds of the invocation that finished it
        plus those recorded before.
        """
        entry = self.data["stages"][stage]
        entry["seconds"] = round((entry.get("seconds_before") or 0.0) + time.time() - started, 1)
        entry.pop("seconds_before", None)
        entry["status"] = status
        entry["finished"] = now_iso()
        entry.update(extra)
        self.save()

    def interrupted(self, stage: str, started: float) -> None:
        """Keep the seconds a stage ran before it stopped unfinished, for the resumed total."""
        entry = self.data["stages"][stage]
        entry["seconds_before"] = round((entry.get("seconds_before") or 0.0) + time.time() - started, 1)
        self.save()

    def reset(self, stage: str) -> None:
        """Mark a stage as pending again (for --from)."""
        self.data["stages"][stage] = {"status": "pending", "seconds": None, "finished": None}
        self.save()

    def add_note(self, note: str) -> None:
        """Add a note for the report once."""
        if note not in self.data["notes"]:
            self.data["notes"].append(note)
            self.save()
