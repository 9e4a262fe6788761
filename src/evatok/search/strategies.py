"""Assignment search for one clip: exhaustive, prefix-sharing (exact) and beam (approximate).

All three return a ``SearchResult`` holding, for every assignment they evaluated, the clip-mean
LPIPS and MSE over real frames and the PSNR of the clip MSE.

The prefix and beam searches rely on the tokenizer's block causality: block t's code ids and
reconstruction depend only on the counts (k_1, ..., k_t). A prefix is run once, its encoder and
decoder caches are kept, and every longer prefix starts from them. The LPIPS and squared error of
a clip are means over its real frames. So a clip's value is the sum of its blocks' per-frame sums
divided by the number of real frames, and the sums along a prefix add up to the value of the
whole clip, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from evatok.assignment import AssignmentSpace
from evatok.metrics.psnr_ssim import PSNR_MAX_DB
from evatok.models.attention import BlockCache, KeyValues
from evatok.models.tokenizer import Tokenizer
from evatok.search.reward import Reward
from evatok.search.scoring import ClipScorer

STRATEGIES = ("exhaustive", "prefix", "beam")


def psnr_from_mse(mse: np.ndarray) -> np.ndarray:
    """Return PSNR in dB of MSE values on the [0, 1] scale, capped at PSNR_MAX_DB."""
    floor = 10.0 ** (-PSNR_MAX_DB / 10.0)
    return -10.0 * np.log10(np.maximum(np.asarray(mse, dtype=np.float64), floor))


@dataclass
class SearchResult:
    """Clip-level metrics of every assignment one search evaluated, sorted by class index."""

    space: AssignmentSpace
    assignments: np.ndarray  # (n, blocks) int64 token counts
    lpips: np.ndarray  # (n,) float64, mean over real frames
    mse: np.ndarray  # (n,) float64, mean over real frames, [0, 1] scale
    block_evaluations: int  # blocks encoded and decoded, summed over batches
    psnr: np.ndarray = field(init=False)  # (n,) float64, PSNR of the clip MSE

    def __post_init__(self) -> None:
        indices = np.array([self.space.index(row) for row in self.assignments], dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        self.indices = indices[order]
        self.assignments = np.asarray(self.assignments, dtype=np.int64)[order]
        self.lpips = np.asarray(self.lpips, dtype=np.float64)[order]
        self.mse = np.asarray(self.mse, dtype=np.float64)[order]
        self.psnr = psnr_from_mse(self.mse)

    @property
    def tokens(self) -> np.ndarray:
        """Total token count of each evaluated assignment."""
        return self.assignments.sum(axis=1)

    def rewards(self, reward: Reward) -> np.ndarray:
        """Return the reward of each evaluated assignment."""
        return reward(self.lpips, self.tokens)

    def best(self, reward: Reward) -> int:
        """Return the row of the evaluated assignment with the highest reward (lowest index on ties)."""
        return int(np.argmax(self.rewards(reward)))

    def best_assignment(self, reward: Reward) -> tuple[int, ...]:
        """Return the evaluated assignment with the highest reward."""
        return tuple(int(count) for count in self.assignments[self.best(reward)])


# ----- caches of several prefixes ------------------------------------------------------------


def _pad_key_values(kv: KeyValues, length: int) -> KeyValues:
    """Pad keys, values and validity along the key axis to ``length`` with invalid positions."""
    extra = length - kv.keys.shape[2]
    if extra == 0:
        return kv
    batch, heads, _, head_dim = kv.keys.shape
    pad = kv.keys.new_zeros(batch, heads, extra, head_dim)
    return KeyValues(
        torch.cat([kv.keys, pad], dim=2),
        torch.cat([kv.values, pad], dim=2),
        torch.cat([kv.valid, kv.valid.new_zeros(batch, extra)], dim=1),
    )


def _concat_key_values(parts: Sequence[KeyValues]) -> KeyValues:
    length = max(kv.keys.shape[2] for kv in parts)
    padded = [_pad_key_values(kv, length) for kv in parts]
    return KeyValues(
        torch.cat([kv.keys for kv in padded]),
        torch.cat([kv.values for kv in padded]),
        torch.cat([kv.valid for kv in padded]),
    )


def concat_caches(caches: Sequence[BlockCache]) -> BlockCache:
    """Stack the caches of several prefixes along the batch, padding shorter key sequences.

    Attention ignores the order of keys and skips invalid ones, so padding each sequence at its
    end with invalid positions leaves every sample's attention unchanged.
    """
    if len(caches) == 1:
        return caches[0]
    depths = {cache.num_blocks for cache in caches}
    if len(depths) != 1:
        raise ValueError(f"cannot stack caches of different depths {sorted(depths)}")
    layers = len(caches[0].self_attention)
    return BlockCache(
        tuple(_concat_key_values([c.self_attention[i] for c in caches]) for i in range(layers)),
        tuple(_concat_key_values([c.cross_attention[i] for c in caches]) for i in range(layers)),
        depths.pop(),
    )


@dataclass
class Frontier:
    """A batch of prefixes of equal depth with their caches and per-frame metric sums."""

    prefixes: list[tuple[int, ...]]
    encoder_cache: BlockCache | None
    decoder_cache: BlockCache | None
    lpips_sum: Tensor  # (n,) float64 over the prefix's real frames
    mse_sum: Tensor  # (n,) float64

    @classmethod
    def root(cls) -> Frontier:
        """Return the empty prefix."""
        zero = torch.zeros(1, dtype=torch.float64)
        return cls([()], None, None, zero, zero.clone())

    def __len__(self) -> int:
        return len(self.prefixes)

    @property
    def tokens(self) -> np.ndarray:
        """Token count of each prefix so far."""
        return np.array([sum(prefix) for prefix in self.prefixes], dtype=np.int64)

    def select(self, index: Sequence[int]) -> Frontier:
        """Return the prefixes at ``index``."""
        rows = torch.as_tensor(list(index), dtype=torch.long)
        return Frontier(
            [self.prefixes[i] for i in rows.tolist()],
            None if self.encoder_cache is None else self.encoder_cache.select(rows),
            None if self.decoder_cache is None else self.decoder_cache.select(rows),
            self.lpips_sum[rows],
            self.mse_sum[rows],
        )

    def split(self, size: int) -> list[Frontier]:
        """Return consecutive pieces of at most ``size`` prefixes."""
        if len(self) <= size:
            return [self]
        return [self.select(range(start, min(start + size, len(self)))) for start in range(0, len(self), size)]

    @staticmethod
    def concat(parts: Sequence[Frontier]) -> Frontier:
        """Stack frontiers of equal depth into one."""
        if len(parts) == 1:
            return parts[0]
        return Frontier(
            [prefix for part in parts for prefix in part.prefixes],
            concat_caches([part.encoder_cache for part in parts]),  # type: ignore[misc]
            concat_caches([part.decoder_cache for part in parts]),  # type: ignore[misc]
            torch.cat([part.lpips_sum for part in parts]),
            torch.cat([part.mse_sum for part in parts]),
        )


class BlockStepper:
    """Extends prefixes of one clip by one block: encode, decode and score that block."""

    def __init__(self, model: Tokenizer, scorer: ClipScorer, video: Tensor) -> None:
        self.model = model
        self.scorer = scorer
        self.blocks = list(video.split(model.config.patch_frames, dim=1))
        self.block_evaluations = 0

    @torch.no_grad()
    def extend(self, frontier: Frontier, count: int) -> Frontier:
        """Return the prefixes of ``frontier`` each extended by ``count`` tokens for the next block."""
        depth = len(frontier.prefixes[0])
        batch = len(frontier)
        block = self.blocks[depth].unsqueeze(0).expand(batch, -1, -1, -1, -1)
        encoded, encoder_cache = self.model.encode_block(block, count, frontier.encoder_cache)
        frames, decoder_cache = self.model.decode_block(encoded.ids, count, frontier.decoder_cache)
        lpips_sum, mse_sum = self.scorer.score_block(depth, frames)
        self.block_evaluations += batch
        return Frontier(
            [prefix + (count,) for prefix in frontier.prefixes],
            encoder_cache,
            decoder_cache,
            frontier.lpips_sum + lpips_sum,
            frontier.mse_sum + mse_sum,
        )

    def children(self, frontier: Frontier) -> Frontier:
        """Return every prefix of ``frontier`` extended by every candidate count (count-major)."""
        return Frontier.concat([self.extend(frontier, count) for count in self.model.space.candidates])


def _result(space: AssignmentSpace, leaf: Frontier, num_valid: int, evaluations: int) -> SearchResult:
    return SearchResult(
        space=space,
        assignments=np.array(leaf.prefixes, dtype=np.int64),
        lpips=(leaf.lpips_sum / num_valid).numpy(),
        mse=(leaf.mse_sum / num_valid).numpy(),
        block_evaluations=evaluations,
    )


def _leaf_only(frontier: Frontier) -> Frontier:
    """Drop the caches of finished assignments so that they free their memory at once."""
    return Frontier(frontier.prefixes, None, None, frontier.lpips_sum, frontier.mse_sum)


def _concat_leaves(leaves: Sequence[Frontier]) -> Frontier:
    return Frontier(
        [prefix for leaf in leaves for prefix in leaf.prefixes],
        None,
        None,
        torch.cat([leaf.lpips_sum for leaf in leaves]),
        torch.cat([leaf.mse_sum for leaf in leaves]),
    )


# ----- the three strategies -------------------------------------------------------------------


@torch.no_grad()
def exhaustive_search(
    model: Tokenizer,
    scorer: ClipScorer,
    video: Tensor,
    assignments: Sequence[Sequence[int]] | None = None,
    batch_size: int = 8,
) -> SearchResult:
    """Encode and decode the whole clip once per assignment (all of them by default): the reference.

    Assignments run in batches of ``batch_size``; a batch pads each block to its largest count.
    """
    space = model.space
    rows = [space.validate(a) for a in assignments] if assignments is not None else list(space)
    if not rows:
        raise ValueError("exhaustive_search got an empty list of assignments")
    lpips_parts, mse_parts = [], []
    for start in range(0, len(rows), batch_size):
        chunk = torch.tensor(rows[start : start + batch_size], dtype=torch.long)
        batch = video.unsqueeze(0).expand(len(chunk), -1, -1, -1, -1)
        reconstruction = model.decode(model.encode(batch, chunk))
        lpips_sum = torch.zeros(len(chunk), dtype=torch.float64)
        mse_sum = torch.zeros(len(chunk), dtype=torch.float64)
        for block, frames in enumerate(model.split_blocks(reconstruction)):
            block_lpips, block_mse = scorer.score_block(block, frames)
            lpips_sum += block_lpips
            mse_sum += block_mse
        lpips_parts.append(lpips_sum / scorer.num_valid)
        mse_parts.append(mse_sum / scorer.num_valid)
    return SearchResult(
        space=space,
        assignments=np.array(rows, dtype=np.int64),
        lpips=torch.cat(lpips_parts).numpy(),
        mse=torch.cat(mse_parts).numpy(),
        block_evaluations=len(rows) * space.num_blocks,
    )


@torch.no_grad()
def prefix_search(model: Tokenizer, scorer: ClipScorer, video: Tensor, batch_size: int = 16) -> SearchResult:
    """Evaluate every assignment exactly by running every prefix once (sum over t of m^t blocks).

    The prefix tree is walked depth first: the children of at most ``batch_size`` prefixes are
    computed together (one forward per candidate count, each with up to ``batch_size`` prefixes),
    which bounds the memory held in caches. A batch pads the cached blocks of its prefixes to
    their largest count, so large models on a CPU gain little from batching and save memory
    with ``batch_size=1``.
    """
    stepper = BlockStepper(model, scorer, video)
    last = model.config.num_blocks - 1
    leaves: list[Frontier] = []

    def walk(frontier: Frontier, depth: int) -> None:
        if depth == last:
            # Finished assignments need no cache: drop each count's caches before the next.
            leaves.extend(_leaf_only(stepper.extend(frontier, count)) for count in model.space.candidates)
            return
        parts = stepper.children(frontier).split(batch_size)
        # Pop each part before descending, so that caches of finished subtrees are freed.
        while parts:
            walk(parts.pop(0), depth + 1)

    walk(Frontier.root(), 0)
    return _result(model.space, _concat_leaves(leaves), scorer.num_valid, stepper.block_evaluations)


@torch.no_grad()
def beam_search(
    model: Tokenizer,
    scorer: ClipScorer,
    video: Tensor,
    reward: Reward,
    beam: int = 3,
    batch_size: int = 16,
    ranking: str = "projected",
) -> SearchResult:
    """Keep the ``beam`` best prefixes per block; return the beam * m assignments of the last step.

    Evaluates m + (T - 1) * beam * m blocks. ``ranking="projected"`` (the default) ranks a prefix
    by the mean LPIPS of its real frames, as if the remaining frames scored the same, and by its
    tokens. ``ranking="share"`` uses the prefix's exact share of the reward instead: its LPIPS sum
    divided by all real frames of the clip. Approximate either way: a prefix that ranks low early
    may lead to the best assignment.
    """
    if beam < 1:
        raise ValueError(f"beam is {beam}: keep at least 1 prefix per block")
    if ranking not in ("share", "projected"):
        raise ValueError(f"unknown beam ranking {ranking!r}: choose 'share' or 'projected'")
    stepper = BlockStepper(model, scorer, video)
    frontier = Frontier.root()
    last = model.config.num_blocks - 1
    for depth in range(model.config.num_blocks):
        counts = model.space.candidates
        if depth == last:
            leaves = [
                _leaf_only(stepper.extend(part, count)) for part in frontier.split(batch_size) for count in counts
            ]
            return _result(model.space, _concat_leaves(leaves), scorer.num_valid, stepper.block_evaluations)
        # The children stay in their batches (one per parent batch and count), and only the kept
        # ones are stacked, so that the caches of all children are never padded and copied at once.
        parts = [stepper.extend(part, count) for part in frontier.split(batch_size) for count in counts]
        frames = scorer.num_valid
        if ranking == "projected":
            frames = max(1, min(scorer.num_valid, (depth + 1) * model.config.patch_frames))
        lpips_sum = torch.cat([part.lpips_sum for part in parts]).numpy()
        tokens = np.concatenate([part.tokens for part in parts])
        scores = reward.prefix_score(lpips_sum, frames, tokens)
        keep = set(np.argsort(-scores, kind="stable")[:beam].tolist())
        kept: list[Frontier] = []
        offset = 0
        for part in parts:
            rows = [row - offset for row in range(offset, offset + len(part)) if row in keep]
            if rows:
                kept.append(part.select(rows))
            offset += len(part)
        del parts
        frontier = Frontier.concat(kept)
    raise AssertionError("unreachable: the loop returns at the last block")


def run_strategy(
    strategy: str,
    model: Tokenizer,
    scorer: ClipScorer,
    video: Tensor,
    reward: Reward | None = None,
    beam: int = 3,
    batch_size: int = 16,
    ranking: str = "projected",
) -> SearchResult:
    """Run the named strategy (``exhaustive``, ``prefix`` or ``beam``) on one clip."""
    if strategy == "exhaustive":
        return exhaustive_search(model, scorer, video, batch_size=batch_size)
    if strategy == "prefix":
        return prefix_search(model, scorer, video, batch_size=batch_size)
    if strategy == "beam":
        if reward is None:
            raise ValueError("beam search ranks prefixes by the reward: pass reward statistics")
        return beam_search(model, scorer, video, reward, beam=beam, batch_size=batch_size, ranking=ranking)
    raise ValueError(f"unknown search strategy {strategy!r}: choose one of {STRATEGIES}")


def expected_block_evaluations(strategy: str, space: AssignmentSpace, beam: int = 3) -> int:
    """Return how many block evaluations a strategy needs for one clip."""
    m, blocks = len(space.candidates), space.num_blocks
    if strategy == "exhaustive":
        return space.size * blocks
    if strategy == "prefix":
        return sum(m**depth for depth in range(1, blocks + 1))
    if strategy == "beam":
        widths = [1] + [min(beam, m**depth) for depth in range(1, blocks)]
        return sum(width * m for width in widths)
    raise ValueError(f"unknown search strategy {strategy!r}: choose one of {STRATEGIES}")


__all__ = [
    "STRATEGIES",
    "BlockStepper",
    "Frontier",
    "SearchResult",
    "beam_search",
    "concat_caches",
    "exhaustive_search",
    "expected_block_evaluations",
    "prefix_search",
    "psnr_from_mse",
    "run_strategy",
]
