"""Generation FVD (gFVD) against the real clips of a token export, and generated token counts.

The real set is every clip of the export, read from its video files with the export's clip
geometry and frame sampling, so real and generated clips have the same size and frame count.
Generated clips take the class of the export's clips in turn (clip ``i`` gets the class of
export row ``i mod rows``), so their class mix follows the real one when the sample count is a
multiple of the export's size. Both sets pass through uint8 frames before the I3D features, as
a written mp4 would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from evatok.export.store import TokenStore, length_summary
from evatok.generation.sampling import SamplingSettings, generate_clips
from evatok.generation.videos import check_tokenizer, decode_clips
from evatok.metrics.fvd import (
    FVD_FRAMES,
    FeatureStats,
    I3DFeatures,
    fvd,
    load_or_compute_stats,
    make_protocol,
)
from evatok.metrics.inputs import MODEL_RANGE
from evatok.models.generator import Generator
from evatok.models.tokenizer import Tokenizer
from evatok.video.clips import ClipSpec, read_clip, to_model_input

logger = logging.getLogger(__name__)


def real_clips(store: TokenStore, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield the export's clips as float batches (B, 3, T, H, W) in [-1, 1], in clip-key order."""
    meta = store.meta()
    spec = ClipSpec(**meta["clip_spec"])
    root = Path(meta["videos"])
    frame = store.read()
    batch: list[torch.Tensor] = []
    for video, number in zip(frame["video"], frame["clip_number"], strict=True):
        path = Path(video) if Path(video).is_absolute() else root / video
        batch.append(to_model_input(read_clip(path, spec, int(number)).frames))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def class_plan(class_indices: list[int], num: int) -> list[int]:
    """Return ``num`` class indices that cycle through the export's rows in order."""
    if not class_indices:
        raise ValueError("the export has no clips: there is no class mix to follow")
    return [class_indices[index % len(class_indices)] for index in range(num)]


def uniform_tokens(meta: dict[str, Any]) -> int | None:
    """Return the fixed tokens per clip of a uniform export, or None for a routed one."""
    assignment = str(meta["assignment"])
    if not assignment.startswith("uniform:"):
        return None
    tokenizer = meta["tokenizer"]
    return int(assignment.split(":", 1)[1]) * (int(tokenizer["frames"]) // int(tokenizer["patch_frames"]))


def evaluate_generation(
    generator: Generator,
    tokenizer: Tokenizer,
    tokens: str | Path,
    i3d: I3DFeatures,
    *,
    num_samples: int,
    settings: SamplingSettings,
    seed: int = 0,
    batch_size: int = 8,
    real_stats: str | Path | None = None,
) -> dict[str, Any]:
    """Sample ``num_samples`` clips and return gFVD against the export's clips, with the protocol.

    ``real_stats`` caches the real-set I3D statistics in an .npz file and reuses them while the
    protocol matches.
    """
    check_tokenizer(generator.config, tokenizer.config)
    store = TokenStore(tokens)
    meta = store.meta()
    frame = store.read()
    spec = meta["clip_spec"]
    if spec["num_frames"] != FVD_FRAMES:
        raise ValueError(f"FVD needs {FVD_FRAMES}-frame clips, but the export has {spec['num_frames']}-frame clips")
    # The split names the clips, not the export folder, so exports of the same clips (adaptive
    # and uniform) share one cached real-set statistic.
    split = f"clips of {meta['videos']}, at most {meta['max_clips_per_video']} per video"
    protocol = make_protocol(split, len(frame), i3d.weights_metadata, stride=spec["frame_stride"], fps=spec["fps"])

    def real_features() -> torch.Tensor:
        return torch.cat([i3d(batch, MODEL_RANGE) for batch in real_clips(store, batch_size)])

    if real_stats is not None:
        real = load_or_compute_stats(real_stats, protocol, real_features)
    else:
        real = FeatureStats.from_features(real_features())

    plan = class_plan(frame["class_index"].astype(int).tolist(), num_samples)
    random = torch.Generator(device=generator.head.weight.device).manual_seed(seed)
    features, totals = [], []
    for start in range(0, num_samples, batch_size):
        clips = generate_clips(generator, plan[start : start + batch_size], settings, generator=random)
        totals.extend(clip.num_tokens for clip in clips)
        # The uint8 round trip gives the frames a written mp4 would contain, as the real clips are uint8.
        video = torch.stack([to_model_input(frames) for frames in decode_clips(tokenizer, clips)])
        features.append(i3d(video, MODEL_RANGE))
        logger.info("gFVD: %d of %d clips generated", start + len(clips), num_samples)
    generated = FeatureStats.from_features(torch.cat(features))
    result = fvd(real, generated, protocol)
    sampling = {
        "cfg_scale": settings.cfg_scale, "temperature": settings.temperature, "top_k": settings.top_k,
        "top_p": settings.top_p, "greedy": settings.greedy, "seed": seed,
    }
    return {
        "gfvd": result.value,
        "protocol": {**result.protocol, "sampling": sampling, "classes": "cycled through the export's rows"},
        "generated_tokens": length_summary(totals),
        "export_tokens": length_summary(frame["tokens"].tolist()),
        "export_assignment": meta["assignment"],
        "uniform_tokens": uniform_tokens(meta),
    }
