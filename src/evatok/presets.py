"""Named YAML presets (``tiny``, ``paper``, ``micro``) and dotted command-line overrides.

A preset file is a mapping of sections: ``tokenizer`` for the model, and sections such as
``train`` or ``data`` for the code that reads them. The typed config of that code validates each
section.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from evatok.models.config import TokenizerConfig

# Shipped presets whose names start with this prefix configure the generator and have no tokenizer.
GENERATOR_PRESET_PREFIX = "generator-"


def preset_names() -> list[str]:
    """Return the names of the tokenizer presets shipped with evatok (generator presets excluded)."""
    folder = resources.files("evatok") / "configs"
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml") and not entry.name.startswith(GENERATOR_PRESET_PREFIX)
    )


def load_preset(name_or_path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a preset by name or YAML path and apply ``key.sub=value`` overrides."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"preset file {path} not found: give an existing YAML file or a preset name")
        text = path.read_text()
        source = str(path)
    else:
        names = preset_names()
        if str(name_or_path) not in names:
            raise ValueError(
                f"unknown preset '{name_or_path}': choose one of {names} or give a path to a YAML file"
            )
        text = (resources.files("evatok") / "configs" / f"{name_or_path}.yaml").read_text()
        source = f"preset '{name_or_path}'"
    config = OmegaConf.create(text)
    if not isinstance(config, DictConfig):
        raise ValueError(f"{source} is not a mapping of sections such as 'tokenizer:'")
    if "base" in config:
        from evatok.training.config import read_preset

        config = read_preset(path if path.suffix in (".yaml", ".yml") else str(name_or_path))
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override '{override}' has no '=': write it as section.key=value")
    if overrides:
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
    return config


def tokenizer_config(preset: DictConfig | str | Path, overrides: Sequence[str] = ()) -> TokenizerConfig:
    """Return the typed tokenizer config of a preset (a loaded config, a name or a path)."""
    config = preset if isinstance(preset, DictConfig) else load_preset(preset, overrides)
    if "tokenizer" not in config:
        raise ValueError("the preset has no 'tokenizer' section: add a 'tokenizer:' mapping of sizes")
    return TokenizerConfig.from_dict(OmegaConf.to_container(config.tokenizer, resolve=True))
