"""`evatok curve --labels DIR`: the quality-cost curve of a label store, uniform vs adaptive."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `curve` subcommand."""
    from evatok.curve import DEFAULT_W_Q_SWEEP

    curve = subparsers.add_parser(
        "curve",
        help="mean tokens vs LPIPS/PSNR of uniform, max-reward and router assignments from a label store",
        description=(
            "Read a label folder written by `evatok search` and compute, without decoding, one point "
            "(mean tokens per clip, mean LPIPS, mean PSNR) per uniform assignment, per w_q of the "
            "max-reward sweep (w_l = 2 - w_q) and, with --router, for the router's predictions. "
            "Each adaptive point gets the uniform curve's tokens at the same LPIPS (linear "
            "interpolation) and the saving in percent. Writes curve.json and curve.png and prints a table."
        ),
    )
    curve.add_argument("--labels", required=True, help="label folder written by `evatok search`")
    curve.add_argument(
        "--router", default=None,
        help="router weights: model.safetensors, a folder with it, or a run folder of `evatok train router`",
    )
    curve.add_argument("--out", default=None, help="output folder for curve.json and curve.png (default: LABELS/curve)")
    curve.add_argument(
        "--w-q-sweep", default=DEFAULT_W_Q_SWEEP,
        help=f"w_q values as START:STOP:STEP, both ends included, or a comma list (default {DEFAULT_W_Q_SWEEP})",
    )
    curve.add_argument(
        "--held-out-fraction", type=float, default=None,
        help="use only clips of files held out at this fraction, split as in training (default: every clip)",
    )
    curve.add_argument("--split-seed", type=int, default=0, help="seed of the held-out file split")
    curve.add_argument("--videos", default=None, help="video folder for --router (default: the store's folder)")
    curve.add_argument("--batch-size", type=int, default=16, help="clips per router forward pass")
    curve.set_defaults(func=run_curve)


def run_curve(args: argparse.Namespace) -> int:
    """Compute, save, plot and print the quality-cost curve."""
    from evatok.curve import curve_from_store, format_table, parse_sweep, plot_curve

    if args.batch_size < 1:
        print(f"error: --batch-size is {args.batch_size}: it must be at least 1", file=sys.stderr)
        return 2
    try:
        w_q_values = parse_sweep(args.w_q_sweep)
        router = None
        if args.router is not None:
            from evatok.models.router import Router

            router = Router.load(args.router)
        curve = curve_from_store(
            args.labels, w_q_values, router=router, held_out_fraction=args.held_out_fraction,
            split_seed=args.split_seed, videos=args.videos, batch_size=args.batch_size,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.router is not None:
        curve.protocol["router"] = str(Path(args.router).resolve())
    out = Path(args.out) if args.out is not None else Path(args.labels) / "curve"
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(curve.to_dict(), indent=2) + "\n")
    plot_curve(curve, out / "curve.png")
    print(format_table(curve))
    print(f"wrote {out / 'curve.json'} and {out / 'curve.png'}")
    return 0
