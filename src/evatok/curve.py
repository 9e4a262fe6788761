"""The quality-cost curve: mean tokens per clip against mean LPIPS and PSNR, uniform vs adaptive.

Every point is read from the label store's per-(clip, assignment) values, so nothing is decoded:

- uniform: the assignment ``(k, ..., k)`` for every candidate ``k`` on every clip;
- max-reward: each clip's assignment of maximum search reward at one ``w_q`` (``w_l = 2 - w_q``),
  for a sweep of ``w_q``;
- router: each clip's assignment predicted by a router, when that assignment was evaluated.

Token saving at equal LPIPS: an adaptive point with mean LPIPS ``q`` is compared with the tokens the
uniform curve needs for ``q``, interpolated linearly between neighbouring uniform points sorted by
tokens. When the uniform curve is not monotone and reaches ``q`` on several segments, the segment
with the fewest tokens is used, which credits uniform with its cheapest way to reach ``q``. Outside
the LPIPS range of the uniform points no saving is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evatok.search.reward import Reward, RewardStats

logger = logging.getLogger(__name__)

DEFAULT_W_Q_SWEEP = "0.4:2.0:0.2"
OUTSIDE_UNIFORM_RANGE = "outside the uniform range"


@dataclass
class CurvePoint:
    """One point of the curve: means over the clips it covers, with the saving against uniform."""

    kind: str  # "uniform", "max_reward" or "router"
    label: str
    tokens: float  # mean total tokens per clip
    lpips: float
    psnr: float
    clips: int
    w_q: float | None = None
    uniform_tokens: float | None = None  # uniform tokens at this point's LPIPS; None outside the range
    saving_percent: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the point as a JSON-ready dict."""
        return asdict(self)


@dataclass
class Curve:
    """Every point of one curve and the protocol that produced it."""

    uniform: list[CurvePoint]
    max_reward: list[CurvePoint]
    router: CurvePoint | None = None
    protocol: dict[str, Any] = field(default_factory=dict)

    def adaptive_points(self) -> list[CurvePoint]:
        """Return the max-reward points followed by the router point, if any."""
        return self.max_reward + ([self.router] if self.router is not None else [])

    def to_dict(self) -> dict[str, Any]:
        """Return the protocol and every point as a JSON-ready dict."""
        return {
            "protocol": self.protocol,
            "uniform": [point.to_dict() for point in self.uniform],
            "max_reward": [point.to_dict() for point in self.max_reward],
            "router": self.router.to_dict() if self.router is not None else None,
        }


def parse_sweep(text: str) -> list[float]:
    """Parse ``START:STOP:STEP`` (both ends included) or a comma-separated list into w_q values."""
    try:
        if ":" not in text:
            values = [float(part) for part in text.split(",") if part.strip()]
        else:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            # Rounding the count keeps STOP in the sweep despite float steps such as 0.2.
            count = int(round((stop - start) / step)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
    except ValueError:
        raise ValueError(
            f"invalid w_q sweep {text!r}: write START:STOP:STEP with STEP > 0 and STOP >= START "
            "(for example 0.4:2.0:0.2) or a comma-separated list (for example 0.8,1.2,1.6)"
        ) from None
    if not values:
        raise ValueError(f"invalid w_q sweep {text!r}: it contains no values")
    return values


def _uniform_mask(frame: Any) -> np.ndarray:
    """Return which rows contain a uniform assignment (every block the same token count)."""
    return np.array([len(set(assignment)) == 1 for assignment in frame["assignment"]], dtype=bool)


def _mean_point(rows: Any, kind: str, label: str, w_q: float | None = None) -> CurvePoint:
    return CurvePoint(
        kind=kind, label=label, w_q=w_q, clips=len(rows),
        tokens=float(rows["tokens"].mean()), lpips=float(rows["lpips"].mean()), psnr=float(rows["psnr"].mean()),
    )


def uniform_points(frame: Any) -> list[CurvePoint]:
    """Return one point per uniform assignment stored for every clip of ``frame``, fewest tokens first."""
    clips = frame["clip_key"].nunique()
    uniform = frame[_uniform_mask(frame)]
    points = []
    for _, rows in uniform.groupby("tokens", sort=True):
        per_block = int(rows["assignment"].iloc[0][0])
        label = f"uniform {per_block}"
        if len(rows) < clips:
            # A point over a subset of clips is not comparable with the others (beam search may
            # skip a uniform assignment on some clips).
            logger.warning("%s is stored for %d of %d clips: left out of the curve", label, len(rows), clips)
            continue
        points.append(_mean_point(rows, "uniform", label))
    return points


def max_reward_points(frame: Any, stats: RewardStats, w_q_values: Sequence[float]) -> list[CurvePoint]:
    """Return, for each ``w_q``, the means over clips of each clip's maximum-reward assignment."""
    ordered = frame.sort_values(["clip_key", "assignment_index"], kind="stable").reset_index(drop=True)
    points = []
    for w_q in w_q_values:
        reward = Reward(stats, w_q=float(w_q))
        ordered["reward"] = reward(ordered["lpips"].to_numpy(), ordered["tokens"].to_numpy())
        # idxmax returns the first maximum, so ties go to the lowest class index.
        best = ordered.loc[ordered.groupby("clip_key", sort=True)["reward"].idxmax()]
        points.append(_mean_point(best, "max_reward", f"max-reward w_q={w_q:.2f}", w_q=float(w_q)))
    return points


def router_point(frame: Any, choice: Mapping[str, int]) -> tuple[CurvePoint | None, int]:
    """Return the means over clips of the router's chosen class and the count of clips left out.

    A clip is left out when its chosen class was not evaluated in the store (possible after a beam
    search) or when the router has no choice for it.
    """
    keys = frame["clip_key"].to_numpy()
    indices = frame["assignment_index"].to_numpy()
    chosen = np.array([choice.get(str(key), -1) == int(index) for key, index in zip(keys, indices, strict=True)])
    rows = frame[chosen]
    missing = int(frame["clip_key"].nunique()) - int(rows["clip_key"].nunique())
    if rows.empty:
        return None, missing
    return _mean_point(rows, "router", "router"), missing


def uniform_tokens_at(lpips: float, uniform: Sequence[CurvePoint]) -> float | None:
    """Return the tokens the uniform curve needs for ``lpips``, or None outside its LPIPS range."""
    ordered = sorted(uniform, key=lambda point: point.tokens)
    for left, right in zip(ordered, ordered[1:], strict=False):
        low, high = sorted((left.lpips, right.lpips))
        if not low <= lpips <= high:
            continue
        if high == low:
            return left.tokens
        fraction = (lpips - left.lpips) / (right.lpips - left.lpips)
        return left.tokens + fraction * (right.tokens - left.tokens)
    if len(ordered) == 1 and ordered[0].lpips == lpips:
        return ordered[0].tokens
    return None


def add_savings(curve: Curve) -> None:
    """Fill in every adaptive point's uniform tokens at equal LPIPS and its saving in percent."""
    for point in curve.adaptive_points():
        point.uniform_tokens = uniform_tokens_at(point.lpips, curve.uniform)
        if point.uniform_tokens is None or point.uniform_tokens <= 0:
            point.saving_percent = None
        else:
            point.saving_percent = 100.0 * (point.uniform_tokens - point.tokens) / point.uniform_tokens


def compute_curve(
    frame: Any,
    stats: RewardStats,
    w_q_values: Sequence[float],
    router_choice: Mapping[str, int] | None = None,
) -> Curve:
    """Compute the uniform, max-reward and (with ``router_choice``) router points of ``frame``'s clips."""
    if frame.empty:
        raise ValueError("no clips to put on the curve: the label store or the held-out selection is empty")
    uniform = uniform_points(frame)
    if not uniform:
        raise ValueError(
            "no uniform assignment is stored for every clip: the curve needs labels from an exhaustive "
            "or prefix search"
        )
    curve = Curve(uniform=uniform, max_reward=max_reward_points(frame, stats, w_q_values))
    curve.protocol = {"clips": int(frame["clip_key"].nunique()), "w_q": [float(w) for w in w_q_values],
                      "w_l": "2 - w_q", "stats": stats.to_dict()}
    if router_choice is not None:
        curve.router, missing = router_point(frame, router_choice)
        curve.protocol["router_clips_left_out"] = missing
    add_savings(curve)
    return curve


def format_table(curve: Curve) -> str:
    """Return the points as an aligned text table, savings against uniform at equal LPIPS included."""
    lines = [f"{'point':<22} {'clips':>5} {'tokens':>9} {'LPIPS':>8} {'PSNR':>7}  saving at equal LPIPS"]
    for point in curve.uniform + curve.adaptive_points():
        if point.kind == "uniform":
            saving = "-"
        elif point.saving_percent is None:
            saving = OUTSIDE_UNIFORM_RANGE
        else:
            saving = f"{point.saving_percent:+.1f}% (uniform needs {point.uniform_tokens:.1f} tokens)"
        lines.append(
            f"{point.label:<22} {point.clips:>5} {point.tokens:>9.1f} {point.lpips:>8.4f} {point.psnr:>7.2f}  {saving}"
        )
    left_out = curve.protocol.get("router_clips_left_out")
    if left_out is not None:
        unread = curve.protocol.get("router_clips_unread", 0)
        lines.append(
            f"router: {left_out} of {curve.protocol['clips']} clips left out ({left_out - unread} with a "
            f"predicted assignment the store did not evaluate, {unread} not readable)"
        )
    return "\n".join(lines)


def plot_curve(curve: Curve, path: str | Path) -> Path:
    """Draw tokens against LPIPS (left) and PSNR (right) for every point and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for axis, metric, name in ((axes[0], "lpips", "LPIPS (lower is better)"), (axes[1], "psnr", "PSNR dB")):
        uniform = sorted(curve.uniform, key=lambda point: point.tokens)
        axis.plot([p.tokens for p in uniform], [getattr(p, metric) for p in uniform], "o-", label="uniform")
        adaptive = sorted(curve.max_reward, key=lambda point: point.tokens)
        axis.plot([p.tokens for p in adaptive], [getattr(p, metric) for p in adaptive], "s--", label="max reward (w_q sweep)")
        if curve.router is not None:
            axis.plot([curve.router.tokens], [getattr(curve.router, metric)], "r*", markersize=12, label="router")
        axis.set_xlabel("mean tokens per clip")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"quality-cost curve over {curve.protocol.get('clips', '?')} clips")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


# ----- reading a label store ------------------------------------------------------------------


def select_clips(frame: Any, held_out_fraction: float | None, split_seed: int = 0) -> Any:
    """Return the rows of every clip, or with ``held_out_fraction`` only those of held-out files.

    The split hashes each file's path below the video folder exactly as router training does, so
    the same fraction and seed select the files that training left out.
    """
    if held_out_fraction is None:
        return frame
    from evatok.video.datasets import split_by_file

    videos = sorted({str(key).rsplit("#", 1)[0] for key in frame["clip_key"]})
    root = Path("/")
    _, held_out = split_by_file([root / name for name in videos], held_out_fraction, seed=split_seed, root=root)
    held_out_names = {path.relative_to(root).as_posix() for path in held_out}
    mask = np.array([str(key).rsplit("#", 1)[0] in held_out_names for key in frame["clip_key"]], dtype=bool)
    return frame[mask].reset_index(drop=True)


def router_choices(
    router: Any, store: Any, keys: Sequence[str], videos: str | Path | None = None, batch_size: int = 16
) -> dict[str, int]:
    """Return the router's predicted class for every clip of ``keys`` that can be read.

    Clips are cut from the store's video folder (or ``videos``) with the store's sampling at the
    router's size, as in router training.
    """
    from evatok.router_eval import rank_clips
    from evatok.training.router import check_compatible, labeled_clips

    meta = store.meta()
    check_compatible(router.config, meta, store.root)
    root = Path(videos or meta["videos"])
    files = sorted({root / key.rsplit("#", 1)[0] for key in keys})
    readable = [path for path in files if path.is_file()]
    if len(readable) < len(files):
        logger.warning("%d of %d videos of the selected clips are missing under %s", len(files) - len(readable), len(files), root)
    if not readable:
        return {}
    # The target class is unused here; labeled_clips only needs to know which clips to keep.
    dataset = labeled_clips(store, router.config, {key: 0 for key in keys}, readable, root)
    rankings = rank_clips(router, dataset, dataset.keys, batch_size=batch_size, k=1)
    return {key: int(ranking[0]) for key, ranking in rankings.items()}


def curve_from_store(
    labels: str | Path,
    w_q_values: Sequence[float],
    *,
    router: Any = None,
    held_out_fraction: float | None = None,
    split_seed: int = 0,
    videos: str | Path | None = None,
    batch_size: int = 16,
) -> Curve:
    """Compute the curve of a label folder's clips (all, or the held-out files), optionally with a router."""
    from evatok.search.store import LabelStore

    store = LabelStore(labels)
    stats = store.load_stats()
    if stats is None:
        raise FileNotFoundError(f"{store.stats_path} not found: the reward statistics are missing")
    frame = select_clips(store.read(), held_out_fraction, split_seed)
    if frame.empty:
        raise ValueError(
            f"no clips of {labels} are in held-out files at held-out fraction {held_out_fraction} and "
            f"split seed {split_seed}: raise the fraction or use every clip"
        )
    keys = sorted(set(frame["clip_key"]))
    choice = None
    if router is not None:
        choice = router_choices(router, store, keys, videos=videos, batch_size=batch_size)
    curve = compute_curve(frame, stats, w_q_values, choice)
    curve.protocol.update({
        "labels": str(Path(labels).resolve()),
        "selection": "all clips" if held_out_fraction is None else "held-out files",
        "held_out_fraction": held_out_fraction,
        "split_seed": split_seed if held_out_fraction is not None else None,
        "metrics": "means over clips of the stored clip-mean LPIPS and PSNR; tokens are totals per clip",
    })
    if router is not None:
        curve.protocol["router_clips_unread"] = len(keys) - len(choice or {})
    return curve
