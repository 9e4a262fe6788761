"""The data-parallel token export: videos in, a resumable folder of per-clip tokens out.

Each video is cut into clips with the tokenizer's clip geometry and a centre crop. A video
shorter than one clip is padded with its last frame, and the frames after the last whole clip
are dropped. The router picks each clip's assignment, or every clip gets the same uniform one, and the
tokenizer encodes the clip under it. Processes split the clips as in the assignment search.
Every process lists the same clips in the same order and takes those whose position modulo the
number of processes is its index, so any number of processes writes the same rows.

Class labels come from the first sub-folder name below the video folder, or from a CSV/TSV
manifest with ``path`` and ``label`` columns (paths relative to the video folder). Class indices
follow the sorted label names, which ``meta.json`` stores as ``classes``. When no video has a
label, every clip gets the single class ``unlabeled``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from evatok.assignment import Assignment
from evatok.codec import clip_spec
from evatok.export.store import ClipTokens, TokenStore, length_summary
from evatok.models.router import Router
from evatok.models.tokenizer import Tokenizer
from evatok.search.runner import accelerator_available, clip_key
from evatok.video.clips import ClipSpec
from evatok.video.datasets import (
    ClipDataset,
    VideoEntry,
    class_names,
    labels_from_folders,
    list_videos,
    read_manifest,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
UNLABELED = "unlabeled"
UNIFORM_PREFIX = "uniform:"


@dataclass
class ExportSettings:
    """Options of an export run; those that change the tokens are stored in the folder's meta."""

    batch_size: int = 8  # clips per router and tokenizer forward pass
    clips_per_shard: int = 64
    # Frame sampling; None takes the router's (the one its labels were made with), or every
    # frame for uniform assignments.
    frame_stride: int | None = None
    fps: float | None = None
    max_clips_per_video: int | None = None
    max_bad_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "clips_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}: it must be at least 1")


def parse_uniform(text: str, tokenizer: Tokenizer) -> Assignment:
    """Parse ``uniform:K`` into the assignment that gives every block K tokens."""
    if not text.startswith(UNIFORM_PREFIX):
        raise ValueError(f"invalid assignment {text!r}: write uniform:K with K one of {tokenizer.config.candidates}")
    try:
        count = int(text[len(UNIFORM_PREFIX) :])
    except ValueError as error:
        raise ValueError(f"invalid assignment {text!r}: K must be an integer token count") from error
    if count not in tokenizer.config.candidates:
        raise ValueError(f"invalid assignment {text!r}: K must be one of {tokenizer.config.candidates}")
    return tokenizer.config.space.uniform(count)


def labelled_videos(videos: Path, manifest: str | Path | None = None) -> tuple[list[VideoEntry], list[str]]:
    """Return the videos with their class labels and the sorted class names."""
    if manifest is not None:
        entries = read_manifest(manifest, root=videos)
    else:
        entries = labels_from_folders(list_videos(videos), videos)
    if not entries:
        raise FileNotFoundError(f"no videos found under {videos}: give a folder with video files")
    unlabelled = [entry for entry in entries if entry.label is None]
    if unlabelled and len(unlabelled) < len(entries):
        raise ValueError(
            f"{unlabelled[0].path} has no class label while other videos have one: put every video in a "
            "class sub-folder, or give a manifest with a label for every path"
        )
    if unlabelled:
        logger.warning("no video under %s has a class label: every clip gets the class %r", videos, UNLABELED)
        entries = [VideoEntry(entry.path, UNLABELED) for entry in entries]
    return entries, class_names(entries)


def check_router(router: Router, tokenizer: Tokenizer) -> None:
    """Raise ValueError unless the router predicts the tokenizer's assignments on its clips."""
    problems = []
    if (router.config.candidates, router.config.num_blocks) != (tokenizer.config.candidates, tokenizer.config.num_blocks):
        problems.append(
            f"candidates {router.config.candidates} over {router.config.num_blocks} blocks instead of "
            f"{tokenizer.config.candidates} over {tokenizer.config.num_blocks}"
        )
    router_clip = (router.config.frames, router.config.height, router.config.width)
    tokenizer_clip = (tokenizer.config.frames, tokenizer.config.height, tokenizer.config.width)
    if router_clip != tokenizer_clip:
        problems.append(f"clips of {router_clip} instead of {tokenizer_clip}")
    if problems:
        raise ValueError(
            "the router does not belong to the tokenizer: it has " + "; ".join(problems)
            + "; give the router trained with this tokenizer's preset"
        )


def export_spec(tokenizer: Tokenizer, router: Router | None, settings: ExportSettings) -> ClipSpec:
    """Return the clip geometry and frame sampling of the export."""
    frame_stride, fps = settings.frame_stride, settings.fps
    if frame_stride is None and fps is None and router is not None:
        frame_stride, fps = router.config.frame_stride, router.config.fps
    return clip_spec(tokenizer.config, frame_stride=frame_stride or 1, sample_fps=fps)


def export_meta(
    tokenizer: Tokenizer,
    tokenizer_source: str,
    router: Router | None,
    router_source: str | None,
    uniform: Assignment | None,
    spec: ClipSpec,
    videos: Path,
    manifest: str | Path | None,
    classes: list[str],
    settings: ExportSettings,
) -> dict[str, Any]:
    """Return the settings the tokens depend on, stored in the folder and checked on every rerun."""
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer.config.to_dict(),
        "tokenizer_source": tokenizer_source,
        "assignment": "router" if router is not None else f"{UNIFORM_PREFIX}{uniform[0]}",  # type: ignore[index]
        "router": router.config.to_dict() if router is not None else None,
        "router_source": router_source,
        "clip_spec": asdict(spec),
        "videos": str(videos.resolve()),
        "labels": str(Path(manifest).resolve()) if manifest is not None else "folders",
        "classes": classes,
        "max_clips_per_video": settings.max_clips_per_video,
    }


@torch.no_grad()
def tokenize_batch(
    tokenizer: Tokenizer, router: Router | None, uniform: Assignment | None, video: torch.Tensor
) -> tuple[list[Assignment], list[list[torch.Tensor]]]:
    """Route (or assign uniformly) and encode a batch of clips; return assignments and block ids."""
    assignments = router.predict(video) if router is not None else [uniform] * video.shape[0]
    encoding = tokenizer.encode(video, assignments)
    return assignments, [encoding.ids_of(row) for row in range(video.shape[0])]  # type: ignore[return-value]


def export_tokens(
    tokenizer: Tokenizer,
    videos: str | Path,
    out: str | Path,
    *,
    router: Router | None = None,
    uniform: Assignment | None = None,
    manifest: str | Path | None = None,
    settings: ExportSettings | None = None,
    tokenizer_source: str = "",
    router_source: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export the tokens of every clip under ``videos`` not yet in ``out``; return a summary.

    Give exactly one of ``router`` (each clip's predicted assignment) and ``uniform`` (the same
    assignment for every clip). The summary's ``lengths`` covers the whole export, old shards
    included, and is only filled on the main process.
    """
    from accelerate import PartialState

    if (router is None) == (uniform is None):
        raise ValueError("give either a router or a uniform assignment, not both and not neither")
    settings = settings or ExportSettings()
    state = PartialState(cpu=not accelerator_available())
    device = state.device
    tokenizer = tokenizer.to(device).eval()
    if router is not None:
        check_router(router, tokenizer)
        router = router.to(device).eval()
    else:
        uniform = tokenizer.config.space.validate(uniform)  # type: ignore[arg-type]
    videos = Path(videos)
    entries, classes = labelled_videos(videos, manifest)
    spec = export_spec(tokenizer, router, settings)
    meta = export_meta(
        tokenizer, tokenizer_source, router, router_source, uniform, spec, videos, manifest, classes, settings
    )
    store = TokenStore(out)
    if state.is_main_process:
        store.create(meta)
    state.wait_for_everyone()
    store.create(meta)
    store.remove_temporary_files(state.process_index)

    dataset = ClipDataset(
        entries, spec, classes=classes, max_clips_per_video=settings.max_clips_per_video,
        max_bad_fraction=settings.max_bad_fraction,
    )
    keys = [clip_key(videos, path, number) for path, number, _, _ in dataset.items]
    done = store.done_clips()
    share = [i for i in range(len(keys)) if i % state.num_processes == state.process_index]
    todo = [i for i in share if keys[i] not in done]
    logger.info(
        "process %d of %d: %d clips in its share, %d already exported, %d to export",
        state.process_index, state.num_processes, len(share), len(share) - len(todo), len(todo),
    )

    from tqdm import tqdm

    bar = tqdm(
        total=len(share), initial=len(share) - len(todo), unit="clip", desc="export",
        disable=not (progress and state.is_main_process),
    )
    pending: list[ClipTokens] = []
    shards: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(todo), settings.batch_size):
        items = todo[start : start + settings.batch_size]
        samples = [dataset[item] for item in items]
        video = torch.stack([sample["video"] for sample in samples]).to(device)
        assignments, block_ids = tokenize_batch(tokenizer, router, uniform, video)
        for item, assignment, blocks in zip(items, assignments, block_ids, strict=True):
            path, number, label, num_valid = dataset.items[item]
            pending.append(
                ClipTokens(
                    clip_key=keys[item],
                    video=keys[item].rsplit("#", 1)[0],
                    clip_number=number,
                    num_valid=num_valid,
                    label=classes[label],
                    class_index=label,
                    assignment=tuple(assignment),
                    ids=torch.cat(blocks).cpu().numpy(),
                )
            )
        bar.update(len(items))
        while len(pending) >= settings.clips_per_shard:
            shards.append(store.write_shard(state.process_index, pending[: settings.clips_per_shard]))
            pending = pending[settings.clips_per_shard :]
    if pending:
        shards.append(store.write_shard(state.process_index, pending))
    bar.close()
    state.wait_for_everyone()
    summary: dict[str, Any] = {
        "process_index": state.process_index,
        "num_processes": state.num_processes,
        "clips_total": len(keys),
        "clips_in_share": len(share),
        "clips_exported": len(todo),
        "clips_skipped": len(share) - len(todo),
        "shards_written": shards,
        "seconds": time.perf_counter() - started,
        "classes": classes,
        "lengths": None,
    }
    if state.is_main_process and store.shard_names():
        summary["lengths"] = length_summary(store.read()["tokens"].tolist())
    return summary
