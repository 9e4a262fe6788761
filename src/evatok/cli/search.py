"""`evatok search`: stage 2, the per-clip assignment search into a label store; `evatok labels`."""

from __future__ import annotations

import argparse
import json
import sys

SEARCH_DESCRIPTION = (
    "Search the best token-count assignment of every clip of a video folder with a proxy "
    "tokenizer and write per-assignment LPIPS, MSE and PSNR to a resumable Parquet label store. "
    "A rerun with the same settings skips finished clips. For several processes start it with "
    "`accelerate launch --multi_gpu --num_processes N $(which evatok) search ...` (on a machine without GPUs this starts N CPU processes)."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `search` and `labels` subcommands."""
    parser = subparsers.add_parser(
        "search", help="stage 2: search assignments per clip into a label store", description=SEARCH_DESCRIPTION
    )
    parser.add_argument(
        "--proxy", required=True,
        help="proxy tokenizer: a folder with model.safetensors, a training run folder, or preset:NAME "
        "(random weights, for timing and tests only)",
    )
    parser.add_argument("--videos", required=True, help="folder of videos, searched recursively")
    parser.add_argument("--out", required=True, help="label folder to create or resume")
    parser.add_argument(
        "--strategy", choices=("prefix", "exhaustive", "beam"), default="prefix",
        help="prefix: exact, every prefix once (default); exhaustive: every assignment as a whole "
        "clip; beam: approximate, keeps --beam prefixes per block",
    )
    parser.add_argument("--w-q", type=float, default=1.2, help="quality weight w_q of the reward (default 1.2)")
    parser.add_argument("--w-l", type=float, default=None, help="length weight w_l (default 2 - w_q)")
    parser.add_argument("--beam", type=int, default=3, help="prefixes kept per block by --strategy beam")
    parser.add_argument(
        "--beam-ranking", choices=("projected", "share"), default="projected",
        help="how beam ranks prefixes: mean LPIPS of the frames so far (projected) or the exact "
        "share of the reward so far (share)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="prefixes or assignments per forward pass (memory bound)"
    )
    parser.add_argument("--clips-per-shard", type=int, default=8, help="clips per Parquet shard")
    parser.add_argument(
        "--stats-pairs", type=int, default=128,
        help="random (clip, assignment) pairs for the LPIPS mean and deviation of the reward",
    )
    parser.add_argument(
        "--stats-from", default=None,
        help="stats.json of another label folder to reuse instead of measuring (same proxy expected)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the statistics pairs and of preset:NAME weights")
    parser.add_argument("--lpips", choices=("alex", "vgg"), default="alex", help="LPIPS backbone")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--frame-stride", type=int, default=1, help="keep every n-th decoded frame")
    sampling.add_argument("--fps", type=float, default=None, help="sample frames at this rate instead")
    parser.add_argument("--max-clips-per-video", type=int, default=None, help="evenly spaced clips per video")
    parser.add_argument(
        "--max-bad-fraction", type=float, default=0.0,
        help="fraction of undecodable videos tolerated (skipped and logged) before the run fails",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads per process (default: torch's choice); 1 is fastest on a busy machine",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_search_command)

    labels = subparsers.add_parser(
        "labels",
        help="print or export per-clip best assignments of a label store for any w_q",
        description="Recompute the best assignment of every clip from the stored per-assignment "
        "values for a given w_q, without decoding again.",
    )
    labels.add_argument("labels_dir", help="label folder written by `evatok search`")
    labels.add_argument("--w-q", type=float, default=None, help="quality weight (default: the run's)")
    labels.add_argument("--w-l", type=float, default=None, help="length weight (default 2 - w_q)")
    labels.add_argument("--csv", default=None, help="write the table to this CSV file instead of stdout")
    labels.set_defaults(func=run_labels_command)


def run_search_command(args: argparse.Namespace) -> int:
    """Load the proxy, run the search and print a JSON summary."""
    import torch

    from evatok.search.reward import RewardStats
    from evatok.search.runner import PRESET_PREFIX, SearchSettings, load_proxy, run_search

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        settings = SearchSettings(
            strategy=args.strategy, w_q=args.w_q, w_l=args.w_l, beam=args.beam, beam_ranking=args.beam_ranking,
            batch_size=args.batch_size,
            clips_per_shard=args.clips_per_shard, stats_pairs=args.stats_pairs, seed=args.seed,
            lpips_backbone=args.lpips, frame_stride=args.frame_stride, fps=args.fps,
            max_clips_per_video=args.max_clips_per_video, max_bad_fraction=args.max_bad_fraction,
        )
        stats = RewardStats.load(args.stats_from) if args.stats_from else None
        if args.proxy.startswith(PRESET_PREFIX):
            print(
                f"WARNING: --proxy {args.proxy} uses RANDOM weights: the labels are meaningless "
                "(timing and tests only)",
                file=sys.stderr,
            )
        proxy = load_proxy(args.proxy, seed=args.seed)
        summary = run_search(proxy, args.videos, args.out, settings, stats=stats, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary["process_index"] == 0:
        print(json.dumps(summary, indent=2))
    return 0


def run_labels_command(args: argparse.Namespace) -> int:
    """Print or write the per-clip best assignments of a label store."""
    from evatok.search.store import LabelStore

    try:
        table = LabelStore(args.labels_dir).labels(args.w_q, args.w_l)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {len(table)} clips to {args.csv}")
    else:
        print(table.to_string(index=False))
    return 0
