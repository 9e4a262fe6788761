"""Small data files shipped with evatok, such as the Kinetics-400 class names."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def kinetics400_classes() -> tuple[str, ...]:
    """Return the 400 Kinetics-400 class names in the label order of the released I3D."""
    text = resources.files(__name__).joinpath("kinetics400_classes.txt").read_text("utf-8")
    return tuple(text.splitlines())
