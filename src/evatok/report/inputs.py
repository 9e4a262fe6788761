"""Read the JSON files of a pipeline run folder, any of which may be missing.

Each file belongs to the pipeline stage that writes it. A missing file is not an error: the report
states which stage has not run yet and its status from ``pipeline.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STAGES = ("split", "proxy", "labels", "router", "tokenizer", "baseline", "eval")

PIPELINE_FILE = "pipeline.json"
SPLIT_FILE = "split.json"
PROXY_EVAL_FILE = "proxy/eval.json"
CURVE_FILE = "curve/curve.json"
CURVE_PLOT_FILE = "curve/curve.png"
ROUTER_EVAL_FILE = "router/router_eval.json"
FINAL_FILE = "eval/final.json"


@dataclass
class RunFiles:
    """The parsed files of one run folder, with None for each file that is missing or unreadable."""

    run_dir: Path
    pipeline: dict[str, Any] | None = None
    split: dict[str, Any] | None = None
    proxy_eval: list[Any] | None = None
    curve: dict[str, Any] | None = None
    router_eval: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    # Path relative to the run folder -> why that existing file could not be read.
    errors: dict[str, str] = field(default_factory=dict)

    def stage_status(self, stage: str) -> str:
        """Return the stage's status from pipeline.json, or "unknown" without one."""
        stages = (self.pipeline or {}).get("stages")
        if not isinstance(stages, dict) or not isinstance(stages.get(stage), dict):
            return "unknown"
        return str(stages[stage].get("status", "unknown"))

    def absence(self, relative: str, stage: str) -> str:
        """Return the sentence that explains why ``relative`` is not in the report."""
        if relative in self.errors:
            return f"{relative} could not be read: {self.errors[relative]}"
        status = self.stage_status(stage)
        if status == "done":
            return (
                f"{relative} is missing although stage '{stage}' is marked done in {PIPELINE_FILE}: "
                f"rerun the stage to write it"
            )
        return f"Not run yet: stage '{stage}' (status: {status}) writes {relative}."


def _read_json(run: RunFiles, relative: str, expected: type) -> Any:
    """Parse one JSON file of the run folder, recording a reason when it exists but is invalid."""
    path = run.run_dir / relative
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("report: %s could not be read: %s", path, error)
        run.errors[relative] = f"invalid JSON ({error})"
        return None
    if not isinstance(value, expected):
        reason = f"expected a JSON {expected.__name__}, found {type(value).__name__}"
        logger.warning("report: %s: %s", path, reason)
        run.errors[relative] = reason
        return None
    return value


def read_run(run_dir: str | Path) -> RunFiles:
    """Read every report input of ``run_dir`` that exists."""
    run = RunFiles(run_dir=Path(run_dir))
    run.pipeline = _read_json(run, PIPELINE_FILE, dict)
    run.split = _read_json(run, SPLIT_FILE, dict)
    run.proxy_eval = _read_json(run, PROXY_EVAL_FILE, list)
    run.curve = _read_json(run, CURVE_FILE, dict)
    run.router_eval = _read_json(run, ROUTER_EVAL_FILE, dict)
    run.final = _read_json(run, FINAL_FILE, dict)
    return run
