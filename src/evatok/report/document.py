"""The report as plain data (sections of paragraphs, tables and figures) and number formatting.

Both renderers (HTML and markdown) walk the same sections, so the two files always contain the same
tables and numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Paragraph:
    """A line of text. ``missing`` marks a "not run yet" or "could not be read" message."""

    text: str
    missing: bool = False


@dataclass
class BulletList:
    """An unordered list of short text items."""

    items: list[str]


@dataclass
class Table:
    """A table of pre-formatted cells with an optional caption above it."""

    header: list[str]
    rows: list[list[str]]
    caption: str | None = None


@dataclass
class Figure:
    """An image file inside the run folder (PNG or GIF) with its caption."""

    path: Path
    caption: str


Block = Paragraph | BulletList | Table | Figure


@dataclass
class Section:
    """A titled part of the report."""

    title: str
    blocks: list[Block] = field(default_factory=list)


# ----- number formatting ------------------------------------------------------------------------

NONE_TEXT = "-"

# Decimals per metric: PSNR in dB to 0.01, SSIM and LPIPS to 1e-4, rFVD to 0.1, tokens to 0.1.
DECIMALS = {"psnr": 2, "ssim": 4, "lpips": 4, "rfvd": 1, "tokens": 1, "percent": 1}


def format_number(value: object, decimals: int) -> str:
    """Format a float with ``decimals`` places. None, NaN and non-numbers become "-"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NONE_TEXT
    if math.isnan(value):
        return NONE_TEXT
    return f"{value:.{decimals}f}"


def format_metric(value: object, metric: str) -> str:
    """Format ``value`` with the decimals of ``metric`` (a key of DECIMALS)."""
    return format_number(value, DECIMALS[metric])


def format_seconds(seconds: object) -> str:
    """Format a wall time as "12.3 s", "4 min 05 s" or "1 h 02 min", and None as "-"."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds):
        return NONE_TEXT
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {(whole % 3600) // 60:02d} min"


def format_value(value: object) -> str:
    """Format any JSON value for a key-value table: floats to 4 significant digits, lists joined."""
    if value is None:
        return NONE_TEXT
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {format_value(item)}" for key, item in value.items())
    return str(value)


def format_assignment(assignment: object) -> str:
    """Format a per-block token count list as "(4, 8, 32, 16)"."""
    if isinstance(assignment, list | tuple):
        return "(" + ", ".join(str(count) for count in assignment) + ")"
    return str(assignment)
