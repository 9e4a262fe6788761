"""Codebook usage and perplexity over a sliding window of updates, summed across processes."""

from __future__ import annotations

import math
from collections import deque

import torch

from evatok.metrics.distributed import all_reduce_sum


class CodebookUsage:
    """Track how many codebook entries the quantizer used over the last `window` updates.

    Each `update` counts code indices with a bincount. When torch.distributed is initialised the
    counts are summed over processes, so every process must call `update` equally often.
    """

    def __init__(self, codebook_size: int, window: int = 100) -> None:
        if codebook_size < 1 or window < 1:
            raise ValueError(
                f"codebook_size and window must be positive; got {codebook_size} and {window}"
            )
        self.codebook_size = codebook_size
        self.window = window
        self._counts: deque[torch.Tensor] = deque(maxlen=window)

    def update(self, codes: torch.Tensor) -> None:
        """Add one step's code indices (any shape, integer values in [0, codebook_size))."""
        flat = codes.detach().reshape(-1).to(torch.int64).cpu()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.codebook_size):
            raise ValueError(
                f"code indices span [{int(flat.min())}, {int(flat.max())}], outside [0, {self.codebook_size})"
            )
        counts = torch.bincount(flat, minlength=self.codebook_size).to(torch.float64)
        self._counts.append(all_reduce_sum(counts))

    def counts(self) -> torch.Tensor:
        """Return the summed code counts over the window, float64 (codebook_size,)."""
        if not self._counts:
            return torch.zeros(self.codebook_size, dtype=torch.float64)
        return torch.stack(list(self._counts)).sum(dim=0)

    def used_codes(self) -> int:
        """Return how many distinct codes occurred in the window."""
        return int((self.counts() > 0).sum())

    def usage(self) -> float:
        """Return the fraction of the codebook that occurred in the window."""
        return self.used_codes() / self.codebook_size

    def perplexity(self) -> float:
        """Return exp(entropy) of the code distribution in the window (1 to codebook_size; 0 if empty)."""
        counts = self.counts()
        total = float(counts.sum())
        if total == 0:
            return 0.0
        probabilities = counts[counts > 0] / total
        entropy = float(-(probabilities * probabilities.log()).sum())
        return math.exp(entropy)
