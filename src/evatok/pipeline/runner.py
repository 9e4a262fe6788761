"""`run_pipeline`: every stage from a folder of videos to a report, in one resumable run folder.

Layout of the run folder::

    config.yaml      the resolved settings; a rerun must pass the same ones (or --from a stage)
    pipeline.json    status and wall time of every stage, and notes for the report
    split.json       training and held-out files
    cache/           decoded clips shared by the stages (unless data.cache_dir is set)
    proxy/ labels/ router/ curve/ tokenizer/ baseline/ eval/   one folder per stage
    report.html report.md
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from evatok.pipeline.evaluate import run_eval
from evatok.pipeline.stages import (
    PipelineSettings,
    StageContext,
    apply_split,
    run_baseline,
    run_labels,
    run_proxy,
    run_router,
    run_split,
    run_tokenizer,
)
from evatok.pipeline.state import STAGES, PipelineState

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
REPORT_FILES = ("report.html", "report.md")

# Folders and files of the run that each stage writes (removed by --from).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "split": ("split.json",),
    "proxy": ("proxy",),
    "labels": ("labels",),
    "router": ("router", "curve"),
    "tokenizer": ("tokenizer",),
    "baseline": ("baseline",),
    "eval": ("eval",),
    "report": REPORT_FILES,
}


def run_report(ctx: StageContext) -> dict[str, Any]:
    """Write report.html and report.md from the files of the earlier stages."""
    from evatok.report import write_report

    html, markdown = write_report(ctx.run_dir)
    return {"html": html.name, "markdown": markdown.name}


STAGE_FUNCTIONS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "split": run_split,
    "proxy": run_proxy,
    "labels": run_labels,
    "router": run_router,
    "tokenizer": run_tokenizer,
    "baseline": run_baseline,
    "eval": run_eval,
    "report": run_report,
}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Return a nested mapping as {dotted key: value}."""
    if not isinstance(data, dict):
        return {prefix: data}
    items: dict[str, Any] = {}
    for key, value in data.items():
        items.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return items


def changed_keys(saved: DictConfig, current: DictConfig) -> list[str]:
    """Return the dotted keys whose values differ between two configs (progress display excluded)."""
    old = flatten(OmegaConf.to_container(saved, resolve=True))
    new = flatten(OmegaConf.to_container(current, resolve=True))
    ignored = {"run.progress_bar"}
    return sorted(key for key in set(old) | set(new) if key not in ignored and old.get(key) != new.get(key))


def encoder_notes(config: DictConfig) -> list[str]:
    """Return report notes on the frozen-encoder terms of the final tokenizer."""
    loss = OmegaConf.merge(config.loss, (config.get("final") or {}).get("loss") or {})
    notes = []
    if loss.alignment_weight > 0:
        notes.append(f"alignment to V-JEPA2 ({loss.alignment_encoder}): on, weight {loss.alignment_weight}")
    else:
        notes.append("alignment to V-JEPA2: off (loss.alignment_weight=0 in this preset)")
    if loss.semantic_disc and loss.adversarial_weight > 0:
        notes.append(f"semantic discriminator on VideoMAE ({loss.semantic_disc_encoder}): on in stage 4")
    else:
        notes.append("semantic discriminator on VideoMAE: off in this preset")
    if loss.adversarial_weight <= 0:
        notes.append("adversarial loss: off (loss.adversarial_weight=0 in this preset)")
    return notes


def prepare_run(config: DictConfig, videos: Path, run_dir: Path, from_stage: str | None) -> None:
    """Point the config at the videos and the run's cache, and check it against a saved one."""
    config.data.videos = str(videos)
    if config.data.cache_dir is None:
        config.data.cache_dir = str(run_dir / "cache")
    saved_path = run_dir / CONFIG_NAME
    if saved_path.is_file():
        changed = changed_keys(OmegaConf.load(saved_path), config)
        if changed and from_stage is None:
            raise ValueError(
                f"{run_dir} was started with other settings ({', '.join(changed[:8])}"
                f"{' ...' if len(changed) > 8 else ''}): pass the same preset and overrides to resume, "
                "--from STAGE to redo that stage and the later ones with the new settings, or a new --run folder"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(OmegaConf.to_yaml(config, resolve=True))


def reset_from(state: PipelineState, run_dir: Path, from_stage: str) -> None:
    """Remove the outputs of `from_stage` and every later stage, and mark them pending."""
    for stage in STAGES[STAGES.index(from_stage):]:
        for name in STAGE_OUTPUTS[stage]:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        state.reset(stage)


def format_seconds(seconds: float) -> str:
    """Return seconds as H:MM:SS."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_pipeline(
    config: DictConfig,
    videos: str | Path,
    run_dir: str | Path,
    *,
    until: str | None = None,
    from_stage: str | None = None,
    progress: bool = True,
    command: str = "",
    preset: str = "",
    echo: Callable[[str], None] = print,
) -> PipelineState:
    """Run every stage not yet done, up to `until`; `from_stage` first redoes that stage and the later ones."""
    for name, value in (("--until", until), ("--from", from_stage)):
        if value is not None and value not in STAGES:
            raise ValueError(f"invalid {name} {value!r}: choose one of {', '.join(STAGES)}")
    videos = Path(videos).expanduser().resolve()
    if not videos.is_dir():
        raise FileNotFoundError(f"--videos {videos} is not a folder: give a folder of video files (searched recursively)")
    run_dir = Path(run_dir).expanduser().resolve()
    settings = PipelineSettings.from_config(config)
    prepare_run(config, videos, run_dir, from_stage)

    header = {"preset": preset, "videos": str(videos), "run": str(run_dir), "command": command}
    state = PipelineState.open(run_dir, header)
    if from_stage is not None:
        reset_from(state, run_dir, from_stage)
    for note in encoder_notes(config):
        state.add_note(note)
    ctx = StageContext(config=config, videos=videos, run_dir=run_dir, state=state, progress=progress)

    last = STAGES.index(until) if until is not None else len(STAGES) - 1
    job_start = time.time()
    for number, stage in enumerate(STAGES[: last + 1], start=1):
        if stage != "split":
            apply_split(ctx)
        prefix = f"[pipeline {number}/{last + 1}] {stage}"
        if state.is_finished(stage):
            echo(f"{prefix}: {state.status(stage)} before, reused")
            continue
        if stage == "baseline" and not settings.baseline:
            state.finish(stage, time.time(), status="skipped")
            echo(f"{prefix}: skipped (pipeline.baseline=false)")
            continue
        resumed = state.status(stage) == "running"
        echo(f"{prefix}: {'resuming' if resumed else 'starting'} (job time {format_seconds(time.time() - job_start)})")
        started = state.start(stage)
        try:
            extra = STAGE_FUNCTIONS[stage](ctx)
        except BaseException:
            state.interrupted(stage, started)
            raise
        state.finish(stage, started, **extra)
        if stage == "report":
            # Written again so that its own stage table shows the report stage as done.
            run_report(ctx)
        echo(f"{prefix}: done in {format_seconds(state.data['stages'][stage]['seconds'])}")
    return state


def stage_table(state: PipelineState) -> str:
    """Return the stages with their status and wall time as a Markdown table."""
    lines = ["| stage | status | wall time |", "|---|---|---|"]
    for stage in STAGES:
        entry = state.data["stages"][stage]
        seconds = entry.get("seconds")
        lines.append(f"| {stage} | {entry['status']} | {format_seconds(seconds) if seconds is not None else '-'} |")
    return "\n".join(lines)
