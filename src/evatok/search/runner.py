"""The data-parallel search driver: clips of a video folder in, a resumable label store out.

Every process (one with plain ``python``, several with ``accelerate launch``) lists the same
clips in the same order and takes those whose position modulo the number of processes equals
its process index. Each clip's result depends only on that clip, so any number of processes
writes the same rows as one process. The main process measures the reward statistics first (or
reuses stored ones) and the others wait for them.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from evatok.codec import clip_spec
from evatok.models.lpips_net import LPIPS
from evatok.models.tokenizer import Tokenizer
from evatok.models.weights import WEIGHTS_NAME
from evatok.presets import tokenizer_config
from evatok.search.reward import DEFAULT_W_Q, Reward, RewardStats, stats_from_samples
from evatok.search.scoring import ClipScorer
from evatok.search.store import ClipLabels, LabelStore
from evatok.search.strategies import STRATEGIES, exhaustive_search, run_strategy
from evatok.video.clips import ClipSpec
from evatok.video.datasets import ClipDataset, list_videos

logger = logging.getLogger(__name__)

PRESET_PREFIX = "preset:"


@dataclass
class SearchSettings:
    """Options of a search run; those that change the labels are stored in the folder's meta."""

    strategy: str = "prefix"
    w_q: float = DEFAULT_W_Q
    w_l: float | None = None  # None means 2 - w_q
    beam: int = 3
    beam_ranking: str = "projected"  # see beam_search
    batch_size: int = 16  # prefixes (or whole assignments) per forward pass
    clips_per_shard: int = 8
    stats_pairs: int = 128  # random (clip, assignment) pairs behind the reward statistics
    seed: int = 0
    lpips_backbone: str = "alex"
    frame_stride: int = 1
    fps: float | None = None
    max_clips_per_video: int | None = None
    max_bad_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown search strategy {self.strategy!r}: choose one of {STRATEGIES}")
        if self.beam_ranking not in ("projected", "share"):
            raise ValueError(f"unknown beam ranking {self.beam_ranking!r}: choose 'projected' or 'share'")
        for name in ("beam", "batch_size", "clips_per_shard", "stats_pairs"):
            minimum = 2 if name == "stats_pairs" else 1
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} is {getattr(self, name)}: it must be at least {minimum}")


@dataclass
class Proxy:
    """A proxy tokenizer and a description of where its weights came from."""

    model: Tokenizer
    source: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_proxy(spec: str | Path, seed: int = 0) -> Proxy:
    """Load a proxy tokenizer from a folder (``model.safetensors`` or a run's ``final/``) or ``preset:NAME``.

    ``preset:NAME`` builds the preset with random weights drawn from ``seed``: useful for timing and
    tests only, because its labels mean nothing.
    """
    text = str(spec)
    if text.startswith(PRESET_PREFIX):
        name = text[len(PRESET_PREFIX) :]
        torch.manual_seed(seed)
        model = Tokenizer(tokenizer_config(name))
        logger.warning(
            "proxy %s has RANDOM weights (seed %d): its labels are meaningless, use it for timing and tests only",
            text, seed,
        )
        return Proxy(model.eval(), {"preset": name, "random_init_seed": seed})
    folder = Path(spec)
    for candidate in (folder / WEIGHTS_NAME, folder / "final" / WEIGHTS_NAME, folder):
        if candidate.is_file():
            model = Tokenizer.from_safetensors(candidate)
            return Proxy(model.eval(), {"weights": str(candidate.resolve()), "sha256": _sha256(candidate)})
    raise FileNotFoundError(
        f"no proxy weights at {folder}: give a folder with {WEIGHTS_NAME} (written by save_pretrained), "
        f"a training run folder with final/{WEIGHTS_NAME}, or preset:NAME for random weights"
    )


def clip_spec_for(model: Tokenizer, settings: SearchSettings) -> ClipSpec:
    """Return the clip geometry the proxy takes: its frame count and size, centre crop."""
    return clip_spec(model.config, frame_stride=settings.frame_stride, sample_fps=settings.fps)


def clip_key(root: Path, path: str | Path, clip_number: int) -> str:
    """Return the key of a clip: its video's path below ``root`` and its clip number."""
    path = Path(path)
    relative = path.relative_to(root) if path.is_relative_to(root) else path
    return f"{relative.as_posix()}#{clip_number}"


def list_clips(videos: str | Path, spec: ClipSpec, settings: SearchSettings) -> ClipDataset:
    """Return the dataset of every clip of the videos under ``videos``, in a fixed order."""
    paths = list_videos(videos)
    if not paths:
        raise FileNotFoundError(f"no videos found under {videos}: give a folder with video files")
    return ClipDataset(
        paths,
        spec,
        max_clips_per_video=settings.max_clips_per_video,
        max_bad_fraction=settings.max_bad_fraction,
    )


def accelerator_available() -> bool:
    """Return whether torch finds a GPU or another accelerator device."""
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None:
        return bool(accelerator_api.is_available())
    return torch.cuda.is_available()


def load_lpips(backbone: str, device: torch.device) -> LPIPS:
    """Return the LPIPS network with the standard weights from the weights cache."""
    from evatok.metrics import LPIPSMetric

    return LPIPSMetric(backbone, device=device).network


@torch.no_grad()
def measure_reward_stats(
    model: Tokenizer,
    network: LPIPS,
    dataset: ClipDataset,
    pairs: int,
    seed: int = 0,
    batch_size: int = 8,
) -> RewardStats:
    """Measure the LPIPS statistics of the reward over random (clip, assignment) pairs.

    Clips are drawn uniformly with replacement and assignments uniformly from the space.
    """
    rng = random.Random(seed)
    space = model.space
    by_clip: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for _ in range(pairs):
        by_clip[rng.randrange(len(dataset))].append(space.sample(rng))
    device = next(model.parameters()).device
    values: list[float] = []
    for item in sorted(by_clip):
        sample = dataset[item]
        video = sample["video"].to(device)
        scorer = ClipScorer(network, video, int(sample["mask"].sum()), model.config.patch_frames)
        result = exhaustive_search(model, scorer, video, by_clip[item], batch_size=batch_size)
        # SearchResult sorts its rows by class index, so read the values back by index. An
        # assignment drawn twice for one clip counts twice, as in independent draws.
        lookup = dict(zip(result.indices.tolist(), result.lpips.tolist(), strict=True))
        values.extend(lookup[space.index(a)] for a in by_clip[item])
    stats = stats_from_samples(values, space, seed=seed)
    logger.info(
        "reward statistics over %d pairs: LPIPS mean %.5f std %.5f; tokens mean %.1f std %.1f",
        stats.num_pairs, stats.lpips_mean, stats.lpips_std, stats.length_mean, stats.length_std,
    )
    return stats


def run_meta(proxy: Proxy, spec: ClipSpec, videos: Path, settings: SearchSettings, lpips_source: dict) -> dict:
    """Return the settings the labels depend on, stored in the folder and checked on every rerun."""
    return {
        "proxy": proxy.source,
        "tokenizer": proxy.model.config.to_dict(),
        "clip_spec": asdict(spec),
        "videos": str(videos.resolve()),
        "strategy": settings.strategy,
        "beam": settings.beam if settings.strategy == "beam" else None,
        "beam_ranking": settings.beam_ranking if settings.strategy == "beam" else None,
        "w_q": settings.w_q,
        "w_l": settings.w_l,
        "stats_pairs": settings.stats_pairs,
        "seed": settings.seed,
        "max_clips_per_video": settings.max_clips_per_video,
        "lpips": lpips_source,
        "metrics": "LPIPS and MSE are means over real frames; MSE on [0, 1]; PSNR from the clip MSE",
    }


def run_search(
    proxy: Proxy,
    videos: str | Path,
    out: str | Path,
    settings: SearchSettings,
    stats: RewardStats | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Search every clip of ``videos`` not yet in the label store ``out``; return a summary.

    ``stats`` replaces the measurement of the reward statistics when the store has none yet.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not accelerator_available())
    device = state.device
    model = proxy.model.to(device).eval()
    videos = Path(videos)
    spec = clip_spec_for(model, settings)
    network = load_lpips(settings.lpips_backbone, device)
    lpips_source = {"backbone": settings.lpips_backbone, **dict(getattr(network, "weights_metadata", {}))}
    store = LabelStore(out)

    if state.is_main_process:
        store.create(run_meta(proxy, spec, videos, settings, lpips_source))
    state.wait_for_everyone()
    store.create(run_meta(proxy, spec, videos, settings, lpips_source))
    store.remove_temporary_files(state.process_index)

    dataset = list_clips(videos, spec, settings)
    # NOTE: the other processes wait at a barrier while the main process measures the statistics.
    # With many pairs on a slow proxy this can pass the process group's timeout (30 minutes by
    # default in torch.distributed): measure with one process first, or pass stats.
    if state.is_main_process and store.load_stats() is None:
        if stats is None:
            stats = measure_reward_stats(
                model, network, dataset, settings.stats_pairs, settings.seed, settings.batch_size
            )
        store.save_stats(stats)
    state.wait_for_everyone()
    stored_stats = store.load_stats()
    assert stored_stats is not None  # the main process wrote them before the barrier
    reward = Reward(stored_stats, w_q=settings.w_q, w_l=settings.w_l)

    keys = [clip_key(videos, path, number) for path, number, _, _ in dataset.items]
    done = store.done_clips()
    share = [i for i in range(len(keys)) if i % state.num_processes == state.process_index]
    todo = [i for i in share if keys[i] not in done]
    logger.info(
        "process %d of %d: %d clips in its share, %d already done, %d to search with %s",
        state.process_index, state.num_processes, len(share), len(share) - len(todo), len(todo),
        settings.strategy,
    )

    from tqdm import tqdm

    bar = tqdm(
        total=len(share), initial=len(share) - len(todo), unit="clip", desc=f"search {settings.strategy}",
        disable=not (progress and state.is_main_process),
    )
    pending: list[ClipLabels] = []
    shards: list[str] = []
    started = time.perf_counter()
    for item in todo:
        sample = dataset[item]
        video = sample["video"].to(device)
        num_valid = int(sample["mask"].sum())
        scorer = ClipScorer(network, video, num_valid, model.config.patch_frames)
        result = run_strategy(
            settings.strategy, model, scorer, video, reward, beam=settings.beam,
            batch_size=settings.batch_size, ranking=settings.beam_ranking,
        )
        path, number, _, _ = dataset.items[item]
        pending.append(
            ClipLabels(
                clip_key=keys[item],
                video=clip_key(videos, path, number).rsplit("#", 1)[0],
                clip_number=number,
                num_valid=num_valid,
                indices=result.indices,
                assignments=result.assignments,
                lpips=result.lpips,
                mse=result.mse,
                psnr=result.psnr,
                best_index=int(result.indices[result.best(reward)]),
            )
        )
        bar.update(1)
        if len(pending) >= settings.clips_per_shard:
            shards.append(store.write_shard(state.process_index, pending))
            pending = []
    if pending:
        shards.append(store.write_shard(state.process_index, pending))
    bar.close()
    state.wait_for_everyone()
    elapsed = time.perf_counter() - started
    return {
        "process_index": state.process_index,
        "num_processes": state.num_processes,
        "clips_total": len(keys),
        "clips_in_share": len(share),
        "clips_searched": len(todo),
        "clips_skipped": len(share) - len(todo),
        "shards_written": shards,
        "seconds": elapsed,
    }
