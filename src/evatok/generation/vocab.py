"""The generator's vocabulary and the layout of one clip as a token sequence.

Ids, in order: the tokenizer's code ids ``[0, codebook_size)``, one length token per candidate
count (shortest first), one class token per class, then the null class (the unconditional row of
classifier-free guidance) and the pad id. A clip with class ``c`` and assignment
``(k_1, ..., k_T)`` is the sequence::

    [class c] [length k_1] k_1 codes [length k_2] k_2 codes ... [length k_T] k_T codes

so it has ``1 + T + sum(k_t)`` tokens. Pad only fills batches after a sequence's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from evatok.assignment import Assignment, AssignmentSpace


@dataclass(frozen=True)
class ParsedSequence:
    """One clip read back from a token sequence: class, assignment and per-block code ids."""

    class_index: int
    assignment: Assignment
    block_ids: list[Tensor]  # one (k_t,) long tensor of code ids per block

    @property
    def num_tokens(self) -> int:
        """Number of code ids over all blocks (length and class tokens not counted)."""
        return sum(self.assignment)


@dataclass(frozen=True)
class GenerationVocab:
    """Id ranges of codes, length tokens, class tokens and the special ids of the generator."""

    codebook_size: int
    candidates: tuple[int, ...]
    num_blocks: int
    num_classes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(int(count) for count in self.candidates))
        if self.codebook_size < 1:
            raise ValueError(f"codebook_size={self.codebook_size} must be at least 1")
        if self.num_classes < 1:
            raise ValueError(
                f"num_classes={self.num_classes} must be at least 1: an unconditional model has one class"
            )
        # Raises on empty, unsorted or non-positive candidates and on num_blocks < 1.
        AssignmentSpace(self.candidates, self.num_blocks)

    # ----- id ranges -------------------------------------------------------------------------

    @property
    def space(self) -> AssignmentSpace:
        """The assignment space whose counts the length tokens announce."""
        return AssignmentSpace(self.candidates, self.num_blocks)

    @property
    def first_length_id(self) -> int:
        """Id of the length token of the smallest candidate count."""
        return self.codebook_size

    @property
    def first_class_id(self) -> int:
        """Id of the token of class 0."""
        return self.codebook_size + len(self.candidates)

    @property
    def null_class_id(self) -> int:
        """Id of the null class, which replaces the class token in unconditional rows."""
        return self.first_class_id + self.num_classes

    @property
    def pad_id(self) -> int:
        """Id that fills a batch after a sequence has ended."""
        return self.null_class_id + 1

    @property
    def size(self) -> int:
        """Number of ids, so embedding tables and logits have this many rows."""
        return self.pad_id + 1

    @property
    def max_sequence_length(self) -> int:
        """Length of the longest sequence: every block at the largest candidate count."""
        return 1 + self.num_blocks * (1 + self.candidates[-1])

    def sequence_length(self, assignment: Sequence[int]) -> int:
        """Return the number of tokens of a clip with ``assignment``, class token included."""
        return 1 + self.num_blocks + self.space.length(assignment)

    # ----- single ids ------------------------------------------------------------------------

    def length_id(self, count: int) -> int:
        """Return the length token that announces a block of ``count`` codes."""
        if count not in self.candidates:
            raise ValueError(f"token count {count} is not a candidate: choose one of {self.candidates}")
        return self.first_length_id + self.candidates.index(count)

    def length_ids(self) -> Tensor:
        """Return the length tokens as a long tensor, in candidate order."""
        return torch.arange(self.first_length_id, self.first_class_id)

    def counts_tensor(self) -> Tensor:
        """Return the candidate counts as a long tensor, aligned with ``length_ids``."""
        return torch.tensor(self.candidates, dtype=torch.long)

    def class_id(self, class_index: int) -> int:
        """Return the class token of class ``class_index``."""
        if not 0 <= int(class_index) < self.num_classes:
            raise ValueError(
                f"class index {class_index} is out of range: the generator has {self.num_classes} classes "
                f"(0 to {self.num_classes - 1})"
            )
        return self.first_class_id + int(class_index)

    def is_code(self, token: int) -> bool:
        """Return whether ``token`` is a code id of the tokenizer."""
        return 0 <= token < self.codebook_size

    # ----- whole sequences -------------------------------------------------------------------

    def encode(self, class_index: int, assignment: Sequence[int], block_ids: Sequence[Tensor]) -> Tensor:
        """Return the (length,) long sequence of a clip from its class, assignment and codes."""
        assignment = self.space.validate(assignment)
        if len(block_ids) != self.num_blocks:
            raise ValueError(f"got code ids for {len(block_ids)} blocks, expected {self.num_blocks}")
        parts = [torch.tensor([self.class_id(class_index)])]
        for block, (count, ids) in enumerate(zip(assignment, block_ids, strict=True)):
            ids = torch.as_tensor(ids).long().flatten().cpu()
            if ids.numel() != count:
                raise ValueError(
                    f"block {block} has {ids.numel()} code ids but the assignment gives it {count}"
                )
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
                raise ValueError(
                    f"block {block} contains a code id outside the codebook [0, {self.codebook_size - 1}]"
                )
            parts.append(torch.tensor([self.length_id(count)]))
            parts.append(ids)
        return torch.cat(parts)

    def parse(self, sequence: Tensor | Sequence[int]) -> ParsedSequence:
        """Read a clip back from its sequence; trailing pad ids are allowed, anything else raises."""
        tokens = [int(token) for token in torch.as_tensor(sequence).flatten().tolist()]
        if not tokens:
            raise ValueError("the sequence is empty: it must start with a class token")
        first = tokens[0]
        if not self.first_class_id <= first < self.null_class_id:
            raise ValueError(f"the sequence starts with id {first}, which is not a class token")
        position = 1
        assignment: list[int] = []
        blocks: list[Tensor] = []
        for block in range(self.num_blocks):
            if position >= len(tokens):
                raise ValueError(f"the sequence ends before the length token of block {block}")
            length_token = tokens[position]
            if not self.first_length_id <= length_token < self.first_class_id:
                raise ValueError(
                    f"position {position} contains id {length_token} where the length token of block "
                    f"{block} must come"
                )
            count = self.candidates[length_token - self.first_length_id]
            codes = tokens[position + 1 : position + 1 + count]
            if len(codes) != count or not all(self.is_code(code) for code in codes):
                raise ValueError(
                    f"block {block} announces {count} codes, but positions {position + 1} to "
                    f"{position + count} do not all hold code ids"
                )
            assignment.append(count)
            blocks.append(torch.tensor(codes, dtype=torch.long))
            position += 1 + count
        if any(token != self.pad_id for token in tokens[position:]):
            raise ValueError(f"the sequence continues after its last block at position {position}")
        return ParsedSequence(first - self.first_class_id, tuple(assignment), blocks)
