"""`evatok eval`: reconstruction metrics of a tokenizer checkpoint on a folder or manifest of videos."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` command."""
    parser = subparsers.add_parser(
        "eval",
        help="reconstruction PSNR, SSIM, LPIPS and rFVD of a tokenizer checkpoint on real videos",
    )
    parser.add_argument(
        "checkpoint", type=Path, help="tokenizer folder (save_pretrained) or .safetensors file"
    )
    parser.add_argument(
        "videos", type=Path, help="folder of videos (searched recursively) or a .csv/.tsv manifest"
    )
    parser.add_argument(
        "--assignment",
        default="uniform:256",
        help="uniform:K (K tokens in every block) or one count per block, e.g. 64,128,256,512",
    )
    parser.add_argument(
        "--router",
        default=None,
        help="router weights (run folder, folder or .safetensors): each clip gets the router's "
        "assignment instead of --assignment",
    )

    parser.add_argument("--frame-stride", type=int, default=1, help="keep every n-th decoded frame")
    parser.add_argument(
        "--fps", type=float, default=None, help="sample frames at this rate instead of a stride"
    )
    parser.add_argument(
        "--max-clips-per-video",
        type=int,
        default=None,
        help="evenly spaced clips per video (default: all)",
    )

    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward pass")
    parser.add_argument("--lpips", choices=("alex", "vgg"), default="alex", help="LPIPS backbone")
    parser.add_argument("--no-fvd", action="store_true", help="skip rFVD (saves the I3D passes)")
    parser.add_argument(
        "--fvd-min-clips",
        type=int,
        default=8,
        help="compute rFVD only with at least this many clips",
    )
    parser.add_argument(
        "--real-stats",
        type=Path,
        default=None,
        help=".npz file caching the input clips' I3D statistics",
    )

    parser.add_argument(
        "--split", default="unspecified", help="name of the data split, written into the protocol"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the JSON result (summary, protocol, per-clip rows) here",
    )
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate the checkpoint, print a table and optionally write JSON."""
    from evatok.codec import clip_spec
    from evatok.evaluation import AssignmentRule, evaluate_reconstruction, format_table
    from evatok.metrics import I3DFeatures, LPIPSMetric
    from evatok.models.tokenizer import Tokenizer
    from evatok.video.datasets import ClipDataset, list_videos, read_manifest

    model = _load_tokenizer(Tokenizer, args.checkpoint).to(args.device)
    config = model.config
    rule = AssignmentRule.parse(args.assignment, model.space)
    if args.router is not None:
        from evatok.evaluation import RouterRule
        from evatok.models.router import Router

        rule = RouterRule(Router.load(args.router), str(args.router))
    spec = clip_spec(config, frame_stride=args.frame_stride, sample_fps=args.fps)
    if args.videos.is_dir():
        entries = list_videos(args.videos)
    elif args.videos.is_file() and args.videos.suffix.lower() in MANIFEST_SUFFIXES:
        entries = read_manifest(args.videos)
    else:
        raise FileNotFoundError(
            f"{args.videos} is neither a folder nor a .csv/.tsv manifest of videos"
        )
    dataset = ClipDataset(
        entries, spec, max_clips_per_video=args.max_clips_per_video, max_bad_fraction=1.0
    )
    if dataset.bad_files:
        logger.warning("%d unreadable videos skipped", len(dataset.bad_files))

    lpips = LPIPSMetric(args.lpips, device=args.device)
    i3d = None if args.no_fvd else I3DFeatures(device=args.device)
    result = evaluate_reconstruction(
        model,
        dataset,
        rule,
        lpips,
        i3d=i3d,
        batch_size=args.batch_size,
        fvd_min_clips=args.fvd_min_clips,
        real_stats=args.real_stats,
        split=args.split,
    )
    result["protocol"]["checkpoint"] = str(args.checkpoint)
    result["protocol"]["videos"] = str(args.videos)
    result["protocol"]["skipped_videos"] = [str(path) for path, _ in dataset.bad_files]
    print(format_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _load_tokenizer(tokenizer_class, checkpoint: Path):
    if checkpoint.is_dir():
        return tokenizer_class.from_pretrained(str(checkpoint))
    if checkpoint.suffix == ".safetensors":
        return tokenizer_class.from_safetensors(checkpoint)
    raise FileNotFoundError(
        f"tokenizer checkpoint {checkpoint} not found: give a folder written by save_pretrained or a .safetensors file"
    )
