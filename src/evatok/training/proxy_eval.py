"""Held-out reconstruction quality of a proxy tokenizer per token count, against a mean-colour baseline.

Each candidate count k is evaluated with the uniform assignment (k, ..., k) on clips of the files
held out of training (the same stable hash split as training, centre crop). PSNR and LPIPS are
per frame over real (not padded) frames, averaged over frames and clips; reconstructions are
clamped to [-1, 1] first. The baseline replaces each clip by its mean colour.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from evatok.evaluation import masked_frame_mean
from evatok.metrics import MODEL_RANGE, LPIPSMetric, psnr
from evatok.models.tokenizer import Tokenizer
from evatok.training.alignment import tokenizer_state_dict
from evatok.training.proxy import clip_spec_of, split_entries, tokenizer_config_of
from evatok.video.datasets import ClipDataset

logger = logging.getLogger(__name__)


def held_out_dataset(config: DictConfig, max_clips_per_video: int | None = None) -> ClipDataset:
    """Build the dataset of centre-cropped clips from the files held out of training."""
    _, held_out = split_entries(config)
    if not held_out:
        raise ValueError(
            f"no held-out files with data.held_out_fraction={config.data.held_out_fraction}: raise it "
            "so that some files are kept out of training"
        )
    spec = clip_spec_of(config, tokenizer_config_of(config), training=False)
    limit = max_clips_per_video if max_clips_per_video is not None else config.data.max_clips_per_video
    return ClipDataset(
        held_out, spec, max_clips_per_video=limit, cache_dir=config.data.cache_dir,
        max_bad_fraction=config.data.max_bad_fraction,
    )


@torch.no_grad()
def evaluate_reconstruction(
    model: Tokenizer,
    dataset: ClipDataset,
    lpips: LPIPSMetric,
    counts: Iterable[int] | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Return per-count and mean-colour PSNR and LPIPS over every clip of `dataset`."""
    model.eval()
    device = next(model.parameters()).device
    counts = list(counts) if counts is not None else list(model.config.candidates)
    sums: dict[str, dict[str, float]] = {name: {"psnr": 0.0, "lpips": 0.0} for name in [*map(str, counts), "mean_colour"]}
    num_clips = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        video = batch["video"].to(device)
        mask = batch["mask"].to(device)
        candidates: dict[str, torch.Tensor] = {}
        for count in counts:
            assignment = [count] * model.config.num_blocks
            candidates[str(count)] = model(video, assignment, with_entropy=False).reconstruction.clamp(-1, 1)
        mean_colour = video.mean(dim=(2, 3, 4), keepdim=True).expand_as(video)
        candidates["mean_colour"] = mean_colour
        for name, reconstruction in candidates.items():
            sums[name]["psnr"] += float(masked_frame_mean(psnr(reconstruction, video, MODEL_RANGE), mask).sum())
            lpips_values = lpips(reconstruction, video, MODEL_RANGE).to(device)
            sums[name]["lpips"] += float(masked_frame_mean(lpips_values, mask).sum())
        num_clips += video.shape[0]
    if num_clips == 0:
        raise ValueError("the held-out dataset has no clips: use more or longer held-out videos")
    results = {name: {key: value / num_clips for key, value in metrics.items()} for name, metrics in sums.items()}
    return {
        "clips": num_clips,
        "files": len({item[0] for item in dataset.items}),
        "counts": {name: results[name] for name in map(str, counts)},
        "mean_colour": results["mean_colour"],
        "lpips_weights": lpips.weights_metadata,
    }


def load_checkpoint_tokenizer(checkpoint: Path, config: DictConfig, use_ema: bool = True) -> tuple[Tokenizer, dict[str, Any]]:
    """Build the tokenizer of an engine checkpoint (its EMA weights when present) and its train state."""
    from safetensors.torch import load_file

    model = Tokenizer(tokenizer_config_of(config))
    # The engine registers the EMA (when enabled) before the train state for checkpointing.
    has_ema = config.train.ema_decay > 0
    state_file = checkpoint / f"custom_checkpoint_{1 if has_ema else 0}.pkl"
    if use_ema and has_ema:
        ema = torch.load(checkpoint / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=True)
        model.load_state_dict(tokenizer_state_dict(ema["weights"]))
    else:
        model.load_state_dict(tokenizer_state_dict(load_file(str(checkpoint / "model.safetensors"))))
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    return model, state


def describe_results(results: dict[str, Any]) -> str:
    """Format evaluation results as a Markdown table."""
    lines = ["| tokens per block | PSNR (dB) | LPIPS |", "|---|---|---|"]
    for count, metrics in results["counts"].items():
        lines.append(f"| {count} | {metrics['psnr']:.2f} | {metrics['lpips']:.4f} |")
    base = results["mean_colour"]
    lines.append(f"| mean colour | {base['psnr']:.2f} | {base['lpips']:.4f} |")
    return "\n".join(lines)


def check_learning(results: dict[str, Any]) -> list[str]:
    """Return the ways the results miss the stage 1 bar (empty when it is met).

    The bar: every count beats the mean-colour baseline on PSNR and LPIPS, and both metrics
    strictly improve from each count to the next larger one.
    """
    problems = []
    base = results["mean_colour"]
    ordered = sorted(results["counts"].items(), key=lambda item: int(item[0]))
    for count, metrics in ordered:
        if not metrics["psnr"] > base["psnr"]:
            problems.append(f"count {count}: PSNR {metrics['psnr']:.2f} not above mean colour {base['psnr']:.2f}")
        if not metrics["lpips"] < base["lpips"]:
            problems.append(f"count {count}: LPIPS {metrics['lpips']:.4f} not below mean colour {base['lpips']:.4f}")
    for (small, a), (large, b) in zip(ordered, ordered[1:], strict=False):
        if not b["psnr"] > a["psnr"]:
            problems.append(f"PSNR does not rise from {small} to {large} tokens: {a['psnr']:.2f} -> {b['psnr']:.2f}")
        if not b["lpips"] < a["lpips"]:
            problems.append(f"LPIPS does not fall from {small} to {large} tokens: {a['lpips']:.4f} -> {b['lpips']:.4f}")
    return problems

