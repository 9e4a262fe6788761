"""evatok: adaptive-length video tokenization (EVATok)."""

__version__ = "0.1.0"
