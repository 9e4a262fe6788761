"""A torch Dataset of generator token sequences read from a token export folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from evatok.export.store import TokenStore
from evatok.generation.vocab import GenerationVocab


def export_vocab(meta: dict[str, Any]) -> GenerationVocab:
    """Return the generator vocabulary of an export: its tokenizer's codes, counts and classes."""
    tokenizer = meta["tokenizer"]
    return GenerationVocab(
        codebook_size=int(tokenizer["codebook_size"]),
        candidates=tuple(tokenizer["candidates"]),
        num_blocks=int(tokenizer["frames"]) // int(tokenizer["patch_frames"]),
        num_classes=len(meta["classes"]),
    )


def split_blocks(ids: np.ndarray, assignment: tuple[int, ...]) -> list[Tensor]:
    """Cut a clip's flat code ids into one tensor per block."""
    offsets = np.cumsum((0, *assignment))
    return [torch.tensor(ids[start:end], dtype=torch.long) for start, end in zip(offsets, offsets[1:], strict=False)]


class TokenSequences(Dataset):
    """Every clip of an export as a (length,) long sequence ``[class] [len k1] codes ...``.

    The whole export is read into memory when the dataset is built, and every row is checked
    against the vocabulary (``GenerationVocab.encode`` raises on a bad count or code id).
    """

    def __init__(self, root: str | Path) -> None:
        self.store = TokenStore(root)
        self.meta = self.store.meta()
        self.vocab = export_vocab(self.meta)
        self.classes: list[str] = list(self.meta["classes"])
        frame = self.store.read()
        self.keys: list[str] = frame["clip_key"].tolist()
        self.class_indices: list[int] = frame["class_index"].astype(int).tolist()
        self.assignments: list[tuple[int, ...]] = [tuple(int(c) for c in row) for row in frame["assignment"]]
        self.sequences: list[Tensor] = []
        for key, class_index, assignment, ids in zip(
            self.keys, self.class_indices, self.assignments, frame["ids"], strict=True
        ):
            try:
                sequence = self.vocab.encode(class_index, assignment, split_blocks(np.asarray(ids), assignment))
            except ValueError as error:
                raise ValueError(f"{self.store.root}: clip {key} is invalid: {error}") from error
            self.sequences.append(sequence)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, item: int) -> Tensor:
        return self.sequences[item]

    @property
    def lengths(self) -> list[int]:
        """Length of every sequence, class token included."""
        return [int(sequence.numel()) for sequence in self.sequences]

    @property
    def totals(self) -> list[int]:
        """Code tokens of every clip (the sum of its assignment)."""
        return [sum(assignment) for assignment in self.assignments]
