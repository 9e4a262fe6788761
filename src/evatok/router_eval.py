"""Evaluation of a router on held-out clips against the label store's per-assignment rewards.

For each held-out clip the router ranks the assignment classes. Top-1 and top-5 measure how often the
clip's best assignment (the maximum of the reward over the stored assignments) is the first or
among the first five. The percentile places the reward of the router's first choice between that
clip's worst (0) and best (100) stored assignment. The baseline is the single uniform assignment
``(k, ..., k)`` whose mean percentile over the *training* clips is highest, scored the same way
on the held-out clips.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from evatok.assignment import Assignment, AssignmentSpace
from evatok.models.router import Router
from evatok.search.reward import Reward, reward_percentile

logger = logging.getLogger(__name__)


@dataclass
class ClipRewards:
    """The stored assignments of one clip (class indices) and their rewards."""

    indices: np.ndarray
    rewards: np.ndarray

    @property
    def best_index(self) -> int:
        """Class index of the assignment with the highest reward."""
        return int(self.indices[int(np.argmax(self.rewards))])

    def percentile(self, index: int) -> float | None:
        """Return where class ``index`` lies between the worst and best reward, or None if not stored."""
        hits = np.flatnonzero(self.indices == int(index))
        if hits.size == 0:
            return None
        return reward_percentile(self.rewards, float(self.rewards[hits[0]]))


def clip_rewards(frame: Any, reward: Reward) -> dict[str, ClipRewards]:
    """Group label-store rows (clip_key, assignment_index, lpips, tokens) into rewards per clip."""
    values = reward(frame["lpips"].to_numpy(), frame["tokens"].to_numpy())
    keys = frame["clip_key"].to_numpy()
    indices = frame["assignment_index"].to_numpy().astype(np.int64)
    grouped: dict[str, ClipRewards] = {}
    order = np.argsort(keys, kind="stable")
    boundaries = np.flatnonzero(keys[order][1:] != keys[order][:-1]) + 1
    for rows in np.split(order, boundaries):
        if rows.size:
            grouped[str(keys[rows[0]])] = ClipRewards(indices[rows], np.asarray(values)[rows])
    return grouped


def mean_percentile(clips: Mapping[str, ClipRewards], choice: Mapping[str, int] | int) -> tuple[float, int]:
    """Return the mean percentile of the chosen class per clip (or one class for all) and the clips scored.

    Clips whose chosen assignment was not stored (possible after a beam search) are left out.
    """
    scores = []
    for key, rewards in clips.items():
        index = choice if isinstance(choice, int) else choice[key]
        value = rewards.percentile(index)
        if value is not None:
            scores.append(value)
    return (float(np.mean(scores)) if scores else float("nan")), len(scores)


def best_uniform(clips: Mapping[str, ClipRewards], space: AssignmentSpace) -> tuple[Assignment, float]:
    """Return the uniform assignment with the highest mean percentile over ``clips`` and that mean."""
    best: tuple[Assignment, float] | None = None
    for assignment in space.uniform_assignments():
        value, scored = mean_percentile(clips, space.index(assignment))
        if scored and (best is None or value > best[1]):
            best = (assignment, value)
    if best is None:
        raise ValueError("no clip has a stored uniform assignment: the baseline needs exhaustive or prefix labels")
    return best


@dataclass
class RouterEvaluation:
    """Held-out scores of a router beside the best uniform assignment; rates in percent."""

    clips: int
    top1: float
    top5: float
    percentile: float
    uniform_assignment: list[int]
    uniform_percentile: float
    uniform_train_percentile: float
    unscored_clips: int  # held-out clips whose router choice was not among the stored assignments

    def to_dict(self) -> dict[str, Any]:
        """Return the scores as a JSON-ready dict."""
        return asdict(self)

    def describe(self) -> str:
        """Return a few lines for the console."""
        uniform = "(" + ", ".join(map(str, self.uniform_assignment)) + ")"
        return (
            f"held-out clips: {self.clips}\n"
            f"router top-1 {self.top1:.1f}%  top-5 {self.top5:.1f}%  reward percentile {self.percentile:.1f}\n"
            f"best uniform {uniform}: reward percentile {self.uniform_percentile:.1f} "
            f"(chosen on training clips, where it scores {self.uniform_train_percentile:.1f})"
        )


def score_rankings(
    held_out: Mapping[str, ClipRewards],
    rankings: Mapping[str, Sequence[int]],
    train: Mapping[str, ClipRewards],
    space: AssignmentSpace,
) -> RouterEvaluation:
    """Score the router's class rankings (best first) of the held-out clips against their rewards."""
    missing = sorted(set(held_out) - set(rankings))
    if missing:
        raise ValueError(f"no router ranking for {len(missing)} held-out clips, for example {missing[0]}")
    if not held_out:
        raise ValueError("no held-out clips to evaluate: hold out some files or label more clips")
    top1 = top5 = 0
    for key, rewards in held_out.items():
        ranked = [int(index) for index in rankings[key]]
        top1 += ranked[0] == rewards.best_index
        top5 += rewards.best_index in ranked[:5]
    choice = {key: int(rankings[key][0]) for key in held_out}
    percentile, scored = mean_percentile(held_out, choice)
    uniform, train_percentile = best_uniform(train, space)
    uniform_percentile, _ = mean_percentile(held_out, space.index(uniform))
    return RouterEvaluation(
        clips=len(held_out),
        top1=100.0 * top1 / len(held_out),
        top5=100.0 * top5 / len(held_out),
        percentile=percentile,
        uniform_assignment=list(uniform),
        uniform_percentile=uniform_percentile,
        uniform_train_percentile=train_percentile,
        unscored_clips=len(held_out) - scored,
    )


@torch.no_grad()
def rank_clips(router: Router, dataset: Iterable, keys: Sequence[str], batch_size: int = 16, k: int = 5) -> dict[str, list[int]]:
    """Return the router's ``k`` most probable classes for every clip of ``dataset`` (best first)."""
    router.eval()
    device = next(router.parameters()).device
    rankings: dict[str, list[int]] = {}
    position = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        indices, _ = router.top_k(batch["video"].to(device), k)
        for row in indices.tolist():
            rankings[keys[position]] = row
            position += 1
    return rankings


def evaluate_on_store(
    router: Router,
    labels: str | Path,
    *,
    videos: str | Path | None = None,
    held_out_fraction: float = 0.1,
    split_seed: int = 0,
    w_q: float | None = None,
    w_l: float | None = None,
    batch_size: int = 16,
) -> RouterEvaluation:
    """Evaluate ``router`` on the held-out files of a label folder, split as in training.

    ``w_q`` None uses the search run's reward weights; ``videos`` None uses the store's folder.
    """
    from evatok.search.store import LabelStore
    from evatok.training.router import check_compatible, labeled_clips, split_videos

    store = LabelStore(labels)
    meta = store.meta()
    check_compatible(router.config, meta, Path(labels))
    stats = store.load_stats()
    if stats is None:
        raise FileNotFoundError(f"{store.stats_path} not found: the reward statistics are missing")
    if w_q is None:
        w_q, w_l = meta["w_q"], meta.get("w_l")
    rewards = clip_rewards(store.read(), Reward(stats, w_q=float(w_q), w_l=w_l))
    root = Path(videos or meta["videos"])
    train_files, held_files = split_videos(root, held_out_fraction, split_seed)
    train_videos = {path.relative_to(root).as_posix() for path in train_files}
    train = {key: value for key, value in rewards.items() if key.rsplit("#", 1)[0] in train_videos}
    best = {key: value.best_index for key, value in rewards.items()}
    dataset = labeled_clips(store, router.config, best, held_files, root)
    logger.info("evaluating the router on %d held-out clips (%d training clips for the baseline)", len(dataset), len(train))
    rankings = rank_clips(router, dataset, dataset.keys, batch_size=batch_size)
    held_out = {key: rewards[key] for key in dataset.keys}
    return score_rankings(held_out, rankings, train, router.space)
