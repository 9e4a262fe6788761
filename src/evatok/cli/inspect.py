"""`evatok inspect PATH`: report what evatok reads from a video file, a folder or a token file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from evatok.codec import describe_token_file
from evatok.video.clips import ClipIndex, ClipSpec, index_clips
from evatok.video.datasets import list_videos
from evatok.video.io import VideoDecodeError, VideoInfo, probe


def _parse_size(text: str) -> tuple[int, int]:
    """Parse '128' or '128x96' (height x width) into (height, width)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"invalid size {text!r}: use N or HxW, e.g. 128 or 128x96")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `inspect` subcommand."""
    parser = subparsers.add_parser(
        "inspect",
        help="report streams, size, rotation, fps, decodable frames and clips of videos, or a token file",
        description=(
            "Decode each video file (a file, or every video below a folder) and print its streams, "
            "size, rotation, frame rate, the number of frames that really decode and the clips it "
            "yields for the clip spec below, or why it is rejected. A token file (.safetensors "
            "written by `evatok encode`) is validated and described instead. Exits 1 when any "
            "file is rejected."
        ),
    )
    parser.add_argument(
        "path", type=Path, help="a video file, a folder searched recursively, or a token file"
    )
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--size", type=_parse_size, default=(128, 128), help="clip size N or HxW in pixels (default 128)")
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th decoded frame (default 1)")
    parser.add_argument("--fps", type=float, default=None, help="sample at this rate by timestamps instead of --stride")
    parser.add_argument(
        "--short", choices=("pad", "skip"), default="pad",
        help="videos with fewer sampled frames than --frames: pad with the last frame or skip (default pad)",
    )
    parser.set_defaults(func=run)


def _format_info(info: VideoInfo) -> list[str]:
    """Return the report lines for a readable file's header."""
    size = f"{info.width}x{info.height}"
    changes = []
    if info.rotation:
        changes.append(f"rotation {info.rotation}")
    if info.mirrored:
        changes.append("mirrored")
    if info.pixel_aspect != 1.0:
        changes.append(f"pixel aspect {info.pixel_aspect:.3f}")
    if changes:
        size += f", displayed {info.display_width}x{info.display_height} ({', '.join(changes)})"
    duration = f"{info.duration:.2f} s" if info.duration is not None else "duration unknown"
    streams = "; ".join(f"#{s.index} {s.type} {s.codec or '?'} {s.detail}".rstrip() for s in info.streams)
    return [
        f"  video: {info.codec} {info.pix_fmt} {size}, {info.fps:.3f} fps, {duration}, container {info.container}",
        f"  streams: {streams}",
    ]


def _format_clips(index: ClipIndex, spec: ClipSpec) -> str:
    """Return the report line for the clips a file yields."""
    if index.short and index.num_clips == 0:
        return f"  clips: 0, short video skipped ({index.sampled_frames} of {spec.num_frames} frames)"
    if index.short:
        return f"  clips: 1 padded ({index.sampled_frames} of {spec.num_frames} frames real)"
    dropped = index.sampled_frames - index.num_clips * spec.num_frames
    tail = f", last {dropped} sampled frames dropped" if dropped else ""
    return f"  clips: {index.num_clips}{tail}"


def _inspect_token_file(path: Path) -> int:
    """Print the description of a token file; return 1 if it fails validation."""
    try:
        print(describe_token_file(path))
    except ValueError as error:
        print(f"{path}\n  rejected: {error}")
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Inspect every video under args.path and print a report; return 1 if any is rejected."""
    try:
        spec = ClipSpec(
            num_frames=args.frames, height=args.size[0], width=args.size[1],
            frame_stride=args.stride, fps=args.fps, short_policy=args.short,
        )
    except ValueError as error:
        print(f"error: {error}")
        return 2
    path: Path = args.path
    if path.is_file() and path.suffix == ".safetensors":
        return _inspect_token_file(path)
    if path.is_dir():
        files = list_videos(path)
        other = sum(1 for p in path.rglob("*") if p.is_file()) - len(files)
    elif path.exists():
        files, other = [path], 0
    else:
        print(f"error: {path} not found: give a video file or a folder of videos")
        return 2

    started = time.perf_counter()
    print(f"clip spec: {spec.describe()}, short videos: {spec.short_policy}")
    rejected = short = clips = 0
    for file in files:
        print(file)
        try:
            info = probe(file)
            index = index_clips(file, spec)
        except VideoDecodeError as error:
            rejected += 1
            print(f"  rejected: {error.reason}")
            continue
        for line in _format_info(info):
            print(line)
        header = f" (header says {info.header_frames})" if info.header_frames else ""
        print(f"  frames: {index.decoded_frames} decoded{header}, {index.sampled_frames} sampled")
        print(_format_clips(index, spec))
        short += index.short
        clips += index.num_clips

    elapsed = time.perf_counter() - started
    ignored = f", {other} other files ignored (suffix not a video suffix)" if other else ""
    print(
        f"summary: {len(files)} files, {len(files) - rejected} readable, {rejected} rejected, "
        f"{short} short ({spec.short_policy}), {clips} clips{ignored}; {elapsed:.1f} s"
    )
    return 1 if rejected else 0
