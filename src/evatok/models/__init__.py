"""Neural network modules of evatok: the Q-Former tokenizer and its parts."""

from evatok.models.attention import BlockCache
from evatok.models.config import TokenizerConfig
from evatok.models.quantizer import VectorQuantizer
from evatok.models.tokenizer import (
    PAD_ID,
    EncodedBlock,
    Tokenizer,
    TokenizerEncoding,
    TokenizerOutput,
)

__all__ = [
    "PAD_ID",
    "BlockCache",
    "EncodedBlock",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerEncoding",
    "TokenizerOutput",
    "VectorQuantizer",
]
