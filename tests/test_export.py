"""Token export on real clips: labels, router assignments, exact re-encoding, resume and the loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evatok.cli import main
from evatok.codec import clip_spec
from evatok.export import (
    ExportSettings,
    TokenSequences,
    TokenStore,
    export_tokens,
    format_summary,
    labelled_videos,
    length_summary,
    parse_uniform,
)
from evatok.models.router import Router, RouterConfig
from evatok.models.tokenizer import Tokenizer
from evatok.presets import tokenizer_config
from evatok.video.clips import read_clip, to_model_input
from evatok.video.datasets import ClipDataset

# Two classes of two short real videos each: 56 + 60 frames and 47 + 51 frames, so 3 + 3 and
# 2 + 3 whole 16-frame clips.
CLASSES = {
    "flowers": ("elastictok__flower.mp4", "infotok__1_360p.mp4"),
    "signs": ("intel__asl_gestures_eat.mkv", "intel__asl_gestures_milk.mkv"),
}
EXPECTED_CLIPS = 11


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def videos(clips_dir: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for label, names in CLASSES.items():
        (root / label).mkdir()
        for name in names:
            (root / label / name).symlink_to(clips_dir / name)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tokenizer = Tokenizer(tokenizer_config("micro")).eval()
    router = Router(
        RouterConfig(frames=16, height=32, width=32, candidates=(2, 4, 8), num_blocks=4, patch_height=8,
                     patch_width=8, model_width=32, depth=1, heads=2, mlp_ratio=2.0)
    ).eval()
    # A large random head spreads the predicted classes over the space, as a trained router's would.
    with torch.no_grad():
        router.head.weight.normal_(0.0, 2.0)
    tokenizer.save_pretrained(folder / "tokenizer")
    router.save_pretrained(folder / "router")
    return {"tokenizer": tokenizer, "router": router, "tokenizer_dir": folder / "tokenizer",
            "router_dir": folder / "router"}


@pytest.fixture(scope="module")
def routed(models, videos: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "routed"
    status = main([
        "export-tokens", "--tokenizer", str(models["tokenizer_dir"]), "--router", str(models["router_dir"]),
        "--videos", str(videos), "--out", str(out), "--clips-per-shard", "4", "--batch-size", "3",
    ])
    assert status == 0
    return out


def test_export_rows_and_labels(routed: Path, videos: Path) -> None:
    store = TokenStore(routed)
    meta = store.meta()
    frame = store.read()
    assert meta["classes"] == ["flowers", "signs"]
    assert meta["assignment"] == "router"
    assert len(frame) == EXPECTED_CLIPS
    assert len(store.shard_names()) == 3
    for row in frame.itertuples():
        folder = row.clip_key.split("/")[0]
        assert row.label == folder
        assert row.class_index == meta["classes"].index(folder)
        assert row.tokens == sum(row.assignment)
        assert len(row.ids) == row.tokens
    flower_clips = sorted(frame[frame.video == "flowers/elastictok__flower.mp4"].clip_number)
    assert flower_clips == [0, 1, 2]


def test_export_matches_reencoding(routed: Path, videos: Path, models) -> None:
    tokenizer, router = models["tokenizer"], models["router"]
    frame = TokenStore(routed).read()
    spec = clip_spec(tokenizer.config)
    assignments = set()
    for row in frame.itertuples():
        clip = read_clip(videos / row.video, spec, row.clip_number)
        video = to_model_input(clip.frames)[None]
        with torch.no_grad():
            predicted = router.predict(video)[0]
            encoding = tokenizer.encode(video, [predicted])
        assert tuple(row.assignment) == predicted
        assert np.array_equal(np.asarray(row.ids), torch.cat(encoding.ids_of(0)).numpy())
        assignments.add(tuple(row.assignment))
    assert len(assignments) > 1


def test_export_resume_writes_nothing(routed: Path, models, videos: Path, capsys) -> None:
    store = TokenStore(routed)
    before = {path.name: path.stat().st_mtime_ns for path in store.shards_dir.iterdir()}
    status = main([
        "export-tokens", "--tokenizer", str(models["tokenizer_dir"]), "--router", str(models["router_dir"]),
        "--videos", str(videos), "--out", str(routed), "--clips-per-shard", "4",
    ])
    output = capsys.readouterr().out
    assert status == 0
    assert "exported 0 clips" in output
    assert f"{EXPECTED_CLIPS} already there" in output
    assert {path.name: path.stat().st_mtime_ns for path in store.shards_dir.iterdir()} == before
    summary = json.loads((routed / "summary.json").read_text())
    assert summary["clips"] == EXPECTED_CLIPS


def test_export_resumes_lost_shard(routed: Path, models, videos: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in ("meta.json", "shards", "index"):
        source = routed / item
        if source.is_dir():
            (copy / item).mkdir()
            for path in source.iterdir():
                (copy / item / path.name).write_bytes(path.read_bytes())
        else:
            (copy / item).write_bytes(source.read_bytes())
    store = TokenStore(copy)
    last = store.shard_names()[-1]
    (store.shards_dir / f"{last}.parquet").unlink()
    (store.index_dir / f"{last}.json").unlink()
    first = store.shard_names()[0]
    (store.index_dir / f"{first}.json").unlink()  # rebuilt from its shard

    summary = export_tokens(
        models["tokenizer"], videos, copy, router=models["router"], settings=ExportSettings(clips_per_shard=4),
        tokenizer_source=str(models["tokenizer_dir"].resolve()), router_source=str(models["router_dir"].resolve()),
        progress=False,
    )
    assert summary["clips_exported"] == EXPECTED_CLIPS - 8
    assert (store.index_dir / f"{first}.json").is_file()
    original = TokenStore(routed).read()
    resumed = store.read()
    assert resumed["clip_key"].tolist() == original["clip_key"].tolist()
    for got, expected in zip(resumed["ids"], original["ids"], strict=True):
        assert np.array_equal(got, expected)


def test_export_rejects_changed_settings(routed: Path, models, videos: Path) -> None:
    with pytest.raises(ValueError, match="was written with other settings \\(assignment"):
        export_tokens(
            models["tokenizer"], videos, routed, uniform=(4, 4, 4, 4),
            tokenizer_source=str(models["tokenizer_dir"].resolve()), progress=False,
        )


def test_uniform_export_and_manifest(models, videos: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "labels.tsv"
    manifest.write_text(
        "path\tlabel\nflowers/elastictok__flower.mp4\tplant\nsigns/intel__asl_gestures_eat.mkv\tasl\n"
    )
    out = tmp_path / "uniform"
    status = main([
        "export-tokens", "--tokenizer", str(models["tokenizer_dir"]), "--assignment", "uniform:4",
        "--videos", str(videos), "--out", str(out), "--labels", str(manifest),
    ])
    output = capsys.readouterr().out
    assert status == 0
    frame = TokenStore(out).read()
    assert TokenStore(out).meta()["classes"] == ["asl", "plant"]
    assert len(frame) == 5
    assert set(map(tuple, frame["assignment"])) == {(4, 4, 4, 4)}
    labels = dict(zip(frame["video"], frame["label"], strict=False))
    assert labels == {"flowers/elastictok__flower.mp4": "plant", "signs/intel__asl_gestures_eat.mkv": "asl"}
    assert sorted(frame["class_index"].unique().tolist()) == [0, 1]
    assert "5 clips, tokens per clip: mean 16.0, min 16, max 16" in output


def test_export_cli_rejects_bad_options(models, videos: Path, tmp_path: Path, capsys) -> None:
    base = ["export-tokens", "--tokenizer", str(models["tokenizer_dir"]), "--videos", str(videos),
            "--out", str(tmp_path / "x")]
    assert main(base) == 2
    assert "give either --router CKPT or --assignment uniform:K" in capsys.readouterr().err
    assert main([*base, "--assignment", "uniform:3"]) == 2
    assert "K must be one of (2, 4, 8)" in capsys.readouterr().err
    assert main([*base, "--router", str(tmp_path / "none")]) == 2
    assert "no router weights" in capsys.readouterr().err


def test_labels_mixed_unlabelled_rejected(videos: Path, tmp_path: Path, clips_dir: Path) -> None:
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.mp4").symlink_to(clips_dir / "elastictok__flower.mp4")
    (root / "y.mp4").symlink_to(clips_dir / "elastictok__flower.mp4")
    with pytest.raises(ValueError, match="y.mp4 has no class label"):
        labelled_videos(root)
    (root / "a" / "x.mp4").unlink()
    entries, classes = labelled_videos(root)
    assert classes == ["unlabeled"]
    assert [entry.label for entry in entries] == ["unlabeled"]


def test_token_sequences_loader(routed: Path) -> None:
    dataset = TokenSequences(routed)
    frame = TokenStore(routed).read()
    assert len(dataset) == EXPECTED_CLIPS
    assert dataset.vocab.size == 64 + 3 + 2 + 2
    for index, row in enumerate(frame.itertuples()):
        parsed = dataset.vocab.parse(dataset[index])
        assert parsed.class_index == row.class_index
        assert parsed.assignment == tuple(row.assignment)
        assert np.array_equal(torch.cat(parsed.block_ids).numpy(), np.asarray(row.ids))
        assert dataset.lengths[index] == 1 + 4 + row.tokens


def test_dataset_clip_count_matches(videos: Path, models) -> None:
    entries, classes = labelled_videos(videos)
    dataset = ClipDataset(entries, clip_spec(models["tokenizer"].config), classes=classes)
    assert len(dataset) == EXPECTED_CLIPS


def test_length_summary_exact() -> None:
    summary = length_summary([8, 16, 16, 32])
    assert summary == {
        "clips": 4, "mean_tokens": 18.0, "min_tokens": 8, "max_tokens": 32, "histogram": {8: 1, 16: 2, 32: 1},
    }
    text = format_summary(summary, width=4)
    assert text.splitlines()[2:] == ["     8      1  ##", "    16      2  ####", "    32      1  ##"]


def test_parse_uniform(models) -> None:
    assert parse_uniform("uniform:8", models["tokenizer"]) == (8, 8, 8, 8)
    with pytest.raises(ValueError, match="write uniform:K"):
        parse_uniform("8", models["tokenizer"])


@pytest.mark.slow
def test_export_two_processes_equal_one(routed: Path, models, videos: Path, tmp_path: Path) -> None:
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.is_file():
        pytest.skip(f"accelerate launcher not found at {launcher}")
    script = tmp_path / "evatok_main.py"
    script.write_text("import sys; from evatok.cli import main; sys.exit(main())\n")
    out = tmp_path / "two"
    command = [
        # Accelerate 1.16 starts a single process for `--cpu --num_processes 2`; `--multi_gpu`
        # with no visible GPU starts two CPU processes on the gloo backend.
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
        "export-tokens", "--tokenizer", str(models["tokenizer_dir"]), "--router", str(models["router_dir"]),
        "--videos", str(videos), "--out", str(out), "--clips-per-shard", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    store = TokenStore(out)
    assert {name.split("-")[1] for name in store.shard_names()} == {"0000", "0001"}
    assert store.meta()["classes"] == ["flowers", "signs"]
    two, one = store.read(), TokenStore(routed).read()
    assert two["clip_key"].tolist() == one["clip_key"].tolist()
    assert two["assignment"].map(tuple).tolist() == one["assignment"].map(tuple).tolist()
    for got, expected in zip(two["ids"], one["ids"], strict=True):
        assert np.array_equal(got, expected)
