"""PSNR and SSIM per frame, computed in float64."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from evatok.metrics.inputs import ValueRange, check_pair, check_range, video_frames

# PSNR of identical frames is infinite; it is reported as this cap so averages stay finite.
# Any frame pair whose PSNR exceeds the cap is also reported as the cap.
PSNR_MAX_DB = 100.0

# SSIM constants of Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, K1 0.01, K2 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(x: torch.Tensor, y: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """Return the PSNR in dB of each frame pair, capped at PSNR_MAX_DB, in float64.

    Inputs are videos (B, C, T, H, W) or frames (N, C, H, W) in `value_range`; the peak signal is
    the width of that range. The result has shape (B, T) or (N,).
    """
    check_pair(x, y)
    check_range(x, value_range, "first input")
    check_range(y, value_range, "second input")
    fx, shape = video_frames(x)
    fy, _ = video_frames(y)
    peak = float(value_range[1]) - float(value_range[0])
    mse = ((fx.to(torch.float64) - fy.to(torch.float64)) ** 2).mean(dim=(1, 2, 3))
    floor = peak * peak * 10.0 ** (-PSNR_MAX_DB / 10.0)
    values = 10.0 * torch.log10(peak * peak / mse.clamp_min(floor))
    return values.reshape(shape)


def _gaussian_window(channels: int) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    kernel_1d = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    kernel_2d = torch.outer(kernel_1d, kernel_1d)
    return kernel_2d.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """Return the SSIM of each frame pair in float64, averaged over channels.

    Uses the Gaussian-weighted statistics of Wang et al. over the valid region (no padding), with
    the data range equal to the width of `value_range`. Frames must be at least 11x11.
    Result shape: (B, T) for videos, (N,) for frames.
    """
    check_pair(x, y)
    check_range(x, value_range, "first input")
    check_range(y, value_range, "second input")
    fx, shape = video_frames(x)
    fy, _ = video_frames(y)
    if fx.shape[-1] < SSIM_WINDOW or fx.shape[-2] < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; got {tuple(fx.shape[-2:])}"
        )
    fx = fx.to(torch.float64)
    fy = fy.to(torch.float64)
    channels = fx.shape[1]
    window = _gaussian_window(channels).to(fx.device)
    data_range = float(value_range[1]) - float(value_range[0])
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, groups=channels)

    mu_x, mu_y = blur(fx), blur(fy)
    var_x = blur(fx * fx) - mu_x**2
    var_y = blur(fy * fy) - mu_y**2
    cov_xy = blur(fx * fy) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(1, 2, 3)).reshape(shape)


def mean_over_frames(per_frame: torch.Tensor) -> float:
    """Return the mean of per-frame values as a Python float (NaN-free inputs only)."""
    value = float(per_frame.to(torch.float64).mean())
    if math.isnan(value):
        raise ValueError("per-frame metric values contain NaN")
    return value


__all__ = ["PSNR_MAX_DB", "mean_over_frames", "psnr", "ssim"]
