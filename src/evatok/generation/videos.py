"""From generated clips to frames and token files: tokenizer checks, decoding and class names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from evatok.codec import CROP
from evatok.generation.sampling import GeneratedClip, padded_block_ids
from evatok.models.config import TokenizerConfig
from evatok.models.generator import GeneratorConfig
from evatok.models.tokenizer import Tokenizer
from evatok.tokens import TokenizedVideo
from evatok.video.clips import from_model_output


def check_tokenizer(generator: GeneratorConfig, tokenizer: TokenizerConfig) -> None:
    """Raise ValueError unless the generator's codes and counts are the tokenizer's."""
    problems = []
    if generator.codebook_size != tokenizer.codebook_size:
        problems.append(f"codebook size {generator.codebook_size} instead of {tokenizer.codebook_size}")
    if generator.candidates != tokenizer.candidates:
        problems.append(f"candidate counts {generator.candidates} instead of {tokenizer.candidates}")
    if generator.num_blocks != tokenizer.num_blocks:
        problems.append(f"{generator.num_blocks} blocks instead of {tokenizer.num_blocks}")
    if problems:
        raise ValueError(
            "the generator was trained on another tokenizer's tokens: it has " + ", ".join(problems)
            + "; give the tokenizer whose export trained it"
        )


def resolve_class(config: GeneratorConfig, text: str) -> int:
    """Return the class index named by ``text``: a class name, or an index when names are unknown."""
    if text in config.class_names:
        return config.class_names.index(text)
    if text.isdigit() and int(text) < config.num_classes:
        return int(text)
    if config.class_names:
        raise ValueError(f"class {text!r} is unknown: choose one of {', '.join(config.class_names)}")
    raise ValueError(
        f"class {text!r} is invalid: this generator stores no class names, so give an index from 0 to "
        f"{config.num_classes - 1}"
    )


def class_label(config: GeneratorConfig, class_index: int) -> str:
    """Return the name of a class, or its index as text when the generator stores no names."""
    return config.class_names[class_index] if config.class_names else str(class_index)


def clip_tokens(clip: GeneratedClip, tokenizer: TokenizerConfig, fps: float | None) -> TokenizedVideo:
    """Return one generated clip as a one-clip TokenizedVideo at the tokenizer's clip geometry."""
    return TokenizedVideo(
        ids=torch.cat(clip.block_ids),
        assignments=torch.tensor([clip.assignment]),
        codebook_size=tokenizer.codebook_size,
        candidates=tokenizer.candidates,
        frames=tokenizer.frames,
        height=tokenizer.height,
        width=tokenizer.width,
        fps=fps,
        crop=CROP,
        source_frames=tokenizer.frames,
    )


@torch.no_grad()
def decode_clips(tokenizer: Tokenizer, clips: Sequence[GeneratedClip]) -> np.ndarray:
    """Decode generated clips to uint8 frames (N, frames, height, width, 3) in one batch."""
    blocks, assignments = padded_block_ids(clips)
    device = next(tokenizer.parameters()).device
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        video = tokenizer.decode([ids.to(device) for ids in blocks], assignments.to(device))
    finally:
        tokenizer.train(was_training)
    return np.stack([from_model_output(row) for row in video])
