"""Datasets: listing, manifests, labels, stable splits and the clip Dataset with its cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from evatok.video import (
    ClipDataset,
    ClipSpec,
    VideoDecodeError,
    VideoEntry,
    labels_from_folders,
    list_videos,
    read_manifest,
    split_by_file,
)

SPEC = ClipSpec(num_frames=8, height=32, width=32, frame_stride=4)


@pytest.fixture()
def labelled_folder(tmp_path: Path, videos_dir: Path) -> Path:
    """Build root/<class>/<file> with links to real files, one undecodable, and a text file."""
    layout = {
        "cooking/pancake.mkv": "clips/decord__flipping_a_pancake.mkv",
        "cooking/flower.mp4": "clips/elastictok__flower.mp4",
        "signs/again.mkv": "clips/intel__asl_gestures_again.mkv",
        "signs/nested/raw.264": "clips/openh264__BA1_FT_C.264",
        "signs/short.jsv": "edge/short/openh264__BASQP1_Sony_C.jsv",
        "broken/corrupted.mp4": "edge/undecodable/decord__corrupted.mp4",
    }
    root = tmp_path / "videos"
    for name, source in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(videos_dir / source)
    (root / "signs" / "README.txt").write_text("not a video")
    return root


def test_list_videos_recursive_by_suffix(labelled_folder: Path) -> None:
    names = [path.relative_to(labelled_folder).as_posix() for path in list_videos(labelled_folder)]
    assert names == [
        "broken/corrupted.mp4",
        "cooking/flower.mp4",
        "cooking/pancake.mkv",
        "signs/again.mkv",
        "signs/nested/raw.264",
        "signs/short.jsv",
    ]


def test_labels_from_first_subfolder(labelled_folder: Path) -> None:
    entries = labels_from_folders(list_videos(labelled_folder), labelled_folder)
    labels = {entry.path.name: entry.label for entry in entries}
    assert labels["raw.264"] == "signs"
    assert labels["pancake.mkv"] == "cooking"


def test_manifest_csv_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("path,label\na/x.mp4,cat\n/abs/y.mkv,\n")
    (tmp_path / "list.tsv").write_text("file\tnote\nz.264\tsomething\n")
    csv_entries = read_manifest(tmp_path / "list.csv")
    assert csv_entries == [VideoEntry(tmp_path / "a" / "x.mp4", "cat"), VideoEntry(Path("/abs/y.mkv"), None)]
    assert read_manifest(tmp_path / "list.tsv") == [VideoEntry(tmp_path / "z.264", None)]
    (tmp_path / "bad.csv").write_text("name\nq.mp4\n")
    with pytest.raises(ValueError, match="'file' or 'path' column"):
        read_manifest(tmp_path / "bad.csv")


def test_shared_manifest_reads_all_clips(videos_dir: Path) -> None:
    entries = read_manifest(videos_dir / "MANIFEST.tsv", root=videos_dir / "clips")
    assert len(entries) == 117
    assert all(entry.path.is_file() for entry in entries)
    assert all(entry.label is None for entry in entries)


def test_split_stable_per_file() -> None:
    paths = [Path(f"/data/video_{i:03d}.mp4") for i in range(400)]
    train, held_out = split_by_file(paths, 0.25, seed=3)
    assert len(train) + len(held_out) == 400
    assert 70 <= len(held_out) <= 130
    # A file's side does not depend on the other files or their order, or on the parent folder.
    again_train, again_held = split_by_file(list(reversed(paths[:100])), 0.25, seed=3)
    assert set(again_held) == set(held_out) & set(paths[:100])
    moved = [Path("/elsewhere") / path.name for path in held_out]
    assert split_by_file(moved, 0.25, seed=3)[1] == moved
    assert split_by_file(paths, 0.25, seed=4)[1] != held_out


def test_dataset_lists_bad_files_and_respects_fraction(labelled_folder: Path) -> None:
    entries = labels_from_folders(list_videos(labelled_folder), labelled_folder)
    with pytest.raises(VideoDecodeError, match="1 of 6 videos are unreadable"):
        ClipDataset(entries, SPEC, max_bad_fraction=0.1)
    dataset = ClipDataset(entries, SPEC, max_bad_fraction=0.2)
    assert [path.name for path, _ in dataset.bad_files] == ["corrupted.mp4"]
    assert dataset.classes == ["broken", "cooking", "signs"]
    # Sampled frames (every 4th): pancake 78, flower 14, again 20, raw 75, short 1 (padded).
    per_file: dict[str, int] = {}
    for path, _, _, _ in dataset.items:
        per_file[Path(path).name] = per_file.get(Path(path).name, 0) + 1
    assert per_file == {"flower.mp4": 1, "pancake.mkv": 9, "again.mkv": 2, "raw.264": 9, "short.jsv": 1}
    item = dataset[len(dataset) - 1]
    assert item["video"].shape == (3, 8, 32, 32)
    assert item["mask"].tolist() == [True] + [False] * 7
    assert item["label"] == 2


def test_dataset_skip_policy_counts_short(labelled_folder: Path) -> None:
    spec = ClipSpec(num_frames=8, height=32, width=32, frame_stride=4, short_policy="skip")
    dataset = ClipDataset(list_videos(labelled_folder), spec, max_bad_fraction=0.5, max_clips_per_video=2)
    assert [path.name for path in dataset.skipped_short] == ["short.jsv"]
    assert len(dataset) == 2 + 1 + 2 + 2
    assert dataset.items[0][1:] == (0, -1, 8)


def test_dataloader_workers_and_cache(labelled_folder: Path, tmp_path: Path) -> None:
    paths = [
        labelled_folder / "cooking" / "flower.mp4",
        labelled_folder / "signs" / "again.mkv",
        labelled_folder / "broken" / "corrupted.mp4",
    ]
    spec = ClipSpec(num_frames=8, height=32, width=32, frame_stride=2, crop="random")
    cache = tmp_path / "cache"
    dataset = ClipDataset(paths, spec, cache_dir=cache, seed=5, max_bad_fraction=0.5)
    pickle.loads(pickle.dumps(dataset))
    # The caught decode error and this decode in the parent leave FFmpeg objects in reference
    # cycles, which a forked worker must not be the one to free.
    peek = dataset[0]["video"]
    loader = DataLoader(dataset, batch_size=2, num_workers=1)
    first = torch.cat([batch["video"] for batch in loader])
    assert torch.equal(first[0], peek)
    assert first.shape == (len(dataset), 3, 8, 32, 32)
    assert len(list(cache.glob("*.npy"))) == len(dataset)
    assert len(list(cache.glob("*.json"))) == 2
    # A second pass reads the cache and, with the same epoch, the same random crops.
    second = torch.cat([dataset[i]["video"].unsqueeze(0) for i in range(len(dataset))])
    assert torch.equal(first, second)
    dataset.set_epoch(1)
    third = torch.cat([dataset[i]["video"].unsqueeze(0) for i in range(len(dataset))])
    assert not torch.equal(first, third)
    assert ClipDataset(paths, spec, cache_dir=cache, seed=5, max_bad_fraction=0.5).items == dataset.items
