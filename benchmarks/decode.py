"""Measure decoding speed and peak memory of `evatok.video` on real files.

For each file, in a fresh process so that peak RSS belongs to that file alone, the script times
(1) decoding every frame without colour conversion (`count_frames`) and (2) decoding, converting
to RGB, resizing to cover 128x128 and centre-cropping (`iter_frames(size=(128, 128))`). It prints
a Markdown table. "Added by decoding" is the peak RSS minus the RSS after imports (torch, PyAV).

    python benchmarks/decode.py [--videos ../shared/videos/clips] [--size 128] [FILE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from evatok.video import count_frames, iter_frames, probe

# One file per kind: 720p VP8, portrait 1568x882 H.264, 360p H.264, raw CIF H.264, GIF, FLV.
DEFAULT_FILES = [
    "moviepy__big_buck_bunny_0_30.webm",
    "infotok__video_720p.mp4",
    "infotok__bdd_e5cd93c4-41251973.mp4",
    "openh264__BA1_FT_C.264",
    "intel__preview_classroom.gif",
    "moviepy__clip1024.flv",
]


def measure(path: Path, size: int) -> dict[str, object]:
    """Time decode-only and decode+resize passes over one file and read this process's peak RSS."""
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    info = probe(path)
    started = time.perf_counter()
    decoded, _ = count_frames(path)
    decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    resized = sum(1 for _ in iter_frames(path, size=(size, size)))
    resize_seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "file": path.name,
        "codec": info.codec,
        "size": f"{info.display_width}x{info.display_height}",
        "frames": decoded,
        "decode_fps": decoded / decode_seconds,
        "resize_fps": resized / resize_seconds,
        "peak_rss_mib": peak_kib / 1024,
        "added_rss_mib": (peak_kib - baseline_kib) / 1024,
    }


def main() -> int:
    """Run one subprocess per file and print the results as a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="video files (default: a fixed set from --videos)")
    shared = Path(os.environ.get("EVATOK_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--videos", type=Path, default=shared / "videos" / "clips", help="folder of the default files")
    parser.add_argument("--size", type=int, default=128, help="output clip side in pixels (default 128)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: measure one file
    args = parser.parse_args()

    if args.one is not None:
        print(json.dumps(measure(args.one, args.size)))
        return 0

    files = args.files or [args.videos / name for name in DEFAULT_FILES]
    print(f"{os.cpu_count()} CPUs visible; output {args.size}x{args.size}\n")
    print("| file | codec | size | frames | decode only (frames/s) | decode + resize + crop (frames/s) | peak RSS (MiB) | added by decoding (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for path in files:
        result = subprocess.run(
            [sys.executable, __file__, "--one", str(path), "--size", str(args.size)],
            capture_output=True, text=True, check=True,
        )
        row = json.loads(result.stdout)
        print(
            f"| {row['file']} | {row['codec']} | {row['size']} | {row['frames']} | {row['decode_fps']:.0f} "
            f"| {row['resize_fps']:.0f} | {row['peak_rss_mib']:.0f} | {row['added_rss_mib']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
