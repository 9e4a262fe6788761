"""Frechet Video Distance: I3D (Kinetics-400) features and the Frechet distance of two Gaussians.

The feature follows the standard FVD of Unterthiner et al. (2018), which loads DeepMind's
Kinetics-400 I3D from TF-Hub: 16-frame clips, every frame resized to 224x224 with bilinear
interpolation (no crop, aspect ratio not kept), values scaled to [-1, 1], and the 400 logits
averaged over time as the feature.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from evatok.metrics.inputs import MODEL_RANGE, ValueRange, check_range, rescale
from evatok.models.pretrained import load_network

logger = logging.getLogger(__name__)

FVD_FRAMES = 16
I3D_SIZE = 224
FEATURE_DIM = 400
FEATURE_NAME = "i3d-k400 logits averaged over time"
RESIZE_RULE = "bilinear to 224x224 per frame, no crop, align_corners=False"

# sqrtm of a product of covariance matrices can come back complex from rounding alone. Imaginary
# parts up to this fraction of the largest real entry are dropped; larger ones raise ValueError.
IMAGINARY_TOLERANCE = 1e-3
# Added to both covariance diagonals when sqrtm fails on (near-)singular matrices.
SQRTM_EPS = 1e-6


class I3DFeatures:
    """Compute FVD features (B, 400) of 16-frame clips with the frozen Kinetics-400 I3D."""

    def __init__(
        self,
        weights_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        clips_per_batch: int = 4,
        download: bool = False,
    ) -> None:
        self.network = load_network("i3d-k400", weights_path, download=download).to(device)
        self.device = torch.device(device)
        self.clips_per_batch = clips_per_batch

    @property
    def weights_metadata(self) -> dict[str, str]:
        """Return the provenance of the loaded weights (source and hashes)."""
        return dict(self.network.weights_metadata)

    def preprocess(self, video: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
        """Return video (B, 3, T, H, W) in `value_range` as (B, 3, T, 224, 224) float in [-1, 1]."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"FVD expects RGB video (B, 3, T, H, W); got shape {tuple(video.shape)}"
            )
        check_range(video, value_range, "video")
        batch, channels, time, height, width = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(batch * time, channels, height, width)
        frames = rescale(frames, value_range, MODEL_RANGE)
        if (height, width) != (I3D_SIZE, I3D_SIZE):
            frames = F.interpolate(
                frames, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False
            )
        frames = frames.reshape(batch, time, channels, I3D_SIZE, I3D_SIZE).permute(0, 2, 1, 3, 4)
        return frames.contiguous()

    @torch.no_grad()
    def __call__(self, video: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
        """Return float64 features (B, 400) of 16-frame clips (B, 3, 16, H, W) in `value_range`."""
        if video.ndim != 5 or video.shape[2] != FVD_FRAMES:
            raise ValueError(
                f"FVD clips must have {FVD_FRAMES} frames (B, 3, {FVD_FRAMES}, H, W); got shape "
                f"{tuple(video.shape)}"
            )
        features = []
        for start in range(0, video.shape[0], self.clips_per_batch):
            chunk = video[start : start + self.clips_per_batch].to(self.device)
            features.append(
                self.network(self.preprocess(chunk, value_range)).to(torch.float64).cpu()
            )
        return torch.cat(features)


@dataclass
class FeatureStats:
    """Mean and covariance (float64) of a set of features, with the sample count."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Estimate the Gaussian of features (N, D); warns when N is below D (singular covariance)."""
        array = np.asarray(
            features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64
        )
        if array.ndim != 2 or array.shape[0] < 2:
            raise ValueError(f"need a feature matrix (N, D) with N >= 2; got shape {array.shape}")
        count, dim = array.shape
        if count < dim:
            message = (
                f"only {count} samples for {dim}-dimensional features: the covariance is singular "
                "and the Frechet distance is biased; use at least as many clips as dimensions"
            )
            warnings.warn(message, UserWarning, stacklevel=2)
        return cls(array.mean(axis=0), np.cov(array, rowvar=False), count)

    def save(self, path: str | Path, protocol: Mapping[str, object]) -> None:
        """Write the statistics and their protocol to an .npz file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(
                handle,
                mean=self.mean,
                covariance=self.covariance,
                count=np.int64(self.count),
                protocol=np.array(json.dumps(dict(protocol), sort_keys=True)),
            )

    @classmethod
    def load(cls, path: str | Path) -> tuple[FeatureStats, dict[str, object]]:
        """Read statistics written by `save`; returns them with their protocol."""
        with np.load(Path(path), allow_pickle=False) as data:
            stats = cls(data["mean"], data["covariance"], int(data["count"]))
            protocol = json.loads(str(data["protocol"]))
        return stats, protocol


def frechet_distance(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Return |mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)) in float64.

    A complex square root is accepted when its imaginary parts are within IMAGINARY_TOLERANCE of
    its largest real entry. Otherwise SQRTM_EPS is added to both diagonals and sqrtm is retried
    once. ValueError is raised when that fails too.
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = (
        np.atleast_2d(np.asarray(cov_a, np.float64)),
        np.atleast_2d(np.asarray(cov_b, np.float64)),
    )
    if (
        mean_a.shape != mean_b.shape
        or cov_a.shape != cov_b.shape
        or cov_a.shape != (mean_a.size,) * 2
    ):
        raise ValueError(
            f"mismatched Gaussian shapes: means {mean_a.shape} and {mean_b.shape}, covariances "
            f"{cov_a.shape} and {cov_b.shape}"
        )
    diff = mean_a - mean_b

    covmean = None
    for offset in (0.0, SQRTM_EPS):
        identity = np.eye(cov_a.shape[0]) * offset
        candidate = linalg.sqrtm((cov_a + identity) @ (cov_b + identity))
        if not np.isfinite(candidate).all():
            continue
        if np.iscomplexobj(candidate):
            scale = max(1.0, float(np.abs(candidate.real).max()))
            if float(np.abs(candidate.imag).max()) > IMAGINARY_TOLERANCE * scale:
                continue
            candidate = candidate.real
        covmean = candidate
        break
    if covmean is None:
        raise ValueError(
            "sqrtm of the covariance product is not finite or has large imaginary parts; the "
            "covariances are ill-conditioned (too few samples?)"
        )
    # Not clamped: rounding can leave identical Gaussians a tiny negative distance.
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


def make_protocol(
    split: str,
    clips: int,
    weights_metadata: Mapping[str, str],
    frames: int = FVD_FRAMES,
    stride: int | None = None,
    fps: float | None = None,
) -> dict[str, object]:
    """Return the protocol written beside every FVD number."""
    return {
        "split": split,
        "clips": int(clips),
        "frames": int(frames),
        "stride": stride,
        "fps": fps,
        "resize": RESIZE_RULE,
        "feature": FEATURE_NAME,
        "weights": weights_metadata.get("network", "i3d-k400"),
        "weights_sha256": weights_metadata.get("content_sha256", "unknown"),
        "weights_source": weights_metadata.get("source", "unknown"),
    }


def load_or_compute_stats(
    path: str | Path,
    protocol: Mapping[str, object],
    compute: Callable[[], torch.Tensor | np.ndarray],
) -> FeatureStats:
    """Return cached statistics from `path`, or compute features with `compute()` and cache them.

    The cache is only reused when its protocol equals `protocol`, ignoring `weights_source`
    (equal weights hash equally whatever their source); otherwise ValueError is raised.
    """
    path = Path(path)
    if path.is_file():
        stats, cached = FeatureStats.load(path)
        expected = {
            k: v for k, v in json.loads(json.dumps(dict(protocol))).items() if k != "weights_source"
        }
        found = {k: v for k, v in cached.items() if k != "weights_source"}
        if found != expected:
            raise ValueError(
                f"cached FVD statistics {path} were computed with protocol {found}, not {expected}; "
                "delete the file or choose another path"
            )
        logger.info("reusing real-set FVD statistics from %s (%d clips)", path, stats.count)
        return stats
    stats = FeatureStats.from_features(compute())
    stats.save(path, protocol)
    logger.info("cached real-set FVD statistics of %d clips in %s", stats.count, path)
    return stats


@dataclass
class FVDResult:
    """An FVD value with the protocol that produced it."""

    value: float
    protocol: dict[str, object]

    def to_dict(self) -> dict[str, object]:
        """Return {"fvd": value, "protocol": {...}} for JSON output."""
        return {"fvd": self.value, "protocol": self.protocol}


def fvd(real: FeatureStats, generated: FeatureStats, protocol: Mapping[str, object]) -> FVDResult:
    """Return the FVD between real and generated (or reconstructed) feature statistics."""
    value = frechet_distance(real.mean, real.covariance, generated.mean, generated.covariance)
    full = {**dict(protocol), "generated_clips": generated.count, "real_clips": real.count}
    return FVDResult(value, full)
