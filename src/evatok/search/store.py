"""The label store: per-assignment search results in Parquet shards, with an index of done clips.

Layout of a label folder::

    meta.json            settings the labels depend on (proxy, clip geometry, strategy, ...)
    stats.json           reward statistics, measured once and reused by reruns
    shards/NAME.parquet  one row per evaluated (clip, assignment): LPIPS, MSE, PSNR, tokens
    index/NAME.json      the clips of shard NAME and each clip's best assignment at the run's w_q

Every file is written to a temporary name and renamed into place (``os.replace`` is atomic on
POSIX), so a reader never sees half a file. A shard is written before its index entry. A clip is
done when a shard holds it: an index entry missing after a kill between the two writes is rebuilt
from the shard, so a killed run never recomputes or duplicates a finished shard. Shard names start
with the writing process's index, and each process removes only its own leftover temporary files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evatok.search.reward import Reward, RewardStats
from evatok.sharded import ShardedFolder

logger = logging.getLogger(__name__)

STATS_NAME = "stats.json"


@dataclass
class ClipLabels:
    """Search results of one clip, ready to be written as rows of a shard."""

    clip_key: str  # "<video path relative to the video root>#<clip number>"
    video: str
    clip_number: int
    num_valid: int
    indices: np.ndarray  # (n,) class index of each evaluated assignment
    assignments: np.ndarray  # (n, blocks) token counts
    lpips: np.ndarray
    mse: np.ndarray
    psnr: np.ndarray
    best_index: int  # class index of the best evaluated assignment at the run's w_q

    def rows(self) -> dict[str, Any]:
        """Return the columns of this clip's rows."""
        n = len(self.indices)
        return {
            "clip_key": [self.clip_key] * n,
            "video": [self.video] * n,
            "clip_number": np.full(n, self.clip_number, dtype=np.int64),
            "num_valid": np.full(n, self.num_valid, dtype=np.int64),
            "assignment_index": np.asarray(self.indices, dtype=np.int64),
            "assignment": [list(map(int, row)) for row in self.assignments],
            "tokens": np.asarray(self.assignments, dtype=np.int64).sum(axis=1),
            "lpips": np.asarray(self.lpips, dtype=np.float64),
            "mse": np.asarray(self.mse, dtype=np.float64),
            "psnr": np.asarray(self.psnr, dtype=np.float64),
        }


class LabelStore(ShardedFolder):
    """A label folder: settings, reward statistics, Parquet shards and the index of done clips."""

    kind = "label folder"
    writer_command = "evatok search"

    # ----- statistics ------------------------------------------------------------------------

    @property
    def stats_path(self) -> Path:
        """Where the reward statistics are stored."""
        return self.root / STATS_NAME

    def load_stats(self) -> RewardStats | None:
        """Return the stored reward statistics, or None before they are measured."""
        return RewardStats.load(self.stats_path) if self.stats_path.is_file() else None

    def save_stats(self, stats: RewardStats) -> None:
        """Store the reward statistics."""
        stats.save(self.stats_path)

    # ----- shards ----------------------------------------------------------------------------

    def rebuilt_index_entry(self, name: str, clip_keys: list[str], rows: int) -> dict[str, Any]:
        """Return a rebuilt index entry; the best assignments at the run's w_q are not recovered."""
        return {**super().rebuilt_index_entry(name, clip_keys, rows), "best_index": {}}

    def write_shard(self, process_index: int, clips: Sequence[ClipLabels]) -> str:
        """Write one shard with the rows of ``clips`` and then its index entry; return its name."""
        if not clips:
            raise ValueError("write_shard got no clips")
        columns: dict[str, list[Any]] = {}
        for clip in clips:
            for key, values in clip.rows().items():
                columns.setdefault(key, []).extend(list(values))
        frame = self.pandas().DataFrame(columns)
        entry = {
            "clips": [clip.clip_key for clip in clips],
            "best_index": {clip.clip_key: int(clip.best_index) for clip in clips},
            "rows": len(frame),
        }
        return self.write_frame(process_index, frame, entry)

    def read(self):
        """Return every stored row as one pandas DataFrame, sorted by clip and assignment."""
        return self.read_shards(["clip_key", "assignment_index"])

    def labels(self, w_q: float | None = None, w_l: float | None = None):
        """Return one row per clip with its best assignment, recomputed from the stored values.

        ``w_q`` defaults to the run's weight; no clip is decoded again.
        """
        meta = self.meta()
        stats = self.load_stats()
        if stats is None:
            raise FileNotFoundError(f"{self.stats_path} not found: the reward statistics are missing")
        if w_q is None:
            w_q, w_l = meta["w_q"], meta.get("w_l")
        reward = Reward(stats, w_q=float(w_q), w_l=w_l)
        frame = self.read()
        frame["reward"] = reward(frame["lpips"].to_numpy(), frame["tokens"].to_numpy())
        best_rows = frame.groupby("clip_key", sort=True)["reward"].idxmax()
        best = frame.loc[best_rows].reset_index(drop=True)
        counts = frame.groupby("clip_key", sort=True).size().to_numpy()
        best = best.rename(columns={"assignment_index": "best_index", "assignment": "best_assignment"})
        best["evaluated"] = counts
        return best[
            ["clip_key", "video", "clip_number", "best_index", "best_assignment", "tokens", "lpips",
             "psnr", "reward", "evaluated"]
        ]
