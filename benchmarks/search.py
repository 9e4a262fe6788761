"""Time the assignment search strategies per clip and measure how close beam search gets.

For each preset (random weights, seeded) and each real clip: wall and CPU time of ``exhaustive``,
``prefix`` and ``beam`` (B = 1, 3, 5), LPIPS included, their speed-up over ``exhaustive``, the
largest LPIPS difference between ``prefix`` and ``exhaustive``, and for ``beam`` the reward
percentile of the assignment it picks (100% = the best of all assignments, 0% = the worst).

Presets too slow for a full exhaustive run on the CPU (``--subset-presets``, default ``paper``) are
timed on parts and extrapolated. ``exhaustive`` runs ``--subset-size`` assignments whose first
block has the middle count and is scaled to all assignments. ``prefix`` runs the first block for
every count plus the subtree of the middle count, and is scaled per block evaluation. Beam percentiles need every assignment's reward, so
they are reported only for fully searched presets.

    python benchmarks/search.py --presets tiny paper --clips 3 --threads 1 --markdown
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evatok.metrics import LPIPSMetric
from evatok.models.tokenizer import Tokenizer
from evatok.presets import tokenizer_config
from evatok.search import (
    ClipScorer,
    Reward,
    beam_search,
    exhaustive_search,
    prefix_search,
    reward_percentile,
    stats_from_samples,
)
from evatok.search.strategies import BlockStepper, Frontier
from evatok.video.clips import ClipSpec, read_clip, to_model_input
from evatok.video.datasets import list_videos

logger = logging.getLogger("benchmarks.search")
DEFAULT_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos" / "clips"
BEAMS = (1, 3, 5)
RANKINGS = ("projected", "share")


def timed(function: partial) -> tuple[Any, float, float]:
    """Run ``function``; return its result, wall seconds and CPU seconds of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    logger.info("%s: %.2f s wall, %.2f s CPU", function.func.__name__, wall, cpu)
    return result, wall, cpu


def load_clips(videos: Path, model: Tokenizer, count: int, offset: int = 0) -> list[tuple[str, torch.Tensor, int]]:
    """Return clip 0 of ``count`` videos with at least one full clip, skipping the first ``offset``."""
    config = model.config
    spec = ClipSpec(config.frames, config.height, config.width)
    clips = []
    for path in list_videos(videos):
        clip = read_clip(path, spec, 0)
        if clip.num_valid == config.frames:
            clips.append((path.name, to_model_input(clip.frames), clip.num_valid))
        if len(clips) == offset + count:
            break
    return clips[offset:]


def prefix_subtree(model: Tokenizer, scorer: ClipScorer, video: torch.Tensor, first: int, batch_size: int):
    """Run the first block for every count and the whole prefix tree below ``first``; return its leaves.

    Walks depth first like ``prefix_search``, so at most ``batch_size`` * m caches are alive.
    """
    stepper = BlockStepper(model, scorer, video)
    last = model.config.num_blocks - 1
    roots = stepper.children(Frontier.root())
    keep = [row for row, prefix in enumerate(roots.prefixes) if prefix[0] == first]
    leaves: list[Frontier] = []

    def walk(frontier: Frontier, depth: int) -> None:
        if depth == last:
            for count in model.space.candidates:
                leaf = stepper.extend(frontier, count)
                leaves.append(Frontier(leaf.prefixes, None, None, leaf.lpips_sum, leaf.mse_sum))
            return
        parts = stepper.children(frontier).split(batch_size)
        while parts:
            walk(parts.pop(0), depth + 1)

    walk(roots.select(keep), 1)
    merged = Frontier(
        [prefix for leaf in leaves for prefix in leaf.prefixes],
        None,
        None,
        torch.cat([leaf.lpips_sum for leaf in leaves]),
        torch.cat([leaf.mse_sum for leaf in leaves]),
    )
    return merged, stepper.block_evaluations


def bench_full(model: Tokenizer, network, clips, batch_size: int, w_q: float) -> list[dict[str, Any]]:
    """Run every strategy in full on each clip."""
    results = []
    searched = []
    for name, video, num_valid in clips:
        scorer = ClipScorer(network, video, num_valid, model.config.patch_frames)
        exhaustive, ex_wall, ex_cpu = timed(partial(exhaustive_search, model, scorer, video, batch_size=batch_size))
        prefix, pre_wall, pre_cpu = timed(partial(prefix_search, model, scorer, video, batch_size=batch_size))
        searched.append((name, scorer, video, exhaustive, prefix, ex_wall, ex_cpu, pre_wall, pre_cpu))
    # The reward statistics come from every assignment of every benchmark clip.
    stats = stats_from_samples(np.concatenate([row[3].lpips for row in searched]), model.space)
    reward = Reward(stats, w_q=w_q)
    for name, scorer, video, exhaustive, prefix, ex_wall, ex_cpu, pre_wall, pre_cpu in searched:
        rewards = exhaustive.rewards(reward)
        row: dict[str, Any] = {
            "clip": name,
            "exhaustive": {"wall_s": ex_wall, "cpu_s": ex_cpu, "blocks": exhaustive.block_evaluations},
            "prefix": {"wall_s": pre_wall, "cpu_s": pre_cpu, "blocks": prefix.block_evaluations},
            "prefix_max_lpips_diff": float(np.abs(prefix.lpips - exhaustive.lpips).max()),
            "prefix_same_best": prefix.best_assignment(reward) == exhaustive.best_assignment(reward),
        }
        for ranking in RANKINGS:
            for width in BEAMS:
                beam, wall, cpu = timed(
                    partial(beam_search, model, scorer, video, reward, beam=width, batch_size=batch_size, ranking=ranking)
                )
                chosen = beam.indices[beam.best(reward)]
                row[f"beam{width}-{ranking}"] = {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "blocks": beam.block_evaluations,
                    "percentile": reward_percentile(rewards, rewards[chosen]),
                }
        results.append(row)
    return results


def bench_subset(model: Tokenizer, network, clips, batch_size: int, subset: int, w_q: float) -> list[dict[str, Any]]:
    """Time parts of exhaustive and prefix search and extrapolate to the whole space."""
    space = model.space
    m = len(space.candidates)
    first = space.candidates[m // 2]
    below = [a for a in space if a[0] == first]
    chosen = random.Random(0).sample(below, min(subset, len(below)))
    results = []
    for name, video, num_valid in clips:
        scorer = ClipScorer(network, video, num_valid, model.config.patch_frames)
        part, ex_wall, ex_cpu = timed(partial(exhaustive_search, model, scorer, video, chosen, batch_size=batch_size))
        (leaves, blocks), pre_wall, pre_cpu = timed(partial(prefix_subtree, model, scorer, video, first, batch_size))
        leaf_lpips = {space.index(p): float(v) for p, v in zip(leaves.prefixes, (leaves.lpips_sum / num_valid).tolist(), strict=True)}
        diff = max(abs(leaf_lpips[int(i)] - float(v)) for i, v in zip(part.indices, part.lpips, strict=True))
        scale_ex = space.size / len(chosen)
        # The subtree run holds the m first-block evaluations once plus one of m subtrees.
        subtree_blocks = blocks - m
        per_block_wall = pre_wall / blocks
        per_block_cpu = pre_cpu / blocks
        prefix_blocks = m + m * subtree_blocks
        row: dict[str, Any] = {
            "clip": name,
            "exhaustive": {
                "wall_s": ex_wall * scale_ex, "cpu_s": ex_cpu * scale_ex, "blocks": space.size * space.num_blocks,
                "measured_assignments": len(chosen), "extrapolated": True,
            },
            "prefix": {
                "wall_s": per_block_wall * prefix_blocks, "cpu_s": per_block_cpu * prefix_blocks,
                "blocks": prefix_blocks, "measured_blocks": blocks, "extrapolated": True,
            },
            "prefix_max_lpips_diff": diff,
        }
        stats = stats_from_samples(part.lpips, space)
        reward = Reward(stats, w_q=w_q)
        for width in BEAMS:
            beam, wall, cpu = timed(partial(beam_search, model, scorer, video, reward, beam=width, batch_size=batch_size))
            row[f"beam{width}-{RANKINGS[0]}"] = {
                "wall_s": wall, "cpu_s": cpu, "blocks": beam.block_evaluations, "percentile": None,
            }
        results.append(row)
    return results


def markdown(preset: str, rows: list[dict[str, Any]]) -> str:
    """Format one preset's per-clip means as a Markdown table."""
    names = ["exhaustive", "prefix"]
    names += [name for name in (f"beam{w}-{r}" for r in RANKINGS for w in BEAMS) if name in rows[0]]
    lines = [
        f"**{preset}** ({len(rows)} clips; mean per clip)",
        "",
        "| strategy | block evals | wall s | CPU s | speed-up (wall) | speed-up (CPU) | beam percentile (mean, min) |",
        "|---|---|---|---|---|---|---|",
    ]
    ex_wall = np.mean([row["exhaustive"]["wall_s"] for row in rows])
    ex_cpu = np.mean([row["exhaustive"]["cpu_s"] for row in rows])
    for name in names:
        wall = np.mean([row[name]["wall_s"] for row in rows])
        cpu = np.mean([row[name]["cpu_s"] for row in rows])
        blocks = rows[0][name]["blocks"]
        percentiles = [row[name].get("percentile") for row in rows]
        if name.startswith("beam") and None not in percentiles:
            quality = f"{np.mean(percentiles):.2f}%, {np.min(percentiles):.2f}%"
        else:
            quality = "n/a"
        star = " (extrapolated)" if rows[0][name].get("extrapolated") else ""
        label = name
        if name.startswith("beam"):
            width, ranking = name[4:].split("-")
            label = f"beam B={width}, {ranking}"
        lines.append(
            f"| {label}{star} | {blocks} | {wall:.2f} | {cpu:.2f} | {ex_wall / wall:.1f}x | {ex_cpu / cpu:.1f}x | {quality} |"
        )
    diffs = [row["prefix_max_lpips_diff"] for row in rows]
    same = [row.get("prefix_same_best") for row in rows]
    lines.append("")
    lines.append(f"prefix vs exhaustive: max LPIPS difference {max(diffs):.2e}" + (
        f", same best assignment on {sum(bool(s) for s in same)} of {len(same)} clips" if None not in same else
        " (on the assignments both evaluated)"
    ))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--subset-presets", nargs="*", default=["paper"], help="presets timed on parts and extrapolated")
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="folder of real videos")
    parser.add_argument("--clips", type=int, default=3, help="clips per fully searched preset")
    parser.add_argument("--offset", type=int, default=0, help="skip this many eligible videos first")
    parser.add_argument("--subset-clips", type=int, default=1, help="clips per extrapolated preset")
    parser.add_argument("--subset-size", type=int, default=8, help="assignments timed by exhaustive on extrapolated presets")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--subset-batch-size", type=int, default=1,
        help="batch size on extrapolated presets: 1 avoids padding, which costs memory on large models",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--w-q", type=float, default=1.2)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    network = LPIPSMetric("alex").network
    report: dict[str, Any] = {"threads": args.threads, "torch": torch.__version__, "w_q": args.w_q, "presets": {}}
    for preset in args.presets:
        torch.manual_seed(0)
        model = Tokenizer(tokenizer_config(preset)).eval()
        subset = preset in args.subset_presets
        clips = load_clips(args.videos, model, args.subset_clips if subset else args.clips, args.offset)
        if subset:
            rows = bench_subset(model, network, clips, args.subset_batch_size, args.subset_size, args.w_q)
        else:
            rows = bench_full(model, network, clips, args.batch_size, args.w_q)
        report["presets"][preset] = {"parameters": model.num_parameters(), "rows": rows}
        if args.markdown:
            print(markdown(preset, rows), flush=True)
            print(flush=True)
        else:
            print(json.dumps({preset: rows}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
