"""Draw the report's figures: PNG plots with matplotlib and side-by-side GIFs with Pillow.

Plots use matplotlib's object API with the Agg canvas, so no pyplot state or display is touched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DPI = 100
# Frame time of a sample without an "fps" entry: 80 ms (12.5 fps) plays a 25 fps source sampled at
# stride 2 at its real speed.
GIF_FRAME_MS = 80
LABEL_HEIGHT = 12  # pixels of the caption strip above a side-by-side GIF
MAX_ROW_LABELS = 30  # above this many clips the map shows no clip keys on its rows


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    # A tight bounding box keeps labels that tight_layout misses, such as a colour bar's label.
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def plot_final_curve(points: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Plot mean tokens per clip against LPIPS (left) and PSNR (right) for the final points.

    Uniform points are joined by a line in order of tokens, and router and baseline points are markers.
    """
    figure = _new_figure(10, 4)
    axes = figure.subplots(1, 2)
    styles = {"router": ("*", "tab:red", 14), "baseline": ("D", "tab:green", 8)}
    for axis, metric, name in ((axes[0], "lpips", "LPIPS (lower is better)"), (axes[1], "psnr", "PSNR (dB)")):
        # A point without tokens or this metric (null in the file) is left out of this axis only.
        plotted = [p for p in points if _is_number(p.get("tokens")) and _is_number(p.get(metric))]
        uniform = sorted((p for p in plotted if p.get("kind") == "uniform"), key=lambda p: p["tokens"])
        if uniform:
            axis.plot([p["tokens"] for p in uniform], [p[metric] for p in uniform], "o-", label="uniform")
        for point in (p for p in plotted if p.get("kind") != "uniform"):
            marker, colour, size = styles.get(str(point.get("kind")), ("s", "tab:purple", 8))
            axis.plot([point["tokens"]], [point[metric]], marker, color=colour, markersize=size,
                      linestyle="none", label=str(point.get("label", point.get("kind"))))
        axis.set_xlabel("mean tokens per clip")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("final tokenizer on held-out clips")
    return _save(figure, Path(path))


def _assignment_matrix(assignments: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """Return counts (clips, blocks) sorted by total tokens, then clip key, and the row keys."""
    rows = sorted(assignments, key=lambda item: (sum(item["assignment"]), str(item["clip_key"])))
    lengths = {len(item["assignment"]) for item in rows}
    if len(lengths) != 1:
        raise ValueError(
            f"assignments have different block counts {sorted(lengths)}: every clip of one tokenizer "
            "must have the same number of blocks"
        )
    matrix = np.array([[int(count) for count in item["assignment"]] for item in rows], dtype=np.int64)
    return matrix, [str(item["clip_key"]) for item in rows]


def plot_assignment_map(
    assignments: Sequence[Mapping[str, Any]], path: str | Path, candidates: Sequence[int] = ()
) -> Path:
    """Draw the chosen token count per clip (rows, fewest tokens on top) and block (columns).

    The colour bar has one tick per count in ``candidates`` and per count that occurs in the map.
    """
    from matplotlib import colormaps

    matrix, keys = _assignment_matrix(assignments)
    candidates = np.union1d(np.unique(matrix), np.asarray(candidates, dtype=np.int64))
    # One colour per candidate count: the counts are ranks on a discrete colour map, so unevenly
    # spaced candidates such as (4, 8, 16, 32) get equally distinct colours.
    ranks = np.searchsorted(candidates, matrix)
    colour_map = colormaps["viridis"].resampled(len(candidates))
    height = float(np.clip(1.5 + 0.18 * len(keys), 3.0, 10.0))
    figure = _new_figure(6, height)
    axis = figure.subplots()
    image = axis.imshow(ranks, aspect="auto", interpolation="nearest", cmap=colour_map,
                        vmin=-0.5, vmax=len(candidates) - 0.5)
    colour_bar = figure.colorbar(image, ax=axis, ticks=np.arange(len(candidates)))
    colour_bar.ax.set_yticklabels([str(count) for count in candidates])
    colour_bar.set_label("tokens in the block")
    axis.set_xticks(np.arange(matrix.shape[1]))
    axis.set_xticklabels([str(block) for block in range(matrix.shape[1])])
    axis.set_xlabel("block (time order)")
    if len(keys) <= MAX_ROW_LABELS:
        axis.set_yticks(np.arange(len(keys)))
        axis.set_yticklabels(keys, fontsize=6)
        axis.set_ylabel("clip (sorted by total tokens)")
    else:
        axis.set_ylabel(f"{len(keys)} clips (sorted by total tokens)")
    axis.set_title("router's token count per clip and block")
    return _save(figure, Path(path))


def plot_tokens_histogram(assignments: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Draw a histogram of total tokens per clip: one bar per value when there are few values."""
    tokens = np.array([sum(int(count) for count in item["assignment"]) for item in assignments])
    figure = _new_figure(6, 3.5)
    axis = figure.subplots()
    values, counts = np.unique(tokens, return_counts=True)
    if len(values) <= 30:
        width = 0.8 * float(np.min(np.diff(values))) if len(values) > 1 else 1.0
        axis.bar(values, counts, width=width)
    else:
        axis.hist(tokens, bins=30)
    axis.set_xlabel("tokens per clip")
    axis.set_ylabel("clips")
    axis.set_title(f"tokens per clip over {len(tokens)} held-out clips")
    axis.grid(alpha=0.3, axis="y")
    return _save(figure, Path(path))


def plot_proxy_curve(curve: Mapping[str, Any], path: str | Path) -> Path:
    """Redraw a saved proxy quality-cost curve (``Curve.to_dict()``) with evatok.curve.plot_curve."""
    from evatok.curve import Curve, CurvePoint

    router = curve.get("router")
    rebuilt = Curve(
        uniform=[CurvePoint(**point) for point in curve.get("uniform", [])],
        max_reward=[CurvePoint(**point) for point in curve.get("max_reward", [])],
        router=CurvePoint(**router) if router else None,
        protocol=dict(curve.get("protocol", {})),
    )
    from evatok.curve import plot_curve

    return plot_curve(rebuilt, path)


def _check_video(array: np.ndarray, path: Path) -> None:
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise ValueError(
            f"{path}: expected uint8 frames (T, H, W, 3) with T > 0, found {array.dtype} {array.shape}. "
            "Save the sample with numpy.save from a uint8 array"
        )


def load_frames(path: str | Path) -> np.ndarray:
    """Load a uint8 (T, H, W, 3) array saved with numpy.save, without unpickling."""
    path = Path(path)
    array = np.load(path, allow_pickle=False)
    _check_video(array, path)
    return array


def _label_strip(width: int, left: str, right: str, half: int) -> np.ndarray | None:
    """Return an RGB strip with ``left`` and ``right`` written over each half, or None if they do not fit."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    strip = Image.new("RGB", (width, LABEL_HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    if max(draw.textlength(left, font=font), draw.textlength(right, font=font)) > half - 2:
        return None
    draw.text((1, 0), left, fill=(255, 255, 255), font=font)
    draw.text((half + 1, 0), right, fill=(255, 255, 255), font=font)
    return np.asarray(strip)


def write_side_by_side_gif(
    original: np.ndarray, reconstruction: np.ndarray, path: str | Path, frame_ms: int = GIF_FRAME_MS
) -> Path:
    """Write an endlessly looping GIF of original (left) and reconstruction (right), frame by frame.

    The GIF is twice a frame's width. A strip of LABEL_HEIGHT pixels naming both sides is added
    on top when the names fit over a frame's width (frames 64 pixels wide or more).
    """
    from PIL import Image

    from evatok.video.writer import side_by_side

    path = Path(path)
    _check_video(original, path)
    _check_video(reconstruction, path)
    joined = side_by_side(original, reconstruction)
    strip = _label_strip(joined.shape[2], "original", "recon", original.shape[2])
    if strip is not None:
        joined = np.concatenate([np.broadcast_to(strip, (joined.shape[0], *strip.shape)), joined], axis=1)
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in joined]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path
