"""Video datasets: file lists from folders or manifests, labels, splits and a clip Dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from evatok.video.clips import (
    ClipIndex,
    ClipSpec,
    crop_clip,
    index_clips,
    read_clip,
    to_model_input,
)
from evatok.video.io import VIDEO_SUFFIXES, VideoDecodeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoEntry:
    """A video file and its optional class label."""

    path: Path
    label: str | None = None


def list_videos(root: str | Path, suffixes: Iterable[str] = VIDEO_SUFFIXES) -> list[Path]:
    """Return every file under `root` (recursively) whose suffix is in `suffixes`, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    allowed = {suffix.lower() for suffix in suffixes}
    return sorted(path for path in root.rglob("*") if path.is_file() and path.suffix.lower() in allowed)


def labels_from_folders(paths: Sequence[Path], root: str | Path) -> list[VideoEntry]:
    """Label each file with the name of its first sub-folder below `root` (files at root: None)."""
    root = Path(root)
    entries = []
    for path in paths:
        parts = Path(path).relative_to(root).parts
        entries.append(VideoEntry(Path(path), parts[0] if len(parts) > 1 else None))
    return entries


def read_manifest(manifest: str | Path, root: str | Path | None = None) -> list[VideoEntry]:
    """Read a CSV or TSV manifest with a `file` or `path` column and an optional `label` column.

    Relative paths are resolved against `root`, by default the manifest's folder. The delimiter
    is a tab for .tsv files and a comma otherwise.
    """
    manifest = Path(manifest)
    base = Path(root) if root is not None else manifest.parent
    delimiter = "\t" if manifest.suffix.lower() == ".tsv" else ","
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        path_column = next((name for name in ("file", "path") if name in columns), None)
        if path_column is None:
            raise ValueError(f"{manifest}: no 'file' or 'path' column (columns: {columns}); add one")
        entries = []
        for row in reader:
            path = Path(row[path_column])
            if not path.is_absolute():
                path = base / path
            entries.append(VideoEntry(path, row.get("label") or None))
    return entries


def class_names(entries: Sequence[VideoEntry]) -> list[str]:
    """Return the sorted distinct labels; a label's position is its class index."""
    return sorted({entry.label for entry in entries if entry.label is not None})


def split_by_file(
    paths: Sequence[Path], held_out_fraction: float, seed: int = 0, root: str | Path | None = None
) -> tuple[list[Path], list[Path]]:
    """Split files into (train, held_out) by a hash of each file's name and the seed.

    The key is the path relative to `root`, or the file name without `root`, so a file lands on
    the same side on every machine and whatever other files are in the list. The held-out share
    approximates `held_out_fraction` (exact only in expectation).
    """
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    train, held_out = [], []
    for path in paths:
        key = Path(path).relative_to(root).as_posix() if root is not None else Path(path).name
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        (held_out if draw < held_out_fraction else train).append(Path(path))
    return train, held_out


def _file_key(path: Path, spec: ClipSpec) -> str:
    """Return a cache key that changes when the file or the clip spec changes."""
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{spec}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ClipDataset(Dataset):
    """A torch Dataset of every clip of a list of videos.

    Building it decodes each file once (without colour conversion) to count the clips that really
    decode. Files that raise VideoDecodeError are listed in `bad_files`; more than
    `max_bad_fraction` of them raises. Short files follow `spec.short_policy`, and skipped ones are
    listed in `skipped_short`. The dataset holds only paths and numbers, so it pickles into
    DataLoader workers, and each item opens its file in the worker.

    Items are dicts: "video" float (3, T, H, W) in [-1, 1], "mask" bool (T,) of real frames,
    "label" class index (-1 without labels), "path" and "clip". With `crop="random"` the window
    depends on (seed, epoch, item index), so a run is reproducible; call `set_epoch` each epoch.

    `cache_dir` stores each clip once as resized, uncropped uint8 .npy (and the clip index as JSON),
    so later epochs and runs skip decoding.
    """

    def __init__(
        self,
        videos: Sequence[VideoEntry | Path | str],
        spec: ClipSpec,
        *,
        classes: Sequence[str] | None = None,
        max_bad_fraction: float = 0.0,
        max_clips_per_video: int | None = None,
        cache_dir: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self.seed = seed
        self.epoch = 0
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        entries = [v if isinstance(v, VideoEntry) else VideoEntry(Path(v)) for v in videos]
        self.classes = list(classes) if classes is not None else class_names(entries)
        class_index = {name: i for i, name in enumerate(self.classes)}

        self.bad_files: list[tuple[Path, str]] = []
        self.skipped_short: list[Path] = []
        self.items: list[tuple[str, int, int, int]] = []  # (path, clip number, label, num_valid)
        for entry in entries:
            try:
                index = self._index(entry.path)
            except VideoDecodeError as error:
                logger.warning("skipping unreadable video %s: %s", error.path, error.reason)
                self.bad_files.append((error.path, error.reason))
                continue
            if index.num_clips == 0:
                self.skipped_short.append(entry.path)
                continue
            if entry.label is not None and entry.label not in class_index:
                raise ValueError(f"{entry.path}: label {entry.label!r} is not in classes {self.classes}; add it")
            label = class_index[entry.label] if entry.label is not None else -1
            for clip_number in self._choose_clips(index.num_clips, max_clips_per_video):
                self.items.append((str(entry.path), clip_number, label, index.num_valid(clip_number)))

        if self.skipped_short:
            logger.info("%d short videos skipped (fewer than %d sampled frames)", len(self.skipped_short), spec.num_frames)
        bad_fraction = len(self.bad_files) / max(1, len(entries))
        if bad_fraction > max_bad_fraction:
            listing = "\n".join(f"  {path}: {reason}" for path, reason in self.bad_files)
            raise VideoDecodeError(
                self.bad_files[0][0],
                f"{len(self.bad_files)} of {len(entries)} videos are unreadable ({bad_fraction:.1%} > "
                f"max_bad_fraction {max_bad_fraction:.1%}); remove them or raise max_bad_fraction:\n{listing}",
            )

    @staticmethod
    def _choose_clips(num_clips: int, limit: int | None) -> list[int]:
        """Return clip numbers: all, or `limit` evenly spaced ones (deterministic)."""
        if limit is None or num_clips <= limit:
            return list(range(num_clips))
        return sorted({int(round(x)) for x in np.linspace(0, num_clips - 1, limit)})

    def _index(self, path: Path) -> ClipIndex:
        """Index one file, reading and writing the cached index when a cache folder is set."""
        if not path.is_file():
            raise VideoDecodeError(path, "file not found")
        cache_file = self.cache_dir / f"{_file_key(path, self.spec)}.json" if self.cache_dir else None
        if cache_file is not None and cache_file.is_file():
            data = json.loads(cache_file.read_text())
            return ClipIndex(path=path, **data)
        index = index_clips(path, self.spec, include_tail=False)
        if cache_file is not None:
            data = {k: v for k, v in vars(index).items() if k != "path"}
            _atomic_write_bytes(cache_file, json.dumps(data).encode())
        return index

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds random crops."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _load_frames(self, path: Path, clip_number: int) -> np.ndarray:
        """Return the resized, uncropped uint8 frames of one clip, through the cache if set."""
        if self.cache_dir is None:
            return read_clip(path, self.spec, clip_number, crop=False).frames
        cache_file = self.cache_dir / f"{_file_key(path, self.spec)}_{clip_number}.npy"
        if cache_file.is_file():
            return np.load(cache_file)
        frames = read_clip(path, self.spec, clip_number, crop=False).frames
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, frames)
        os.replace(tmp, cache_file)
        return frames

    def __getitem__(self, item: int) -> dict[str, object]:
        path_text, clip_number, label, num_valid = self.items[item]
        frames = self._load_frames(Path(path_text), clip_number)
        rng = np.random.default_rng([self.seed, self.epoch, item]) if self.spec.crop == "random" else None
        frames = crop_clip(frames, self.spec, rng)
        mask = torch.zeros(self.spec.num_frames, dtype=torch.bool)
        mask[:num_valid] = True
        return {
            "video": to_model_input(frames),
            "mask": mask,
            "label": label,
            "path": path_text,
            "clip": clip_number,
        }


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary name so concurrent workers never read half of it."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
