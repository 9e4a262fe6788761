"""Sampling clips from the generator: KV cache, guidance, temperature, top-k, top-p and greedy.

All rows of a batch advance one position per step. Each row's grammar state decides which ids
it may take, so rows with different assignments end at different steps, and a finished row takes
the pad id until the longest row ends. With classifier-free guidance the batch is doubled: the
first half carries the class tokens and the second half the null class, both rows of a pair are
fed the same sampled token, and the step's logits are ``uncond + scale * (cond - uncond)``.

NOTE: finished rows still run through the model until the batch's longest row ends, so a batch
of adaptive-length clips costs as much as its longest clip (see benchmarks/generate.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from evatok.codec import inference
from evatok.generation.grammar import GrammarState
from evatok.generation.vocab import GenerationVocab, ParsedSequence
from evatok.models.generator import Generator, KVCache
from evatok.models.tokenizer import PAD_ID


@dataclass
class SamplingSettings:
    """Next-token rule: temperature, top-k, top-p, guidance scale, greedy and the KV cache switch."""

    temperature: float = 1.0
    top_k: int | None = None  # keep only the k most likely ids; None or 0 keeps all
    top_p: float = 1.0  # keep the smallest set of ids whose probability reaches top_p
    cfg_scale: float = 1.0  # classifier-free guidance scale; 1 is the conditional model alone
    greedy: bool = False  # take the most likely id instead of sampling
    use_cache: bool = True  # reuse keys and values of earlier positions

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be positive; use greedy=True for argmax")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be 0 (off) or positive")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale={self.cfg_scale} must be at least 0")


@dataclass
class GeneratedClip:
    """One sampled clip: class, assignment, per-block code ids and the full token sequence."""

    class_index: int
    assignment: tuple[int, ...]
    block_ids: list[Tensor]  # one (k_t,) long tensor of code ids per block
    sequence: Tensor  # (1 + blocks + tokens,) long, class token first, no pad

    @property
    def num_tokens(self) -> int:
        """Number of code ids over all blocks."""
        return sum(self.assignment)

    @classmethod
    def from_parsed(cls, parsed: ParsedSequence, sequence: Tensor) -> GeneratedClip:
        """Build from a parsed sequence and the sequence cut at its end."""
        return cls(parsed.class_index, parsed.assignment, parsed.block_ids, sequence)


def padded_block_ids(clips: Sequence[GeneratedClip]) -> tuple[list[Tensor], Tensor]:
    """Return one (N, max count) id tensor per block (PAD_ID beyond a count) and the (N, T) counts.

    This is the input of ``Tokenizer.decode(blocks, assignment)``.
    """
    if not clips:
        raise ValueError("no clips to decode")
    assignments = torch.tensor([clip.assignment for clip in clips], dtype=torch.long)
    blocks = []
    for block in range(assignments.shape[1]):
        width = int(assignments[:, block].max())
        ids = torch.full((len(clips), width), PAD_ID, dtype=torch.long)
        for row, clip in enumerate(clips):
            ids[row, : clip.block_ids[block].numel()] = clip.block_ids[block]
        blocks.append(ids)
    return blocks, assignments


# ----- logits ------------------------------------------------------------------------------------


def guide(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """Return classifier-free guided logits ``uncond + scale * (cond - uncond)``."""
    return unconditional + scale * (conditional - unconditional)


def filter_logits(logits: Tensor, temperature: float, top_k: int | None, top_p: float) -> Tensor:
    """Scale by temperature and set ids outside top-k and top-p to -inf; the best id always stays."""
    logits = logits / temperature
    if top_k:
        k = min(int(top_k), logits.shape[-1])
        threshold = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        # Drop an id when the more likely ids before it already reach top_p.
        drop = (cumulative - ordered.softmax(dim=-1)) >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def choose_tokens(logits: Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> Tensor:
    """Return one (batch,) id per row from masked logits: argmax or a draw after filtering."""
    if settings.greedy:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits, settings.temperature, settings.top_k, settings.top_p)
    probabilities = filtered.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator)[:, 0]


# ----- decoding ----------------------------------------------------------------------------------


class DecodingSession:
    """Feeds a growing batch of sequences to the generator and returns the next-token logits.

    With the cache, each call runs only the new tokens. Without it, each call runs the whole
    prefix again, which gives the same logits up to floating-point rounding.
    """

    def __init__(
        self,
        model: Generator,
        class_indices: Sequence[int],
        *,
        cfg_scale: float = 1.0,
        use_cache: bool = True,
        batch_null_rows: bool | None = None,
    ) -> None:
        self.model = model
        self.vocab = model.vocab
        self.cfg_scale = float(cfg_scale)
        # Scale 1 equals the conditional logits, so the null rows are skipped unless requested.
        self.guided = self.cfg_scale != 1.0 if batch_null_rows is None else batch_null_rows
        device = model.head.weight.device
        first = torch.tensor([self.vocab.class_id(index) for index in class_indices], device=device)
        if self.guided:
            first = torch.cat([first, torch.full_like(first, self.vocab.null_class_id)])
        self.batch = len(class_indices)
        self.prefix = first[:, None]
        self.cache: KVCache | None = model.new_cache(len(first)) if use_cache else None
        self.fed = 0

    def logits(self) -> Tensor:
        """Return float32 (batch, vocab size) logits for the position after the current prefix."""
        if self.cache is not None:
            step = self.model(self.prefix[:, self.fed :], cache=self.cache)[:, -1]
        else:
            step = self.model(self.prefix)[:, -1]
        self.fed = self.prefix.shape[1]
        step = step.float()
        if not self.guided:
            return step
        conditional, unconditional = step[: self.batch], step[self.batch :]
        return guide(conditional, unconditional, self.cfg_scale)

    def append(self, tokens: Tensor) -> None:
        """Append one (batch,) token per row; both rows of a guided pair get the same token."""
        if self.guided:
            tokens = torch.cat([tokens, tokens])
        self.prefix = torch.cat([self.prefix, tokens[:, None].to(self.prefix.device)], dim=1)

    @property
    def sequences(self) -> Tensor:
        """(batch, length) ids fed so far, class token first (conditional rows only)."""
        return self.prefix[: self.batch]


def sample_sequences(
    model: Generator,
    class_indices: Sequence[int],
    settings: SamplingSettings | None = None,
    *,
    generator: torch.Generator | None = None,
    logits_hook: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Sample one sequence per class index; return (batch, length) ids, pad after each end.

    ``logits_hook(step_logits) -> logits``, when given, replaces the model's logits before the
    grammar mask; the tests and benchmarks/generate.py use it to force chosen logits.
    """
    settings = settings or SamplingSettings()
    vocab: GenerationVocab = model.vocab
    if len(class_indices) == 0:
        raise ValueError("no class indices given: pass one class index per clip to sample")
    with inference(model):
        session = DecodingSession(
            model, class_indices, cfg_scale=settings.cfg_scale, use_cache=settings.use_cache
        )
        state = GrammarState(vocab, len(class_indices), session.prefix.device)
        for _ in range(vocab.max_sequence_length - 1):
            logits = session.logits()
            if logits_hook is not None:
                logits = logits_hook(logits)
            tokens = choose_tokens(state.mask_logits(logits), settings, generator)
            state.advance(tokens)
            session.append(tokens)
            if bool(state.done.all()):
                break
    return session.sequences.cpu()


def generate_clips(
    model: Generator,
    class_indices: Sequence[int],
    settings: SamplingSettings | None = None,
    *,
    generator: torch.Generator | None = None,
) -> list[GeneratedClip]:
    """Sample one clip per class index and parse each sequence into its assignment and codes."""
    sequences = sample_sequences(model, class_indices, settings, generator=generator)
    vocab = model.vocab
    clips = []
    for row in sequences:
        parsed = vocab.parse(row)
        length = vocab.sequence_length(parsed.assignment)
        clips.append(GeneratedClip.from_parsed(parsed, row[:length].clone()))
    return clips
