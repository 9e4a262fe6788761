"""Generator training: next-token cross-entropy on the sequences of a token export.

A batch pads its sequences with the pad id to its longest one. The model reads positions
``0 .. L-2`` and predicts ``1 .. L-1``, and the loss averages over the real next tokens only: the
class token is never a target, and no target past a sequence's end (pad) counts. Because
attention is causal and pads only follow a sequence, they never change a real position's
logits. For classifier-free guidance each sample's class token is replaced by the null class
with probability ``generator_train.class_dropout``.

Settings live in two preset sections. ``generator:`` names an architecture preset of
``GENERATOR_PRESETS`` (``preset: tiny``) and may override its keys; the vocabulary fields come
from the export's ``meta.json``. ``generator_train:`` contains the export folder (``tokens``) and
the class dropout. Every exported clip trains; there is no held-out split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from evatok.export.dataset import TokenSequences
from evatok.models.generator import Generator, GeneratorConfig
from evatok.training.recipe import LossOutput, Recipe, StepContext

logger = logging.getLogger(__name__)

# Fields of GeneratorConfig that the export fixes; a preset may not set them.
VOCAB_FIELDS = ("codebook_size", "candidates", "num_blocks", "num_classes", "class_names")


@dataclass
class GeneratorTrainSettings:
    """The ``generator_train:`` section."""

    # Export folder written by `evatok export-tokens`.
    tokens: str | None = None
    # Probability of replacing a sample's class token by the null class (classifier-free guidance).
    class_dropout: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"generator_train.class_dropout={self.class_dropout} must lie in [0, 1)")

    @classmethod
    def from_config(cls, config: DictConfig) -> GeneratorTrainSettings:
        """Read the settings from a run config, rejecting unknown keys by name."""
        section = config.get("generator_train") or {}
        data = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown generator_train keys {unknown}: valid keys are {sorted(known)}")
        return cls(**data)


def generator_config_of(config: DictConfig, dataset: TokenSequences) -> GeneratorConfig:
    """Return the generator config: the ``generator:`` preset and overrides, vocabulary from the export."""
    section = config.get("generator")
    if section is None:
        raise ValueError("the config has no `generator:` section: use a preset such as --config generator-tiny")
    data = dict(OmegaConf.to_container(section, resolve=True))
    preset = data.pop("preset", None)
    fixed = sorted(set(data) & set(VOCAB_FIELDS))
    if fixed:
        raise ValueError(
            f"generator.{fixed[0]} is set in the config, but the vocabulary comes from the token export: "
            "remove it from the `generator:` section"
        )
    vocab = dataset.vocab
    data.update(
        codebook_size=vocab.codebook_size, candidates=vocab.candidates, num_blocks=vocab.num_blocks,
        num_classes=vocab.num_classes, class_names=tuple(dataset.classes),
    )
    if preset is None:
        return GeneratorConfig.from_dict(data)
    return GeneratorConfig.from_preset(str(preset), **data)


def pad_batch(sequences: list[torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack sequences into (B, max length) tokens padded with ``pad_id``, with their lengths."""
    lengths = torch.tensor([sequence.numel() for sequence in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, : sequence.numel()] = sequence
    return {"tokens": tokens, "lengths": lengths}


def target_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Return the (B, width) bool mask of real targets: positions 1 .. length-1 of each sequence."""
    return torch.arange(width, device=lengths.device)[None, :] < (lengths[:, None] - 1)


class GeneratorRecipe(Recipe):
    """Train the class-conditional generator on an export's token sequences."""

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        self.settings = GeneratorTrainSettings.from_config(config)
        if self.settings.tokens is None:
            raise ValueError(
                "generator_train.tokens is not set: pass generator_train.tokens=DIR (a folder of `evatok export-tokens`)"
            )
        self.dataset = TokenSequences(self.settings.tokens)
        self.generator_config = generator_config_of(config, self.dataset)
        self.vocab = self.generator_config.vocab

    def build_model(self) -> nn.Module:
        model = Generator(self.generator_config)
        logger.info(
            "generator: %.2fM parameters, vocabulary %d, %d classes, sequences up to %d tokens",
            model.num_parameters() / 1e6, self.vocab.size, self.vocab.num_classes, self.vocab.max_sequence_length,
        )
        return model

    def build_dataset(self) -> Dataset:
        totals = self.dataset.totals
        logger.info(
            "generator training on %d clips of %s: %.1f code tokens per clip on average (min %d, max %d)",
            len(self.dataset), self.settings.tokens, sum(totals) / len(totals), min(totals), max(totals),
        )
        return self.dataset

    def collate(self, samples: list[Any]) -> dict[str, torch.Tensor]:
        return pad_batch(samples, self.vocab.pad_id)

    def training_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> LossOutput:
        tokens = batch["tokens"].clone()
        lengths = batch["lengths"]
        if self.settings.class_dropout > 0:
            drop = torch.rand(tokens.shape[0], generator=ctx.generator) < self.settings.class_dropout
            tokens[:, 0] = torch.where(drop.to(tokens.device), self.vocab.null_class_id, tokens[:, 0])
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask = target_mask(lengths, targets.shape[1])
        logits = model(inputs).float()
        loss = F.cross_entropy(logits[mask], targets[mask])
        with torch.no_grad():
            predicted = logits.argmax(dim=-1)
            correct = (predicted == targets) & mask
            is_length = (targets >= self.vocab.first_length_id) & (targets < self.vocab.first_class_id) & mask
            is_code = (targets < self.vocab.codebook_size) & mask
            terms = {
                "ce": loss.detach(),
                "code_accuracy": correct[is_code].float().mean(),
                "length_accuracy": correct[is_length].float().mean(),
            }
        return LossOutput(loss=loss, terms=terms)

    def save_final(self, model: nn.Module, ema_model: nn.Module | None, directory: Path) -> None:
        """Write the EMA generator (or the raw one without EMA) with save_pretrained, config inside."""
        (ema_model or model).save_pretrained(directory)
        if ema_model is not None:
            model.save_pretrained(directory / "raw")
