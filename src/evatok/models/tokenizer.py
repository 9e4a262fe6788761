"""The adaptive-length Q-Former video tokenizer: encode(video, assignment) and decode(ids).

A clip (batch, channels, frames, height, width) in [-1, 1] is cut into 3D patches of
patch_frames x patch_height x patch_width. Each group of patch_frames frames is a temporal block.
Block t gets k_t 1D queries, initialised from average pools of its patch embeddings, which a
Q-Former encoder refines against the patch embeddings of blocks <= t; the outputs are quantized
to k_t code ids. The decoder starts a grid of 3D queries for block t from the first token of
block t, refines them against the tokens of blocks <= t and maps each query back to a patch.

Everything runs block by block over a ``BlockCache`` (see ``evatok.models.attention``), so block
t never depends on later blocks, bit for bit. ``encode_block`` and ``decode_block`` expose one
step of that loop for the prefix-sharing assignment search.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from evatok.models.attention import BlockCache, QFormer
from evatok.models.config import TokenizerConfig
from evatok.models.quantizer import VectorQuantizer
from evatok.models.weights import ConfigInWeightsMixin

PAD_ID = -1  # code id stored at padded positions of a mixed-assignment batch

AssignmentLike = Sequence[int] | Sequence[Sequence[int]] | Tensor


@dataclass
class EncodedBlock:
    """Code ids of one block; a batch pads to its largest count."""

    ids: Tensor  # (batch, max count) long, PAD_ID at padded positions
    valid: Tensor  # (batch, max count) bool
    counts: Tensor  # (batch,) long


@dataclass
class TokenizerEncoding:
    """Code ids of every block of a batch of clips and the assignment that produced them."""

    blocks: list[EncodedBlock]
    assignment: Tensor  # (batch, blocks) long token counts

    def ids_of(self, sample: int) -> list[Tensor]:
        """Return the unpadded code ids of every block of one sample."""
        return [block.ids[sample, : int(block.counts[sample])] for block in self.blocks]


@dataclass
class TokenizerOutput:
    """Result of a training forward pass."""

    reconstruction: Tensor  # (batch, channels, frames, height, width)
    encoding: TokenizerEncoding
    codebook_loss: Tensor
    commitment_loss: Tensor  # unweighted; quantizer_loss applies the commitment weight
    quantizer_loss: Tensor  # codebook_loss + commitment_weight * commitment_loss
    entropy_loss: Tensor  # unweighted entropy term, zero when not requested
    perplexity: Tensor
    used_codes: int
    num_tokens: int  # valid tokens in the batch


def pooling_grids(rows: int, cols: int) -> list[tuple[int, int]]:
    """Return the average-pool grids for query initialisation, coarsest first.

    Starts at 1x1 and doubles the width, then the height, in turn (1x1, 1x2, 2x2, 2x4, ...),
    each clamped to the patch grid, until the grid itself is reached.
    """
    grids = [(1, 1)]
    grow_width = True
    while grids[-1] != (rows, cols):
        h, w = grids[-1]
        if grow_width and w < cols:
            w = min(2 * w, cols)
        elif h < rows:
            h = min(2 * h, rows)
        else:
            w = min(2 * w, cols)
        grow_width = not grow_width
        grids.append((h, w))
    return grids


class PooledQueries(nn.Module):
    """Initial 1D queries of a block from multi-level average pools of its patch embeddings.

    The pools of all grids, coarsest first and each flattened row-major, form one ordered set,
    so the queries of every token count are a prefix of the queries of any larger count. When a
    count exceeds the size of that set, the finest grid repeats; a learned embedding per query
    index keeps repeated pools apart.
    """

    def __init__(self, width: int, grid: tuple[int, int], max_queries: int) -> None:
        super().__init__()
        self.grid = grid
        self.grids = pooling_grids(*grid)
        self.max_queries = max_queries
        self.project = nn.Linear(width, width)
        self.index_embedding = nn.Parameter(torch.zeros(max_queries, width))
        nn.init.normal_(self.index_embedding, std=0.02)

    def forward(self, embeddings: Tensor, count: int) -> Tensor:
        """Return ``count`` queries (batch, count, width) from ``embeddings`` (batch, patches, width)."""
        batch, _, width = embeddings.shape
        image = embeddings.transpose(1, 2).reshape(batch, width, *self.grid)
        pools: list[Tensor] = []
        total = 0
        level = 0
        while total < count:
            grid = self.grids[min(level, len(self.grids) - 1)]
            pooled = F.adaptive_avg_pool2d(image, grid).flatten(2).transpose(1, 2)
            pools.append(pooled)
            total += pooled.shape[1]
            level += 1
        queries = torch.cat(pools, dim=1)[:, :count]
        return self.project(queries) + self.index_embedding[:count]


class Tokenizer(nn.Module, ConfigInWeightsMixin, PyTorchModelHubMixin, library_name="evatok"):
    """Adaptive-length Q-Former video tokenizer with block-causal encoder and decoder."""

    config_class = TokenizerConfig
    config_metadata_key = "evatok_tokenizer_config"

    def __init__(self, config: TokenizerConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = TokenizerConfig()
        elif isinstance(config, dict):
            config = TokenizerConfig.from_dict(config)
        self.config = config
        self.space = config.space
        enc, dec = config.encoder_width, config.decoder_width
        blocks, patches = config.num_blocks, config.patches_per_block

        self.patch_embedding = nn.Linear(config.patch_dim, enc)
        self.encoder_spatial_position = nn.Parameter(0.02 * torch.randn(patches, enc))
        self.encoder_block_position = nn.Parameter(0.02 * torch.randn(blocks, enc))
        self.query_init = PooledQueries(enc, config.grid, config.max_tokens_per_block)
        self.encoder = QFormer(enc, config.encoder_layers, config.encoder_heads, config.mlp_ratio)
        self.to_code = nn.Linear(enc, config.code_dim)

        self.quantizer = VectorQuantizer(
            config.codebook_size,
            config.code_dim,
            entropy_temperature=config.entropy_temperature,
            dead_code_patience=config.dead_code_patience,
        )

        self.from_code = nn.Linear(config.code_dim, dec)
        self.token_position = nn.Parameter(0.02 * torch.randn(config.max_tokens_per_block, dec))
        self.decoder_block_position = nn.Parameter(0.02 * torch.randn(blocks, dec))
        self.decoder_spatial_position = nn.Parameter(0.02 * torch.randn(patches, dec))
        self.decoder = QFormer(dec, config.decoder_layers, config.decoder_heads, config.mlp_ratio)
        self.head = nn.Linear(dec, config.patch_dim)

    # ----- patches -------------------------------------------------------------------------

    def patchify_block(self, block: Tensor) -> Tensor:
        """Return the patches (batch, patches, patch_dim) of one block (batch, C, pf, H, W)."""
        c = self.config
        batch = block.shape[0]
        rows, cols = c.grid
        x = block.reshape(batch, c.channels, c.patch_frames, rows, c.patch_height, cols, c.patch_width)
        x = x.permute(0, 3, 5, 2, 4, 6, 1)  # batch, rows, cols, pf, ph, pw, channels
        return x.reshape(batch, rows * cols, c.patch_dim)

    def unpatchify_block(self, patches: Tensor) -> Tensor:
        """Invert ``patchify_block``: (batch, patches, patch_dim) to (batch, C, pf, H, W)."""
        c = self.config
        batch = patches.shape[0]
        rows, cols = c.grid
        x = patches.reshape(batch, rows, cols, c.patch_frames, c.patch_height, c.patch_width, c.channels)
        x = x.permute(0, 6, 3, 1, 4, 2, 5)  # batch, channels, pf, rows, ph, cols, pw
        return x.reshape(batch, c.channels, c.patch_frames, c.height, c.width)

    # ----- inputs --------------------------------------------------------------------------

    def check_video(self, video: Tensor, frames: int) -> None:
        """Raise ValueError unless ``video`` is (batch, C, frames, H, W) floating point."""
        c = self.config
        expected = (c.channels, frames, c.height, c.width)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"video has shape {tuple(video.shape)}, expected (batch, {', '.join(map(str, expected))}): "
                "give float clips (batch, channels, frames, height, width) at the preset's size"
            )
        if not video.is_floating_point():
            raise ValueError(
                f"video has dtype {video.dtype}: convert uint8 frames to float in [-1, 1] first"
            )

    def assignment_tensor(self, assignment: AssignmentLike, batch: int) -> Tensor:
        """Return ``assignment`` as a validated (batch, blocks) long tensor of token counts.

        Accepts one assignment for the whole batch or one per sample.
        """
        if isinstance(assignment, Tensor):
            rows = assignment.detach().cpu().long()
            rows = rows.expand(batch, -1) if rows.ndim == 1 else rows
            rows = rows.tolist()
        else:
            items = list(assignment)
            if items and all(isinstance(item, numbers.Integral) for item in items):
                rows = [items] * batch
            else:
                rows = [list(item) for item in items]
        if len(rows) != batch:
            raise ValueError(
                f"got {len(rows)} assignments for a batch of {batch} clips: give one per clip "
                "or a single assignment for all"
            )
        checked = [self.space.validate(row) for row in rows]
        return torch.tensor(checked, dtype=torch.long)

    def counts_tensor(self, counts: int | Sequence[int] | Tensor, batch: int, block: int) -> Tensor:
        """Return one block's token counts as a validated (batch,) long tensor."""
        if isinstance(counts, Tensor):
            values = counts.detach().cpu().long().flatten().tolist()
        elif isinstance(counts, numbers.Integral):
            values = [counts]
        else:
            values = [int(count) for count in counts]
        if len(values) == 1:
            values = values * batch
        if len(values) != batch:
            raise ValueError(f"got {len(values)} token counts for a batch of {batch} clips")
        for count in values:
            if count not in self.space.candidates:
                raise ValueError(
                    f"token count {count} for block {block} is not a candidate: "
                    f"choose one of {self.space.candidates}"
                )
        return torch.tensor(values, dtype=torch.long)

    def next_block_index(self, cache: BlockCache | None) -> int:
        """Return the index of the block that follows ``cache``, checking it exists."""
        index = 0 if cache is None else cache.num_blocks
        if index >= self.config.num_blocks:
            raise ValueError(
                f"the cache already contains all {self.config.num_blocks} blocks of a clip: "
                "start a new clip with cache=None"
            )
        return index

    # ----- encoder -------------------------------------------------------------------------

    def encode_block_latents(
        self, block: Tensor, counts: Tensor, cache: BlockCache | None
    ) -> tuple[Tensor, Tensor, BlockCache]:
        """Return unquantized latents (batch, max count, code_dim), validity and the new cache."""
        index = self.next_block_index(cache)
        device = block.device
        counts = counts.to(device)
        embeddings = self.patch_embedding(self.patchify_block(block))
        embeddings = embeddings + self.encoder_spatial_position + self.encoder_block_position[index]
        max_count = int(counts.max())
        queries = self.query_init(embeddings, max_count)
        valid = torch.arange(max_count, device=device)[None, :] < counts[:, None]
        reference_valid = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=device)
        outputs, cache = self.encoder(queries, valid, embeddings, reference_valid, cache)
        return self.to_code(outputs), valid, cache

    def encode_block(
        self,
        block: Tensor,
        counts: int | Sequence[int] | Tensor,
        cache: BlockCache | None = None,
    ) -> tuple[EncodedBlock, BlockCache]:
        """Encode the next block (batch, C, patch_frames, H, W) given the cache of earlier blocks."""
        self.check_video(block, self.config.patch_frames)
        index = self.next_block_index(cache)
        counts = self.counts_tensor(counts, block.shape[0], index)
        latents, valid, cache = self.encode_block_latents(block, counts, cache)
        ids = torch.full(valid.shape, PAD_ID, dtype=torch.long, device=block.device)
        ids[valid] = self.quantizer.lookup(latents[valid])[0]
        return EncodedBlock(ids, valid, counts.to(block.device)), cache

    def split_blocks(self, video: Tensor) -> list[Tensor]:
        """Return the temporal blocks of ``video`` (batch, C, frames, H, W)."""
        return list(video.split(self.config.patch_frames, dim=2))

    def encode(self, video: Tensor, assignment: AssignmentLike) -> TokenizerEncoding:
        """Encode clips (batch, C, frames, H, W) in [-1, 1] with one assignment or one per clip."""
        self.check_video(video, self.config.frames)
        counts = self.assignment_tensor(assignment, video.shape[0])
        cache = None
        blocks = []
        for index, block in enumerate(self.split_blocks(video)):
            encoded, cache = self.encode_block(block, counts[:, index], cache)
            blocks.append(encoded)
        return TokenizerEncoding(blocks, counts.to(video.device))

    # ----- decoder -------------------------------------------------------------------------

    def decode_block_vectors(
        self, vectors: Tensor, valid: Tensor, cache: BlockCache | None
    ) -> tuple[Tensor, BlockCache]:
        """Decode one block from code vectors (batch, max count, code_dim) given earlier blocks."""
        index = self.next_block_index(cache)
        tokens = self.from_code(vectors)
        count = tokens.shape[1]
        references = tokens + self.token_position[:count] + self.decoder_block_position[index]
        # The 3D queries of a block start from its first token, broadcast to every patch.
        queries = tokens[:, :1] + self.decoder_spatial_position + self.decoder_block_position[index]
        query_valid = torch.ones(queries.shape[:2], dtype=torch.bool, device=queries.device)
        outputs, cache = self.decoder(queries, query_valid, references, valid, cache)
        return self.unpatchify_block(self.head(outputs)), cache

    def decode_block(
        self,
        ids: Tensor,
        counts: int | Sequence[int] | Tensor,
        cache: BlockCache | None = None,
    ) -> tuple[Tensor, BlockCache]:
        """Decode the next block from ids (batch, max count) given the cache of earlier blocks.

        Returns frames (batch, C, patch_frames, H, W); ids beyond each sample's count are ignored.
        """
        index = self.next_block_index(cache)
        if ids.ndim != 2:
            raise ValueError(f"block ids have shape {tuple(ids.shape)}, expected (batch, count)")
        counts = self.counts_tensor(counts, ids.shape[0], index).to(ids.device)
        max_count = int(counts.max())
        if ids.shape[1] < max_count:
            raise ValueError(
                f"block {index} has {ids.shape[1]} ids per sample but a count of {max_count}: "
                "pass the ids of every token of the block"
            )
        ids = ids[:, :max_count]
        valid = torch.arange(max_count, device=ids.device)[None, :] < counts[:, None]
        in_range = (ids >= 0) & (ids < self.config.codebook_size)
        if not bool(in_range[valid].all()):
            bad = ids[valid & ~in_range][0].item()
            raise ValueError(
                f"block {index} contains code id {bad}, outside the codebook [0, "
                f"{self.config.codebook_size - 1}]: the ids come from another tokenizer or are corrupt"
            )
        vectors = self.quantizer.embed(ids.clamp(0, self.config.codebook_size - 1))
        vectors = (vectors * valid[..., None]).to(self.from_code.weight.dtype)
        return self.decode_block_vectors(vectors, valid, cache)

    def decode(
        self, codes: TokenizerEncoding | Sequence[Tensor], assignment: AssignmentLike | None = None
    ) -> Tensor:
        """Decode clips (batch, C, frames, H, W) from an encoding or from per-block ids.

        ``codes`` is a TokenizerEncoding (its own assignment is used) or one (batch, max count)
        id tensor per block together with ``assignment``.
        """
        if isinstance(codes, TokenizerEncoding):
            block_ids = [block.ids for block in codes.blocks]
            counts = codes.assignment
        else:
            block_ids = list(codes)
            if assignment is None:
                raise ValueError("decode needs the assignment when given bare code ids")
            if not block_ids:
                raise ValueError("decode got no blocks of code ids")
            counts = self.assignment_tensor(assignment, block_ids[0].shape[0])
        if len(block_ids) != self.config.num_blocks:
            raise ValueError(
                f"got ids for {len(block_ids)} blocks, expected {self.config.num_blocks}"
            )
        cache = None
        frames = []
        for index, ids in enumerate(block_ids):
            block, cache = self.decode_block(ids, counts[:, index], cache)
            frames.append(block)
        return torch.cat(frames, dim=2)

    # ----- training ------------------------------------------------------------------------

    def forward(
        self, video: Tensor, assignment: AssignmentLike, with_entropy: bool = True
    ) -> TokenizerOutput:
        """Reconstruct clips through the quantizer with straight-through gradients.

        Padded positions of a mixed-assignment batch reach neither the quantizer nor any loss.
        """
        self.check_video(video, self.config.frames)
        counts = self.assignment_tensor(assignment, video.shape[0]).to(video.device)
        encoder_cache = decoder_cache = None
        frames: list[Tensor] = []
        blocks: list[EncodedBlock] = []
        valid_latents: list[Tensor] = []
        valid_ids: list[Tensor] = []
        for index, block in enumerate(self.split_blocks(video)):
            latents, valid, encoder_cache = self.encode_block_latents(
                block, counts[:, index], encoder_cache
            )
            block_latents = latents[valid]
            block_ids, quantized = self.quantizer.quantize(block_latents)
            vectors = latents.new_zeros(latents.shape)
            vectors[valid] = quantized.to(vectors.dtype)
            ids = torch.full(valid.shape, PAD_ID, dtype=torch.long, device=video.device)
            ids[valid] = block_ids
            decoded, decoder_cache = self.decode_block_vectors(vectors, valid, decoder_cache)
            frames.append(decoded)
            blocks.append(EncodedBlock(ids, valid, counts[:, index]))
            valid_latents.append(block_latents)
            valid_ids.append(block_ids)

        latents = torch.cat(valid_latents)
        ids = torch.cat(valid_ids)
        losses = self.quantizer.losses(latents, ids, with_entropy=with_entropy)
        quantizer_loss = losses.codebook_loss + self.config.commitment_weight * losses.commitment_loss
        return TokenizerOutput(
            reconstruction=torch.cat(frames, dim=2),
            encoding=TokenizerEncoding(blocks, counts),
            codebook_loss=losses.codebook_loss,
            commitment_loss=losses.commitment_loss,
            quantizer_loss=quantizer_loss,
            entropy_loss=losses.entropy_loss,
            perplexity=losses.perplexity,
            used_codes=losses.used_codes,
            num_tokens=int(ids.numel()),
        )

    def restart_dead_codes(self) -> int:
        """Restart codes unused for ``dead_code_patience`` steps; call after the optimizer step."""
        return self.quantizer.restart_dead_codes()

    # ----- weights -------------------------------------------------------------------------


    def num_parameters(self) -> int:
        """Return the number of parameters."""
        return sum(parameter.numel() for parameter in self.parameters())
