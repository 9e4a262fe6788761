"""`evatok train RECIPE --config PRESET key=value ...`: run one training stage."""

from __future__ import annotations

import argparse
import sys

from evatok.training import RECIPES

DESCRIPTION = (
    "Train one stage with the Accelerate engine. Runs as one process as is; for several processes "
    "or machines start it with `torchrun` or `accelerate launch` (see docs/training.md). A run "
    "resumes from the newest checkpoint in run.dir unless run.resume=false."
)


def build_options_parser(recipe: str) -> argparse.ArgumentParser:
    """Build the parser of the options that follow the recipe name (options and overrides may mix)."""
    parser = argparse.ArgumentParser(prog=f"evatok train {recipe}", description=DESCRIPTION)
    parser.add_argument(
        "--config", default=None,
        help="YAML preset: a file path or a shipped preset name (micro, demo, tiny, paper; generator-micro, "
        "generator-tiny for the generator)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted config overrides, for example data.videos=DIR run.dir=runs/NAME train.lr=3e-4",
    )
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train one stage (toy engine check, proxy tokenizer, router, final tokenizer, generator)",
        description=DESCRIPTION
    )
    parser.add_argument("recipe", choices=sorted(RECIPES), help="stage to train")
    # argparse cannot mix a positional list with options inside a subcommand, so everything after
    # the recipe name is parsed again by build_options_parser.
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, metavar="[--config PRESET] [KEY=VALUE ...]",
        help="a preset and dotted overrides, in any order (see `evatok train RECIPE -h`)",
    )
    parser.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval-proxy",
        help="held-out PSNR/LPIPS of a proxy run per token count",
        description=(
            "Evaluate a proxy tokenizer run on the files held out of training (same split as the "
            "run's config): PSNR and LPIPS for each uniform assignment (k, ..., k) and for a "
            "per-clip mean colour. Writes eval.json in the run folder and prints a table."
        ),
    )
    evaluate.add_argument("run_dir", help="run folder written by `evatok train proxy`")
    evaluate.add_argument(
        "--all-checkpoints", action="store_true",
        help="evaluate every checkpoint (EMA weights) for a curve against training time, not only the last",
    )
    evaluate.add_argument(
        "--max-clips-per-video", type=int, default=None,
        help="clips per held-out video (default: the run's data.max_clips_per_video)",
    )
    evaluate.set_defaults(func=run_eval_proxy)


def run_train(args: argparse.Namespace) -> int:
    """Build the config and recipe, train, and print where the run was written."""
    from evatok.training import NonFiniteLossError, Trainer, get_recipe_class, load_config

    options = build_options_parser(args.recipe).parse_intermixed_args(args.options)
    try:
        config = load_config(options.config, options.overrides)
        recipe = get_recipe_class(args.recipe)(config)
        trainer = Trainer(recipe, config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        state = trainer.fit()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if trainer.accelerator.is_main_process:
        print(
            f"trained {args.recipe} to step {state.step} ({state.samples_seen} clips, "
            f"{state.train_seconds:.1f} s of steps) in {config.run.dir}"
        )
    return 0


def run_eval_proxy(args: argparse.Namespace) -> int:
    """Evaluate the newest (or every) checkpoint of a proxy run and print the tables."""
    import json
    from pathlib import Path

    from evatok.metrics import LPIPSMetric
    from evatok.training import load_config
    from evatok.training.engine import list_checkpoints
    from evatok.training.proxy_eval import (
        check_learning,
        describe_results,
        evaluate_reconstruction,
        held_out_dataset,
        load_checkpoint_tokenizer,
    )

    run_dir = Path(args.run_dir)
    config = load_config(run_dir / "config.yaml")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        print(f"error: no checkpoints in {run_dir / 'checkpoints'}: train first with `evatok train proxy`", file=sys.stderr)
        return 1
    if not args.all_checkpoints:
        checkpoints = checkpoints[-1:]
    dataset = held_out_dataset(config, args.max_clips_per_video)
    lpips = LPIPSMetric(config.loss.perceptual_net)
    records = []
    for checkpoint in checkpoints:
        model, state = load_checkpoint_tokenizer(checkpoint, config)
        results = evaluate_reconstruction(model, dataset, lpips)
        results.update(step=state["step"], train_seconds=state["train_seconds"], checkpoint=checkpoint.name)
        records.append(results)
        print(f"## {checkpoint.name}: step {state['step']}, {state['train_seconds']:.0f} s of training, "
              f"{results['clips']} held-out clips from {results['files']} files")
        print(describe_results(results))
    (run_dir / "eval.json").write_text(json.dumps(records, indent=2))
    problems = check_learning(records[-1])
    for problem in problems:
        print(f"not met: {problem}")
    return 0 if not problems else 3
