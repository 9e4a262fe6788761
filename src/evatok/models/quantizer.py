"""Vector quantization with an l2-normalised codebook, dead-code restart and an entropy term.

Own implementation rather than vector-quantize-pytorch, for three reasons. The tokenizer pads
blocks of a mixed-assignment batch, and padded positions must never reach the codebook, its
usage statistics, the restart pool or any loss. Here the quantizer only ever receives the valid
vectors, which callers select with a mask, so the guarantee is true by construction. Restart and
the entropy term must see exactly those valid vectors too. And block causality needs the lookup of
one block to be computed independently of later blocks, which a per-call lookup gives directly.

Lookup is by cosine similarity: encoder outputs and codebook rows are both l2-normalised, so the
nearest code under the Euclidean distance is the one with the largest dot product.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@dataclass
class QuantizerLosses:
    """Losses and codebook statistics of one batch of valid vectors."""

    codebook_loss: Tensor  # moves codes toward the (frozen) encoder outputs
    commitment_loss: Tensor  # moves encoder outputs toward the (frozen) codes; unweighted
    entropy_loss: Tensor  # per-token entropy minus codebook entropy (MAGVIT-v2); unweighted
    perplexity: Tensor  # exp of the entropy of the hard code histogram of this batch
    used_codes: int  # distinct codes in this batch


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer over an l2-normalised codebook of ``size`` x ``dim``.

    Lookup, losses and the codes it returns are float32 whatever the input dtype or autocast.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        entropy_temperature: float = 0.01,
        dead_code_patience: int = 100,
    ) -> None:
        super().__init__()
        self.size = size
        self.dim = dim
        self.entropy_temperature = entropy_temperature
        self.dead_code_patience = dead_code_patience
        self.codebook = nn.Parameter(torch.randn(size, dim))
        # Training steps since each code was last chosen; drives the dead-code restart.
        self.register_buffer("steps_unused", torch.zeros(size, dtype=torch.long), persistent=True)
        # Valid encoder outputs of the last training batch, the pool that dead codes restart
        # from. A plain attribute, not a buffer: its length changes every batch, and
        # DistributedDataParallel would try to broadcast a buffer of a different shape per rank.
        self.restart_pool: Tensor = torch.empty(0, dim)

    def normalized_codebook(self) -> Tensor:
        """Return the codebook with l2-normalised rows."""
        return F.normalize(self.codebook.float(), dim=-1)

    def lookup(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Return code ids (n,) and normalised codes (n, dim) nearest to valid vectors ``z`` (n, dim)."""
        # Under autocast a bf16 matmul would blur near-ties between codes, so lookup stays float32.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            codebook = self.normalized_codebook()
            ids = (z @ codebook.t()).argmax(dim=-1)
        return ids, codebook[ids]

    def embed(self, ids: Tensor) -> Tensor:
        """Return the normalised codes of ``ids`` (any shape, values in [0, size))."""
        return self.normalized_codebook()[ids]

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Return ids and straight-through quantized vectors of valid vectors ``z`` (n, dim)."""
        ids, codes = self.lookup(z)
        z = F.normalize(z.float(), dim=-1)
        return ids, z + (codes - z).detach()

    def losses(self, z: Tensor, ids: Tensor, with_entropy: bool = True) -> QuantizerLosses:
        """Return the VQ losses of valid vectors ``z`` (n, dim) quantized to ``ids`` (n,).

        In training mode this also records code usage and refreshes the restart pool.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.float32_losses(z.float(), ids, with_entropy)

    def float32_losses(self, z: Tensor, ids: Tensor, with_entropy: bool) -> QuantizerLosses:
        """Compute ``losses`` in float32 outside autocast."""
        z = F.normalize(z, dim=-1)
        codebook = self.normalized_codebook()
        codes = codebook[ids]
        codebook_loss = F.mse_loss(codes, z.detach())
        commitment_loss = F.mse_loss(z, codes.detach())

        if with_entropy:
            entropy_loss = self.entropy_loss(z, codebook)
        else:
            entropy_loss = z.new_zeros(())

        histogram = torch.bincount(ids, minlength=self.size).float()
        probabilities = histogram / histogram.sum().clamp_min(1.0)
        perplexity = torch.exp(-(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum())
        used_codes = int((histogram > 0).sum())

        if self.training:
            self.record_usage(z.detach(), histogram > 0)
        return QuantizerLosses(codebook_loss, commitment_loss, entropy_loss, perplexity, used_codes)

    def entropy_loss(self, z: Tensor, codebook: Tensor) -> Tensor:
        """Return mean per-token entropy minus entropy of the mean code distribution.

        Minimising it makes each token confident about one code while spreading tokens over the
        whole codebook (the entropy penalty of MAGVIT-v2). Memory grows as n x codebook size.
        """
        logits = (z @ codebook.t()) / self.entropy_temperature
        probabilities = logits.softmax(dim=-1)
        log_probabilities = logits.log_softmax(dim=-1)
        token_entropy = -(probabilities * log_probabilities).sum(dim=-1).mean()
        mean_probabilities = probabilities.mean(dim=0)
        codebook_entropy = -(mean_probabilities * torch.log(mean_probabilities.clamp_min(1e-12))).sum()
        return token_entropy - codebook_entropy

    @torch.no_grad()
    def record_usage(self, z: Tensor, used: Tensor) -> None:
        """Count one more unused step for unused codes and keep ``z`` as the restart pool."""
        self.steps_unused += 1
        self.steps_unused[used] = 0
        self.restart_pool = z.detach().clone()

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Move codes unused for ``dead_code_patience`` steps onto recent encoder outputs.

        Call it after the optimizer step, never between a forward pass and its backward pass,
        because it writes the codebook in place. Returns the number of codes restarted.
        """
        if self.dead_code_patience <= 0:
            return 0
        dead = torch.nonzero(self.steps_unused >= self.dead_code_patience).flatten()
        pool = self.restart_pool
        if dead.numel() and pool.shape[0]:
            # Sample with replacement when there are more dead codes than pooled vectors. A
            # little noise keeps codes restarted onto the same vector apart.
            picks = torch.randint(0, pool.shape[0], (dead.numel(),), device=pool.device)
            replacement = pool[picks].to(self.codebook.device)
            replacement = replacement + 0.01 * torch.randn_like(replacement)
            self.codebook.data[dead] = F.normalize(replacement, dim=-1).to(self.codebook.dtype)
            self.steps_unused[dead] = 0
            logger.debug("restarted %d dead codes of %d", dead.numel(), self.size)
        else:
            dead = dead[:0]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Each process restarts from its own batch, so rank 0's codebook is copied to all
            # processes to keep the replicas identical. Every rank must call this method.
            # NOTE: only run with a single process so far.
            torch.distributed.broadcast(self.codebook.data, src=0)
            torch.distributed.broadcast(self.steps_unused, src=0)
        return int(dead.numel())
