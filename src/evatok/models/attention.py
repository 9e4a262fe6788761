"""Block-causal Q-Former layers that run one temporal block at a time over cached keys and values.

Block causality is enforced by construction rather than by a mask over the whole clip: block t
is computed from its own queries and references plus the cached keys and values of blocks < t,
so blocks < t never see anything of block t. Running blocks one by one also makes causality
bit-exact, because the computation of an earlier block is the same sequence of operations on the
same tensors whatever follows it. Within a block, every query attends to every valid key of
blocks <= t; padded positions (a batch may mix token counts) are masked out as keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class KeyValues:
    """Keys, values and key validity of the blocks run so far, for one attention layer."""

    keys: Tensor  # (batch, heads, length, head_dim)
    values: Tensor  # (batch, heads, length, head_dim)
    valid: Tensor  # (batch, length) bool, False at padded positions

    def extend(self, keys: Tensor, values: Tensor, valid: Tensor) -> KeyValues:
        """Return a new KeyValues with one more block appended; ``self`` is left unchanged."""
        return KeyValues(
            torch.cat([self.keys, keys], dim=2),
            torch.cat([self.values, values], dim=2),
            torch.cat([self.valid, valid], dim=1),
        )


@dataclass(frozen=True)
class BlockCache:
    """Per-layer self- and cross-attention keys and values of the blocks run so far.

    A cache is immutable: running a block returns a new cache, so one prefix can be extended with
    several different next blocks (the prefix-sharing assignment search does this).
    """

    self_attention: tuple[KeyValues, ...]
    cross_attention: tuple[KeyValues, ...]
    num_blocks: int

    @property
    def batch_size(self) -> int:
        """Number of samples the cache was built for."""
        return self.self_attention[0].keys.shape[0]

    def select(self, index: Tensor) -> BlockCache:
        """Return the cache of the samples at ``index`` (a 1D long tensor, repeats allowed)."""

        def pick(kv: KeyValues) -> KeyValues:
            return KeyValues(kv.keys[index], kv.values[index], kv.valid[index])

        return BlockCache(
            tuple(pick(kv) for kv in self.self_attention),
            tuple(pick(kv) for kv in self.cross_attention),
            self.num_blocks,
        )


class Attention(nn.Module):
    """Multi-head attention whose keys and values can be extended by cached earlier blocks."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def split_heads(self, x: Tensor) -> Tensor:
        """Reshape (batch, length, width) to (batch, heads, length, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def project_key_value(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Return the keys and values of ``source`` (batch, length, width), split into heads."""
        keys, values = self.key_value(source).chunk(2, dim=-1)
        return self.split_heads(keys), self.split_heads(values)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, valid: Tensor) -> Tensor:
        """Attend from ``x`` (batch, length, width) to ``keys``/``values``, skipping invalid keys."""
        batch, length, width = x.shape
        query = self.split_heads(self.query(x))
        # Boolean SDPA mask: True means "may attend". Every row keeps at least one valid key
        # because each block has at least one token and every block has 3D embeddings.
        mask = valid[:, None, None, :]
        attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class QFormerLayer(nn.Module):
    """Pre-norm Q-Former layer: self-attention among queries, cross-attention to references, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.self_norm = nn.LayerNorm(width)
        self.self_attention = Attention(width, heads)
        self.cross_norm = nn.LayerNorm(width)
        self.reference_norm = nn.LayerNorm(width)
        self.cross_attention = Attention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(
        self,
        queries: Tensor,
        query_valid: Tensor,
        references: Tensor,
        reference_valid: Tensor,
        self_cache: KeyValues | None,
        cross_cache: KeyValues | None,
    ) -> tuple[Tensor, KeyValues, KeyValues]:
        """Run one block's queries; return them and both caches extended by this block."""
        normed = self.self_norm(queries)
        keys, values = self.self_attention.project_key_value(normed)
        self_kv = (
            KeyValues(keys, values, query_valid)
            if self_cache is None
            else self_cache.extend(keys, values, query_valid)
        )
        queries = queries + self.self_attention(normed, self_kv.keys, self_kv.values, self_kv.valid)

        ref_keys, ref_values = self.cross_attention.project_key_value(self.reference_norm(references))
        cross_kv = (
            KeyValues(ref_keys, ref_values, reference_valid)
            if cross_cache is None
            else cross_cache.extend(ref_keys, ref_values, reference_valid)
        )
        queries = queries + self.cross_attention(
            self.cross_norm(queries), cross_kv.keys, cross_kv.values, cross_kv.valid
        )

        queries = queries + self.mlp(self.mlp_norm(queries))
        return queries, self_kv, cross_kv


class QFormer(nn.Module):
    """A stack of Q-Former layers run block by block with a ``BlockCache``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(QFormerLayer(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(
        self,
        queries: Tensor,
        query_valid: Tensor,
        references: Tensor,
        reference_valid: Tensor,
        cache: BlockCache | None,
    ) -> tuple[Tensor, BlockCache]:
        """Run the next block; return its normalised outputs and the cache extended by it."""
        self_kvs: list[KeyValues] = []
        cross_kvs: list[KeyValues] = []
        for depth, layer in enumerate(self.layers):
            queries, self_kv, cross_kv = layer(
                queries,
                query_valid,
                references,
                reference_valid,
                None if cache is None else cache.self_attention[depth],
                None if cache is None else cache.cross_attention[depth],
            )
            self_kvs.append(self_kv)
            cross_kvs.append(cross_kv)
        num_blocks = 1 if cache is None else cache.num_blocks + 1
        return self.norm(queries), BlockCache(tuple(self_kvs), tuple(cross_kvs), num_blocks)
