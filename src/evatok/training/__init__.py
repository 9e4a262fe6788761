"""Training: the Accelerate loop shared by every stage, its configs, and one recipe per stage."""

from __future__ import annotations

import importlib

from evatok.training.config import ExperimentConfig, load_config
from evatok.training.engine import NonFiniteLossError, Trainer
from evatok.training.recipe import LossOutput, Recipe, StepContext

# Recipe name -> "module:class", imported on use so a recipe's heavy imports stay optional.
RECIPES: dict[str, str] = {
    "toy": "evatok.training.toy:ToyRecipe",
    "proxy": "evatok.training.proxy:ProxyRecipe",
    "router": "evatok.training.router:RouterRecipe",
    "generator": "evatok.training.generator:GeneratorRecipe",
    "final": "evatok.training.final:FinalRecipe",
}


def get_recipe_class(name: str) -> type[Recipe]:
    """Import and return the recipe class registered under `name`."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(sorted(RECIPES))}")
    module_name, class_name = RECIPES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = [
    "ExperimentConfig",
    "LossOutput",
    "NonFiniteLossError",
    "RECIPES",
    "Recipe",
    "StepContext",
    "Trainer",
    "get_recipe_class",
    "load_config",
]
