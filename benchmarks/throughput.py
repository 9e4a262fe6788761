"""Measure tokenizer encode+decode throughput (clips/s) and peak memory for presets.

Each preset runs in its own subprocess, so the reported peak resident memory (RSS) belongs to
that preset alone. Weights are random: throughput does not depend on training.

    python benchmarks/throughput.py --presets tiny paper --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def measure(preset: str, batch_size: int, iterations: int, threads: int, count: str, device: str) -> dict:
    """Time ``iterations`` encode+decode passes of one preset after one warm-up pass."""
    import torch

    from evatok.models import Tokenizer
    from evatok.presets import tokenizer_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = tokenizer_config(preset)
    model = Tokenizer(config).eval().to(device)
    space = config.space
    if count == "mean":
        # The candidate closest to the mean count of uniformly drawn assignments.
        mean = space.mean_length / space.num_blocks
        value = min(space.candidates, key=lambda c: abs(c - mean))
        assignment = [space.uniform(value)] * batch_size
    elif count == "random":
        import random

        rng = random.Random(0)
        assignment = [space.sample(rng) for _ in range(batch_size)]
    else:
        assignment = [space.uniform(int(count))] * batch_size
    video = torch.rand(batch_size, config.channels, config.frames, config.height, config.width)
    video = (video * 2 - 1).to(device)

    def step() -> None:
        with torch.inference_mode():
            model.decode(model.encode(video, assignment))
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = sum(sum(row) for row in assignment) / batch_size
    return {
        "preset": preset,
        "parameters": model.num_parameters(),
        "clip": f"{config.frames}x{config.height}x{config.width}",
        "batch_size": batch_size,
        "tokens_per_clip": tokens,
        "clips_per_s": batch_size * iterations / seconds,
        "peak_rss_gib": peak_kib / 2**20,
        "threads": threads,
        "torch": torch.__version__,
    }


def main() -> int:
    """Run each requested preset in a subprocess and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"], help="preset names")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="clips per pass, one per preset (default: 8 for tiny/micro, 1 otherwise)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed passes after one warm-up pass (default: 20 for tiny/micro, 2 otherwise)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--count", default="mean",
                        help="tokens per block: a candidate count, 'mean' (candidate nearest the "
                             "uniform-sampling mean) or 'random' (a random assignment per clip)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        preset, batch, iterations = args.worker.split(",")
        result = measure(preset, int(batch), int(iterations), args.threads, args.count, args.device)
        print(json.dumps(result))
        return 0

    small = {"tiny", "micro"}
    rows = []
    for index, preset in enumerate(args.presets):
        if args.batch_sizes:
            batch = args.batch_sizes[index]
        else:
            batch = 8 if preset in small else 1
        iterations = args.iterations or (20 if preset in small else 2)
        command = [sys.executable, __file__, "--worker", f"{preset},{batch},{iterations}",
                   "--threads", str(args.threads), "--count", args.count, "--device", args.device]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            return result.returncode
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    print(f"# {platform.processor() or platform.machine()}, torch {rows[0]['torch']}, "
          f"{args.threads} threads, device {args.device}")
    print("| preset | params | clip | batch | tokens/clip | encode+decode clips/s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['preset']} | {row['parameters'] / 1e6:.1f}M | {row['clip']} | {row['batch_size']} "
              f"| {row['tokens_per_clip']:.0f} | {row['clips_per_s']:.2f} | {row['peak_rss_gib']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
