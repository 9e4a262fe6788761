"""The training stages of `evatok pipeline`, each writing into its own folder of the run.

Every stage reads the run config and the outputs of earlier stages, and resumes by itself when it
was interrupted: the trainers continue from their newest checkpoint and the search skips clips
already in its label store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from evatok.pipeline.state import PipelineState, write_json_atomic

logger = logging.getLogger(__name__)

# Split seeds tried, from data.split_seed on, for a split with at least one file on each side.
MAX_SPLIT_SEEDS = 100


class StageStopped(Exception):
    """A stage stopped before its end on purpose (run.stop_after_steps or run.stop_after_seconds)."""


@dataclass
class PipelineSettings:
    """The ``pipeline:`` section of a preset."""

    baseline: bool = True
    samples: int = 2
    fvd_min_clips: int = 8

    @classmethod
    def from_config(cls, config: DictConfig) -> PipelineSettings:
        """Read the section, rejecting unknown keys by name."""
        from evatok.training.config import settings_from_section

        return settings_from_section(cls, config, "pipeline")


@dataclass
class StageContext:
    """The run config, folders and shared state passed to every stage."""

    config: DictConfig
    videos: Path
    run_dir: Path
    state: PipelineState
    progress: bool = True

    def path(self, *parts: str) -> Path:
        """Return a path inside the run folder."""
        return self.run_dir.joinpath(*parts)

    def stage_config(self, folder: str, overrides: dict[str, Any] | None = None) -> DictConfig:
        """Return a copy of the run config that trains into `folder` of the run, with dotted overrides."""
        config = OmegaConf.create(OmegaConf.to_container(self.config, resolve=True))
        config.run.dir = str(self.path(folder))
        config.run.progress_bar = bool(self.config.run.progress_bar and self.progress)
        for key, value in (overrides or {}).items():
            OmegaConf.update(config, key, value, force_add=True)
        from evatok.training.config import validate_config

        validate_config(config)
        return config


def train_stage(recipe_name: str, config: DictConfig) -> None:
    """Train one recipe to its last step, or raise StageStopped when a stop limit ended it early."""
    from evatok.training import Trainer, get_recipe_class

    trainer = Trainer(get_recipe_class(recipe_name)(config), config)
    state = trainer.fit()
    if state.step < config.train.steps:
        raise StageStopped(
            f"{recipe_name} stopped at step {state.step} of {config.train.steps} (run.stop_after_*); "
            "run the same command again to continue"
        )


# ----- split ---------------------------------------------------------------------------------


def run_split(ctx: StageContext) -> dict[str, Any]:
    """Split the videos by file and write split.json; move to the next seed when a side is empty."""
    from evatok.video.datasets import list_videos, split_by_file

    data = ctx.config.data
    if not 0.0 < data.held_out_fraction < 1.0:
        raise ValueError(
            f"data.held_out_fraction is {data.held_out_fraction}: the pipeline evaluates on held-out "
            "files, so use a value strictly between 0 and 1 (for example 0.1)"
        )
    paths = list_videos(ctx.videos)
    if len(paths) < 2:
        raise ValueError(
            f"{ctx.videos} contains {len(paths)} video file(s): the pipeline needs at least 2, one to "
            "train on and one held out for evaluation"
        )
    for seed in range(data.split_seed, data.split_seed + MAX_SPLIT_SEEDS):
        train, held_out = split_by_file(paths, data.held_out_fraction, seed=seed, root=ctx.videos)
        if train and held_out:
            break
    else:
        raise ValueError(
            f"no split seed in [{data.split_seed}, {data.split_seed + MAX_SPLIT_SEEDS}) gives both training "
            f"and held-out files for {len(paths)} videos at held_out_fraction {data.held_out_fraction}"
        )
    if seed != data.split_seed:
        ctx.state.add_note(
            f"data.split_seed {data.split_seed} left one side of the file split empty; the run uses "
            f"split seed {seed}"
        )
    split = {
        "root": str(ctx.videos),
        "held_out_fraction": data.held_out_fraction,
        "split_seed": seed,
        "train": [path.relative_to(ctx.videos).as_posix() for path in train],
        "held_out": [path.relative_to(ctx.videos).as_posix() for path in held_out],
    }
    write_json_atomic(ctx.path("split.json"), split)
    logger.info("split: %d training files, %d held out (seed %d)", len(train), len(held_out), seed)
    return {"train_files": len(train), "held_out_files": len(held_out)}


def apply_split(ctx: StageContext) -> None:
    """Set data.split_seed from split.json, so every later stage splits the files the same way."""
    split = json.loads(ctx.path("split.json").read_text())
    ctx.config.data.split_seed = int(split["split_seed"])


# ----- stage 1 ---------------------------------------------------------------------------------


def run_proxy(ctx: StageContext) -> dict[str, Any]:
    """Train the proxy tokenizer and write its held-out PSNR/LPIPS per token count (proxy/eval.json)."""
    from evatok.metrics import LPIPSMetric
    from evatok.training.engine import list_checkpoints
    from evatok.training.proxy_eval import (
        evaluate_reconstruction,
        held_out_dataset,
        load_checkpoint_tokenizer,
    )

    config = ctx.stage_config("proxy")
    train_stage("proxy", config)
    checkpoint = list_checkpoints(ctx.path("proxy"))[-1]
    model, state = load_checkpoint_tokenizer(checkpoint, config)
    results = evaluate_reconstruction(model, held_out_dataset(config), LPIPSMetric(config.loss.perceptual_net))
    results.update(step=state["step"], train_seconds=state["train_seconds"], checkpoint=checkpoint.name)
    write_json_atomic(ctx.path("proxy", "eval.json"), [results])
    return {"steps": int(state["step"])}


# ----- stage 2 ---------------------------------------------------------------------------------


def search_settings(config: DictConfig) -> Any:
    """Return the SearchSettings of the run: the ``search:`` section plus the data sampling."""
    from evatok.search.runner import SearchSettings

    section = dict(OmegaConf.to_container(config.get("search") or OmegaConf.create({}), resolve=True))
    known = {field.name for field in fields(SearchSettings)}
    reserved = {"frame_stride", "fps", "max_clips_per_video", "max_bad_fraction"}
    unknown = sorted(set(section) - (known - reserved))
    if unknown:
        raise ValueError(
            f"unknown search keys {unknown}: valid keys are {sorted(known - reserved)} (frame sampling "
            "comes from the data section)"
        )
    data = config.data
    return SearchSettings(
        **section, frame_stride=data.frame_stride, fps=data.fps,
        max_clips_per_video=data.max_clips_per_video, max_bad_fraction=data.max_bad_fraction,
    )


def run_labels(ctx: StageContext) -> dict[str, Any]:
    """Search the best assignment of every clip (training and held-out files) with the proxy."""
    from evatok.search.runner import load_proxy, run_search

    proxy = load_proxy(ctx.path("proxy", "final"))
    summary = run_search(proxy, ctx.videos, ctx.path("labels"), search_settings(ctx.config), progress=ctx.progress)
    return {key: summary[key] for key in ("clips_total", "clips_searched") if key in summary}


# ----- stage 3 ---------------------------------------------------------------------------------


def run_router(ctx: StageContext) -> dict[str, Any]:
    """Train the router on the labels, then score it and draw the proxy's quality-cost curve."""
    from evatok.curve import DEFAULT_W_Q_SWEEP, curve_from_store, parse_sweep, plot_curve
    from evatok.models.router import Router
    from evatok.router_eval import evaluate_on_store

    labels = ctx.path("labels")
    config = ctx.stage_config("router", {"router_train.labels": str(labels), "router_train.videos": str(ctx.videos)})
    train_stage("router", config)
    router = Router.load(ctx.path("router"))
    data = config.data
    w_q = config.router_train.get("w_q")
    result = evaluate_on_store(
        router, labels, videos=ctx.videos, held_out_fraction=data.held_out_fraction,
        split_seed=data.split_seed, w_q=w_q, w_l=config.router_train.get("w_l") if w_q is not None else None,
    )
    write_json_atomic(ctx.path("router", "router_eval.json"), result.to_dict())

    curve = curve_from_store(
        labels, parse_sweep(DEFAULT_W_Q_SWEEP), router=router, held_out_fraction=data.held_out_fraction,
        split_seed=data.split_seed, videos=ctx.videos,
    )
    curve.protocol["router"] = str(ctx.path("router"))
    write_json_atomic(ctx.path("curve", "curve.json"), curve.to_dict())
    plot_curve(curve, ctx.path("curve", "curve.png"))
    return {"top1": result.top1, "percentile": result.percentile}


# ----- stage 4 and the baseline ----------------------------------------------------------------


def run_tokenizer(ctx: StageContext) -> dict[str, Any]:
    """Train the final tokenizer from scratch on the router's assignments."""
    config = ctx.stage_config("tokenizer", {"final.router": str(ctx.path("router")), "final.assignment": "router"})
    train_stage("final", config)
    return {}


def routed_mean_tokens(ctx: StageContext) -> tuple[float, int]:
    """Return the router's mean tokens per clip over the training clips, and the clip count."""
    from torch.utils.data import DataLoader

    from evatok.models.router import Router
    from evatok.training.proxy import clip_spec_of, split_entries, tokenizer_config_of
    from evatok.video.datasets import ClipDataset

    config = ctx.config
    train_entries, _ = split_entries(config)
    spec = clip_spec_of(config, tokenizer_config_of(config), training=False)
    dataset = ClipDataset(
        train_entries, spec, max_clips_per_video=config.data.max_clips_per_video,
        cache_dir=config.data.cache_dir, max_bad_fraction=config.data.max_bad_fraction,
    )
    router = Router.load(ctx.path("router"))
    totals: list[int] = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=16):
            totals.extend(sum(assignment) for assignment in router.predict(batch["video"]))
    if not totals:
        raise ValueError("no training clips to route for the baseline's token count")
    return sum(totals) / len(totals), len(totals)


def run_baseline(ctx: StageContext) -> dict[str, Any]:
    """Train a fixed-length tokenizer at the count nearest to the router's mean tokens per block."""
    from evatok.training.proxy import tokenizer_config_of

    space = tokenizer_config_of(ctx.config).space
    choice_path = ctx.path("baseline", "choice.json")
    if choice_path.is_file():
        choice = json.loads(choice_path.read_text())
    else:
        mean_tokens, clips = routed_mean_tokens(ctx)
        per_block = mean_tokens / space.num_blocks
        # The nearest candidate; on a tie the larger count, so the baseline never gets fewer tokens.
        count = min(space.candidates, key=lambda k: (abs(k - per_block), -k))
        choice = {"router_mean_tokens": mean_tokens, "clips": clips, "count": count, "tokens": count * space.num_blocks}
        write_json_atomic(choice_path, choice)
    logger.info(
        "baseline: uniform %d tokens per block (%d per clip) against the router's mean %.1f per clip",
        choice["count"], choice["tokens"], choice["router_mean_tokens"],
    )
    config = ctx.stage_config("baseline", {"final.assignment": f"uniform:{choice['count']}", "final.router": None})
    train_stage("final", config)
    return {"count": choice["count"]}
