"""The token export folder: per-clip codes, assignments and class labels in Parquet shards.

Layout of an export folder::

    meta.json            tokenizer and router (or uniform assignment), clip sampling, class names
    shards/NAME.parquet  one row per clip: key, label, class index, assignment, total tokens, code ids
    index/NAME.json      the clip keys of shard NAME

The folder bookkeeping (atomic writes, shard names per process, rebuilt index entries) is the
label store's, from ``evatok.sharded.ShardedFolder``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evatok.sharded import ShardedFolder

logger = logging.getLogger(__name__)

COLUMNS = ("clip_key", "video", "clip_number", "num_valid", "label", "class_index", "assignment", "tokens", "ids")


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


class TokenStore(ShardedFolder):
    """An export folder: settings, Parquet shards of clip tokens and the index of done clips."""

    kind = "token export"
    writer_command = "evatok export-tokens"

    def write_shard(self, process_index: int, clips: Sequence[ClipTokens]) -> str:
        """Write one shard with ``clips`` and then its index entry; return the shard's name."""
        if not clips:
            raise ValueError("write_shard got no clips")
        frame = self.pandas().DataFrame([clip.row() for clip in clips], columns=list(COLUMNS))
        entry = {"clips": [clip.clip_key for clip in clips], "rows": len(frame)}
        return self.write_frame(process_index, frame, entry)

    def read(self):
        """Return every exported clip as one pandas DataFrame, sorted by clip key."""
        return self.read_shards(["clip_key"])


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
