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

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evatok.search.reward import Reward, RewardStats

logger = logging.getLogger(__name__)

SHARDS_DIRNAME = "shards"
INDEX_DIRNAME = "index"
META_NAME = "meta.json"
STATS_NAME = "stats.json"
TMP_SUFFIX = ".tmp"


def _pandas():
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  # pandas needs it for Parquet
    except ImportError as error:
        raise ImportError(
            f"the label store needs pandas and pyarrow ({error}): pip install 'evatok[train]'"
        ) from error
    return pd


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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


class LabelStore:
    """A label folder: settings, reward statistics, Parquet shards and the index of done clips."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shards_dir = self.root / SHARDS_DIRNAME
        self.index_dir = self.root / INDEX_DIRNAME

    # ----- settings and statistics ----------------------------------------------------------

    def create(self, meta: dict[str, Any]) -> None:
        """Create the folder and write ``meta``, or check that an existing folder has the same."""
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        path = self.root / META_NAME
        if not path.is_file():
            atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
            return
        existing = json.loads(path.read_text())
        changed = sorted(key for key in set(existing) | set(meta) if existing.get(key) != meta.get(key))
        if changed:
            details = "; ".join(f"{key}: {existing.get(key)!r} -> {meta.get(key)!r}" for key in changed)
            raise ValueError(
                f"{path} was written with other settings ({details}): write to a new label folder, "
                "or rerun with the original settings to resume"
            )

    def meta(self) -> dict[str, Any]:
        """Return the settings the labels were made with."""
        path = self.root / META_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {self.root} is not a label folder")
        return json.loads(path.read_text())

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

    # ----- shards and index ----------------------------------------------------------------

    def remove_temporary_files(self, process_index: int) -> int:
        """Delete temporary files a killed run of process ``process_index`` left; return how many."""
        prefix = self.shard_prefix(process_index)
        removed = 0
        for folder in (self.shards_dir, self.index_dir):
            for path in folder.glob(f"{prefix}*{TMP_SUFFIX}"):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("removed %d temporary files left by an interrupted run in %s", removed, self.root)
        return removed

    @staticmethod
    def shard_prefix(process_index: int) -> str:
        """Return the name prefix of the shards written by one process."""
        return f"part-{process_index:04d}-"

    def shard_names(self) -> list[str]:
        """Return the names of the finished shards, sorted."""
        return sorted(path.name[: -len(".parquet")] for path in self.shards_dir.glob("part-*.parquet"))

    def next_shard_name(self, process_index: int) -> str:
        """Return an unused shard name for process ``process_index``."""
        prefix = self.shard_prefix(process_index)
        numbers = [int(name[len(prefix) :]) for name in self.shard_names() if name.startswith(prefix)]
        return f"{prefix}{max(numbers, default=-1) + 1:06d}"

    def _index_entry(self, name: str) -> dict[str, Any]:
        """Return the index entry of shard ``name``, rebuilding it from the shard when missing."""
        path = self.index_dir / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        pd = _pandas()
        frame = pd.read_parquet(self.shards_dir / f"{name}.parquet", columns=["clip_key"])
        entry = {"shard": name, "clips": sorted(set(frame["clip_key"])), "best_index": {}, "rows": len(frame)}
        logger.warning("index entry of shard %s was missing (interrupted run): rebuilt it from the shard", name)
        atomic_write_text(path, json.dumps(entry) + "\n")
        return entry

    def done_clips(self) -> set[str]:
        """Return the keys of every clip some finished shard holds."""
        done: set[str] = set()
        for name in self.shard_names():
            done.update(self._index_entry(name)["clips"])
        return done

    def write_shard(self, process_index: int, clips: Sequence[ClipLabels]) -> str:
        """Write one shard with the rows of ``clips`` and then its index entry; return its name."""
        if not clips:
            raise ValueError("write_shard got no clips")
        pd = _pandas()
        columns: dict[str, list[Any]] = {}
        for clip in clips:
            for key, values in clip.rows().items():
                columns.setdefault(key, []).extend(list(values))
        frame = pd.DataFrame(columns)
        name = self.next_shard_name(process_index)
        path = self.shards_dir / f"{name}.parquet"
        tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        entry = {
            "shard": name,
            "clips": [clip.clip_key for clip in clips],
            "best_index": {clip.clip_key: int(clip.best_index) for clip in clips},
            "rows": len(frame),
        }
        atomic_write_text(self.index_dir / f"{name}.json", json.dumps(entry) + "\n")
        return name

    # ----- reading ---------------------------------------------------------------------------

    def read(self):
        """Return every stored row as one pandas DataFrame, sorted by clip and assignment."""
        pd = _pandas()
        names = self.shard_names()
        if not names:
            raise FileNotFoundError(f"no shards in {self.shards_dir}: run `evatok search` first")
        frame = pd.concat(
            [pd.read_parquet(self.shards_dir / f"{name}.parquet") for name in names], ignore_index=True
        )
        return frame.sort_values(["clip_key", "assignment_index"], kind="stable").reset_index(drop=True)

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
