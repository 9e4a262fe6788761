"""Measure LPIPS throughput (frame pairs/s) and I3D feature throughput (16-frame clips/s).

Needs the converted weights (`evatok weights fetch`). Inputs are random: the cost of these
networks does not depend on the content.

    python benchmarks/metrics.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from evatok.metrics import MODEL_RANGE, I3DFeatures, LPIPSMetric


def time_call(function, repeats: int) -> float:
    """Return the shortest wall time in seconds of `repeats` calls after one warm-up call.

    The minimum, not the median, because other jobs on a shared machine only ever add time.
    """
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_lpips(backbone: str, size: int, frames: int, repeats: int) -> dict:
    """Time LPIPS on `frames` frame pairs of size x size."""
    metric = LPIPSMetric(backbone, frames_per_batch=frames)
    x = torch.rand(frames, 3, size, size) * 2 - 1
    y = torch.rand(frames, 3, size, size) * 2 - 1
    seconds = time_call(lambda: metric(x, y, MODEL_RANGE), repeats)
    return {
        "metric": f"LPIPS {backbone}",
        "input": f"{frames} pairs of {size}x{size}",
        "per_second": frames / seconds,
        "unit": "frame pairs/s",
    }


def measure_i3d(size: int, clips: int, repeats: int) -> dict:
    """Time FVD features of `clips` clips of 16 x size x size (resized to 224 inside)."""
    extractor = I3DFeatures(clips_per_batch=clips)
    video = torch.rand(clips, 3, 16, size, size) * 2 - 1
    seconds = time_call(lambda: extractor(video, MODEL_RANGE), repeats)
    return {
        "metric": "I3D features",
        "input": f"{clips} clips of 16x{size}x{size}",
        "per_second": clips / seconds,
        "unit": "clips/s",
    }


def main() -> None:
    """Print one JSON line per measurement and a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts to try"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed calls per measurement (fastest reported)"
    )
    args = parser.parse_args()

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for row in (
            measure_lpips("alex", 128, 16, args.repeats),
            measure_lpips("vgg", 128, 16, args.repeats),
            measure_lpips("alex", 256, 16, args.repeats),
            measure_lpips("vgg", 256, 16, args.repeats),
            measure_i3d(128, 4, args.repeats),
        ):
            rows.append({**row, "threads": threads})

    machine = platform.processor() or platform.machine()
    print(json.dumps({"torch": torch.__version__, "machine": machine}))
    for row in rows:
        print(json.dumps(row))
    print()
    print("| metric | input | threads | throughput |")
    print("|---|---|---|---|")
    for row in rows:
        throughput = f"{row['per_second']:.1f} {row['unit']}"
        print(f"| {row['metric']} | {row['input']} | {row['threads']} | {throughput} |")


if __name__ == "__main__":
    main()
