"""Measure stage 1 training steps: clips per second and peak memory, per preset.

Each step is the proxy recipe's full model phase: tokenizer forward with random mixed
assignments, L1, LPIPS and VQ terms as the preset sets them, backward and AdamW. The clips are
random and already in memory, so decoding is not included. Each preset runs in its own process
so that its peak resident memory is its own.

    python benchmarks/train_step.py                    # tiny (20 steps) and paper (1 step)
    python benchmarks/train_step.py --preset tiny --steps 50 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_RUNS = (("tiny", 20, 8), ("paper", 1, 2))


def measure(preset: str, steps: int, batch_size: int, warmup: int) -> dict[str, object]:
    """Time `steps` training steps of `preset` after `warmup` untimed ones."""
    from accelerate import Accelerator

    from evatok.training import load_config
    from evatok.training.engine import step_generator
    from evatok.training.proxy import ProxyRecipe
    from evatok.training.recipe import StepContext

    config = load_config(preset, [f"train.batch_size={batch_size}", "run.dir=/tmp/evatok-train-step-benchmark"])
    recipe = ProxyRecipe(config)
    accelerator = Accelerator(cpu=True)
    model = recipe.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, betas=tuple(config.train.betas))
    tok = recipe.tokenizer_config
    generator = torch.Generator().manual_seed(0)
    batch = {
        "video": torch.rand(batch_size, tok.channels, tok.frames, tok.height, tok.width, generator=generator) * 2 - 1,
        "mask": torch.ones(batch_size, tok.frames, dtype=torch.bool),
    }
    durations = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        ctx = StepContext(step=step, micro_step=0, generator=step_generator(0, step, 0, 0), accelerator=accelerator)
        output = recipe.training_loss(model, batch, ctx)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            durations.append(time.perf_counter() - start)
    median = statistics.median(durations)
    return {
        "preset": preset,
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "clip": f"{tok.frames}x{tok.height}x{tok.width}",
        "batch": batch_size,
        "steps": steps,
        "median_step_s": round(median, 3),
        "clips_per_s": round(batch_size / median, 2),
        "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "threads": torch.get_num_threads(),
        "lpips_weight": config.loss.perceptual_weight,
        "lpips_frames": config.loss.perceptual_frames,
    }


def main() -> int:
    """Run one preset in this process, or each default preset in its own process."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="one preset to measure in this process (default: tiny and paper)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first step is slow)")
    args = parser.parse_args()
    if args.preset:
        print(json.dumps(measure(args.preset, args.steps, args.batch_size, args.warmup)))
        return 0

    rows = []
    for preset, steps, batch_size in DEFAULT_RUNS:
        warmup = 1 if preset == "tiny" else 0
        command = [sys.executable, str(Path(__file__).resolve()), "--preset", preset, "--steps", str(steps),
                   "--batch-size", str(batch_size), "--warmup", str(warmup)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print("| preset | params (M) | clip | batch | timed steps | median step (s) | clips/s | peak RSS (GB) | LPIPS weight / frames |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['preset']} | {row['parameters_M']} | {row['clip']} | {row['batch']} | {row['steps']} | "
            f"{row['median_step_s']} | {row['clips_per_s']} | {row['peak_rss_GB']} | "
            f"{row['lpips_weight']} / {row['lpips_frames'] or 'all'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
