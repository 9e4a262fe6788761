"""`evatok export-tokens` and `evatok generate`: tokens for the generator, and clips from it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evatok.cli.tokens import TOKENIZER_HELP, load_tokenizer

# Exit status for invalid arguments or input files, as in the other commands.
EXIT_INVALID = 2


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export-tokens` and `generate` subcommands."""
    export = subparsers.add_parser(
        "export-tokens",
        help="write every clip's tokens, assignment and class for generator training",
        description=(
            "Cut each video under --videos into clips with the tokenizer's clip geometry, pick each "
            "clip's assignment with the router (or --assignment uniform:K), encode it, and write "
            "Parquet shards with the clip key, class label, class index, assignment and code ids. "
            "A rerun skips the clips already written; several processes (torchrun or accelerate "
            "launch) split the clips. Prints the distribution of tokens per clip."
        ),
    )
    export.add_argument("--tokenizer", required=True, metavar="CKPT_DIR_OR_PRESET", help=TOKENIZER_HELP)
    export.add_argument(
        "--router", default=None, metavar="CKPT",
        help="router weights: model.safetensors, a folder with it, or a run folder of `evatok train router`",
    )
    export.add_argument(
        "--assignment", default=None, metavar="uniform:K",
        help="give every clip K tokens per block instead of routing (the uniform baseline)",
    )
    export.add_argument("--videos", required=True, type=Path, help="folder of videos, searched recursively")
    export.add_argument("--out", required=True, type=Path, help="export folder to create or resume")
    export.add_argument(
        "--labels", default=None, type=Path,
        help="CSV or TSV manifest with path and label columns, paths relative to --videos "
        "(default: each video's first sub-folder name below --videos is its label)",
    )
    export.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default 8)")
    export.add_argument("--clips-per-shard", type=int, default=64, help="clips per Parquet shard (default 64)")
    export.add_argument(
        "--stride", type=int, default=None,
        help="keep every n-th decoded frame (default: the router's sampling, or every frame)",
    )
    export.add_argument("--fps", type=float, default=None, help="sample frames at this rate instead of --stride")
    export.add_argument(
        "--max-clips-per-video", type=int, default=None, help="evenly spaced clips per video (default: all)"
    )
    export.add_argument(
        "--max-bad-fraction", type=float, default=0.0,
        help="fraction of unreadable videos to skip before failing (default 0)",
    )
    export.add_argument("--seed", type=int, default=0, help="weight seed of a preset:NAME tokenizer (default 0)")
    export.set_defaults(func=run_export)

    generate = subparsers.add_parser(
        "generate",
        help="sample class-conditioned clips from a trained generator; write mp4s and token files",
        description=(
            "Sample --num clips of one class from the generator (it picks each clip's assignment "
            "itself), decode them with the tokenizer and write CLASS_NNNN.mp4 and "
            "CLASS_NNNN.safetensors (evatok token files) into --out, plus generation.json with the "
            "settings and each clip's assignment."
        ),
    )
    generate.add_argument("--generator", required=True, metavar="CKPT", help="generator weights or run folder")
    generate.add_argument("--tokenizer", required=True, metavar="CKPT_DIR_OR_PRESET", help=TOKENIZER_HELP)
    generate.add_argument(
        "--class", dest="class_name", required=True, metavar="NAME",
        help="class to generate: a class name stored in the generator, or a class index",
    )
    generate.add_argument("--num", type=int, default=8, help="number of clips (default 8)")
    generate.add_argument("--out", required=True, type=Path, help="folder to write into (created if missing)")
    generate.add_argument(
        "--cfg", type=float, default=1.75,
        help="classifier-free guidance scale; 1 turns guidance off (default 1.75; EVATok uses 1.75, and 2.5 for its 99M model)",
    )
    generate.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    generate.add_argument("--top-k", type=int, default=0, help="sample among the k most likely ids; 0 keeps all (default)")
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1: off)")
    generate.add_argument("--greedy", action="store_true", help="take the most likely id at every step")
    generate.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    generate.add_argument("--batch-size", type=int, default=8, help="clips sampled and decoded at once (default 8)")
    generate.add_argument("--fps", type=float, default=None, help="frame rate of the mp4s (default 25)")
    generate.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    generate.set_defaults(func=run_generate)

    evaluate = subparsers.add_parser(
        "eval-generator",
        help="gFVD of a generator against the real clips of a token export, and its token counts",
        description=(
            "Sample --num clips (classes cycled through the export's clips), decode them, and print "
            "the FVD between their I3D features and those of the export's real clips, with the "
            "protocol (sample counts, guidance scale, sampling settings) and the mean generated "
            "tokens per clip beside the export's own (or the uniform baseline's fixed count)."
        ),
    )
    evaluate.add_argument("--generator", required=True, metavar="CKPT", help="generator weights or run folder")
    evaluate.add_argument("--tokenizer", required=True, metavar="CKPT_DIR_OR_PRESET", help=TOKENIZER_HELP)
    evaluate.add_argument("--tokens", required=True, type=Path, help="export folder whose clips are the real set")
    evaluate.add_argument("--num", type=int, default=256, help="generated clips (default 256)")
    evaluate.add_argument("--cfg", type=float, default=1.75, help="classifier-free guidance scale (default 1.75)")
    evaluate.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    evaluate.add_argument("--top-k", type=int, default=0, help="sample among the k most likely ids; 0 keeps all")
    evaluate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1: off)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="clips per sampling and I3D batch (default 8)")
    evaluate.add_argument("--real-stats", type=Path, default=None, help="cache file (.npz) of the real-set I3D statistics")
    evaluate.add_argument("--i3d-weights", type=Path, default=None, help="I3D weights file (default: the weights cache)")
    evaluate.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    evaluate.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    evaluate.set_defaults(func=run_eval_generator)


# ----- export-tokens -----------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    """Export tokens and print the summary of token counts per clip."""
    from evatok.export import ExportSettings, export_tokens, format_summary, parse_uniform
    from evatok.models.router import Router
    from evatok.video.io import VideoDecodeError

    try:
        if (args.router is None) == (args.assignment is None):
            raise ValueError("give either --router CKPT or --assignment uniform:K")
        settings = ExportSettings(
            batch_size=args.batch_size, clips_per_shard=args.clips_per_shard, frame_stride=args.stride,
            fps=args.fps, max_clips_per_video=args.max_clips_per_video,
            max_bad_fraction=args.max_bad_fraction,
        )
        tokenizer, untrained = load_tokenizer(args.tokenizer, seed=args.seed)
        tokenizer_source = f"{args.tokenizer} (seed {args.seed})" if untrained else str(Path(args.tokenizer).resolve())
        router = Router.load(args.router) if args.router is not None else None
        uniform = parse_uniform(args.assignment, tokenizer) if args.assignment is not None else None
        summary = export_tokens(
            tokenizer, args.videos, args.out, router=router, uniform=uniform, manifest=args.labels,
            settings=settings, tokenizer_source=tokenizer_source,
            router_source=str(Path(args.router).resolve()) if args.router is not None else None,
            progress=sys.stderr.isatty(),
        )
    except VideoDecodeError as error:
        _error(f"{error}; remove the file or raise --max-bad-fraction")
        return EXIT_INVALID
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return EXIT_INVALID
    if summary["process_index"] != 0:
        return 0
    print(
        f"exported {summary['clips_exported']} clips to {args.out} ({summary['clips_skipped']} already there, "
        f"{len(summary['shards_written'])} new shards) in {summary['seconds']:.1f} s; "
        f"classes: {', '.join(summary['classes'])}"
    )
    if summary["lengths"] is not None:
        print(format_summary(summary["lengths"]))
        (args.out / "summary.json").write_text(json.dumps(summary["lengths"], indent=2) + "\n")
    return 0


# ----- generate ----------------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    """Sample clips of one class, write each as mp4 and token file, and print the token counts."""
    import torch

    from evatok.codec import FALLBACK_FPS
    from evatok.generation.sampling import SamplingSettings, generate_clips
    from evatok.generation.videos import check_tokenizer, clip_tokens, decode_clips, resolve_class
    from evatok.models.generator import Generator
    from evatok.video.writer import write_video

    try:
        if args.num < 1 or args.batch_size < 1:
            raise ValueError(f"--num {args.num} and --batch-size {args.batch_size} must be at least 1")
        settings = SamplingSettings(
            temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, cfg_scale=args.cfg,
            greedy=args.greedy,
        )
        generator = Generator.load(args.generator, device=args.device)
        tokenizer, untrained = load_tokenizer(args.tokenizer, device=args.device)
        check_tokenizer(generator.config, tokenizer.config)
        class_index = resolve_class(generator.config, args.class_name)
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return EXIT_INVALID
    if untrained:
        print(f"warning: {args.tokenizer} is an UNTRAINED tokenizer; the clips will be noise", file=sys.stderr)
    fps = args.fps or FALLBACK_FPS
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "".join(char if char.isalnum() or char in "-_" else "_" for char in args.class_name)
    random = torch.Generator(device=args.device).manual_seed(args.seed)
    records = []
    for start in range(0, args.num, args.batch_size):
        count = min(args.batch_size, args.num - start)
        clips = generate_clips(generator, [class_index] * count, settings, generator=random)
        frames = decode_clips(tokenizer, clips)
        for offset, (clip, video) in enumerate(zip(clips, frames, strict=True)):
            name = f"{stem}_{start + offset:04d}"
            write_video(args.out / f"{name}.mp4", video, fps)
            clip_tokens(clip, tokenizer.config, fps).save(args.out / f"{name}.safetensors")
            records.append({"name": name, "assignment": list(clip.assignment), "tokens": clip.num_tokens})
    totals = [record["tokens"] for record in records]
    report = {
        "generator": str(Path(args.generator).resolve()),
        "tokenizer": args.tokenizer,
        "class": args.class_name,
        "class_index": class_index,
        "num": args.num,
        "seed": args.seed,
        "sampling": {"cfg_scale": args.cfg, "temperature": args.temperature, "top_k": args.top_k,
                     "top_p": args.top_p, "greedy": args.greedy},
        "fps": fps,
        "mean_tokens": sum(totals) / len(totals),
        "clips": records,
    }
    (args.out / "generation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"wrote {args.num} clips of class {args.class_name} to {args.out}: tokens per clip mean "
        f"{report['mean_tokens']:.1f}, min {min(totals)}, max {max(totals)} (cfg {args.cfg:g})"
    )
    return 0


# ----- eval-generator ----------------------------------------------------------------------------


def run_eval_generator(args: argparse.Namespace) -> int:
    """Measure gFVD and generated token counts and print them with the protocol."""
    from evatok.generation.evaluation import evaluate_generation
    from evatok.generation.sampling import SamplingSettings
    from evatok.metrics.fvd import I3DFeatures
    from evatok.models.generator import Generator

    try:
        if args.num < 2 or args.batch_size < 1:
            raise ValueError(f"--num {args.num} must be at least 2 and --batch-size {args.batch_size} at least 1")
        settings = SamplingSettings(
            temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, cfg_scale=args.cfg
        )
        generator = Generator.load(args.generator, device=args.device)
        tokenizer, _ = load_tokenizer(args.tokenizer, device=args.device)
        i3d = I3DFeatures(args.i3d_weights, device=args.device)
        result = evaluate_generation(
            generator, tokenizer, args.tokens, i3d, num_samples=args.num, settings=settings, seed=args.seed,
            batch_size=args.batch_size, real_stats=args.real_stats,
        )
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return EXIT_INVALID
    result["generator"] = str(Path(args.generator).resolve())
    result["tokenizer"] = args.tokenizer
    generated, exported = result["generated_tokens"], result["export_tokens"]
    baseline = result["uniform_tokens"]
    print(
        f"gFVD {result['gfvd']:.2f} ({generated['clips']} generated vs {result['protocol']['real_clips']} real "
        f"clips, cfg {args.cfg:g}, seed {args.seed})"
    )
    print(
        f"generated tokens per clip: mean {generated['mean_tokens']:.1f} (min {generated['min_tokens']}, "
        f"max {generated['max_tokens']}); export ({result['export_assignment']}): mean {exported['mean_tokens']:.1f}"
        + (f"; uniform baseline fixed at {baseline}" if baseline is not None else "")
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
