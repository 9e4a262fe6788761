"""Weights files that rebuild their own model: safetensors with the model's config in the metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from safetensors import safe_open
from safetensors.torch import load_model, save_model

WEIGHTS_NAME = "model.safetensors"


class ConfigInWeightsMixin:
    """Save a module's weights with its config inside, and rebuild the module from that file alone.

    The class sets ``config_class`` (a dataclass with ``to_dict``/``from_dict``) and
    ``config_metadata_key``; instances keep their config in ``self.config``. ``_save_pretrained``
    is the hook that huggingface_hub's ``ModelHubMixin.save_pretrained`` calls, so list this mixin
    before ``PyTorchModelHubMixin`` among the bases. No pickle is ever read.
    """

    config_class: ClassVar[type]
    config_metadata_key: ClassVar[str]

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write the weights as safetensors with the config in the file's metadata."""
        config: Any = self.config  # type: ignore[attr-defined]
        metadata = {"format": "pt", self.config_metadata_key: json.dumps(config.to_dict())}
        save_model(self, str(Path(save_directory) / WEIGHTS_NAME), metadata=metadata)  # type: ignore[arg-type]

    @classmethod
    def from_safetensors(cls, path: str | Path, device: str = "cpu") -> Any:
        """Build the model from one safetensors file that stores its config in the metadata."""
        path = Path(path)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if cls.config_metadata_key not in metadata:
            raise ValueError(
                f"{path} has no '{cls.config_metadata_key}' metadata: it was not written by "
                f"{cls.__name__}.save_pretrained; give a folder or file written by it"
            )
        config = cls.config_class.from_dict(json.loads(metadata[cls.config_metadata_key]))
        model = cls(config)  # type: ignore[call-arg]
        load_model(model, str(path), device=device)
        return model
