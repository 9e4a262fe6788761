"""Generator training on a real-clip export, then `evatok generate` to mp4s and token files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evatok.cli import main
from evatok.export import TokenSequences, TokenStore, export_tokens
from evatok.generation.evaluation import class_plan, real_clips, uniform_tokens
from evatok.generation.videos import class_label, resolve_class
from evatok.models.generator import Generator, GeneratorConfig
from evatok.models.router import Router, RouterConfig
from evatok.models.tokenizer import Tokenizer
from evatok.presets import tokenizer_config
from evatok.tokens import TokenizedVideo
from evatok.training import load_config
from evatok.training.generator import GeneratorRecipe, generator_config_of, pad_batch, target_mask
from evatok.training.recipe import StepContext
from evatok.video.clips import from_model_output
from video_fixtures import luma_psnr, read_mp4

CLASSES = {
    "flowers": ("elastictok__flower.mp4", "infotok__1_360p.mp4"),
    "signs": ("intel__asl_gestures_eat.mkv", "intel__asl_gestures_milk.mkv"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def export(clips_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    videos = root / "videos"
    for label, names in CLASSES.items():
        (videos / label).mkdir(parents=True)
        for name in names:
            (videos / label / name).symlink_to(clips_dir / name)
    torch.manual_seed(0)
    tokenizer = Tokenizer(tokenizer_config("micro")).eval()
    tokenizer.save_pretrained(root / "tokenizer")
    router = Router(
        RouterConfig(frames=16, height=32, width=32, candidates=(2, 4, 8), num_blocks=4, patch_height=8,
                     patch_width=8, model_width=32, depth=1, heads=2, mlp_ratio=2.0)
    ).eval()
    # A large random head spreads the routed assignments, so batches mix sequence lengths.
    with torch.no_grad():
        router.head.weight.normal_(0.0, 2.0)
    export_tokens(tokenizer, videos, root / "tokens", router=router, progress=False)
    return {"root": root, "tokens": root / "tokens", "tokenizer": root / "tokenizer"}


def test_pad_batch_and_target_mask() -> None:
    batch = pad_batch([torch.tensor([5, 1, 2]), torch.tensor([6, 1, 2, 3, 4])], pad_id=9)
    assert batch["tokens"].tolist() == [[5, 1, 2, 9, 9], [6, 1, 2, 3, 4]]
    assert batch["lengths"].tolist() == [3, 5]
    mask = target_mask(batch["lengths"], 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True]]


def test_loss_ignores_padding(export) -> None:
    config = load_config("generator-micro", [f"generator_train.tokens={export['tokens']}", "generator_train.class_dropout=0"])
    recipe = GeneratorRecipe(config)
    torch.manual_seed(0)
    model = recipe.build_model()
    short = torch.tensor([recipe.vocab.class_id(0), recipe.vocab.length_id(2), 3, 4] * 1 + [recipe.vocab.length_id(2), 5, 6] * 3)
    long = recipe.dataset[0]
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0), accelerator=None)  # type: ignore[arg-type]
    batch = recipe.collate([short, long])
    loss = recipe.training_loss(model, batch, ctx).loss
    # The same short sequence padded with other ids past its end gives the same loss.
    batch_other = {"tokens": batch["tokens"].clone(), "lengths": batch["lengths"]}
    batch_other["tokens"][0, short.numel():] = 7
    other = recipe.training_loss(model, batch_other, ctx).loss
    assert torch.allclose(loss, other)
    # The mean over real targets equals the per-sequence sums divided by the target count.
    with torch.no_grad():
        per_row = []
        for sequence in (short, long):
            logits = model(sequence[None, :-1])[0].float()
            per_row.append(torch.nn.functional.cross_entropy(logits, sequence[1:], reduction="sum"))
    expected = sum(per_row) / (short.numel() - 1 + long.numel() - 1)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_class_dropout_uses_null_class(export) -> None:
    config = load_config("generator-micro", [f"generator_train.tokens={export['tokens']}", "generator_train.class_dropout=0.5"])
    recipe = GeneratorRecipe(config)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, tokens):
            seen.append(tokens[:, 0].clone())
            return torch.zeros(*tokens.shape, recipe.vocab.size, requires_grad=True)

    batch = recipe.collate([recipe.dataset[i] for i in range(len(recipe.dataset))])
    ctx = StepContext(0, 0, torch.Generator().manual_seed(1), accelerator=None)  # type: ignore[arg-type]
    recipe.training_loss(Recorder(), batch, ctx)
    firsts = seen[0].tolist()
    assert recipe.vocab.null_class_id in firsts
    assert any(token != recipe.vocab.null_class_id for token in firsts)
    assert batch["tokens"][:, 0].tolist() != firsts


def test_config_takes_vocab_from_export(export) -> None:
    config = load_config("generator-micro", [f"generator_train.tokens={export['tokens']}"])
    dataset = TokenSequences(export["tokens"])
    generator_config = generator_config_of(config, dataset)
    assert generator_config.codebook_size == 64
    assert generator_config.candidates == (2, 4, 8)
    assert generator_config.class_names == ("flowers", "signs")
    assert generator_config.width == 32
    bad = load_config("generator-micro", [f"generator_train.tokens={export['tokens']}", "generator.codebook_size=10"])
    with pytest.raises(ValueError, match="generator.codebook_size is set"):
        generator_config_of(bad, dataset)
    with pytest.raises(ValueError, match="generator_train.tokens is not set"):
        GeneratorRecipe(load_config("generator-micro"))


def test_resolve_class_names() -> None:
    config = GeneratorConfig.from_preset("micro", codebook_size=8, candidates=(2,), num_classes=2, class_names=("a", "b"))
    assert resolve_class(config, "b") == 1
    assert class_label(config, 0) == "a"
    with pytest.raises(ValueError, match="class 'c' is unknown: choose one of a, b"):
        resolve_class(config, "c")
    unnamed = GeneratorConfig.from_preset("micro", codebook_size=8, candidates=(2,), num_classes=2)
    assert resolve_class(unnamed, "1") == 1
    with pytest.raises(ValueError, match="give an index from 0 to 1"):
        resolve_class(unnamed, "2")


def test_overfit_lowers_loss(export) -> None:
    config = load_config("generator-micro", [f"generator_train.tokens={export['tokens']}", "generator_train.class_dropout=0"])
    recipe = GeneratorRecipe(config)
    torch.manual_seed(0)
    model = recipe.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = recipe.collate([recipe.dataset[i] for i in range(len(recipe.dataset))])
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0), accelerator=None)  # type: ignore[arg-type]
    losses = []
    for _ in range(40):
        output = recipe.training_loss(model, batch, ctx)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(float(output.loss.detach()))
    assert len(set(recipe.dataset.lengths)) > 1
    assert losses[-1] < 0.6 * losses[0]


def test_train_then_generate_mp4(export, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    status = main([
        "train", "generator", "--config", "generator-micro", f"generator_train.tokens={export['tokens']}",
        f"run.dir={run}",
    ])
    assert status == 0
    generator = Generator.load(run / "final")
    assert generator.config.class_names == ("flowers", "signs")
    capsys.readouterr()

    out = tmp_path / "samples"
    status = main([
        "generate", "--generator", str(run), "--tokenizer", str(export["tokenizer"]), "--class", "signs",
        "--num", "3", "--batch-size", "2", "--out", str(out), "--cfg", "2.0", "--top-k", "20", "--seed", "1",
    ])
    assert status == 0
    assert "wrote 3 clips of class signs" in capsys.readouterr().out
    report = json.loads((out / "generation.json").read_text())
    assert report["class_index"] == 1
    assert [clip["name"] for clip in report["clips"]] == ["signs_0000", "signs_0001", "signs_0002"]
    tokenizer = Tokenizer.from_pretrained(str(export["tokenizer"])).eval()
    written, decoded = [], []
    for clip in report["clips"]:
        frames = read_mp4(out / f"{clip['name']}.mp4")
        assert frames.shape == (16, 32, 32, 3)
        tokens = TokenizedVideo.load(out / f"{clip['name']}.safetensors")
        assert tokens.assignments.tolist() == [clip["assignment"]]
        assert tokens.num_tokens == clip["tokens"]
        with torch.no_grad():
            video = tokenizer.decode(tokens.padded_blocks(), tokens.assignments)
        assert video.shape == (1, 3, 16, 32, 32)
        written.append(frames)
        decoded.append(from_model_output(video[0]))
    # The untrained tokenizer decodes to noise that H.264 keeps only roughly, so each mp4 is
    # checked to be closer to its own token file's decoding than to the other clips'.
    for index, frames in enumerate(written):
        psnrs = [luma_psnr(frames, other) for other in decoded]
        assert int(np.argmax(psnrs)) == index


def test_generate_rejects_unknown_class(export, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    config = GeneratorConfig.from_preset(
        "micro", codebook_size=64, candidates=(2, 4, 8), num_classes=2, class_names=("flowers", "signs")
    )
    Generator(config).save_pretrained(tmp_path / "gen")
    status = main([
        "generate", "--generator", str(tmp_path / "gen"), "--tokenizer", str(export["tokenizer"]),
        "--class", "cars", "--out", str(tmp_path / "out"),
    ])
    assert status == 2
    assert "class 'cars' is unknown: choose one of flowers, signs" in capsys.readouterr().err
    other = GeneratorConfig.from_preset("micro", codebook_size=32, candidates=(2, 4, 8), num_classes=2)
    Generator(other).save_pretrained(tmp_path / "other")
    status = main([
        "generate", "--generator", str(tmp_path / "other"), "--tokenizer", str(export["tokenizer"]),
        "--class", "0", "--out", str(tmp_path / "out"),
    ])
    assert status == 2
    assert "codebook size 32 instead of 64" in capsys.readouterr().err


# ----- generation evaluation ---------------------------------------------------------------------


def test_class_plan_cycles_rows() -> None:
    assert class_plan([1, 0, 1], 7) == [1, 0, 1, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="no clips"):
        class_plan([], 3)


def test_uniform_tokens_from_meta(export) -> None:
    meta = TokenStore(export["tokens"]).meta()
    assert uniform_tokens(meta) is None
    assert uniform_tokens({**meta, "assignment": "uniform:8"}) == 32


def test_real_clips_match_export(export) -> None:
    store = TokenStore(export["tokens"])
    batches = list(real_clips(store, batch_size=4))
    assert [batch.shape[0] for batch in batches] == [4, 4, 3]
    assert batches[0].shape[1:] == (3, 16, 32, 32)
    # Re-encoding the real clips under the exported assignments gives the exported codes.
    tokenizer = Tokenizer.from_pretrained(str(export["tokenizer"])).eval()
    frame = store.read()
    video = torch.cat(batches)
    with torch.no_grad():
        encoding = tokenizer.encode(video, [tuple(row) for row in frame["assignment"]])
    for row, ids in enumerate(frame["ids"]):
        assert np.array_equal(torch.cat(encoding.ids_of(row)).numpy(), np.asarray(ids))


@pytest.mark.slow
# Eleven real and three generated clips give singular 400-dimensional covariances on purpose.
@pytest.mark.filterwarnings("ignore:only .* samples for 400-dimensional features")
def test_eval_generator_reports_gfvd(export, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    config = GeneratorConfig.from_preset(
        "micro", codebook_size=64, candidates=(2, 4, 8), num_classes=2, class_names=("flowers", "signs")
    )
    Generator(config).save_pretrained(tmp_path / "gen")
    out = tmp_path / "gfvd.json"
    status = main([
        "eval-generator", "--generator", str(tmp_path / "gen"), "--tokenizer", str(export["tokenizer"]),
        "--tokens", str(export["tokens"]), "--num", "3", "--cfg", "1.5", "--out", str(out),
        "--real-stats", str(tmp_path / "real.npz"),
    ])
    assert status == 0
    assert "gFVD" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["gfvd"] > 0
    assert result["protocol"]["generated_clips"] == 3
    assert result["protocol"]["real_clips"] == 11
    assert result["protocol"]["sampling"]["cfg_scale"] == 1.5
    assert result["protocol"]["stride"] == 1
    assert result["generated_tokens"]["clips"] == 3
    assert result["export_tokens"]["clips"] == 11
    assert (tmp_path / "real.npz").is_file()
