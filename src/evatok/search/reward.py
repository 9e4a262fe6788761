"""The proxy reward of an assignment and the statistics that standardise it.

R(a) = w_q * Q(a) - w_l * L(a), with Q(a) = -(LPIPS(a) - mu_lpips) / sigma_lpips and
L(a) = (tokens(a) - mu_len) / sigma_len, w_l = 2 - w_q unless given (EVATok, Xiong et al.,
CVPR 2026, which uses w_q = 1.2). The best assignment of a clip maximises R.

Choice where the method is silent: mu_lpips and sigma_lpips are the mean and the sample standard
deviation of the proxy's LPIPS over random (clip, assignment) pairs. mu_len and sigma_len are the
exact mean and standard deviation of the token count under uniformly random assignments, which a
random sample would only estimate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from evatok.assignment import AssignmentSpace

DEFAULT_W_Q = 1.2


@dataclass(frozen=True)
class RewardStats:
    """Means and standard deviations that standardise LPIPS and token counts."""

    lpips_mean: float
    lpips_std: float
    length_mean: float
    length_std: float
    num_pairs: int  # (clip, assignment) pairs behind the LPIPS statistics
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("lpips_std", "length_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"reward statistic {name}={value} must be positive and finite: measure the "
                    "statistics over more (clip, assignment) pairs"
                )

    def to_dict(self) -> dict[str, float | int]:
        """Return the statistics as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RewardStats:
        """Build statistics from a dict written by ``to_dict``."""
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write the statistics as JSON through a temporary file and an atomic rename."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> RewardStats:
        """Read statistics written by ``save``."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"cannot read reward statistics from {path}: {error}") from error


@dataclass(frozen=True)
class Reward:
    """The reward R = w_q * Q - w_l * L for given statistics and weights."""

    stats: RewardStats
    w_q: float = DEFAULT_W_Q
    w_l: float | None = None  # None means 2 - w_q

    @property
    def length_weight(self) -> float:
        """Weight of the length term, ``2 - w_q`` unless set."""
        return 2.0 - self.w_q if self.w_l is None else float(self.w_l)

    def quality(self, lpips: np.ndarray | float) -> np.ndarray:
        """Return Q, the negated standardised LPIPS."""
        return -(np.asarray(lpips, dtype=np.float64) - self.stats.lpips_mean) / self.stats.lpips_std

    def length(self, tokens: np.ndarray | float) -> np.ndarray:
        """Return L, the standardised token count."""
        return (np.asarray(tokens, dtype=np.float64) - self.stats.length_mean) / self.stats.length_std

    def __call__(self, lpips: np.ndarray | float, tokens: np.ndarray | float) -> np.ndarray:
        """Return R for clip-mean LPIPS values and total token counts (broadcast together)."""
        return self.w_q * self.quality(lpips) - self.length_weight * self.length(tokens)

    def prefix_score(self, lpips_sum: np.ndarray, frames: int, tokens: np.ndarray) -> np.ndarray:
        """Return a score that ranks prefixes of one depth, up to a constant.

        ``lpips_sum`` is the sum of per-frame LPIPS over the prefix's real frames. With ``frames``
        the clip's real frames, ``lpips_sum / frames`` is the prefix's exact share of the clip-mean
        LPIPS, and since both terms of R are sums over blocks, the shares of all blocks add up to
        R minus a constant. With ``frames`` the prefix's own frames, the score projects the
        prefix's mean LPIPS onto the whole clip.
        """
        lpips_share = np.asarray(lpips_sum, dtype=np.float64) / frames
        return (
            -self.w_q * lpips_share / self.stats.lpips_std
            - self.length_weight * np.asarray(tokens, dtype=np.float64) / self.stats.length_std
        )


def reward_percentile(rewards: Sequence[float] | np.ndarray, value: float) -> float:
    """Return where ``value`` lies between the worst (0) and best (100) of ``rewards``, in percent."""
    rewards = np.asarray(rewards, dtype=np.float64)
    low, high = float(rewards.min()), float(rewards.max())
    if high == low:
        return 100.0
    return 100.0 * (float(value) - low) / (high - low)


def stats_from_samples(lpips: Sequence[float], space: AssignmentSpace, seed: int = 0) -> RewardStats:
    """Return reward statistics from LPIPS values of random pairs and the exact length moments."""
    values = np.asarray(lpips, dtype=np.float64)
    if values.size < 2:
        raise ValueError(
            f"got {values.size} LPIPS samples: the statistics need at least 2 (clip, assignment) pairs"
        )
    return RewardStats(
        lpips_mean=float(values.mean()),
        lpips_std=float(values.std(ddof=1)),
        length_mean=space.mean_length,
        length_std=space.std_length,
        num_pairs=int(values.size),
        seed=seed,
    )
