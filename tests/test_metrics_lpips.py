"""LPIPS: agreement with the `lpips` package on real frames, and its basic properties."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evatok.metrics import MODEL_RANGE, UINT8_RANGE, LPIPSMetric

REFERENCE = Path(__file__).parent / "reference" / "lpips_values.json"
# Agreement with the reference, which ran the `lpips` package on torch 2.14.1 (float32 kernels may
# differ between torch versions in the last bits).
TOLERANCE = 1e-5


def decode_square(path: Path, index: int, side: int = 224) -> np.ndarray:
    """Decode frame `index` as uint8 RGB and centre-crop a square of `side` (or the shorter side)."""
    with av.open(str(path)) as container:
        for position, frame in enumerate(container.decode(video=0)):
            if position == index:
                image = frame.to_ndarray(format="rgb24")
                break
        else:
            raise ValueError(f"{path} has no frame {index}")
    height, width = image.shape[:2]
    side = min(side, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(image[top : top + side, left : left + side])


def to_batch(image: np.ndarray) -> torch.Tensor:
    """Return uint8 (1, 3, H, W)."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur float images (N, 3, H, W) with a separable Gaussian, reflect padding."""
    radius = int(3 * sigma + 0.5)
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1)
    return F.conv2d(F.conv2d(padded, horizontal, groups=3), vertical, groups=3)


@pytest.fixture(scope="module")
def alex() -> LPIPSMetric:
    return LPIPSMetric("alex")


@pytest.fixture(scope="module")
def vgg() -> LPIPSMetric:
    return LPIPSMetric("vgg")


@pytest.fixture(scope="module")
def pancake_frame(clips_dir) -> torch.Tensor:
    """A real frame as float (1, 3, 224, 224) in [-1, 1]."""
    image = decode_square(clips_dir / "decord__flipping_a_pancake.mkv", 30)
    return to_batch(image).float() / 127.5 - 1.0


@pytest.mark.slow
def test_lpips_matches_lpips_package(clips_dir, alex, vgg):
    reference = json.loads(REFERENCE.read_text())
    assert len(reference["pairs"]) >= 4
    for pair in reference["pairs"]:
        image_a = decode_square(clips_dir / pair["a"][0], pair["a"][1], reference["crop"])
        image_b = decode_square(clips_dir / pair["b"][0], pair["b"][1], reference["crop"])
        # Decoding must be identical before LPIPS values can be compared.
        assert hashlib.sha256(image_a.tobytes()).hexdigest() == pair["a_sha256"], pair["name"]
        assert hashlib.sha256(image_b.tobytes()).hexdigest() == pair["b_sha256"], pair["name"]
        for backbone, metric in (("alex", alex), ("vgg", vgg)):
            value = float(metric(to_batch(image_a), to_batch(image_b), UINT8_RANGE)[0])
            assert value == pytest.approx(pair[backbone], abs=TOLERANCE), (pair["name"], backbone)


def test_lpips_is_zero_on_identical_frames(alex, pancake_frame):
    assert float(alex(pancake_frame, pancake_frame, MODEL_RANGE)[0]) == 0.0


def test_lpips_is_symmetric(alex, vgg, pancake_frame):
    blurred = gaussian_blur(pancake_frame, 2.0).clamp(-1, 1)
    for metric in (alex, vgg):
        forward = float(metric(pancake_frame, blurred, MODEL_RANGE)[0])
        backward = float(metric(blurred, pancake_frame, MODEL_RANGE)[0])
        assert forward > 0.0
        assert forward == pytest.approx(backward, abs=1e-7)


def test_lpips_grows_with_blur(alex, pancake_frame):
    sigmas = [0.5, 1.0, 2.0, 4.0]
    blurred = torch.cat([gaussian_blur(pancake_frame, s) for s in sigmas]).clamp(-1, 1)
    values = alex(pancake_frame.expand(len(sigmas), -1, -1, -1), blurred, MODEL_RANGE).tolist()
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values


def test_lpips_video_shape_is_per_frame(alex, pancake_frame):
    video = pancake_frame[:, :, None].expand(2, 3, 3, 224, 224)
    values = alex(video, video.flip(-1), MODEL_RANGE)
    assert values.shape == (2, 3)
    assert values.dtype == torch.float64
    assert torch.all(values > 0)


def test_lpips_checks_value_range(alex, pancake_frame):
    with pytest.raises(ValueError, match="outside the declared range"):
        alex(pancake_frame * 10, pancake_frame, MODEL_RANGE)
