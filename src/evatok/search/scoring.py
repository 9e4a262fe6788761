"""Per-frame LPIPS and squared error of reconstructed blocks against one reference clip.

LPIPS splits into feature extraction and a distance between channel-normalised features. The
reference frames' features are extracted once per clip here, so scoring a reconstruction runs the
LPIPS network on the reconstructed frames only. The distance follows LPIPS v0.1 as computed by
``evatok.models.lpips_net.LPIPS``: per tapped layer the squared difference of unit-normalised
features, weighted by a 1x1 head and averaged over space, summed over layers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from evatok.models.lpips_net import LPIPS, NORM_EPS


def unit_normalize(features: Tensor) -> Tensor:
    """Divide features (N, C, h, w) by their l2 norm over channels, as LPIPS does."""
    norm = torch.sqrt(torch.sum(features * features, dim=1, keepdim=True))
    return features / (norm + NORM_EPS)


class ClipScorer:
    """Score reconstructed blocks of one clip: sums of per-frame LPIPS and MSE over real frames.

    ``reference`` is the clip (C, T, H, W) in [-1, 1]. Frames at positions >= ``num_valid`` are
    padding and count for nothing. Reconstructions are clamped to [-1, 1] before scoring. MSE is
    measured on the [0, 1] scale, so a clip's PSNR is ``-10 log10(MSE)``.
    """

    def __init__(
        self,
        network: LPIPS,
        reference: Tensor,
        num_valid: int,
        frames_per_block: int,
        frames_per_batch: int = 256,
    ) -> None:
        if reference.ndim != 4 or reference.shape[0] != 3:
            raise ValueError(
                f"reference clip has shape {tuple(reference.shape)}, expected (3, frames, height, width)"
            )
        frames = reference.shape[1]
        if frames % frames_per_block:
            raise ValueError(
                f"the clip has {frames} frames, not a multiple of {frames_per_block} frames per block"
            )
        if not 1 <= num_valid <= frames:
            raise ValueError(f"num_valid is {num_valid}, expected 1 to {frames} real frames")
        self.network = network
        self.frames_per_block = frames_per_block
        self.frames_per_batch = frames_per_batch
        self.num_valid = int(num_valid)
        self.reference = reference.float()
        with torch.no_grad():
            frames_first = self.reference.transpose(0, 1).contiguous()  # (T, C, H, W)
            self.reference_features = [
                unit_normalize(features) for features in self._features(frames_first)
            ]

    @property
    def num_blocks(self) -> int:
        """Number of temporal blocks of the clip."""
        return self.reference.shape[1] // self.frames_per_block

    def _features(self, frames: Tensor) -> list[Tensor]:
        """Return the tapped LPIPS features of frames (N, C, H, W), in chunks of frames."""
        chunks = [
            self.network.tapped_features(frames[start : start + self.frames_per_batch])
            for start in range(0, frames.shape[0], self.frames_per_batch)
        ]
        return [torch.cat(layer) for layer in zip(*chunks, strict=True)]

    def valid_frames(self, block: int) -> int:
        """Return how many frames of ``block`` are real (not padding)."""
        start = block * self.frames_per_block
        return max(0, min(self.frames_per_block, self.num_valid - start))

    @torch.no_grad()
    def score_block(self, block: int, reconstruction: Tensor) -> tuple[Tensor, Tensor]:
        """Return float64 CPU sums over the block's real frames of LPIPS and of MSE, each (batch,).

        ``reconstruction`` is (batch, C, frames_per_block, H, W): block ``block`` of ``batch``
        reconstructions of this clip.
        """
        batch = reconstruction.shape[0]
        valid = self.valid_frames(block)
        if valid == 0:
            zeros = torch.zeros(batch, dtype=torch.float64)
            return zeros, zeros.clone()
        start = block * self.frames_per_block
        recon = reconstruction[:, :, :valid].float().clamp(-1.0, 1.0)
        target = self.reference[:, start : start + valid]

        error = ((recon - target[None]) / 2.0).to(torch.float64) ** 2
        mse_sum = error.mean(dim=(1, 3, 4)).sum(dim=1)

        frames = recon.permute(0, 2, 1, 3, 4).reshape(batch * valid, *recon.shape[1:2], *recon.shape[3:])
        lpips = torch.zeros(batch * valid, dtype=recon.dtype, device=recon.device)
        for head, features, reference in zip(
            self.network.heads, self._features(frames), self.reference_features, strict=True
        ):
            ref = reference[start : start + valid].repeat(batch, 1, 1, 1)
            diff = (unit_normalize(features) - ref) ** 2
            lpips = lpips + head(diff).mean(dim=(1, 2, 3))
        lpips_sum = lpips.to(torch.float64).reshape(batch, valid).sum(dim=1)
        return lpips_sum.cpu(), mse_sum.cpu()
