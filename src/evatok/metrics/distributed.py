"""Helpers that make metrics independent of the number of processes.

Without an initialised torch.distributed process group every helper acts on the local process
alone, so the same code runs single-process and distributed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Return whether a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """Return (rank, world size); (0, 1) without a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(count: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """Return the clip indices this process evaluates: rank, rank + world, ... (no padding).

    Every index in range(count) belongs to exactly one process, so nothing is counted twice even
    when `count` is not a multiple of the world size.
    """
    default_rank, default_world = rank_and_world()
    rank = default_rank if rank is None else rank
    world_size = default_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of size {world_size}")
    return list(range(rank, count, world_size))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Return the elementwise sum of `tensor` over all processes (a copy; the input is unchanged)."""
    total = tensor.clone()
    if is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_rows_by_index(indices: list[int], rows: torch.Tensor, count: int) -> torch.Tensor:
    """Collect per-clip rows from every process and return them ordered by clip index.

    `indices[i]` is the clip index of `rows[i]`. Raises ValueError unless every index in
    range(count) arrives exactly once, which makes the result independent of the world size.
    """
    if len(indices) != rows.shape[0]:
        raise ValueError(f"{len(indices)} indices for {rows.shape[0]} rows")
    pieces = [(list(indices), rows.detach().cpu())]
    if is_distributed():
        gathered: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, pieces[0])
        pieces = gathered  # type: ignore[assignment]

    all_indices = [index for piece_indices, _ in pieces for index in piece_indices]
    if sorted(all_indices) != list(range(count)):
        duplicated = sorted({i for i in all_indices if all_indices.count(i) > 1})
        missing = sorted(set(range(count)) - set(all_indices))
        raise ValueError(
            f"clip indices are not covered exactly once: duplicated {duplicated[:10]}, missing {missing[:10]}"
        )
    merged = torch.cat([piece_rows for _, piece_rows in pieces])
    order = torch.tensor(all_indices).argsort()
    return merged[order]
