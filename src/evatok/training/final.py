"""Stage 4: the final tokenizer, trained from scratch on the frozen router's assignments.

Every sample is routed on the fly (after augmentation) by the frozen router, so training uses the
assignments that inference will use. The losses are the stage 1 ones, with the alignment term and
the semantic discriminator switched by the ``loss:`` section. The ``final:`` section contains:

- ``router``: the router weights (a run folder of `evatok train router`, a folder or a file);
- ``assignment``: ``router`` (default), or ``uniform:K`` / one count per block for a fixed-length
  baseline trained with the same recipe;
- ``train`` and ``loss``: keys that replace those of the shared ``train:`` and ``loss:`` sections
  for this stage (the semantic discriminator, for example, is a stage 4 option).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from evatok.evaluation import AssignmentRule
from evatok.models.router import Router
from evatok.training.config import settings_from_section
from evatok.training.proxy import ProxyRecipe
from evatok.training.recipe import StepContext
from evatok.training.router import apply_train_overrides

logger = logging.getLogger(__name__)

ROUTER_ASSIGNMENT = "router"


@dataclass
class FinalTrainSettings:
    """The ``final:`` section without its ``train:`` overrides."""

    router: str | None = None
    assignment: str = ROUTER_ASSIGNMENT

    @classmethod
    def from_config(cls, config: DictConfig) -> FinalTrainSettings:
        """Read the settings from a run config, rejecting unknown keys by name."""
        return settings_from_section(cls, config, "final", nested=("train", "loss"))


def check_router_matches(router: Router, recipe: ProxyRecipe, config: DictConfig) -> None:
    """Raise ValueError when the router's clips or classes differ from the tokenizer's."""
    tokenizer = recipe.tokenizer_config
    router_shape = (router.config.frames, router.config.height, router.config.width)
    tokenizer_shape = (tokenizer.frames, tokenizer.height, tokenizer.width)
    if router_shape != tokenizer_shape:
        raise ValueError(
            f"the router reads {router_shape} clips but the tokenizer takes {tokenizer_shape} (frames, "
            "height, width): train the router with the same preset as the tokenizer"
        )
    if (tuple(router.space.candidates), router.space.num_blocks) != (tuple(recipe.space.candidates), recipe.space.num_blocks):
        raise ValueError(
            f"the router predicts candidates {router.space.candidates} over {router.space.num_blocks} blocks, "
            f"the tokenizer has {recipe.space.candidates} over {recipe.space.num_blocks}: use the same preset"
        )
    if router.config.fps != config.data.fps or (config.data.fps is None and router.config.frame_stride != config.data.frame_stride):
        logger.warning(
            "the router was trained on clips sampled with frame_stride=%s fps=%s, but data.frame_stride=%s "
            "data.fps=%s: its choices may not fit these clips",
            router.config.frame_stride, router.config.fps, config.data.frame_stride, config.data.fps,
        )


class FinalRecipe(ProxyRecipe):
    """Train the tokenizer from scratch with the frozen router's assignment for every sample."""

    def __init__(self, config: DictConfig) -> None:
        replaced = {target: apply_train_overrides(config, "final", target) for target in ("train", "loss")}
        super().__init__(config)
        for target, keys in replaced.items():
            if keys:
                logger.info("final.%s sets %s.%s for the final tokenizer", target, target, f", {target}.".join(keys))
        self.settings = FinalTrainSettings.from_config(config)
        self.router: Router | None = None
        self.fixed: tuple[int, ...] | None = None
        if self.settings.assignment == ROUTER_ASSIGNMENT:
            if self.settings.router is None:
                raise ValueError(
                    "final.router is not set: pass final.router=DIR (a run folder of `evatok train router`), "
                    "or final.assignment=uniform:K for a fixed-length baseline"
                )
            self.router = Router.load(self.settings.router)
            self.router.requires_grad_(False)
            check_router_matches(self.router, self, config)
        else:
            self.fixed = AssignmentRule.parse(self.settings.assignment, self.space).counts
            logger.info("fixed assignment %s for every sample", self.fixed)

    def assignments_for(self, video: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Return the router's assignment of each (augmented) clip, or the fixed one."""
        if self.router is None:
            return torch.tensor(self.fixed, dtype=torch.long).expand(video.shape[0], -1)
        self.router.to(video.device)
        with torch.no_grad():
            indices = self.router(video).argmax(dim=-1)
        return torch.tensor([self.space.assignment(int(index)) for index in indices], dtype=torch.long)
