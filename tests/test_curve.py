"""Quality-cost curve: exact points on a hand-built label store, the plot, and a micro router run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg

from evatok.cli import main
from evatok.curve import (
    OUTSIDE_UNIFORM_RANGE,
    CurvePoint,
    compute_curve,
    curve_from_store,
    format_table,
    parse_sweep,
    uniform_tokens_at,
)
from evatok.models.router import Router
from evatok.router_eval import rank_clips
from evatok.search.reward import RewardStats
from evatok.search.store import ClipLabels, LabelStore
from evatok.training.router import labeled_clips, split_videos

# The micro search and router fixtures of the router tests: a prefix search over 2 clips of each of
# 3 real videos, and a micro router trained 4 steps on them.
from test_router import E2E_SPLIT, HELD_OUT_FILE, micro_labels, micro_run  # noqa: F401

# Space: candidates (1, 3) over 2 blocks, classes 0..3 = (1,1), (1,3), (3,1), (3,3) with 2, 4, 4, 6
# tokens. Clip b lacks (3,1), as after a beam search. With these statistics the reward is
# R = -w_q * LPIPS - (2 - w_q) * tokens / 10.
ASSIGNMENTS = [(1, 1), (1, 3), (3, 1), (3, 3)]
HAND_CLIPS = {
    "a.mp4#0": {"indices": [0, 1, 2, 3], "lpips": [0.30, 0.12, 0.25, 0.10], "psnr": [20.0, 24.0, 21.0, 25.0]},
    "b.mp4#0": {"indices": [0, 1, 3], "lpips": [0.90, 0.60, 0.20], "psnr": [15.0, 18.0, 22.0]},
}
HAND_STATS = RewardStats(lpips_mean=0.0, lpips_std=1.0, length_mean=0.0, length_std=10.0, num_pairs=8)
HAND_SWEEP = "0.4,1.0,1.6,2.0"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two torch threads on cores that other jobs keep busy made the search many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hand_store(tmp_path: Path) -> Path:
    """Write the hand-built clips through the label store's own API."""
    store = LabelStore(tmp_path / "labels")
    store.create({"w_q": 1.2, "w_l": None})
    store.save_stats(HAND_STATS)
    clips = []
    for number, (key, values) in enumerate(HAND_CLIPS.items()):
        lpips = np.array(values["lpips"])
        clips.append(ClipLabels(
            clip_key=key, video=key.split("#")[0], clip_number=0, num_valid=16,
            indices=np.array(values["indices"]), assignments=np.array([ASSIGNMENTS[i] for i in values["indices"]]),
            lpips=lpips, mse=lpips / 10, psnr=np.array(values["psnr"]), best_index=number,
        ))
    store.write_shard(0, clips)
    return store.root


def test_parse_sweep_default_and_list() -> None:
    assert parse_sweep("0.4:2.0:0.2") == [0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
    assert parse_sweep("1.2") == [1.2]
    assert parse_sweep(HAND_SWEEP) == [0.4, 1.0, 1.6, 2.0]
    with pytest.raises(ValueError, match="invalid w_q sweep '2:1:0.2'"):
        parse_sweep("2:1:0.2")
    with pytest.raises(ValueError, match="invalid w_q sweep"):
        parse_sweep("0.4:x:0.2")


def test_uniform_points_exact(hand_store: Path) -> None:
    curve = curve_from_store(hand_store, parse_sweep(HAND_SWEEP))
    assert [point.label for point in curve.uniform] == ["uniform 1", "uniform 3"]
    low, high = curve.uniform
    assert (low.tokens, low.lpips, low.psnr, low.clips) == (2.0, pytest.approx(0.60), 17.5, 2)
    assert (high.tokens, high.lpips, high.psnr, high.clips) == (6.0, pytest.approx(0.15), 23.5, 2)
    assert curve.protocol["clips"] == 2
    assert curve.protocol["w_q"] == [0.4, 1.0, 1.6, 2.0]
    assert curve.protocol["stats"]["length_std"] == 10.0


def test_max_reward_pick_per_w_q(hand_store: Path) -> None:
    points = curve_from_store(hand_store, parse_sweep(HAND_SWEEP)).max_reward
    # w_q=0.4: both clips (1,1). w_q=1.0: a (1,1), b (3,3). w_q=1.6: a (1,3), b (3,3). w_q=2: lowest LPIPS.
    expected = [(0.4, 2.0, 0.60, 17.5), (1.0, 4.0, 0.25, 21.0), (1.6, 5.0, 0.16, 23.0), (2.0, 6.0, 0.15, 23.5)]
    assert [point.w_q for point in points] == [row[0] for row in expected]
    for point, (_, tokens, lpips, psnr) in zip(points, expected, strict=True):
        assert point.tokens == pytest.approx(tokens)
        assert point.lpips == pytest.approx(lpips)
        assert point.psnr == pytest.approx(psnr)
        assert point.clips == 2


def test_saving_interpolated_by_hand(hand_store: Path) -> None:
    points = curve_from_store(hand_store, parse_sweep(HAND_SWEEP)).max_reward
    # w_q=1.0 reaches LPIPS 0.25 with 4 tokens; uniform goes from (2 tokens, 0.60) to (6, 0.15), so it
    # needs 2 + 4 * (0.60 - 0.25) / 0.45 = 46/9 tokens, and the saving is (46/9 - 4) / (46/9) = 10/46.
    assert points[1].uniform_tokens == pytest.approx(46 / 9)
    assert points[1].saving_percent == pytest.approx(1000 / 46)
    assert points[2].uniform_tokens == pytest.approx(2 + 4 * 0.44 / 0.45)
    # At the ends of the uniform range the adaptive point is the uniform one: no saving.
    assert points[0].saving_percent == pytest.approx(0.0)
    assert points[3].saving_percent == pytest.approx(0.0)


def test_uniform_tokens_outside_range() -> None:
    uniform = [CurvePoint("uniform", "u1", 2.0, 0.6, 17.0, 2), CurvePoint("uniform", "u3", 6.0, 0.15, 23.0, 2)]
    assert uniform_tokens_at(0.10, uniform) is None
    assert uniform_tokens_at(0.61, uniform) is None
    assert uniform_tokens_at(0.375, uniform) == pytest.approx(4.0)


def test_router_point_leaves_out_unevaluated(hand_store: Path) -> None:
    frame = LabelStore(hand_store).read()
    # The router picks (1,3) for a and (3,1) for b, which the store lacks for b.
    curve = compute_curve(frame, HAND_STATS, [1.2], router_choice={"a.mp4#0": 1, "b.mp4#0": 2})
    router = curve.router
    assert router is not None
    assert (router.clips, router.tokens, router.lpips, router.psnr) == (1, 4.0, pytest.approx(0.12), 24.0)
    assert curve.protocol["router_clips_left_out"] == 1
    # LPIPS 0.12 is below the best uniform LPIPS 0.15.
    assert router.uniform_tokens is None
    assert router.saving_percent is None
    table = format_table(curve)
    router_line = next(line for line in table.splitlines() if line.startswith("router "))
    assert router_line.split()[:5] == ["router", "1", "4.0", "0.1200", "24.00"]
    assert router_line.endswith(OUTSIDE_UNIFORM_RANGE)
    assert "router: 1 of 2 clips left out (1 with a predicted assignment the store did not evaluate" in table


def test_uniform_point_missing_for_a_clip(hand_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = LabelStore(hand_store).read()
    without_b_uniform = frame[~((frame["clip_key"] == "b.mp4#0") & (frame["assignment_index"] == 3))]
    curve = compute_curve(without_b_uniform, HAND_STATS, [1.0])
    assert [point.label for point in curve.uniform] == ["uniform 1"]
    assert "uniform 3 is stored for 1 of 2 clips" in caplog.text
    # One uniform point has no segment, so only an adaptive point with exactly its LPIPS gets a saving.
    assert curve.max_reward[0].saving_percent is None
    with pytest.raises(ValueError, match="no uniform assignment is stored for every clip"):
        compute_curve(without_b_uniform[without_b_uniform["assignment_index"].isin([1, 2])], HAND_STATS, [1.0])


def test_curve_command_writes_json_and_png(
    hand_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["curve", "--labels", str(hand_store), "--out", str(out), "--w-q-sweep", HAND_SWEEP]) == 0
    printed = capsys.readouterr().out
    assert "+21.7% (uniform needs 5.1 tokens)" in printed
    assert "max-reward w_q=1.00" in printed
    saved = json.loads((out / "curve.json").read_text())
    assert saved["protocol"]["labels"] == str(hand_store.resolve())
    assert saved["protocol"]["selection"] == "all clips"
    assert len(saved["uniform"]) == 2
    assert len(saved["max_reward"]) == 4
    assert saved["router"] is None
    assert saved["max_reward"][1]["saving_percent"] == pytest.approx(1000 / 46)
    picture = mpimg.imread(out / "curve.png")
    assert picture.shape == (400, 1000, 4)
    assert float(picture[..., :3].min()) < 0.5  # something is drawn on the white background


def test_curve_command_rejects_bad_input(tmp_path: Path, hand_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["curve", "--labels", str(hand_store), "--w-q-sweep", "2:1:1"]) == 2
    assert "invalid w_q sweep" in capsys.readouterr().err
    assert main(["curve", "--labels", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


# ----- micro search store and a router trained a few steps ------------------------------------


def test_router_on_micro_store(
    micro_labels: tuple[Path, Path], micro_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    videos, labels = micro_labels
    out = tmp_path / "curve"
    assert main(["curve", "--labels", str(labels), "--router", str(micro_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "router: 0 of 6 clips left out" in printed
    saved = json.loads((out / "curve.json").read_text())
    assert saved["protocol"]["clips"] == 6
    assert len(saved["max_reward"]) == 9
    assert [point["tokens"] for point in saved["uniform"]] == [8.0, 16.0, 32.0]

    # The router point is the mean of the stored values of each clip's predicted class.
    router = Router.load(micro_run)
    store = LabelStore(labels)
    frame = store.read()
    keys = sorted(set(frame["clip_key"]))
    dataset = labeled_clips(store, router.config, dict.fromkeys(keys, 0), sorted(videos.iterdir()), videos)
    predicted = {key: ranking[0] for key, ranking in rank_clips(router, dataset, dataset.keys, k=1).items()}
    chosen = frame[[predicted[key] == index for key, index in zip(frame["clip_key"], frame["assignment_index"], strict=True)]]
    assert len(chosen) == 6
    assert saved["router"]["clips"] == 6
    assert saved["router"]["tokens"] == pytest.approx(chosen["tokens"].mean())
    assert saved["router"]["lpips"] == pytest.approx(chosen["lpips"].mean())
    assert saved["router"]["psnr"] == pytest.approx(chosen["psnr"].mean())
    assert mpimg.imread(out / "curve.png").shape == (400, 1000, 4)


def test_held_out_selection_matches_training_split(
    micro_labels: tuple[Path, Path], micro_run: Path  # noqa: F811
) -> None:
    videos, labels = micro_labels
    _, held_out = split_videos(videos, 0.34, 0)
    assert [path.name for path in held_out] == [HELD_OUT_FILE]
    assert E2E_SPLIT == ("data.held_out_fraction=0.34", "data.split_seed=0")
    curve = curve_from_store(labels, [1.2], router=Router.load(micro_run), held_out_fraction=0.34, split_seed=0)
    assert curve.protocol["clips"] == 2
    assert curve.protocol["selection"] == "held-out files"
    assert curve.router is not None
    assert curve.router.clips + curve.protocol["router_clips_left_out"] == 2
    assert all(point.clips == 2 for point in curve.uniform + curve.max_reward)
