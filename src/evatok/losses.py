"""Tokenizer training losses: L1, LPIPS perceptual, adversarial (with adaptive weight and LeCam).

The VQ codebook, commitment and entropy terms are computed by the quantizer
(`evatok.models.quantizer`); the recipes weight them with the `loss:` config section.
Videos are float (batch, channels, frames, height, width) in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def masked_l1(reconstruction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return the mean absolute error over real frames (`frame_mask` (batch, frames), True = real)."""
    error = (reconstruction.float() - target.float()).abs()
    if frame_mask is None:
        return error.mean()
    weights = frame_mask.to(error.dtype)[:, None, :, None, None].expand_as(error)
    return (error * weights).sum() / weights.sum().clamp_min(1.0)


def select_frames(num_frames: int, count: int | None) -> list[int]:
    """Return `count` evenly spaced frame indices (all frames when `count` is None or too large)."""
    if count is None or count >= num_frames:
        return list(range(num_frames))
    if count < 1:
        raise ValueError(f"invalid perceptual frame count {count}: use None or at least 1")
    return torch.linspace(0, num_frames - 1, count).round().long().unique().tolist()


class PerceptualLoss(nn.Module):
    """LPIPS between videos, per frame, averaged over the chosen frames and the batch.

    `frames` limits LPIPS to that many evenly spaced frames per clip, because the network costs
    more than a whole tiny training step on a CPU. The network is frozen; gradients reach only the
    reconstruction.
    """

    def __init__(self, network: nn.Module, frames: int | None = None) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.frames = frames

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Keep the frozen network in eval mode whatever mode the caller requests."""
        super().train(mode)
        self.network.eval()
        return self

    def forward(
        self, reconstruction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the mean LPIPS over the selected real frames."""
        indices = select_frames(reconstruction.shape[2], self.frames)
        fake = reconstruction[:, :, indices].transpose(1, 2).flatten(0, 1)
        real = target[:, :, indices].transpose(1, 2).flatten(0, 1)
        distances = self.network(fake, real.to(fake.dtype)).float().view(reconstruction.shape[0], len(indices))
        if frame_mask is None:
            return distances.mean()
        weights = frame_mask[:, indices].float()
        return (distances * weights).sum() / weights.sum().clamp_min(1.0)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Return the discriminator loss: "hinge" or "non_saturating" (softplus, the logistic GAN loss)."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    if kind == "non_saturating":
        return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())
    raise ValueError(f"invalid adversarial loss {kind!r}: use hinge or non_saturating")


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Return the generator's adversarial loss for the discriminator's logits on reconstructions."""
    fake_logits = fake_logits.float()
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"invalid adversarial loss {kind!r}: use hinge or non_saturating")


def frozen_forward(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """Run `module` with detached parameters, so gradients reach the inputs but not the module.

    Used for the generator's adversarial term: the discriminator's parameters get no gradient and
    its DDP wrapper (if any) is not involved.
    """
    parameters = {name: param.detach() for name, param in module.named_parameters()}
    buffers = dict(module.named_buffers())
    return functional_call(module, {**parameters, **buffers}, inputs)


def adaptive_adversarial_weight(
    reconstruction_loss: torch.Tensor,
    adversarial_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """Return |grad of the reconstruction loss| / |grad of the adversarial loss| at `last_layer`.

    This balances the two terms at the decoder's output layer (the VQGAN adaptive weight); the
    result is detached and clamped to [0, max_weight].
    """
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def lecam_regularization(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_ema: torch.Tensor, fake_ema: torch.Tensor
) -> torch.Tensor:
    """Return the LeCam term: squared hinge of real logits below the fake EMA and vice versa."""
    real_term = F.relu(real_logits.float() - fake_ema).pow(2).mean()
    fake_term = F.relu(real_ema - fake_logits.float()).pow(2).mean()
    return real_term + fake_term


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean negative cosine similarity between `projected` and `target`, position by position.

    Both are (B, N, D) with the feature axis last; the result lies in [-1, 1] and is -1 when every
    position points the same way. `target` comes from a frozen encoder, so it is detached.
    """
    if projected.shape != target.shape:
        raise ValueError(
            f"alignment_loss needs equal shapes, got projected {tuple(projected.shape)} and target "
            f"{tuple(target.shape)}; resample the target features to the decoder grid first"
        )
    similarity = F.cosine_similarity(projected.float(), target.detach().float(), dim=-1)
    return -similarity.mean()
