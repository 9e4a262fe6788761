"""Value ranges and tensor layouts shared by every metric.

Each metric takes a declared value range, e.g. (-1, 1) for model tensors or (0, 255) for decoded
uint8 frames, checks the data against it and converts it to what the metric needs.
"""

from __future__ import annotations

import torch

ValueRange = tuple[float, float]

MODEL_RANGE: ValueRange = (-1.0, 1.0)
UNIT_RANGE: ValueRange = (0.0, 1.0)
UINT8_RANGE: ValueRange = (0.0, 255.0)


def check_range(x: torch.Tensor, value_range: ValueRange, name: str = "input") -> None:
    """Raise ValueError unless every value of `x` is finite and inside `value_range` (inclusive)."""
    low, high = float(value_range[0]), float(value_range[1])
    if not low < high:
        raise ValueError(
            f"invalid value range {value_range!r} for {name}: the low end must be below the high end"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    values = x.detach()
    if values.is_floating_point() and not torch.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    actual_low, actual_high = float(values.min()), float(values.max())
    if actual_low < low or actual_high > high:
        raise ValueError(
            f"{name} has values in [{actual_low:.4g}, {actual_high:.4g}], outside the declared range "
            f"[{low:g}, {high:g}]; declare the range the data is in, or clamp it first"
        )


def rescale(
    x: torch.Tensor, value_range: ValueRange, target: ValueRange, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Map `x` linearly from `value_range` to `target`, as `dtype`."""
    low, high = value_range
    target_low, target_high = target
    x = x.to(dtype)
    return (x - low) * ((target_high - target_low) / (high - low)) + target_low


def video_frames(x: torch.Tensor, name: str = "input") -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return frames (N, C, H, W) of a video batch (B, C, T, H, W) or a frame batch (N, C, H, W).

    The second value is the leading shape of the per-frame result: (B, T) or (N,).
    """
    if x.ndim == 5:
        batch, channels, time, height, width = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(batch * time, channels, height, width)
        return frames, (batch, time)
    if x.ndim == 4:
        return x, (x.shape[0],)
    raise ValueError(
        f"{name} must be a video batch (B, C, T, H, W) or frames (N, C, H, W); got shape {tuple(x.shape)}"
    )


def check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ValueError unless the two inputs of a full-reference metric have the same shape."""
    if x.shape != y.shape:
        raise ValueError(f"inputs differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")
