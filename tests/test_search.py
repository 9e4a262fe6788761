"""Stage 2 search: the reward, exactness of prefix and beam against exhaustive, the label store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evatok.assignment import AssignmentSpace
from evatok.metrics import MODEL_RANGE, LPIPSMetric
from evatok.models.tokenizer import Tokenizer
from evatok.presets import tokenizer_config
from evatok.search import (
    ClipLabels,
    ClipScorer,
    LabelStore,
    Reward,
    RewardStats,
    beam_search,
    exhaustive_search,
    expected_block_evaluations,
    prefix_search,
    reward_percentile,
    stats_from_samples,
)
from evatok.video.clips import ClipSpec, read_clip, to_model_input

# Real clips: a full 16-frame clip, and a 9-frame video padded to 16 frames, so that the last
# blocks hold 1 and 0 real frames.
FULL_CLIP = "clips/elastictok__flower.mp4"
SHORT_CLIP = "edge/short/openh264__Cisco_Men_whisper_640x320_CABAC_Bframe_9.264"
LPIPS_TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run these tests on one torch thread: the micro model's small ops slow down many times
    when two threads compete with other jobs for two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(tokenizer_config("micro")).eval()


@pytest.fixture(scope="module")
def lpips_metric() -> LPIPSMetric:
    return LPIPSMetric("alex")


@pytest.fixture(scope="module")
def clips(videos_dir: Path, micro: Tokenizer) -> list[tuple[torch.Tensor, int]]:
    config = micro.config
    spec = ClipSpec(config.frames, config.height, config.width)
    loaded = []
    for name in (FULL_CLIP, SHORT_CLIP):
        clip = read_clip(videos_dir / name, spec, 0)
        loaded.append((to_model_input(clip.frames), clip.num_valid))
    return loaded


def reward_for(space: AssignmentSpace) -> Reward:
    stats = RewardStats(0.4, 0.05, space.mean_length, space.std_length, num_pairs=2)
    return Reward(stats, w_q=1.2)


# ----- reward --------------------------------------------------------------------------------


def test_reward_formula_values() -> None:
    stats = RewardStats(lpips_mean=0.3, lpips_std=0.1, length_mean=800.0, length_std=400.0, num_pairs=10)
    reward = Reward(stats, w_q=1.2)
    assert reward.length_weight == pytest.approx(0.8)
    # Q = -(0.2 - 0.3) / 0.1 = 1, L = (1200 - 800) / 400 = 1, R = 1.2 * 1 - 0.8 * 1.
    assert float(reward(0.2, 1200)) == pytest.approx(0.4)
    assert float(Reward(stats, w_q=1.0, w_l=0.5)(0.2, 1200)) == pytest.approx(0.5)


def test_reward_prefix_shares_sum_to_reward() -> None:
    space = AssignmentSpace()
    reward = reward_for(space)
    # Two halves of a 16-frame clip: the shares differ from R by the same constant for all clips.
    first = reward.prefix_score(np.array([2.0]), 16, np.array([96]))
    second = reward.prefix_score(np.array([3.0]), 16, np.array([544]))
    constant = reward.w_q * reward.stats.lpips_mean / reward.stats.lpips_std + (
        reward.length_weight * reward.stats.length_mean / reward.stats.length_std
    )
    assert float((first + second + constant)[0]) == pytest.approx(float(reward(5.0 / 16, 640)))


def test_reward_percentile_bounds() -> None:
    assert reward_percentile([1.0, 2.0, 3.0], 3.0) == 100.0
    assert reward_percentile([1.0, 2.0, 3.0], 1.0) == 0.0
    assert reward_percentile([1.0, 2.0, 5.0], 2.0) == pytest.approx(25.0)
    assert reward_percentile([2.0, 2.0], 2.0) == 100.0


def test_stats_exact_length_moments() -> None:
    stats = stats_from_samples([0.2, 0.4], AssignmentSpace())
    assert stats.length_mean == pytest.approx(793.6)
    assert stats.length_std == pytest.approx(349.1, abs=0.05)
    assert stats.lpips_mean == pytest.approx(0.3)
    assert stats.lpips_std == pytest.approx(math.sqrt(0.02))
    with pytest.raises(ValueError, match="at least 2"):
        stats_from_samples([0.2], AssignmentSpace())


def test_stats_reject_zero_deviation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lpips_std"):
        RewardStats(0.3, 0.0, 800.0, 400.0, num_pairs=3)
    stats = RewardStats(0.3, 0.1, 800.0, 400.0, num_pairs=3, seed=7)
    stats.save(tmp_path / "stats.json")
    assert RewardStats.load(tmp_path / "stats.json") == stats


# ----- exactness -----------------------------------------------------------------------------


def test_prefix_equals_exhaustive_on_real_clips(micro: Tokenizer, lpips_metric: LPIPSMetric, clips) -> None:
    space = micro.space
    reward = reward_for(space)
    for video, num_valid in clips:
        scorer = ClipScorer(lpips_metric.network, video, num_valid, micro.config.patch_frames)
        exhaustive = exhaustive_search(micro, scorer, video, batch_size=8)
        prefix = prefix_search(micro, scorer, video, batch_size=4)

        assert exhaustive.indices.tolist() == list(range(space.size))
        assert prefix.indices.tolist() == list(range(space.size))
        assert np.abs(prefix.lpips - exhaustive.lpips).max() < LPIPS_TOLERANCE
        assert np.abs(prefix.mse - exhaustive.mse).max() < 1e-7
        assert np.abs(prefix.psnr - exhaustive.psnr).max() < 1e-4
        assert prefix.best_assignment(reward) == exhaustive.best_assignment(reward)
        # Random weights still give distinct values. The short clip's last block holds no real
        # frame, so its count changes nothing there (81 assignments, 27 distinct values).
        assert np.unique(np.round(exhaustive.lpips, 9)).size > space.size // 4
        assert exhaustive.block_evaluations == expected_block_evaluations("exhaustive", space) == 324
        assert prefix.block_evaluations == expected_block_evaluations("prefix", space) == 3 + 9 + 27 + 81


def test_exhaustive_matches_lpips_metric(micro: Tokenizer, lpips_metric: LPIPSMetric, clips) -> None:
    space = micro.space
    for video, num_valid in clips:
        scorer = ClipScorer(lpips_metric.network, video, num_valid, micro.config.patch_frames)
        chosen = [space.assignment(0), space.assignment(40), space.assignment(80)]
        result = exhaustive_search(micro, scorer, video, chosen, batch_size=2)
        for row, assignment in enumerate(chosen):
            with torch.no_grad():
                reconstruction = micro.decode(micro.encode(video[None], [list(assignment)])).clamp(-1, 1)
            per_frame = lpips_metric(reconstruction, video[None], MODEL_RANGE)[0, :num_valid]
            mse = (((reconstruction[0] - video) / 2) ** 2)[:, :num_valid].double().mean(dim=(0, 2, 3))
            assert abs(float(per_frame.mean()) - result.lpips[row]) < LPIPS_TOLERANCE
            assert abs(float(mse.mean()) - result.mse[row]) < 1e-7
            assert result.psnr[row] == pytest.approx(-10 * math.log10(float(mse.mean())), abs=1e-4)


def test_beam_with_full_width_equals_exhaustive(micro: Tokenizer, lpips_metric: LPIPSMetric, clips) -> None:
    space = micro.space
    reward = reward_for(space)
    video, num_valid = clips[0]
    scorer = ClipScorer(lpips_metric.network, video, num_valid, micro.config.patch_frames)
    exhaustive = exhaustive_search(micro, scorer, video, batch_size=8)
    full = beam_search(micro, scorer, video, reward, beam=27, batch_size=8)
    assert full.indices.tolist() == list(range(space.size))
    assert np.abs(full.lpips - exhaustive.lpips).max() < LPIPS_TOLERANCE
    assert full.best_assignment(reward) == exhaustive.best_assignment(reward)


def test_beam_keeps_best_prefixes(micro: Tokenizer, lpips_metric: LPIPSMetric, clips) -> None:
    space = micro.space
    reward = reward_for(space)
    video, num_valid = clips[0]
    scorer = ClipScorer(lpips_metric.network, video, num_valid, micro.config.patch_frames)
    exhaustive = exhaustive_search(micro, scorer, video, batch_size=8)
    for width in (1, 2):
        beam = beam_search(micro, scorer, video, reward, beam=width)
        assert beam.block_evaluations == expected_block_evaluations("beam", space, width) == 3 + 3 * width * 3
        assert len(beam.indices) == width * 3
        # Every beam value is one of the exhaustive values of the same assignment.
        assert np.abs(beam.lpips - exhaustive.lpips[beam.indices]).max() < LPIPS_TOLERANCE
        # Beam's leaves share one prefix of length T-1 per kept prefix.
        assert len({tuple(row[:-1]) for row in beam.assignments}) == width


# ----- label store -------------------------------------------------------------------------------


def make_labels(key: str, space: AssignmentSpace, rng: np.random.Generator) -> ClipLabels:
    indices = np.arange(space.size)
    assignments = np.array([space.assignment(i) for i in indices])
    lpips = rng.uniform(0.1, 0.6, size=space.size)
    mse = rng.uniform(0.001, 0.05, size=space.size)
    return ClipLabels(
        clip_key=key, video=key.split("#")[0], clip_number=int(key.split("#")[1]), num_valid=16,
        indices=indices, assignments=assignments, lpips=lpips, mse=mse, psnr=-10 * np.log10(mse),
        best_index=0,
    )


def test_store_rebuilds_missing_index_entry(tmp_path: Path) -> None:
    space = AssignmentSpace((2, 4, 8), 4)
    store = LabelStore(tmp_path / "labels")
    store.create({"strategy": "prefix", "w_q": 1.2, "w_l": None})
    rng = np.random.default_rng(0)
    first = store.write_shard(0, [make_labels("a.mp4#0", space, rng), make_labels("a.mp4#1", space, rng)])
    second = store.write_shard(1, [make_labels("b.mp4#0", space, rng)])
    assert first == "part-0000-000000"
    assert second == "part-0001-000000"
    assert store.next_shard_name(0) == "part-0000-000001"

    # A kill between the shard's rename and its index entry leaves a shard without an entry.
    (store.index_dir / f"{second}.json").unlink()
    assert store.done_clips() == {"a.mp4#0", "a.mp4#1", "b.mp4#0"}
    rebuilt = json.loads((store.index_dir / f"{second}.json").read_text())
    assert rebuilt["clips"] == ["b.mp4#0"]
    assert rebuilt["rows"] == space.size

    frame = store.read()
    assert len(frame) == 3 * space.size
    assert not frame.duplicated(["clip_key", "assignment_index"]).any()


def test_store_removes_own_temporary_files(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels")
    store.create({"strategy": "prefix"})
    own = store.shards_dir / "part-0000-000003.parquet.123.tmp"
    other = store.shards_dir / "part-0001-000000.parquet.456.tmp"
    own.write_bytes(b"half a parquet file")
    other.write_bytes(b"another process is writing this")
    assert store.remove_temporary_files(0) == 1
    assert not own.exists()
    assert other.exists()
    assert store.shard_names() == []


def test_store_rejects_changed_settings(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels")
    store.create({"strategy": "prefix", "w_q": 1.2})
    store.create({"strategy": "prefix", "w_q": 1.2})
    with pytest.raises(ValueError, match="strategy"):
        store.create({"strategy": "beam", "w_q": 1.2})


def test_store_labels_for_another_weight(tmp_path: Path) -> None:
    space = AssignmentSpace((2, 4, 8), 4)
    store = LabelStore(tmp_path / "labels")
    store.create({"strategy": "prefix", "w_q": 1.2, "w_l": None})
    stats = RewardStats(0.35, 0.1, space.mean_length, space.std_length, num_pairs=4)
    store.save_stats(stats)
    rng = np.random.default_rng(1)
    clips = [make_labels(f"v.mp4#{i}", space, rng) for i in range(3)]
    store.write_shard(0, clips)
    for w_q in (0.5, 1.2, 1.9):
        table = store.labels(w_q)
        reward = Reward(stats, w_q=w_q)
        for clip, (_, row) in zip(clips, table.iterrows(), strict=True):
            expected = int(np.argmax(reward(clip.lpips, clip.assignments.sum(axis=1))))
            assert row["clip_key"] == clip.clip_key
            assert row["best_index"] == expected
            assert list(row["best_assignment"]) == list(space.assignment(expected))
            assert row["evaluated"] == space.size
    # A high quality weight never picks a shorter assignment than a low one would on average.
    assert table["tokens"].mean() >= store.labels(0.5)["tokens"].mean()


def test_beam_share_ranking_and_errors(micro: Tokenizer, lpips_metric: LPIPSMetric, clips) -> None:
    space = micro.space
    reward = reward_for(space)
    video, num_valid = clips[1]
    scorer = ClipScorer(lpips_metric.network, video, num_valid, micro.config.patch_frames)
    share = beam_search(micro, scorer, video, reward, beam=2, ranking="share")
    assert share.block_evaluations == 3 + 3 * 2 * 3
    with pytest.raises(ValueError, match="ranking"):
        beam_search(micro, scorer, video, reward, beam=2, ranking="greedy")
    with pytest.raises(ValueError, match="at least 1"):
        beam_search(micro, scorer, video, reward, beam=0)


def test_load_proxy_from_saved_folder(tmp_path: Path, micro: Tokenizer) -> None:
    from evatok.search.runner import SearchSettings, load_proxy

    micro.save_pretrained(tmp_path / "proxy")
    proxy = load_proxy(tmp_path / "proxy")
    assert proxy.source["sha256"]
    for name, tensor in micro.state_dict().items():
        assert torch.equal(proxy.model.state_dict()[name], tensor), name
    with pytest.raises(FileNotFoundError, match="no proxy weights"):
        load_proxy(tmp_path / "missing")
    with pytest.raises(ValueError, match="strategy"):
        SearchSettings(strategy="greedy")


def test_labels_command_writes_csv(tmp_path: Path) -> None:
    import pandas as pd

    from evatok.cli import main

    space = AssignmentSpace((2, 4, 8), 4)
    store = LabelStore(tmp_path / "labels")
    store.create({"strategy": "prefix", "w_q": 1.2, "w_l": None})
    store.save_stats(RewardStats(0.35, 0.1, space.mean_length, space.std_length, num_pairs=4))
    store.write_shard(0, [make_labels("v.mp4#0", space, np.random.default_rng(2))])
    assert main(["labels", str(tmp_path / "labels"), "--w-q", "1.5", "--csv", str(tmp_path / "best.csv")]) == 0
    table = pd.read_csv(tmp_path / "best.csv")
    assert table["clip_key"].tolist() == ["v.mp4#0"]
    assert table["best_index"].tolist() == store.labels(1.5)["best_index"].tolist()
