"""Whole videos to tokens and back, in consecutive clips at the tokenizer's clip geometry.

A video of any length is cut into consecutive, non-overlapping clips of the tokenizer's
``frames x height x width``. Each frame is resized so that it covers ``height x width`` with its
aspect ratio kept, then centre-cropped. The last clip is padded by repeating its last real frame.
The token file stores the number of real frames (``source_frames``), and decoding crops the
output back to exactly that many frames. A video shorter than one clip gives one padded clip.

Frames are taken at the source rate unless a sampling option is set: ``frame_stride``
keeps every n-th frame, and ``sample_fps`` (files only) samples by timestamps at that rate.

Encoding and decoding stream: at most ``batch_size`` clips are decoded from the file, encoded or
reconstructed at a time, besides the output itself.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evatok.assignment import Assignment, AssignmentSpace
from evatok.metrics.inputs import UINT8_RANGE
from evatok.metrics.psnr_ssim import psnr
from evatok.models.config import TokenizerConfig
from evatok.models.tokenizer import Tokenizer, TokenizerEncoding
from evatok.tokens import TokenizedVideo
from evatok.video.clips import ClipSpec, from_model_output, iter_clips, to_model_input
from evatok.video.io import scaled_size
from evatok.video.writer import DEFAULT_CRF, VideoWriter, side_by_side

logger = logging.getLogger(__name__)

CROP = "center"
# Frame rate written to an mp4 when the frames came from memory without a known rate.
FALLBACK_FPS = 25.0


# ----- assignments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssignmentIndex:
    """Class index of an assignment in the tokenizer's assignment space (see AssignmentSpace)."""

    index: int


# One clip's assignment: explicit counts per block, a uniform count for every block, or an index.
ClipAssignment = Sequence[int] | int | AssignmentIndex
# A ClipAssignment for every clip, or a sequence with one ClipAssignment per clip.
AssignmentChoice = ClipAssignment | Sequence[ClipAssignment]


def resolve_assignment(space: AssignmentSpace, choice: ClipAssignment) -> Assignment:
    """Return the explicit assignment meant by counts, a uniform count or an AssignmentIndex."""
    if isinstance(choice, AssignmentIndex):
        return space.assignment(choice.index)
    if isinstance(choice, numbers.Integral):
        if int(choice) not in space.candidates:
            raise ValueError(
                f"uniform token count {choice} is not a candidate: choose one of {space.candidates}"
            )
        return space.uniform(int(choice))
    return space.validate(choice)


def is_single_assignment(choice: AssignmentChoice) -> bool:
    """Return True when ``choice`` means one assignment for all clips, False for one per clip."""
    if isinstance(choice, (numbers.Integral, AssignmentIndex)):
        return True
    items = list(choice)
    if not items:
        raise ValueError("the assignment is empty: give token counts, a uniform count or an index")
    # A flat sequence of ints is always the counts of one assignment, never uniform counts per clip.
    return all(isinstance(item, numbers.Integral) for item in items)


class ClipAssignments:
    """The assignment of each clip: one shared by all clips, or one given per clip."""

    def __init__(self, space: AssignmentSpace, choice: AssignmentChoice) -> None:
        self.space = space
        self.shared: Assignment | None = None
        self.per_clip: list[Assignment] | None = None
        if is_single_assignment(choice):
            self.shared = resolve_assignment(space, choice)  # type: ignore[arg-type]
        else:
            self.per_clip = [resolve_assignment(space, item) for item in choice]  # type: ignore[union-attr]

    def __call__(self, clip: int) -> Assignment:
        """Return the assignment of clip number ``clip``."""
        if self.shared is not None:
            return self.shared
        assert self.per_clip is not None
        if clip >= len(self.per_clip):
            raise ValueError(
                f"got {len(self.per_clip)} per-clip assignments, but the video has more clips: "
                "give one assignment per clip, or a single assignment for all clips"
            )
        return self.per_clip[clip]

    def check_clip_count(self, num_clips: int) -> None:
        """Raise ValueError when a per-clip list does not have exactly ``num_clips`` entries."""
        if self.per_clip is not None and len(self.per_clip) != num_clips:
            raise ValueError(
                f"got {len(self.per_clip)} per-clip assignments, but the video has {num_clips} clips: "
                "give one assignment per clip, or a single assignment for all clips"
            )


def parse_assignment(text: str, space: AssignmentSpace) -> Assignment | list[Assignment]:
    """Parse command-line assignment text into one assignment, or a list with one per clip.

    Forms: ``16,16,16,16`` (counts per block), ``16`` (the same count for every block),
    ``index:312`` (a class index), and several of these joined by ``;`` (one per clip).
    """
    parts = [part.strip() for part in text.split(";")]
    resolved = [resolve_assignment(space, _parse_clip_assignment(part, text)) for part in parts]
    return resolved if len(resolved) > 1 else resolved[0]


def _parse_clip_assignment(part: str, text: str) -> ClipAssignment:
    try:
        if part.lower().startswith("index:"):
            return AssignmentIndex(int(part[len("index:") :]))
        counts = [int(value) for value in part.split(",")]
    except ValueError:
        counts = []
    if not counts:
        raise ValueError(
            f"invalid assignment {text!r}: write counts per block such as 16,16,16,16, one count "
            "for every block such as 16, or index:N; join one per clip with ';'"
        )
    return counts[0] if len(counts) == 1 else tuple(counts)


# ----- clips -------------------------------------------------------------------------------------


@dataclass
class SourceClip:
    """One clip of a video at the tokenizer's geometry: uint8 frames (T, H, W, 3) and real count."""

    frames: np.ndarray
    num_valid: int
    number: int
    fps: float | None


def clip_spec(config: TokenizerConfig, *, frame_stride: int = 1, sample_fps: float | None = None) -> ClipSpec:
    """Return the clip spec of a tokenizer: its clip size, centre crop, short videos padded."""
    return ClipSpec(
        num_frames=config.frames,
        height=config.height,
        width=config.width,
        frame_stride=frame_stride,
        fps=sample_fps,
        short_policy="pad",
        crop=CROP,
    )


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 frames (T, H, W, 3) to cover height x width, aspect kept, and centre-crop.

    Shrinking averages areas (antialiased) and enlarging is bicubic, the filter kinds the file
    reader uses. NOTE: torch's kernels are not swscale's, so frames of another size than the
    clip may differ by a few levels from the same video read from a file.
    """
    source_height, source_width = frames.shape[1:3]
    if (source_height, source_width) == (height, width):
        return frames
    out_width, out_height = scaled_size(source_width, source_height, (height, width), None)
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if out_width * out_height < source_width * source_height:
        resized = F.interpolate(tensor, size=(out_height, out_width), mode="area")
    else:
        resized = F.interpolate(tensor, size=(out_height, out_width), mode="bicubic", align_corners=False)
    levels = resized.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    top = (out_height - height) // 2
    left = (out_width - width) // 2
    return np.ascontiguousarray(levels[:, top : top + height, left : left + width])


def array_clips(
    frames: np.ndarray | torch.Tensor, config: TokenizerConfig, *, frame_stride: int = 1, fps: float | None = None
) -> Iterator[SourceClip]:
    """Yield consecutive clips of in-memory uint8 frames (N, H, W, 3), the tail clip padded."""
    array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 RGB frames (N, H, W, 3), got {array.dtype} {array.shape}: "
            "convert the video to uint8 RGB first"
        )
    if frame_stride < 1:
        raise ValueError(f"frame_stride {frame_stride} is invalid: give 1 or more")
    array = array[::frame_stride]
    rate = None if fps is None else fps / frame_stride
    for number, start in enumerate(range(0, len(array), config.frames)):
        chunk = fit_frames(array[start : start + config.frames], config.height, config.width)
        num_valid = len(chunk)
        if num_valid < config.frames:
            padding = np.repeat(chunk[-1:], config.frames - num_valid, axis=0)
            chunk = np.concatenate([chunk, padding])
        yield SourceClip(chunk, num_valid, number, rate)


def file_clips(
    path: str | Path, config: TokenizerConfig, *, frame_stride: int = 1, sample_fps: float | None = None
) -> Iterator[SourceClip]:
    """Yield consecutive clips of a video file, decoded as a stream, the tail clip padded."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video file {path} not found: check the path")
    spec = clip_spec(config, frame_stride=frame_stride, sample_fps=sample_fps)
    for clip in iter_clips(path, spec, include_tail=True):
        yield SourceClip(clip.frames, clip.num_valid, clip.clip_number, clip.fps)


def source_clips(
    video: str | Path | np.ndarray | torch.Tensor,
    config: TokenizerConfig,
    *,
    frame_stride: int = 1,
    sample_fps: float | None = None,
    source_fps: float | None = None,
) -> Iterator[SourceClip]:
    """Yield the clips of a file path or of in-memory uint8 frames (N, H, W, 3)."""
    if isinstance(video, (str, Path)):
        if source_fps is not None:
            raise ValueError("source_fps is for in-memory frames; a file's rate is read from the file")
        return file_clips(video, config, frame_stride=frame_stride, sample_fps=sample_fps)
    if sample_fps is not None:
        raise ValueError(
            "sample_fps needs frame timestamps, which in-memory frames lack: use frame_stride instead"
        )
    return array_clips(video, config, frame_stride=frame_stride, fps=source_fps)


def batched(clips: Iterable[SourceClip], batch_size: int) -> Iterator[list[SourceClip]]:
    """Group clips into lists of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} is invalid: give 1 or more clips per batch")
    batch: list[SourceClip] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----- model -------------------------------------------------------------------------------------


def model_device(model: Tokenizer) -> torch.device:
    """Return the device of the model's parameters."""
    return next(model.parameters()).device


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Run the model in eval mode without gradients, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode_batch(model: Tokenizer, batch: list[SourceClip], assignments: ClipAssignments) -> TokenizerEncoding:
    """Encode a batch of clips, each with its own assignment."""
    video = torch.stack([to_model_input(clip.frames) for clip in batch]).to(model_device(model))
    return model.encode(video, [assignments(clip.number) for clip in batch])


def check_tokens_match(config: TokenizerConfig, tokens: TokenizedVideo) -> None:
    """Raise ValueError unless the tokens match this tokenizer's clip geometry and codebook."""
    encoded = (tokens.frames, tokens.height, tokens.width)
    expected = (config.frames, config.height, config.width)
    problems = []
    if encoded != expected:
        problems.append(f"clips of {'x'.join(map(str, encoded))} instead of {'x'.join(map(str, expected))}")
    if tokens.num_blocks != config.num_blocks:
        problems.append(f"{tokens.num_blocks} blocks per clip instead of {config.num_blocks}")
    if tokens.codebook_size != config.codebook_size:
        problems.append(f"codebook size {tokens.codebook_size} instead of {config.codebook_size}")
    if tuple(tokens.candidates) != tuple(config.candidates):
        problems.append(f"candidate counts {tokens.candidates} instead of {config.candidates}")
    if problems:
        raise ValueError(
            "the tokens were encoded by another tokenizer: they have " + ", ".join(problems)
            + "; decode them with the tokenizer that encoded them"
        )


class TokenCollector:
    """Gather the code ids of encoded batches, clip by clip, into one TokenizedVideo."""

    def __init__(self, config: TokenizerConfig, fps: float | None) -> None:
        self.config = config
        self.fps = fps
        self.ids: list[torch.Tensor] = []
        self.assignments: list[torch.Tensor] = []
        self.source_frames = 0

    @property
    def num_clips(self) -> int:
        """Number of clips gathered so far."""
        return len(self.ids)

    def add(self, batch: list[SourceClip], encoding: TokenizerEncoding) -> None:
        """Append the ids of every clip of an encoded batch."""
        for row, clip in enumerate(batch):
            self.ids.append(torch.cat(encoding.ids_of(row)).cpu())
            self.source_frames += clip.num_valid
            self.fps = clip.fps
        self.assignments.append(encoding.assignment.cpu())

    def build(self) -> TokenizedVideo:
        """Return the gathered clips as a TokenizedVideo."""
        config = self.config
        return TokenizedVideo(
            ids=torch.cat(self.ids),
            assignments=torch.cat(self.assignments),
            codebook_size=config.codebook_size,
            candidates=config.candidates,
            frames=config.frames,
            height=config.height,
            width=config.width,
            fps=self.fps,
            crop=CROP,
            source_frames=self.source_frames,
        )


def video_name(video: object) -> str:
    """Return a file's path, or a stand-in name for in-memory frames, for messages."""
    return str(video) if isinstance(video, (str, Path)) else "in-memory frames"


def no_frames_error(video: object) -> ValueError:
    """Return the error for a video that yields no frame to encode."""
    return ValueError(
        f"{video_name(video)}: no frames to encode; check the video and the sampling options"
    )


# ----- encode and decode -------------------------------------------------------------------------


def encode_video(
    model: Tokenizer,
    video: str | Path | np.ndarray | torch.Tensor,
    assignment: AssignmentChoice,
    *,
    batch_size: int = 8,
    progress: bool = False,
    frame_stride: int = 1,
    sample_fps: float | None = None,
    source_fps: float | None = None,
) -> TokenizedVideo:
    """Encode a whole video (a file path or uint8 frames (N, H, W, 3)) into tokens.

    ``assignment`` is token counts per block, a uniform count, an AssignmentIndex, or a sequence
    with one of those per clip. ``source_fps`` is the rate of in-memory frames, stored in the
    tokens. Raises ValueError for invalid assignments and VideoDecodeError for unreadable files.
    """
    config = model.config
    assignments = ClipAssignments(config.space, assignment)
    clips = source_clips(
        video, config, frame_stride=frame_stride, sample_fps=sample_fps, source_fps=source_fps
    )
    collector = TokenCollector(config, source_fps)
    with inference(model), tqdm(desc="encode", unit="clip", disable=not progress) as bar:
        for batch in batched(clips, batch_size):
            collector.add(batch, encode_batch(model, batch, assignments))
            bar.update(len(batch))
    if not collector.num_clips:
        raise no_frames_error(video)
    assignments.check_clip_count(collector.num_clips)
    tokens = collector.build()
    logger.info("encoded %s: %d clips, %d frames, %d tokens", video_name(video), tokens.num_clips,
                tokens.source_frames, tokens.num_tokens)
    return tokens


def valid_frames(tokens: TokenizedVideo, clip: int) -> int:
    """Return the number of real frames of clip ``clip``; only the last clip may have fewer."""
    return min(tokens.frames, tokens.source_frames - clip * tokens.frames)


def iter_decoded_clips(
    model: Tokenizer, tokens: TokenizedVideo, *, batch_size: int = 8, progress: bool = False
) -> Iterator[np.ndarray]:
    """Yield the real frames of each clip in order as uint8 (n, H, W, 3), decoding in batches.

    Geometry comes from the tokens and is checked against the model; it is never inferred from
    token counts.
    """
    check_tokens_match(model.config, tokens)
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} is invalid: give 1 or more clips per batch")
    device = model_device(model)
    with inference(model), tqdm(
        total=tokens.num_clips, desc="decode", unit="clip", disable=not progress
    ) as bar:
        for start in range(0, tokens.num_clips, batch_size):
            clips = slice(start, min(start + batch_size, tokens.num_clips))
            blocks = [ids.to(device) for ids in tokens.padded_blocks(clips)]
            video = model.decode(blocks, tokens.assignments[clips])
            for row, clip in enumerate(range(clips.start, clips.stop)):
                yield from_model_output(video[row])[: valid_frames(tokens, clip)]
            bar.update(clips.stop - clips.start)


def decode_video(
    model: Tokenizer, tokens: TokenizedVideo, *, batch_size: int = 8, progress: bool = False
) -> np.ndarray:
    """Decode tokens to uint8 frames (source_frames, H, W, 3) at the tokens' clip geometry."""
    output = np.empty((tokens.source_frames, tokens.height, tokens.width, 3), dtype=np.uint8)
    position = 0
    for frames in iter_decoded_clips(model, tokens, batch_size=batch_size, progress=progress):
        output[position : position + len(frames)] = frames
        position += len(frames)
    return output


# ----- reconstruction ----------------------------------------------------------------------------


@dataclass
class Reconstruction:
    """Outcome of reconstructing a whole video through the tokenizer."""

    tokens: TokenizedVideo
    # Mean over real frames of the per-frame PSNR (dB) between the cropped input and the uint8
    # reconstruction, each frame capped at evatok.metrics.psnr_ssim.PSNR_MAX_DB.
    psnr_db: float
    num_frames: int
    fps: float | None


def reconstruct_video(
    model: Tokenizer,
    video: str | Path | np.ndarray | torch.Tensor,
    assignment: AssignmentChoice,
    *,
    out: str | Path | None = None,
    batch_size: int = 8,
    progress: bool = False,
    frame_stride: int = 1,
    sample_fps: float | None = None,
    source_fps: float | None = None,
    crf: int = DEFAULT_CRF,
) -> Reconstruction:
    """Encode and decode a whole video, measuring PSNR and optionally writing a comparison mp4.

    With ``out``, writes an H.264 mp4 with the cropped input on the left and the reconstruction
    on the right, one output frame per input frame, at the sampled frame rate (``FALLBACK_FPS``
    for in-memory frames without ``source_fps``), with libx264 quality ``crf``. Other arguments
    as for ``encode_video``.
    """
    config = model.config
    assignments = ClipAssignments(config.space, assignment)
    clips = source_clips(
        video, config, frame_stride=frame_stride, sample_fps=sample_fps, source_fps=source_fps
    )
    collector = TokenCollector(config, source_fps)
    psnr_sum = 0.0
    writer: VideoWriter | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(inference(model))
        bar = stack.enter_context(tqdm(desc="reconstruct", unit="clip", disable=not progress))
        for batch in batched(clips, batch_size):
            encoding = encode_batch(model, batch, assignments)
            collector.add(batch, encoding)
            decoded = model.decode(encoding)
            for row, clip in enumerate(batch):
                original = clip.frames[: clip.num_valid]
                reconstruction = from_model_output(decoded[row])[: clip.num_valid]
                psnr_sum += float(frame_psnr(original, reconstruction).sum())
                if out is not None:
                    if writer is None:
                        # The rate is known only once the first clip is read.
                        writer = stack.enter_context(VideoWriter(out, collector.fps or FALLBACK_FPS, crf=crf))
                    writer.write_all(side_by_side(original, reconstruction))
            bar.update(len(batch))
        if not collector.num_clips:
            raise no_frames_error(video)
        assignments.check_clip_count(collector.num_clips)
    tokens = collector.build()
    logger.info("reconstructed %s: %d frames, PSNR %.2f dB", video_name(video), tokens.source_frames,
                psnr_sum / tokens.source_frames)
    return Reconstruction(
        tokens=tokens,
        psnr_db=psnr_sum / tokens.source_frames,
        num_frames=tokens.source_frames,
        fps=tokens.fps,
    )


def frame_psnr(original: np.ndarray, reconstruction: np.ndarray) -> torch.Tensor:
    """Return the PSNR (dB) of each pair of uint8 frames (n, H, W, 3)."""
    x = torch.from_numpy(np.ascontiguousarray(original)).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.ascontiguousarray(reconstruction)).permute(0, 3, 1, 2)
    return psnr(x, y, UINT8_RANGE)


# ----- description -------------------------------------------------------------------------------


def describe_tokens(tokens: TokenizedVideo, max_listed: int = 4) -> list[str]:
    """Return a few report lines on tokens: clips, assignments, token counts, geometry."""
    rows = [tuple(int(count) for count in row) for row in tokens.assignments.tolist()]
    distinct = sorted(set(rows), key=rows.index)
    per_clip = [sum(row) for row in rows]
    tail = valid_frames(tokens, tokens.num_clips - 1)
    fps = "unknown fps" if tokens.fps is None else f"{tokens.fps:g} fps"
    lines = [
        f"clips: {tokens.num_clips} of {tokens.frames}x{tokens.height}x{tokens.width} "
        f"(frames x height x width), {fps}, {tokens.crop} crop",
        f"source frames: {tokens.source_frames} (last clip: {tail} of {tokens.frames} frames real)",
    ]
    if len(distinct) == 1:
        lines.append(f"assignment: {distinct[0]} for every clip")
    else:
        listed = ", ".join(f"clip {clip}: {row}" for clip, row in enumerate(rows[:max_listed]))
        more = f", ... ({tokens.num_clips - max_listed} more)" if tokens.num_clips > max_listed else ""
        lines.append(f"assignments: {len(distinct)} distinct; {listed}{more}")
    if min(per_clip) == max(per_clip):
        counts = f"{per_clip[0]} per clip"
    else:
        counts = f"{min(per_clip)} to {max(per_clip)} per clip, mean {sum(per_clip) / len(per_clip):.1f}"
    lines.append(f"tokens: {counts}, {tokens.num_tokens} in all")
    lines.append(
        f"codebook size: {tokens.codebook_size}; candidate counts per block: {tokens.candidates}; "
        f"{tokens.num_blocks} blocks per clip; format version {tokens.format_version}"
    )
    return lines


def describe_token_file(path: str | Path) -> str:
    """Load and validate a token file and return a few lines that describe it."""
    tokens = TokenizedVideo.load(path)
    return "\n".join([f"token file: {path}", *describe_tokens(tokens)])
