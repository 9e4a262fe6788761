"""LPIPS between videos or frame batches: per frame, then averaged by the caller."""

from __future__ import annotations

from pathlib import Path

import torch

from evatok.metrics.inputs import (
    MODEL_RANGE,
    ValueRange,
    check_pair,
    check_range,
    rescale,
    video_frames,
)
from evatok.models.pretrained import load_network

BACKBONE_NETWORKS = {"alex": "lpips-alex", "vgg": "lpips-vgg"}


class LPIPSMetric:
    """LPIPS v0.1 distance per frame with the standard weights (AlexNet by default).

    The network is loaded once from the weights cache (see evatok.models.pretrained); a missing
    network raises MissingWeightsError with the fetch command.
    """

    def __init__(
        self,
        backbone: str = "alex",
        weights_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        frames_per_batch: int = 32,
        download: bool = False,
    ) -> None:
        if backbone not in BACKBONE_NETWORKS:
            raise ValueError(
                f"unknown LPIPS backbone {backbone!r}; expected one of {sorted(BACKBONE_NETWORKS)}"
            )
        self.network_name = BACKBONE_NETWORKS[backbone]
        self.network = load_network(self.network_name, weights_path, download=download).to(device)
        self.device = torch.device(device)
        self.frames_per_batch = frames_per_batch

    @property
    def weights_metadata(self) -> dict[str, str]:
        """Return the provenance of the loaded weights (source and hashes)."""
        return dict(self.network.weights_metadata)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
        """Return LPIPS per frame pair, shape (B, T) for videos or (N,) for frames, as float64."""
        check_pair(x, y)
        check_range(x, value_range, "first input")
        check_range(y, value_range, "second input")
        fx, shape = video_frames(x)
        fy, _ = video_frames(y)
        if fx.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB frames (3 channels); got {fx.shape[1]} channels")
        values = []
        for start in range(0, fx.shape[0], self.frames_per_batch):
            stop = start + self.frames_per_batch
            a = rescale(fx[start:stop].to(self.device), value_range, MODEL_RANGE)
            b = rescale(fy[start:stop].to(self.device), value_range, MODEL_RANGE)
            values.append(self.network(a, b).to(torch.float64).cpu())
        return torch.cat(values).reshape(shape)
