"""Token export for the generator: per-clip codes, assignments and class labels in Parquet shards."""

from evatok.export.dataset import TokenSequences, export_vocab
from evatok.export.runner import ExportSettings, export_tokens, labelled_videos, parse_uniform
from evatok.export.store import ClipTokens, TokenStore, format_summary, length_summary

__all__ = [
    "ClipTokens",
    "ExportSettings",
    "TokenSequences",
    "TokenStore",
    "export_tokens",
    "export_vocab",
    "format_summary",
    "labelled_videos",
    "length_summary",
    "parse_uniform",
]
