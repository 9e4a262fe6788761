"""`evatok encode`, `evatok decode` and `evatok reconstruct`: whole videos to tokens and back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from evatok.codec import (
    FALLBACK_FPS,
    AssignmentChoice,
    check_tokens_match,
    describe_tokens,
    encode_video,
    iter_decoded_clips,
    parse_assignment,
    reconstruct_video,
)
from evatok.models.tokenizer import Tokenizer
from evatok.models.weights import WEIGHTS_NAME
from evatok.presets import preset_names, tokenizer_config
from evatok.tokens import TokenizedVideo
from evatok.video.io import VideoDecodeError
from evatok.video.writer import DEFAULT_CRF, VideoWriter

PRESET_PREFIX = "preset:"
# Exit statuses: 2 for invalid arguments or input files, else 1 when a video cannot be decoded.
EXIT_INVALID = 2
EXIT_DECODE_FAILED = 1

TOKENIZER_HELP = (
    "the tokenizer: a folder written by save_pretrained (for example a training run's final/ "
    "folder), a .safetensors file with its config inside, a Hugging Face Hub id, or preset:NAME "
    "for an untrained, randomly initialised model to try things out (NAME: "
    f"{', '.join(preset_names())})"
)
ASSIGNMENT_HELP = (
    "token counts per block: counts such as 16,16,16,16; one count for every block such as 16; "
    "or index:N for class index N of the assignment space; join one per clip with ';' "
    "(default: the largest candidate count for every block)"
)


def load_tokenizer(source: str, *, seed: int = 0, device: str = "cpu") -> tuple[Tokenizer, bool]:
    """Load a tokenizer from a folder, a safetensors file, a hub id or ``preset:NAME``.

    Returns the model in eval mode and whether it is untrained (a preset with random weights,
    drawn from ``seed`` so that separate processes build the same model).
    """
    if source.startswith(PRESET_PREFIX):
        config = tokenizer_config(source[len(PRESET_PREFIX) :])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Tokenizer(config)
        return model.to(device).eval(), True

    path = Path(source)
    if path.is_dir():
        if not (path / WEIGHTS_NAME).is_file():
            raise ValueError(
                f"tokenizer folder {path} has no {WEIGHTS_NAME}: give a folder written by "
                "Tokenizer.save_pretrained, such as the final/ folder of a training run"
            )
        return Tokenizer.from_pretrained(str(path)).to(device).eval(), False
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"tokenizer {path} is a file but not .safetensors: give a folder written by "
                "save_pretrained or its model.safetensors file"
            )
        return Tokenizer.from_safetensors(path, device=device).eval(), False
    if _looks_like_hub_id(source):
        # NOTE: loading by hub id has no test, because the tests run without network access.
        try:
            model = Tokenizer.from_pretrained(source)
        except Exception as error:  # the hub client raises many types: network, 404, auth
            raise ValueError(
                f"tokenizer {source!r} is not a local folder and loading it from the Hugging Face "
                f"Hub failed ({type(error).__name__}: {error}); check the path or the hub id"
            ) from error
        return model.to(device).eval(), False
    raise ValueError(
        f"tokenizer {source} not found: give a folder written by save_pretrained, a .safetensors "
        f"file, a Hugging Face Hub id or {PRESET_PREFIX}NAME with NAME one of {preset_names()}"
    )


def _looks_like_hub_id(text: str) -> bool:
    """Return True for text of the form owner/name, which local paths rarely are."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _add_tokenizer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, metavar="CKPT_DIR_OR_PRESET", help=TOKENIZER_HELP)
    parser.add_argument(
        "--seed", type=int, default=0,
        help="random seed of the weights of a preset:NAME tokenizer (default 0); ignored for checkpoints",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="clips encoded or decoded at once (default 8)"
    )
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default cpu)")


def _add_video_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--assignment", default=None, help=ASSIGNMENT_HELP)
    parser.add_argument(
        "--stride", type=int, default=1, help="keep every n-th decoded frame (default 1: every frame)"
    )
    parser.add_argument(
        "--fps", type=float, default=None,
        help="sample frames at this rate in frames per second, by timestamps, instead of --stride",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `encode`, `decode` and `reconstruct` subcommands."""
    encode = subparsers.add_parser(
        "encode",
        help="turn a video into a token file",
        description=(
            "Encode a whole video into a token file (safetensors): consecutive clips at the "
            "tokenizer's clip size, frames resized to cover it and centre-cropped, the last clip "
            "padded and its real frame count stored."
        ),
    )
    encode.add_argument("video", type=Path, help="the video file to encode")
    encode.add_argument("--out", type=Path, required=True, help="token file to write (.safetensors)")
    _add_tokenizer_options(encode)
    _add_video_options(encode)
    encode.set_defaults(func=run_encode)

    decode = subparsers.add_parser(
        "decode",
        help="turn a token file back into an mp4",
        description="Decode a token file into an H.264 mp4 with exactly the encoded number of frames.",
    )
    decode.add_argument("tokens", type=Path, help="token file written by `evatok encode`")
    decode.add_argument("--out", type=Path, required=True, help="mp4 file to write")
    decode.add_argument(
        "--fps", type=float, default=None,
        help=f"frame rate of the mp4 in frames per second (default: the rate stored in the token "
        f"file, or {FALLBACK_FPS:g} when it has none)",
    )
    decode.add_argument("--crf", type=int, default=DEFAULT_CRF, help=f"libx264 quality, 0 (lossless) to 51 (default {DEFAULT_CRF})")
    _add_tokenizer_options(decode)
    decode.set_defaults(func=run_decode)

    reconstruct = subparsers.add_parser(
        "reconstruct",
        help="encode and decode videos; write input and reconstruction side by side",
        description=(
            "Encode and decode each video, print its PSNR (mean over frames, in dB, between the "
            "cropped input and the reconstruction) and write an mp4 with the input on the left "
            "and the reconstruction on the right, one frame per input frame."
        ),
    )
    reconstruct.add_argument("videos", type=Path, nargs="+", metavar="VIDEO", help="video files")
    reconstruct.add_argument(
        "--out", type=Path, required=True,
        help="mp4 file to write for one video; an existing folder for several (STEM.mp4 in it)",
    )
    reconstruct.add_argument(
        "--tokens-out", type=Path, default=None,
        help="also write the tokens: a .safetensors file for one video, a folder for several",
    )
    reconstruct.add_argument("--crf", type=int, default=DEFAULT_CRF, help=f"libx264 quality, 0 (lossless) to 51 (default {DEFAULT_CRF})")
    _add_tokenizer_options(reconstruct)
    _add_video_options(reconstruct)
    reconstruct.set_defaults(func=run_reconstruct)


# ----- shared steps ------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _prepare(args: argparse.Namespace, with_assignment: bool) -> tuple[Tokenizer, AssignmentChoice | None]:
    """Load the tokenizer, warn when it is untrained, and resolve --assignment against it."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} is invalid: give 1 or more clips")
    model, untrained = load_tokenizer(args.tokenizer, seed=args.seed, device=args.device)
    if untrained:
        print(
            f"warning: {args.tokenizer} is an UNTRAINED tokenizer with random weights (seed "
            f"{args.seed}); its reconstructions do not resemble the input. Train one with `evatok train proxy` "
            "and pass its final/ folder to --tokenizer.",
            file=sys.stderr,
        )
    if not with_assignment:
        return model, None
    if args.assignment is None:
        return model, model.config.candidates[-1]
    # Parsed here, against the tokenizer's space, so a wrong one fails before any video is read.
    return model, parse_assignment(args.assignment, model.config.space)


def _check_output(path: Path, option: str) -> None:
    if not path.parent.is_dir():
        raise ValueError(f"{option} {path}: folder {path.parent} does not exist; create it first")


def _progress() -> bool:
    return sys.stderr.isatty()


# ----- commands ----------------------------------------------------------------------------------


def run_encode(args: argparse.Namespace) -> int:
    """Encode one video into a token file and print what it contains."""
    try:
        _check_output(args.out, "--out")
        if not args.video.is_file():
            raise ValueError(f"video file {args.video} not found: check the path")
        model, assignment = _prepare(args, with_assignment=True)
        tokens = encode_video(
            model, args.video, assignment, batch_size=args.batch_size, progress=_progress(),
            frame_stride=args.stride, sample_fps=args.fps,
        )
        tokens.save(args.out)
    except VideoDecodeError as error:
        _error(f"{error}; check that the file plays, or convert it with ffmpeg")
        return EXIT_DECODE_FAILED
    except ValueError as error:
        _error(str(error))
        return EXIT_INVALID
    print(f"wrote {args.out}")
    for line in describe_tokens(tokens):
        print(f"  {line}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    """Decode a token file into an mp4 with the encoded number of frames."""
    try:
        _check_output(args.out, "--out")
        tokens = TokenizedVideo.load(args.tokens)
        model, _ = _prepare(args, with_assignment=False)
        try:
            check_tokens_match(model.config, tokens)
        except ValueError as error:
            raise ValueError(f"token file {args.tokens}: {error}") from error
        fps = args.fps or tokens.fps or FALLBACK_FPS
        with VideoWriter(args.out, fps, crf=args.crf) as writer:
            for frames in iter_decoded_clips(model, tokens, batch_size=args.batch_size, progress=_progress()):
                writer.write_all(frames)
    except ValueError as error:
        _error(str(error))
        return EXIT_INVALID
    print(
        f"wrote {args.out}: {writer.frames_written} frames of {tokens.height}x{tokens.width} "
        f"(height x width) at {fps:g} fps"
    )
    return 0


def _output_paths(args: argparse.Namespace) -> list[tuple[Path, Path, Path | None]]:
    """Return (video, mp4, token file or None) for each video, checking the output options."""
    videos: list[Path] = args.videos
    if len(videos) == 1:
        _check_output(args.out, "--out")
        if args.tokens_out is not None:
            _check_output(args.tokens_out, "--tokens-out")
        return [(videos[0], args.out, args.tokens_out)]
    for option, folder in (("--out", args.out), ("--tokens-out", args.tokens_out)):
        if folder is not None and not folder.is_dir():
            raise ValueError(
                f"{option} {folder} is not an existing folder: with several videos, give a folder "
                "that receives one file per video"
            )
    stems = [video.stem for video in videos]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ValueError(
            f"several videos share the names {repeated}, so their outputs would collide: "
            "reconstruct them in separate runs"
        )
    return [
        (
            video,
            args.out / f"{video.stem}.mp4",
            None if args.tokens_out is None else args.tokens_out / f"{video.stem}.safetensors",
        )
        for video in videos
    ]


def run_reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct each video, print its PSNR and write the side-by-side mp4."""
    try:
        outputs = _output_paths(args)
        model, assignment = _prepare(args, with_assignment=True)
    except ValueError as error:
        _error(str(error))
        return EXIT_INVALID
    status = 0
    scores = []
    for video, out, tokens_out in outputs:
        try:
            if not video.is_file():
                raise ValueError(f"video file {video} not found: check the path")
            result = reconstruct_video(
                model, video, assignment, out=out, batch_size=args.batch_size, progress=_progress(),
                frame_stride=args.stride, sample_fps=args.fps, crf=args.crf,
            )
            if tokens_out is not None:
                result.tokens.save(tokens_out)
        except VideoDecodeError as error:
            status = max(status, EXIT_DECODE_FAILED)
            _error(f"{error}; check that the file plays, or convert it with ffmpeg")
            continue
        except ValueError as error:
            status = EXIT_INVALID
            _error(str(error))
            continue
        scores.append(result.psnr_db)
        tokens = result.tokens
        per_clip = tokens.num_tokens / tokens.num_clips
        print(
            f"{video}: PSNR {result.psnr_db:.2f} dB over {result.num_frames} frames, "
            f"{tokens.num_clips} clips, {per_clip:g} tokens per clip; wrote {out} "
            f"(input left, reconstruction right)"
        )
    if len(outputs) > 1:
        mean = f", mean PSNR {sum(scores) / len(scores):.2f} dB" if scores else ""
        print(f"summary: {len(scores)} of {len(outputs)} videos reconstructed{mean}")
    return status
