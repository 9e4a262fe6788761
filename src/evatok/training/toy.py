"""A seconds-long recipe on synthetic clips that exercises every path of the engine.

Each sample is routed to one of several decoder heads, drawn at random per sample like the proxy
tokenizer's assignments, so a process may leave whole heads without gradient on a step. Settings
come from an optional `toy:` config section: `heads`, `width`, `dropout`, and `nan_steps` /
`nan_process` to inject a non-finite loss on chosen steps of one process.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from evatok.training.recipe import LossOutput, Recipe, StepContext


class SyntheticClips(Dataset):
    """Smooth random clips (C, T, H, W) in [-1, 1], each a pure function of its index."""

    def __init__(self, num_samples: int, shape: tuple[int, int, int, int], seed: int) -> None:
        self.num_samples = num_samples
        self.shape = shape
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        channels, frames, height, width = self.shape
        coarse = torch.rand(channels, frames, 2, 2, generator=generator) * 2 - 1
        return nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)


class RoutedAutoencoder(nn.Module):
    """A tiny clip autoencoder whose decoder head is chosen per sample."""

    def __init__(self, num_values: int, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(num_values, width), nn.GELU(), nn.Dropout(dropout))
        self.heads = nn.ModuleList(nn.Linear(width, num_values) for _ in range(heads))

    def forward(self, clips: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
        flat = clips.flatten(1)
        hidden = self.encoder(flat)
        output = torch.zeros_like(flat)
        for head_index, head in enumerate(self.heads):
            chosen = routes == head_index
            if chosen.any():
                output[chosen] = head(hidden[chosen]).to(output.dtype)
        return output.view_as(clips)


class ToyRecipe(Recipe):
    """Train RoutedAutoencoder with L1 on SyntheticClips."""

    shape = (3, 4, 8, 8)

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        defaults = {"heads": 4, "width": 32, "dropout": 0.1, "nan_steps": [], "nan_process": 0}
        toy = OmegaConf.to_container(config.get("toy", OmegaConf.create({})), resolve=True)
        self.settings: dict[str, Any] = {**defaults, **toy}

    def build_model(self) -> nn.Module:
        num_values = 1
        for size in self.shape:
            num_values *= size
        return RoutedAutoencoder(
            num_values, self.settings["width"], self.settings["heads"], self.settings["dropout"]
        )

    def build_dataset(self) -> Dataset:
        return SyntheticClips(self.config.data.synthetic_samples, self.shape, seed=self.config.train.seed)

    def training_loss(self, model: nn.Module, batch: torch.Tensor, ctx: StepContext) -> LossOutput:
        routes = torch.randint(0, self.settings["heads"], (batch.shape[0],), generator=ctx.generator)
        reconstruction = model(batch, routes.to(batch.device))
        l1 = (reconstruction.float() - batch.float()).abs().mean()
        loss = l1
        if ctx.step in self.settings["nan_steps"] and ctx.accelerator.process_index == self.settings["nan_process"]:
            loss = l1 * float("nan")
        return LossOutput(loss=loss, terms={"l1": l1.detach()})
