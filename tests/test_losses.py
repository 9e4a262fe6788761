"""Training losses and the transformer PatchGAN discriminator."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from evatok.losses import (
    PerceptualLoss,
    adaptive_adversarial_weight,
    discriminator_loss,
    frozen_forward,
    generator_adversarial_loss,
    lecam_regularization,
    masked_l1,
    select_frames,
)
from evatok.models.discriminators import TransformerPatchGAN


def real_video(path: Path, frames: int = 4, size: int = 64) -> torch.Tensor:
    """Decode the first frames of a real file into a (1, 3, T, size, size) tensor in [-1, 1]."""
    images = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            images.append(frame.to_ndarray(format="rgb24", width=size, height=size))
            if len(images) == frames:
                break
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(3, 0, 1, 2).unsqueeze(0)


def test_masked_l1_ignores_padded_frames() -> None:
    target = torch.zeros(2, 3, 4, 2, 2)
    reconstruction = torch.zeros(2, 3, 4, 2, 2)
    reconstruction[:, :, 3] = 5.0  # only the last frame is wrong
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # Sample 0 contributes 3 clean frames, sample 1 has 3 clean frames and one off by 5.
    assert masked_l1(reconstruction, target, mask).item() == pytest.approx(5.0 / 7.0)
    assert masked_l1(reconstruction, target).item() == pytest.approx(5.0 / 4.0)


def test_select_frames_even_spacing() -> None:
    assert select_frames(16, None) == list(range(16))
    assert select_frames(16, 2) == [0, 15]
    assert select_frames(16, 4) == [0, 5, 10, 15]
    assert select_frames(4, 9) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="perceptual frame count 0"):
        select_frames(16, 0)


def test_adversarial_losses_exact_values() -> None:
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.5])
    # hinge: relu(1 - real) = [0, 0.5], relu(1 + fake) = [0, 1.5]
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 * (0.25 + 0.75))
    softplus = torch.nn.functional.softplus
    expected = 0.5 * (softplus(-real).mean() + softplus(fake).mean())
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(expected.item())
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(0.75)
    assert generator_adversarial_loss(fake, "non_saturating").item() == pytest.approx(softplus(-fake).mean().item())
    with pytest.raises(ValueError, match="wasserstein"):
        discriminator_loss(real, fake, "wasserstein")


def test_lecam_exact_value() -> None:
    real = torch.tensor([1.0, -1.0])
    fake = torch.tensor([0.0, 2.0])
    value = lecam_regularization(real, fake, real_ema=torch.tensor(0.5), fake_ema=torch.tensor(0.25))
    # relu(real - 0.25)^2 = [0.5625, 0], relu(0.5 - fake)^2 = [0.25, 0]
    assert value.item() == pytest.approx(0.5625 / 2 + 0.25 / 2)


def test_adaptive_weight_is_gradient_norm_ratio() -> None:
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    out = layer(x)
    reconstruction_loss = out.pow(2).mean()
    adversarial_loss = 3.0 * out.mean()
    grad_r = torch.autograd.grad(reconstruction_loss, layer.weight, retain_graph=True)[0]
    grad_a = torch.autograd.grad(adversarial_loss, layer.weight, retain_graph=True)[0]
    weight = adaptive_adversarial_weight(reconstruction_loss, adversarial_loss, layer.weight)
    assert weight.item() == pytest.approx((grad_r.norm() / (grad_a.norm() + 1e-4)).item(), rel=1e-6)
    assert not weight.requires_grad
    capped = adaptive_adversarial_weight(reconstruction_loss, 1e-9 * adversarial_loss, layer.weight, max_weight=7.0)
    assert capped.item() == 7.0


def test_frozen_forward_leaves_module_without_grad() -> None:
    disc = TransformerPatchGAN(4, 16, 16, patch_size=(4, 8, 8), model_width=16, depth=1, heads=2)
    fake = torch.randn(2, 3, 4, 16, 16, requires_grad=True)
    frozen_forward(disc, fake).sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())
    assert torch.allclose(frozen_forward(disc, fake), disc(fake))


def test_patchgan_logits_per_patch() -> None:
    disc = TransformerPatchGAN(16, 64, 64, patch_size=(4, 8, 8), model_width=32, depth=2, heads=4)
    logits = disc(torch.zeros(3, 3, 16, 64, 64))
    assert logits.shape == (3, 4, 8, 8)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        TransformerPatchGAN(16, 60, 64, patch_size=(4, 8, 8))
    with pytest.raises(ValueError, match="patch grid"):
        disc(torch.zeros(1, 3, 16, 32, 32))


def test_patchgan_lecam_ema_moves() -> None:
    disc = TransformerPatchGAN(4, 8, 8, patch_size=(4, 8, 8), model_width=8, depth=1, heads=2)
    disc.update_lecam_ema(torch.full((2,), 2.0), torch.full((2,), -4.0), decay=0.75)
    assert disc.lecam_real_ema.item() == pytest.approx(0.5)
    assert disc.lecam_fake_ema.item() == pytest.approx(-1.0)
    assert "lecam_real_ema" in disc.state_dict()


def test_perceptual_loss_on_real_frames(clips_dir: Path) -> None:
    from evatok.models.pretrained import load_network

    video = real_video(clips_dir / "decord__flipping_a_pancake.mkv", frames=4)
    perceptual = PerceptualLoss(load_network("lpips-alex"), frames=2)
    assert perceptual(video, video).item() == pytest.approx(0.0, abs=1e-6)

    blurred = nn.functional.avg_pool3d(video, (1, 4, 4)).repeat_interleave(4, -1).repeat_interleave(4, -2)
    blurred.requires_grad_(True)
    distance = perceptual(blurred, video)
    assert distance.item() > 0.05
    distance.backward()
    assert blurred.grad is not None
    # Only frames 0 and 3 are compared, so frames 1 and 2 get no gradient.
    assert blurred.grad[:, :, [1, 2]].abs().sum() == 0
    assert blurred.grad[:, :, [0, 3]].abs().sum() > 0
    assert all(p.grad is None for p in perceptual.parameters())

    mask = torch.tensor([[True, False, False, False]])
    masked = perceptual(blurred.detach(), video, mask)
    first_only = PerceptualLoss(perceptual.network, frames=None)(blurred.detach()[:, :, :1], video[:, :, :1])
    assert masked.item() == pytest.approx(first_only.item(), rel=1e-5)
