"""A resumable folder of Parquet shards with an index of done clips, shared by the label store and the token export.

Layout::

    meta.json            the settings the rows depend on; a rerun must pass the same ones
    shards/NAME.parquet  rows of some clips
    index/NAME.json      the clip keys of shard NAME (and what the subclass adds)

Every file is written to a temporary name and renamed into place (``os.replace`` is atomic on
POSIX), so a reader never sees half a file. A shard is written before its index entry. A clip is
done when a shard contains it: an index entry missing after a kill between the two writes is
rebuilt from the shard, so a killed run never recomputes or duplicates a finished shard. Shard
names start with the writing process's index, and each process removes only its own leftover
temporary files.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SHARDS_DIRNAME = "shards"
INDEX_DIRNAME = "index"
META_NAME = "meta.json"
TMP_SUFFIX = ".tmp"


def load_pandas(purpose: str):
    """Import pandas with pyarrow for Parquet, or raise an ImportError with the install command."""
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  # pandas needs it for Parquet
    except ImportError as error:
        raise ImportError(f"{purpose} needs pandas and pyarrow ({error}): pip install 'evatok[train]'") from error
    return pd


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ShardedFolder:
    """Settings, Parquet shards and the index of done clips; subclasses define the rows."""

    # Names used in messages, for example "label folder" and "evatok search".
    kind = "shard folder"
    writer_command = "evatok"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shards_dir = self.root / SHARDS_DIRNAME
        self.index_dir = self.root / INDEX_DIRNAME

    def pandas(self):
        """Return pandas, or raise an ImportError that names this folder's kind."""
        return load_pandas(f"the {self.kind}")

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
                f"{path} was written with other settings ({details}): write to a new {self.kind}, "
                "or rerun with the original settings to resume"
            )

    def meta(self) -> dict[str, Any]:
        """Return the settings the rows were written with."""
        path = self.root / META_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {self.root} is not a {self.kind}; write one with `{self.writer_command}`"
            )
        return json.loads(path.read_text())

    # ----- shards and index ------------------------------------------------------------------

    @staticmethod
    def shard_prefix(process_index: int) -> str:
        """Return the name prefix of the shards written by one process."""
        return f"part-{process_index:04d}-"

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

    def shard_names(self) -> list[str]:
        """Return the names of the finished shards, sorted."""
        return sorted(path.name[: -len(".parquet")] for path in self.shards_dir.glob("part-*.parquet"))

    def next_shard_name(self, process_index: int) -> str:
        """Return an unused shard name for process ``process_index``."""
        prefix = self.shard_prefix(process_index)
        numbers = [int(name[len(prefix) :]) for name in self.shard_names() if name.startswith(prefix)]
        return f"{prefix}{max(numbers, default=-1) + 1:06d}"

    def rebuilt_index_entry(self, name: str, clip_keys: list[str], rows: int) -> dict[str, Any]:
        """Return the index entry of shard ``name`` rebuilt from its clip keys (subclasses add fields)."""
        return {"shard": name, "clips": sorted(set(clip_keys)), "rows": rows}

    def index_entry(self, name: str) -> dict[str, Any]:
        """Return the index entry of shard ``name``, rebuilding it from the shard when missing."""
        path = self.index_dir / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        frame = self.pandas().read_parquet(self.shards_dir / f"{name}.parquet", columns=["clip_key"])
        entry = self.rebuilt_index_entry(name, list(frame["clip_key"]), len(frame))
        logger.warning("index entry of shard %s was missing (interrupted run): rebuilt it from the shard", name)
        atomic_write_text(path, json.dumps(entry) + "\n")
        return entry

    def done_clips(self) -> set[str]:
        """Return the keys of every clip some finished shard contains."""
        done: set[str] = set()
        for name in self.shard_names():
            done.update(self.index_entry(name)["clips"])
        return done

    def write_frame(self, process_index: int, frame: Any, entry: dict[str, Any]) -> str:
        """Write ``frame`` as the next shard of a process and then ``entry`` as its index; return its name."""
        name = self.next_shard_name(process_index)
        path = self.shards_dir / f"{name}.parquet"
        tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        atomic_write_text(self.index_dir / f"{name}.json", json.dumps({"shard": name, **entry}) + "\n")
        return name

    def read_shards(self, sort_by: list[str]):
        """Return every stored row as one pandas DataFrame, sorted by ``sort_by``."""
        pd = self.pandas()
        names = self.shard_names()
        if not names:
            raise FileNotFoundError(f"no shards in {self.shards_dir}: run `{self.writer_command}` first")
        frame = pd.concat(
            [pd.read_parquet(self.shards_dir / f"{name}.parquet") for name in names], ignore_index=True
        )
        return frame.sort_values(sort_by, kind="stable").reset_index(drop=True)
