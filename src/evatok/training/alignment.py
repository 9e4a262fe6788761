"""Representation alignment of the tokenizer's decoder to a frozen V-JEPA2 encoder.

The tokenizer and a small projection MLP train together inside `AlignedTokenizer`, so the
optimizer, the EMA copy and the checkpoints hold both. The frozen encoder stays outside the model
(the recipe owns it), so its weights are neither averaged nor written to checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from evatok.losses import alignment_loss
from evatok.models.tokenizer import Tokenizer, TokenizerOutput

if TYPE_CHECKING:
    from evatok.models.frozen_encoders import FrozenVJEPA2

TOKENIZER_PREFIX = "tokenizer."


class AlignedTokenizer(nn.Module):
    """A tokenizer whose forward also returns one decoder layer's features, projected to the encoder width.

    The decoder runs block by block, and each block's queries cover the patch grid of that block,
    so the captured outputs form a (blocks, rows, cols) grid in (t, h, w) raster order.
    """

    def __init__(self, tokenizer: Tokenizer, decoder_layer: int | None, target_width: int) -> None:
        super().__init__()
        layers = len(tokenizer.decoder.layers)
        index = layers // 2 if decoder_layer is None else decoder_layer
        if not -layers <= index < layers:
            raise ValueError(
                f"invalid loss.alignment_decoder_layer {decoder_layer}: the decoder has {layers} layers, "
                f"use an index in [{-layers}, {layers - 1}] or null for the middle layer"
            )
        self.decoder_layer = index % layers
        # transformers (the `semantic` extra) is imported only when alignment is on.
        from evatok.models.frozen_encoders import AlignmentProjector

        self.tokenizer = tokenizer
        self.projector = AlignmentProjector(tokenizer.config.decoder_width, target_width)

    @property
    def head(self) -> nn.Module:
        """The tokenizer's output layer (the adaptive adversarial weight is measured there)."""
        return self.tokenizer.head

    @property
    def quantizer(self) -> nn.Module:
        """The tokenizer's quantizer."""
        return self.tokenizer.quantizer

    @property
    def feature_grid(self) -> tuple[int, int, int]:
        """The (blocks, rows, cols) grid of the captured decoder features."""
        config = self.tokenizer.config
        return (config.num_blocks, config.height // config.patch_height, config.width // config.patch_width)

    def restart_dead_codes(self) -> int:
        """Restart the tokenizer's dead codes."""
        return self.tokenizer.restart_dead_codes()

    def forward(
        self, video: Tensor, assignment: Any, with_entropy: bool = True
    ) -> tuple[TokenizerOutput, Tensor]:
        """Return the tokenizer's output and the projected decoder features (B, blocks*rows*cols, D_enc)."""
        captured: list[Tensor] = []

        def keep_output(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0])

        # The hook lives only for this call, so a deep copy of the module (the EMA copy) never
        # carries a hook that writes into another instance's list.
        handle = self.tokenizer.decoder.layers[self.decoder_layer].register_forward_hook(keep_output)
        try:
            output = self.tokenizer(video, assignment, with_entropy=with_entropy)
        finally:
            handle.remove()
        return output, self.projector(torch.cat(captured, dim=1))


def tokenizer_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Return the tokenizer's weights from a state dict of a Tokenizer or of an AlignedTokenizer."""
    if not any(key.startswith(TOKENIZER_PREFIX) for key in state):
        return state
    return {key[len(TOKENIZER_PREFIX):]: value for key, value in state.items() if key.startswith(TOKENIZER_PREFIX)}


class VJEPA2Alignment(nn.Module):
    """The alignment term: frozen V-JEPA2 features of the input, resampled to the decoder's grid."""

    def __init__(self, encoder: FrozenVJEPA2, encoder_layer: int = -1) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder_layer = encoder_layer

    @classmethod
    def from_pretrained(cls, source: str | Path, encoder_layer: int = -1) -> VJEPA2Alignment:
        """Load the frozen encoder from a hub id or local folder (an error names the id when missing)."""
        from evatok.models.frozen_encoders import FrozenVJEPA2

        return cls(FrozenVJEPA2.from_pretrained(source), encoder_layer)

    @property
    def width(self) -> int:
        """Feature width of the encoder."""
        return self.encoder.hidden_size

    def forward(self, video: Tensor, projected: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """Return the negative cosine similarity between `projected` and the encoder's features of `video`."""
        from evatok.models.frozen_encoders import resample_feature_grid

        with torch.no_grad():
            target = resample_feature_grid(self.encoder(video, self.encoder_layer), grid)
        return alignment_loss(projected, target)
