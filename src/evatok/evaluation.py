"""Reconstruction evaluation of a tokenizer on real videos under an assignment rule.

Every clip is reconstructed with the rule's assignment; PSNR, SSIM and LPIPS are computed per
real (not padded) frame, averaged per clip, and the summary averages the clips with equal weight.
rFVD compares I3D features of the input clips with those of their reconstructions when there
are enough clips. Under torch.distributed each process evaluates its own share of the clips and
every clip is counted exactly once (checked when the rows are gathered). The numbers therefore
do not depend on the number of processes, up to float rounding from different batch compositions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from evatok.assignment import AssignmentSpace
from evatok.metrics import MODEL_RANGE, FeatureStats, I3DFeatures, LPIPSMetric, fvd, psnr, ssim
from evatok.metrics.distributed import gather_rows_by_index, shard_indices
from evatok.metrics.fvd import FEATURE_DIM, FVD_FRAMES, load_or_compute_stats, make_protocol
from evatok.models.tokenizer import Tokenizer
from evatok.video.datasets import ClipDataset

logger = logging.getLogger(__name__)

# Per-clip columns gathered across processes, in this order.
CLIP_COLUMNS = ("psnr", "ssim", "lpips", "tokens", "real_frames")


@dataclass(frozen=True)
class AssignmentRule:
    """Rule that chooses each clip's assignment: one count for every block, or an explicit tuple."""

    kind: str
    counts: tuple[int, ...]

    @classmethod
    def parse(cls, text: str, space: AssignmentSpace) -> AssignmentRule:
        """Parse `uniform:K` (or just `K`) or a comma-separated tuple such as `64,128,256,512`."""
        body = text.removeprefix("uniform:")
        try:
            counts = tuple(int(part) for part in body.split(","))
        except ValueError as error:
            raise ValueError(
                f"invalid assignment rule {text!r}: use uniform:K or one count per block, e.g. "
                f"{','.join(map(str, space.uniform(space.candidates[0])))}"
            ) from error
        if len(counts) == 1:
            return cls("uniform", space.uniform(counts[0]))
        return cls("fixed", tuple(space.validate(counts)))

    def describe(self) -> str:
        """Return the rule as text, e.g. 'uniform (256, 256, 256, 256)'."""
        return f"{self.kind} {self.counts}"

    def assign(self, video: torch.Tensor) -> torch.Tensor:
        """Return the (batch, blocks) token counts of a batch of clips: the same row for every clip."""
        return torch.tensor(self.counts, dtype=torch.long, device=video.device).expand(video.shape[0], -1)


class RouterRule:
    """Rule that gives each clip the router's most probable assignment."""

    kind = "router"

    def __init__(self, router: Any, name: str = "router") -> None:
        self.router = router
        self.name = name

    def describe(self) -> str:
        """Return the rule as text."""
        return f"router ({self.name})"

    def assign(self, video: torch.Tensor) -> torch.Tensor:
        """Return the router's (batch, blocks) token counts for a batch of clips."""
        self.router.to(video.device)
        assignments = self.router.predict(video)
        return torch.tensor(assignments, dtype=torch.long, device=video.device)


def masked_frame_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean over real frames of each clip: values and mask are (batch, frames)."""
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


@torch.no_grad()
def evaluate_reconstruction(
    model: Tokenizer,
    dataset: ClipDataset,
    rule: AssignmentRule | RouterRule,
    lpips: LPIPSMetric,
    i3d: I3DFeatures | None = None,
    batch_size: int = 4,
    fvd_min_clips: int = 8,
    real_stats: str | Path | None = None,
    split: str = "unspecified",
) -> dict[str, Any]:
    """Evaluate `model` on every clip of `dataset`; return summary, per-clip rows and protocol.

    `i3d` enables rFVD, which needs clips of 16 frames and at least `fvd_min_clips` clips.
    `real_stats` caches the input clips' I3D statistics in that .npz file.
    """
    model.eval()
    device = next(model.parameters()).device
    spec = dataset.spec
    count = len(dataset)
    if count == 0:
        raise ValueError("the dataset has no clips to evaluate")
    mine = shard_indices(count)
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False)

    want_fvd, fvd_reason = _fvd_plan(i3d, spec.num_frames, count, fvd_min_clips)
    count_columns = tuple(f"count_{block}" for block in range(model.config.num_blocks))
    rows: list[torch.Tensor] = []
    real_features: list[torch.Tensor] = []
    fake_features: list[torch.Tensor] = []
    for batch in loader:
        video = batch["video"].to(device)
        mask = batch["mask"].to(device)
        counts = rule.assign(video)
        reconstruction = model(video, counts, with_entropy=False).reconstruction.clamp(-1, 1)
        per_frame = {
            "psnr": psnr(reconstruction, video, MODEL_RANGE),
            "ssim": ssim(reconstruction, video, MODEL_RANGE),
            "lpips": lpips(reconstruction, video, MODEL_RANGE),
        }
        columns = [
            masked_frame_mean(per_frame[name].cpu(), mask.cpu()) for name in ("psnr", "ssim", "lpips")
        ]
        columns.append(counts.sum(dim=1).cpu().to(torch.float64))
        columns.append(mask.sum(dim=1).cpu().to(torch.float64))
        columns.extend(counts.cpu().to(torch.float64).unbind(dim=1))
        rows.append(torch.stack(columns, dim=1))
        if want_fvd:
            real_features.append(i3d(video, MODEL_RANGE))  # type: ignore[misc]
            fake_features.append(i3d(reconstruction, MODEL_RANGE))  # type: ignore[misc]

    names = CLIP_COLUMNS + count_columns
    local = torch.cat(rows) if rows else torch.zeros(0, len(names), dtype=torch.float64)
    table = gather_rows_by_index(mine, local, count)
    clip_rows = []
    for index, values in enumerate(table.tolist()):
        path, clip_number, _, _ = dataset.items[index]
        row = dict(zip(names, values, strict=True))
        assignment = [int(row.pop(name)) for name in count_columns]
        clip_rows.append({"path": path, "clip": clip_number, **row, "assignment": assignment})

    summary: dict[str, Any] = {
        name: float(table[:, i].mean()) for i, name in enumerate(CLIP_COLUMNS)
    }
    summary["clips"] = count
    fvd_block: dict[str, Any] = {"rfvd": None, "reason": fvd_reason}
    if want_fvd:
        fvd_block = _rfvd(i3d, mine, real_features, fake_features, count, spec, split, real_stats)  # type: ignore[arg-type]
        summary["rfvd"] = fvd_block["rfvd"]
    else:
        summary["rfvd"] = None

    protocol = {
        "split": split,
        "clips": count,
        "clip": spec.describe(),
        "frame_stride": spec.frame_stride,
        "fps": spec.fps,
        "crop": spec.crop,
        "short_videos": spec.short_policy,
        "assignment": rule.describe(),
        "average": "per real frame, then per clip; clips weigh equally",
        "lpips": lpips.weights_metadata,
        "fvd": fvd_block,
    }
    return {"summary": summary, "protocol": protocol, "clips": clip_rows}


def _fvd_plan(i3d: I3DFeatures | None, frames: int, count: int, min_clips: int) -> tuple[bool, str]:
    if i3d is None:
        return False, "disabled"
    if frames != FVD_FRAMES:
        return False, f"clips have {frames} frames; FVD uses {FVD_FRAMES}"
    if count < max(2, min_clips):
        return False, f"only {count} clips; rFVD needs at least {max(2, min_clips)}"
    return True, "computed"


def _rfvd(
    i3d: I3DFeatures,
    mine: Sequence[int],
    real_features: list[torch.Tensor],
    fake_features: list[torch.Tensor],
    count: int,
    spec: Any,
    split: str,
    real_stats: str | Path | None,
) -> dict[str, Any]:
    empty = torch.zeros(0, FEATURE_DIM, dtype=torch.float64)
    real = gather_rows_by_index(
        list(mine), torch.cat(real_features) if real_features else empty, count
    )
    fake = gather_rows_by_index(
        list(mine), torch.cat(fake_features) if fake_features else empty, count
    )
    protocol = make_protocol(
        split,
        count,
        i3d.weights_metadata,
        frames=spec.num_frames,
        stride=spec.frame_stride,
        fps=spec.fps,
    )
    if real_stats is not None:
        real_gaussian = load_or_compute_stats(real_stats, protocol, lambda: real)
    else:
        real_gaussian = FeatureStats.from_features(real)
    result = fvd(real_gaussian, FeatureStats.from_features(fake), protocol)
    if not math.isfinite(result.value):
        raise ValueError(f"rFVD is not finite: {result.value}")
    return {"rfvd": result.value, "reason": "computed", **result.protocol}


def format_table(result: dict[str, Any]) -> str:
    """Return the summary as a Markdown table followed by the protocol line."""
    summary = result["summary"]
    rfvd = "-" if summary["rfvd"] is None else f"{summary['rfvd']:.2f}"
    lines = [
        "| clips | PSNR (dB) | SSIM | LPIPS | rFVD | tokens per clip |",
        "|---|---|---|---|---|---|",
        f"| {summary['clips']} | {summary['psnr']:.2f} | {summary['ssim']:.4f} | "
        f"{summary['lpips']:.4f} | {rfvd} | {summary['tokens']:.1f} |",
        "",
        f"assignment: {result['protocol']['assignment']}; clips: {result['protocol']['clip']}; "
        f"rFVD: {result['protocol']['fvd']['reason']}",
    ]
    return "\n".join(lines)
