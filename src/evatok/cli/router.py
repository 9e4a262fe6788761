"""`evatok route VIDEO --router CKPT` and `evatok eval-router RUN_DIR`: use and score a router."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `route` and `eval-router` subcommands."""
    route = subparsers.add_parser(
        "route",
        help="print the router's token-count assignment of every clip of a video",
        description=(
            "Cut a video into consecutive clips with the router's frame count, size and frame "
            "sampling (a padded tail clip included) and print each clip's predicted assignment "
            "and token count, one line per clip."
        ),
    )
    route.add_argument("video", help="video file")
    route.add_argument(
        "--router", required=True,
        help="router weights: model.safetensors, a folder with it, or a run folder of `evatok train router`",
    )
    route.add_argument("--top-k", type=int, default=1, help="also print the next k-1 most probable assignments")
    route.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    route.add_argument("--json", action="store_true", help="print one JSON object per clip instead of text")
    route.set_defaults(func=run_route)

    evaluate = subparsers.add_parser(
        "eval-router",
        help="held-out top-1, top-5 and reward percentile of a router run",
        description=(
            "Evaluate the final router of a run on the files held out of training (the run's "
            "data.held_out_fraction and data.split_seed): top-1 and top-5 against each clip's best "
            "stored assignment, and the mean percentile of the chosen assignment's reward between "
            "the clip's worst and best, beside the best single uniform assignment (chosen on the "
            "training clips). Writes router_eval.json in the run folder."
        ),
    )
    evaluate.add_argument("run_dir", help="run folder written by `evatok train router`")
    evaluate.add_argument("--w-q", type=float, default=None, help="reward weight w_q (default: the run's)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="clips per forward pass")
    evaluate.set_defaults(func=run_eval_router)


def run_route(args: argparse.Namespace) -> int:
    """Predict and print the assignment of every clip of one video."""
    import torch

    from evatok.models.router import Router
    from evatok.video.clips import ClipSpec, iter_clips, to_model_input
    from evatok.video.io import VideoDecodeError

    if args.top_k < 1 or args.batch_size < 1:
        print("error: --top-k and --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        router = Router.load(args.router)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = router.config
    spec = ClipSpec(config.frames, config.height, config.width, frame_stride=config.frame_stride, fps=config.fps)

    def flush(clips: list) -> None:
        video = torch.stack([to_model_input(clip.frames) for clip in clips])
        indices, probabilities = router.top_k(video, args.top_k)
        for clip, row, probability in zip(clips, indices.tolist(), probabilities.tolist(), strict=True):
            choices = [router.space.assignment(index) for index in row]
            frames = (clip.frame_indices[0], clip.frame_indices[clip.num_valid - 1])
            if args.json:
                print(json.dumps({
                    "clip": clip.clip_number, "frames": list(frames), "real_frames": clip.num_valid,
                    "assignment": list(choices[0]), "tokens": sum(choices[0]),
                    "top_k": [list(choice) for choice in choices], "probabilities": probability,
                }))
                continue
            line = (f"clip {clip.clip_number} frames {frames[0]}-{frames[1]}: assignment "
                    f"{choices[0]} tokens {sum(choices[0])} (p={probability[0]:.3f})")
            if len(choices) > 1:
                line += "; next: " + ", ".join(str(choice) for choice in choices[1:])
            print(line)
        totals.extend(sum(router.space.assignment(row[0])) for row in indices.tolist())

    totals: list[int] = []
    pending: list = []
    try:
        for clip in iter_clips(args.video, spec, include_tail=True):
            pending.append(clip)
            if len(pending) == args.batch_size:
                flush(pending)
                pending = []
    except (VideoDecodeError, FileNotFoundError) as error:
        print(f"error: cannot read {args.video}: {error}", file=sys.stderr)
        return 1
    if pending:
        flush(pending)
    if not totals:
        print(f"error: {args.video} has no frames to route", file=sys.stderr)
        return 1
    if not args.json:
        print(f"{len(totals)} clips, {sum(totals)} tokens ({sum(totals) / len(totals):.1f} per clip)")
    return 0


def run_eval_router(args: argparse.Namespace) -> int:
    """Evaluate a router run's final weights on its held-out files and print the scores."""
    from evatok.models.router import Router
    from evatok.router_eval import evaluate_on_store
    from evatok.training import load_config
    from evatok.training.router import RouterTrainSettings

    run_dir = Path(args.run_dir)
    try:
        config = load_config(run_dir / "config.yaml")
        settings = RouterTrainSettings.from_config(config)
        router = Router.load(run_dir)
        result = evaluate_on_store(
            router, settings.labels, videos=settings.videos,
            held_out_fraction=config.data.held_out_fraction, split_seed=config.data.split_seed,
            w_q=args.w_q if args.w_q is not None else settings.w_q,
            w_l=None if args.w_q is not None else settings.w_l, batch_size=args.batch_size,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    (run_dir / "router_eval.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(result.describe())
    return 0
