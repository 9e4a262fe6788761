"""Reconstruction and generation metrics: PSNR, SSIM, LPIPS, FVD and codebook usage.

Every metric takes a declared value range and raises ValueError when the data leaves it.
"""

from evatok.metrics.codebook import CodebookUsage
from evatok.metrics.fvd import (
    FeatureStats,
    FVDResult,
    I3DFeatures,
    frechet_distance,
    fvd,
    make_protocol,
)
from evatok.metrics.inputs import MODEL_RANGE, UINT8_RANGE, UNIT_RANGE, ValueRange, check_range
from evatok.metrics.lpips import LPIPSMetric
from evatok.metrics.psnr_ssim import PSNR_MAX_DB, mean_over_frames, psnr, ssim

__all__ = [
    "MODEL_RANGE",
    "PSNR_MAX_DB",
    "UINT8_RANGE",
    "UNIT_RANGE",
    "CodebookUsage",
    "FVDResult",
    "FeatureStats",
    "I3DFeatures",
    "LPIPSMetric",
    "ValueRange",
    "check_range",
    "frechet_distance",
    "fvd",
    "make_protocol",
    "mean_over_frames",
    "psnr",
    "ssim",
]
