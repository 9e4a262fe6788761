"""The token export folder: per-clip codes, assignments and class labels in Parquet shards.

Layout of an export folder::

    meta.json            tokenizer and router (or uniform assignment), clip sampling, class names
    shards/NAME.parquet  one row per clip: key, label, class index, assignment, total tokens, code ids
    index/NAME.json      the clip keys of shard NAME

Writes follow the label store of the assignment search (``evatok.search.store``). Every file is
written under a temporary name and renamed into place, a shard before its index entry. An index
entry lost to a kill between the two writes is rebuilt from its shard. Shard names start with
the writing process's index, and a clip is done when a shard contains it.

TODO: the folder bookkeeping (meta check, shard and index names, temporary-file cleanup) repeats
`evatok.search.store.LabelStore` line for line; one shared base class should serve both.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evatok.search.store import TMP_SUFFIX, atomic_write_text

logger = logging.getLogger(__name__)

SHARDS_DIRNAME = "shards"
INDEX_DIRNAME = "index"
META_NAME = "meta.json"
COLUMNS = ("clip_key", "video", "clip_number", "num_valid", "label", "class_index", "assignment", "tokens", "ids")


def _pandas():
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  # pandas needs it for Parquet
    except ImportError as error:
        raise ImportError(
            f"the token export needs pandas and pyarrow ({error}): pip install 'evatok[train]'"
        ) from error
    return pd


@dataclass
class ClipTokens:
    """The tokens of one exported clip."""

    clip_key: str  # "<video path below the video folder>#<clip number>"
    video: str
    clip_number: int
    num_valid: int  # real frames; the rest of the clip repeats the last one
    label: str
    class_index: int
    assignment: tuple[int, ...]
    ids: np.ndarray  # (sum of assignment,) code ids, block by block

    def row(self) -> dict[str, Any]:
        """Return this clip as one row of a shard."""
        return {
            "clip_key": self.clip_key,
            "video": self.video,
            "clip_number": int(self.clip_number),
            "num_valid": int(self.num_valid),
            "label": self.label,
            "class_index": int(self.class_index),
            "assignment": [int(count) for count in self.assignment],
            "tokens": int(sum(self.assignment)),
            "ids": np.asarray(self.ids, dtype=np.int32),
        }


class TokenStore:
    """An export folder: settings, Parquet shards of clip tokens and the index of done clips."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shards_dir = self.root / SHARDS_DIRNAME
        self.index_dir = self.root / INDEX_DIRNAME

    # ----- settings --------------------------------------------------------------------------

    def create(self, meta: dict[str, Any]) -> None:
        """Create the folder and write ``meta``, or check that an existing folder has the same."""
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        path = self.root / META_NAME
        if not path.is_file():
            atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
            return
        existing = json.loads(path.read_text())
        # A JSON round trip turns tuples into lists, so compare in that form.
        meta = json.loads(json.dumps(meta))
        changed = sorted(key for key in set(existing) | set(meta) if existing.get(key) != meta.get(key))
        if changed:
            details = "; ".join(f"{key}: {existing.get(key)!r} -> {meta.get(key)!r}" for key in changed)
            raise ValueError(
                f"{path} was written with other settings ({details}): export to a new folder, "
                "or rerun with the original settings to resume"
            )

    def meta(self) -> dict[str, Any]:
        """Return the settings the tokens were exported with."""
        path = self.root / META_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {self.root} is not a token export; write one with `evatok export-tokens`"
            )
        return json.loads(path.read_text())

    # ----- shards and index ------------------------------------------------------------------

    @staticmethod
    def shard_prefix(process_index: int) -> str:
        """Return the name prefix of the shards written by one process."""
        return f"part-{process_index:04d}-"

    def remove_temporary_files(self, process_index: int) -> int:
        """Delete temporary files a killed run of process ``process_index`` left; return how many."""
        removed = 0
        for folder in (self.shards_dir, self.index_dir):
            for path in folder.glob(f"{self.shard_prefix(process_index)}*{TMP_SUFFIX}"):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("removed %d temporary files left by an interrupted export in %s", removed, self.root)
        return removed

    def shard_names(self) -> list[str]:
        """Return the names of the finished shards, sorted."""
        return sorted(path.name[: -len(".parquet")] for path in self.shards_dir.glob("part-*.parquet"))

    def next_shard_name(self, process_index: int) -> str:
        """Return an unused shard name for process ``process_index``."""
        prefix = self.shard_prefix(process_index)
        numbers = [int(name[len(prefix) :]) for name in self.shard_names() if name.startswith(prefix)]
        return f"{prefix}{max(numbers, default=-1) + 1:06d}"

    def _index_entry(self, name: str) -> dict[str, Any]:
        path = self.index_dir / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        frame = _pandas().read_parquet(self.shards_dir / f"{name}.parquet", columns=["clip_key"])
        entry = {"shard": name, "clips": sorted(frame["clip_key"]), "rows": len(frame)}
        logger.warning("index entry of shard %s was missing (interrupted export): rebuilt it from the shard", name)
        atomic_write_text(path, json.dumps(entry) + "\n")
        return entry

    def done_clips(self) -> set[str]:
        """Return the keys of every clip some finished shard contains."""
        done: set[str] = set()
        for name in self.shard_names():
            done.update(self._index_entry(name)["clips"])
        return done

    def write_shard(self, process_index: int, clips: Sequence[ClipTokens]) -> str:
        """Write one shard with ``clips`` and then its index entry; return the shard's name."""
        if not clips:
            raise ValueError("write_shard got no clips")
        pd = _pandas()
        frame = pd.DataFrame([clip.row() for clip in clips], columns=list(COLUMNS))
        name = self.next_shard_name(process_index)
        path = self.shards_dir / f"{name}.parquet"
        tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        entry = {"shard": name, "clips": [clip.clip_key for clip in clips], "rows": len(frame)}
        atomic_write_text(self.index_dir / f"{name}.json", json.dumps(entry) + "\n")
        return name

    def read(self):
        """Return every exported clip as one pandas DataFrame, sorted by clip key."""
        pd = _pandas()
        names = self.shard_names()
        if not names:
            raise FileNotFoundError(f"no shards in {self.shards_dir}: run `evatok export-tokens` first")
        frame = pd.concat(
            [pd.read_parquet(self.shards_dir / f"{name}.parquet") for name in names], ignore_index=True
        )
        return frame.sort_values("clip_key", kind="stable").reset_index(drop=True)


# ----- summary -----------------------------------------------------------------------------------


def length_summary(totals: Sequence[int]) -> dict[str, Any]:
    """Return count, mean, min and max of per-clip token totals and a histogram per total."""
    values = np.asarray(totals, dtype=np.int64)
    if values.size == 0:
        raise ValueError("no clips to summarise")
    return {
        "clips": int(values.size),
        "mean_tokens": float(values.mean()),
        "min_tokens": int(values.min()),
        "max_tokens": int(values.max()),
        "histogram": {int(total): int(count) for total, count in sorted(Counter(values.tolist()).items())},
    }


def format_summary(summary: dict[str, Any], width: int = 40) -> str:
    """Return the length summary as text: one line of statistics and one bar per total."""
    lines = [
        f"{summary['clips']} clips, tokens per clip: mean {summary['mean_tokens']:.1f}, "
        f"min {summary['min_tokens']}, max {summary['max_tokens']}",
        "tokens  clips",
    ]
    largest = max(summary["histogram"].values())
    for total, count in summary["histogram"].items():
        bar = "#" * max(1, round(width * count / largest))
        lines.append(f"{total:>6}  {count:>5}  {bar}")
    return "\n".join(lines)
