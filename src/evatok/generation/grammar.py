"""The sequence grammar as a batched state machine that masks the logits of every sampling step.

A sequence starts after its class token. Its state is the current block and the number of codes
still owed to that block:

- no codes owed and blocks left: only a length token may come, and it opens the next block;
- codes owed: only code ids may come, one fewer owed after each;
- all blocks filled: the sequence is done and only the pad id may come.

The state lives in tensors, so a batch whose rows sit in different blocks or stages is masked in
one operation. ``advance`` raises when a token breaks the grammar, so no class, pad or
out-of-range id can land inside a generated block, whatever the model outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from evatok.generation.vocab import GenerationVocab

# Logits are clamped to this magnitude before masking, so that +inf, -inf or NaN from a model
# can never leave a row with no finite allowed logit. Real logits are far smaller.
LOGIT_LIMIT = 1.0e4


class GrammarState:
    """Per-row grammar state of a batch of sequences that all start after their class token."""

    def __init__(self, vocab: GenerationVocab, batch: int, device: torch.device | str = "cpu") -> None:
        self.vocab = vocab
        self.device = torch.device(device)
        self.block = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.owed = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.counts = vocab.counts_tensor().to(self.device)

    @property
    def done(self) -> Tensor:
        """(batch,) bool: True where every block is filled."""
        return self.block >= self.vocab.num_blocks

    def allowed(self) -> Tensor:
        """Return the (batch, vocab size) bool mask of the ids each row may take next."""
        vocab = self.vocab
        expects_length = (self.owed == 0) & ~self.done
        in_block = self.owed > 0
        mask = torch.zeros(len(self.block), vocab.size, dtype=torch.bool, device=self.device)
        mask[:, : vocab.codebook_size] = in_block[:, None]
        mask[:, vocab.first_length_id : vocab.first_class_id] = expects_length[:, None]
        mask[:, vocab.pad_id] = self.done
        return mask

    def mask_logits(self, logits: Tensor) -> Tensor:
        """Return float32 logits with finite values at allowed ids and -inf everywhere else."""
        if logits.shape != (len(self.block), self.vocab.size):
            raise ValueError(
                f"logits have shape {tuple(logits.shape)}, expected ({len(self.block)}, {self.vocab.size})"
            )
        finite = logits.float().nan_to_num(nan=-LOGIT_LIMIT).clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
        return finite.masked_fill(~self.allowed(), float("-inf"))

    def advance(self, tokens: Tensor) -> None:
        """Consume one (batch,) token per row; raise ValueError when a token breaks the grammar."""
        tokens = tokens.to(self.device).long()
        allowed = self.allowed().gather(1, tokens.clamp(0, self.vocab.size - 1)[:, None])[:, 0]
        allowed &= (tokens >= 0) & (tokens < self.vocab.size)
        if not bool(allowed.all()):
            row = int((~allowed).nonzero()[0, 0])
            raise ValueError(
                f"row {row} got id {int(tokens[row])}, which the grammar forbids in block "
                f"{int(self.block[row])} with {int(self.owed[row])} codes owed"
            )
        vocab = self.vocab
        is_length = (tokens >= vocab.first_length_id) & (tokens < vocab.first_class_id)
        is_code = tokens < vocab.codebook_size
        length_slot = (tokens - vocab.first_length_id).clamp(0, len(vocab.candidates) - 1)
        owed = torch.where(is_length, self.counts[length_slot], self.owed)
        owed = torch.where(is_code, owed - 1, owed)
        # A block ends with its last code; a block of zero codes cannot occur because counts are positive.
        finished_block = is_code & (owed == 0)
        self.block = self.block + finished_block.long()
        self.owed = owed
