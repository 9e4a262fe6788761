"""Stage 3 router: the ViT's shapes and class mapping, presets, weights, evaluation and a micro run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from evatok.assignment import AssignmentSpace
from evatok.cli import main
from evatok.models.router import Router, RouterConfig
from evatok.router_eval import (
    best_uniform,
    clip_rewards,
    evaluate_on_store,
    mean_percentile,
    score_rankings,
)
from evatok.search.reward import Reward, RewardStats
from evatok.search.runner import SearchSettings, load_proxy, run_search
from evatok.search.store import LabelStore
from evatok.training import load_config
from evatok.training.router import (
    LabeledClips,
    apply_train_overrides,
    check_compatible,
    label_table,
    labeled_clips,
    router_config_of,
    split_videos,
)

MICRO = dict(
    frames=16, height=32, width=32, patch_height=8, patch_width=8, candidates=(2, 4, 8),
    model_width=32, depth=1, heads=2, mlp_ratio=2.0,
)
# Three short real clips. With held-out fraction 0.34 and split seed 0 the hash split holds out
# intel__asl_gestures_eat.mkv and trains on the other two.
E2E_FILES = ("elastictok__flower.mp4", "infotok__0_360p.mp4", "intel__asl_gestures_eat.mkv")
HELD_OUT_FILE = "intel__asl_gestures_eat.mkv"
E2E_SPLIT = ("data.held_out_fraction=0.34", "data.split_seed=0")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two torch threads on cores that other jobs keep busy made the search 20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----- the model -----------------------------------------------------------------------------


def test_router_logits_shape() -> None:
    torch.manual_seed(0)
    router = Router(RouterConfig(**MICRO)).eval()
    logits = router(torch.rand(3, 3, 16, 32, 32) * 2 - 1)
    assert logits.shape == (3, 81)
    assert router.config.num_patches == 4 * 4 * 4


def test_router_class_mapping() -> None:
    router = Router(RouterConfig(**MICRO)).eval()
    space = router.space
    target, runner_up = (2, 4, 8, 2), (8, 8, 8, 8)
    with torch.no_grad():
        router.head.weight.zero_()
        router.head.bias.zero_()
        router.head.bias[space.index(target)] = 5.0
        router.head.bias[space.index(runner_up)] = 4.0
    video = torch.zeros(2, 3, 16, 32, 32)
    assert space.index(target) == 0 * 27 + 1 * 9 + 2 * 3 + 0
    assert router.predict(video) == [target, target]
    assert router.predict_top_k(video, 2) == [[target, runner_up], [target, runner_up]]
    indices, probabilities = router.top_k(video, 2)
    assert indices[0].tolist() == [space.index(target), space.index(runner_up)]
    assert float(probabilities[0, 0]) > float(probabilities[0, 1])


def test_router_rejects_wrong_shape() -> None:
    router = Router(RouterConfig(**MICRO))
    with pytest.raises(ValueError, match="router input has shape"):
        router(torch.zeros(1, 3, 8, 32, 32))


def test_router_config_rejects_untiled_patch() -> None:
    with pytest.raises(ValueError, match="height=30 is not a multiple"):
        RouterConfig(**{**MICRO, "height": 30})


def test_paper_router_near_20m_parameters() -> None:
    config = router_config_of(load_config("paper"))
    with torch.device("meta"):
        router = Router(config)
    assert (config.frames, config.height, config.width) == (16, 128, 128)
    assert router.space.size == 625
    assert abs(router.num_parameters() - 20e6) <= 0.1 * 20e6


def test_presets_take_geometry_from_tokenizer() -> None:
    for name, size, candidates in (("micro", 32, (2, 4, 8)), ("tiny", 64, (4, 8, 16, 24, 32))):
        config = router_config_of(load_config(name))
        assert (config.height, config.width, config.frames) == (size, size, 16)
        assert config.candidates == candidates
        assert config.num_blocks == 4


def test_router_train_overrides_train_section() -> None:
    config = load_config("tiny")
    proxy_batch = config.train.batch_size
    replaced = apply_train_overrides(config)
    assert "lr" in replaced
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.steps == 600
    assert config.train.weight_decay == pytest.approx(0.05)
    assert config.train.batch_size == 16
    assert proxy_batch != 16
    bad = load_config("micro", ["router_train.train.learning_rate=1"])
    with pytest.raises(ValueError, match="unknown router_train.train keys"):
        apply_train_overrides(bad)


def test_label_store_must_match_router() -> None:
    meta = {"tokenizer": {"candidates": [2, 4, 8], "frames": 16, "patch_frames": 4},
            "clip_spec": {"num_frames": 16}}
    check_compatible(RouterConfig(**MICRO), meta, Path("labels"))
    tiny = router_config_of(load_config("tiny"))
    with pytest.raises(ValueError, match="candidates"):
        check_compatible(tiny, meta, Path("labels"))
    longer = RouterConfig(**{**MICRO, "frames": 32})
    with pytest.raises(ValueError, match="16-frame clips"):
        check_compatible(longer, meta, Path("labels"))


def test_router_weights_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    router = Router(RouterConfig(**MICRO, frame_stride=2)).eval()
    router.save_pretrained(tmp_path / "saved")
    loaded = Router.load(tmp_path / "saved")
    assert loaded.config == router.config
    video = torch.rand(2, 3, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(video), router(video))
    with pytest.raises(FileNotFoundError, match="no router weights"):
        Router.load(tmp_path / "missing")


# ----- evaluation on a hand-built label table ------------------------------------------------

# Space: candidates (1, 2) over 2 blocks, so classes 0..3 are (1,1), (1,2), (2,1), (2,2) with
# 2, 3, 3, 4 tokens. With unit statistics and w_q = w_l = 1 the reward is -LPIPS - tokens.
TABLE_LPIPS = {
    "held/a.mp4#0": [3.0, 1.0, 2.5, 0.5],  # rewards -5, -4, -5.5, -4.5: best 1, worst 2
    "held/b.mp4#0": [0.0, 0.5, 0.5, 0.5],  # rewards -2, -3.5, -3.5, -4.5: best 0, worst 3
    "train/c.mp4#0": [4.0, 0.0, 0.0, 1.0],  # rewards -6, -3, -3, -5
    "train/d.mp4#0": [1.0, 1.0, 1.0, 0.0],  # rewards -3, -4, -4, -4
}


def hand_built_rewards() -> dict:
    space = AssignmentSpace((1, 2), 2)
    rows = []
    for key, values in TABLE_LPIPS.items():
        for index, value in enumerate(values):
            rows.append({"clip_key": key, "assignment_index": index, "lpips": value,
                         "tokens": sum(space.assignment(index))})
    stats = RewardStats(lpips_mean=0.0, lpips_std=1.0, length_mean=0.0, length_std=1.0, num_pairs=2)
    return clip_rewards(pd.DataFrame(rows), Reward(stats, w_q=1.0, w_l=1.0))


def test_clip_rewards_from_table() -> None:
    rewards = hand_built_rewards()
    assert rewards["held/a.mp4#0"].rewards.tolist() == [-5.0, -4.0, -5.5, -4.5]
    assert rewards["held/a.mp4#0"].best_index == 1
    assert rewards["held/a.mp4#0"].percentile(0) == pytest.approx(100 / 3)
    assert rewards["held/a.mp4#0"].percentile(7) is None


def test_best_uniform_on_training_clips() -> None:
    rewards = hand_built_rewards()
    train = {key: value for key, value in rewards.items() if key.startswith("train/")}
    # (1,1) scores 0 on c and 100 on d; (2,2) scores 100/3 on c and 0 on d.
    assignment, percentile = best_uniform(train, AssignmentSpace((1, 2), 2))
    assert assignment == (1, 1)
    assert percentile == pytest.approx(50.0)
    assert mean_percentile(train, 3) == (pytest.approx(50 / 3), 2)


def test_score_rankings_exact_values() -> None:
    rewards = hand_built_rewards()
    held = {key: value for key, value in rewards.items() if key.startswith("held/")}
    train = {key: value for key, value in rewards.items() if key.startswith("train/")}
    rankings = {"held/a.mp4#0": [3, 1, 0], "held/b.mp4#0": [0, 2, 1]}
    result = score_rankings(held, rankings, train, AssignmentSpace((1, 2), 2))
    assert result.clips == 2
    assert result.top1 == pytest.approx(50.0)
    assert result.top5 == pytest.approx(100.0)
    # a: (2,2) sits at 1.0 / 1.5 of its range; b: (1,1) is its best.
    assert result.percentile == pytest.approx((200 / 3 + 100) / 2)
    assert result.uniform_assignment == [1, 1]
    assert result.uniform_percentile == pytest.approx((100 / 3 + 100) / 2)
    assert result.uniform_train_percentile == pytest.approx(50.0)
    assert result.unscored_clips == 0
    for value in (result.top1, result.top5, result.percentile, result.uniform_percentile):
        assert 0.0 <= value <= 100.0


def test_score_rankings_needs_every_clip() -> None:
    rewards = hand_built_rewards()
    held = {key: value for key, value in rewards.items() if key.startswith("held/")}
    with pytest.raises(ValueError, match="no router ranking for 1 held-out clips"):
        score_rankings(held, {"held/a.mp4#0": [1]}, held, AssignmentSpace((1, 2), 2))


# ----- micro end to end on real clips ---------------------------------------------------------


@pytest.fixture(scope="module")
def micro_labels(clips_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Label 2 clips of each of 3 real videos with the randomly initialised micro proxy."""
    root = tmp_path_factory.mktemp("router_e2e")
    videos = root / "videos"
    videos.mkdir()
    for name in E2E_FILES:
        os.symlink(clips_dir / name, videos / name)
    settings = SearchSettings(strategy="prefix", stats_pairs=8, max_clips_per_video=2, batch_size=27)
    run_search(load_proxy("preset:micro", seed=0), videos, root / "labels", settings, progress=False)
    return videos, root / "labels"


@pytest.fixture(scope="module")
def micro_run(micro_labels: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the micro router for 4 steps through `evatok train router`."""
    _, labels = micro_labels
    run_dir = tmp_path_factory.mktemp("router_run")
    status = main([
        "train", "router", "--config", "micro", f"router_train.labels={labels}", f"run.dir={run_dir}",
        "run.trackers=[]", *E2E_SPLIT,
    ])
    assert status == 0
    return run_dir


def test_labels_recomputed_from_stored_values(micro_labels: tuple[Path, Path]) -> None:
    _, labels = micro_labels
    store = LabelStore(labels)
    stored_best = {}
    for path in (labels / "index").glob("*.json"):
        stored_best.update(json.loads(path.read_text())["best_index"])
    assert label_table(store, None, None) == stored_best
    assert len(stored_best) == 6
    # With w_q = 2 the length weight is 0, so the best assignment is the one with the lowest LPIPS.
    frame = store.read()
    lowest = frame.loc[frame.groupby("clip_key")["lpips"].idxmin()]
    expected = dict(zip(lowest["clip_key"], lowest["assignment_index"].astype(int), strict=True))
    assert label_table(store, 2.0, None) == expected


def test_split_holds_out_one_file(micro_labels: tuple[Path, Path]) -> None:
    videos, _ = micro_labels
    train, held_out = split_videos(videos, 0.34, 0)
    assert [path.name for path in held_out] == [HELD_OUT_FILE]
    assert len(train) == 2


def test_router_training_run(micro_run: Path, micro_labels: tuple[Path, Path]) -> None:
    steps = [json.loads(line) for line in (micro_run / "steps.jsonl").read_text().splitlines()]
    assert [record["step"] for record in steps] == [0, 1, 2, 3]
    assert all(math.isfinite(record["ce"]) for record in steps)
    # Cross-entropy of a near-uniform start over 81 classes is close to ln 81.
    assert steps[0]["ce"] == pytest.approx(math.log(81), abs=1.0)
    router = Router.load(micro_run)
    assert router.space.size == 81
    assert (router.config.frame_stride, router.config.fps) == (1, None)

    videos, labels = micro_labels
    store = LabelStore(labels)
    train_files, _ = split_videos(videos, 0.34, 0)
    dataset = labeled_clips(store, router.config, label_table(store, None, None), train_files, videos)
    assert isinstance(dataset, LabeledClips)
    assert len(dataset) == 4
    assert all(not key.startswith(HELD_OUT_FILE) for key in dataset.keys)
    sample = dataset[0]
    assert sample["video"].shape == (3, 16, 32, 32)
    assert sample["target"] == label_table(store, None, None)[dataset.keys[0]]


def test_router_checkpoint_resume_continues(micro_run: Path, micro_labels: tuple[Path, Path]) -> None:
    _, labels = micro_labels
    status = main([
        "train", "router", "--config", "micro", f"router_train.labels={labels}", f"run.dir={micro_run}",
        "run.trackers=[]", "train.steps=6", *E2E_SPLIT,
    ])
    assert status == 0
    steps = [json.loads(line)["step"] for line in (micro_run / "steps.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]


def test_router_evaluation_on_held_out(micro_run: Path, micro_labels: tuple[Path, Path]) -> None:
    _, labels = micro_labels
    result = evaluate_on_store(Router.load(micro_run), labels, held_out_fraction=0.34, split_seed=0)
    assert result.clips == 2
    assert result.unscored_clips == 0
    for value in (result.top1, result.top5, result.percentile, result.uniform_percentile):
        assert 0.0 <= value <= 100.0
    assert len(result.uniform_assignment) == 4
    assert len(set(result.uniform_assignment)) == 1


def test_eval_router_command(micro_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-router", str(micro_run)]) == 0
    output = capsys.readouterr().out
    assert "held-out clips: 2" in output
    saved = json.loads((micro_run / "router_eval.json").read_text())
    assert saved["clips"] == 2


def test_route_prints_one_line_per_clip(
    micro_run: Path, clips_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # infotok__0_360p.mp4 has 60 frames: three full 16-frame clips and a padded 12-frame tail.
    assert main(["route", str(clips_dir / "infotok__0_360p.mp4"), "--router", str(micro_run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert [line.split(" ")[1] for line in lines[:4]] == ["0", "1", "2", "3"]
    assert lines[3].startswith("clip 3 frames 48-59: assignment (")
    router = Router.load(micro_run)
    for line in lines[:4]:
        assignment = tuple(int(x) for x in line.split("(")[1].split(")")[0].split(", "))
        assert assignment in router.space
        assert f"tokens {sum(assignment)} " in line
    assert lines[4].startswith("4 clips, ")


def test_route_rejects_missing_router(tmp_path: Path, clips_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", str(clips_dir / "infotok__0_360p.mp4"), "--router", str(tmp_path)]) == 2
    assert "no router weights" in capsys.readouterr().err
