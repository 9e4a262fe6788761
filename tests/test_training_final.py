"""Stage 4 recipe on real clips: routed assignments, fixed baseline, alignment and semantic discriminator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import VideoMAEModel, VJEPA2Model

from evatok.models.frozen_encoders import PretrainedWeightsMissingError
from evatok.models.router import Router, RouterConfig
from evatok.models.tokenizer import Tokenizer
from evatok.presets import tokenizer_config
from evatok.training import Trainer, load_config
from evatok.training.alignment import AlignedTokenizer
from evatok.training.final import FinalRecipe
from evatok.training.progress import read_step_log
from evatok.training.recipe import StepContext
from test_frozen_encoders import tiny_videomae_config, tiny_vjepa2_config
from test_training_proxy import SMALL_CLIPS, write_manifest


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def micro_router(folder: Path, **changes) -> Path:
    """Save a randomly initialised router with the micro tokenizer's geometry and return its folder."""
    tokenizer = tokenizer_config("micro")
    geometry = dict(
        frames=tokenizer.frames, height=tokenizer.height, width=tokenizer.width,
        candidates=list(tokenizer.candidates), num_blocks=tokenizer.num_blocks,
        patch_frames=4, patch_height=8, patch_width=8, model_width=16, depth=1, heads=2, mlp_ratio=2.0,
    )
    geometry.update(changes)
    torch.manual_seed(3)
    router = Router(RouterConfig.from_dict(geometry))
    router.save_pretrained(folder)
    return folder


def final_config(tmp_path: Path, clips_dir: Path, *extra: str):
    manifest = write_manifest(tmp_path, clips_dir, SMALL_CLIPS[:4])
    return load_config("micro", [
        f"data.videos={manifest}", f"run.dir={tmp_path / 'run'}", "run.trackers=[]",
        "data.held_out_fraction=0", "train.steps=2", *extra,
    ])


def step_context(seed: int = 0) -> StepContext:
    return StepContext(step=0, micro_step=0, generator=torch.Generator().manual_seed(seed), accelerator=None)  # type: ignore[arg-type]


def test_routed_assignments_are_the_routers(tmp_path: Path, clips_dir: Path) -> None:
    router_dir = micro_router(tmp_path / "router")
    recipe = FinalRecipe(final_config(tmp_path, clips_dir, f"final.router={router_dir}"))
    video = torch.rand(5, 3, 16, 32, 32) * 2 - 1
    counts = recipe.assignments_for(video, step_context())
    expected = Router.load(router_dir).predict(video)
    assert counts.tolist() == [list(assignment) for assignment in expected]


def test_fixed_assignment_baseline(tmp_path: Path, clips_dir: Path) -> None:
    recipe = FinalRecipe(final_config(tmp_path, clips_dir, "final.assignment=uniform:4"))
    counts = recipe.assignments_for(torch.zeros(3, 3, 16, 32, 32), step_context())
    assert counts.tolist() == [[4, 4, 4, 4]] * 3


def test_final_needs_router_or_assignment(tmp_path: Path, clips_dir: Path) -> None:
    with pytest.raises(ValueError, match="final.router is not set"):
        FinalRecipe(final_config(tmp_path, clips_dir))
    with pytest.raises(ValueError, match="unknown final keys"):
        FinalRecipe(final_config(tmp_path, clips_dir, "final.routr=x"))


def test_router_geometry_must_match(tmp_path: Path, clips_dir: Path) -> None:
    router_dir = micro_router(tmp_path / "router", height=64, width=64)
    with pytest.raises(ValueError, match="the router reads"):
        FinalRecipe(final_config(tmp_path, clips_dir, f"final.router={router_dir}"))


def test_final_train_section_overrides_steps(tmp_path: Path, clips_dir: Path) -> None:
    config = final_config(tmp_path, clips_dir, "final.assignment=uniform:2", "final.train.steps=7")
    FinalRecipe(config)
    assert config.train.steps == 7


def test_final_trains_on_routed_clips(tmp_path: Path, clips_dir: Path) -> None:
    router_dir = micro_router(tmp_path / "router")
    config = final_config(tmp_path, clips_dir, f"final.router={router_dir}")
    trainer = Trainer(FinalRecipe(config), config)
    state = trainer.fit()
    assert state.step == 2
    records = read_step_log(tmp_path / "run" / "steps.jsonl")
    assert all(math.isfinite(record["l1"]) for record in records)
    exported = Tokenizer.from_pretrained(tmp_path / "run" / "final")
    assert exported.config.candidates == (2, 4, 8)


def save_tiny_encoder(model_class, config, folder: Path) -> Path:
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    return folder


def test_alignment_term_trains_projector_only_in_checkpoint(tmp_path: Path, clips_dir: Path) -> None:
    encoder = save_tiny_encoder(VJEPA2Model, tiny_vjepa2_config(), tmp_path / "vjepa2")
    config = final_config(
        tmp_path, clips_dir, "final.assignment=uniform:4", "loss.alignment_weight=0.7",
        f"loss.alignment_encoder={encoder}", "loss.adversarial_weight=0",
    )
    trainer = Trainer(FinalRecipe(config), config)
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(model, AlignedTokenizer)
    projector_before = [p.detach().clone() for p in model.projector.parameters()]
    trainer.fit()

    records = read_step_log(tmp_path / "run" / "steps.jsonl")
    # Negative cosine similarity lies in [-1, 1].
    assert all(-1.0 <= record["align"] <= 1.0 for record in records)
    changed = [not torch.equal(a, b) for a, b in zip(projector_before, model.projector.parameters(), strict=True)]
    assert any(changed), "the alignment projector did not train"
    exported = Tokenizer.from_pretrained(tmp_path / "run" / "final")
    assert set(exported.state_dict()) == set(model.tokenizer.state_dict())


def test_alignment_decoder_layer_checked(tmp_path: Path) -> None:
    tokenizer = Tokenizer(tokenizer_config("micro"))
    with pytest.raises(ValueError, match="alignment_decoder_layer 5"):
        AlignedTokenizer(tokenizer, 5, 32)


def test_semantic_discriminator_trains_heads_only(tmp_path: Path, clips_dir: Path) -> None:
    encoder = save_tiny_encoder(VideoMAEModel, tiny_videomae_config(), tmp_path / "videomae")
    config = final_config(
        tmp_path, clips_dir, "final.assignment=uniform:4", "loss.semantic_disc=true",
        f"loss.semantic_disc_encoder={encoder}", "loss.semantic_disc_layers=[1,2]",
        "loss.semantic_disc_head_width=16", "loss.adaptive_weight=false",
    )
    trainer = Trainer(FinalRecipe(config), config)
    disc = trainer.accelerator.unwrap_model(trainer.discriminator)
    frozen_before = {k: v.clone() for k, v in disc.encoder.state_dict().items()}
    heads_before = [p.detach().clone() for p in disc.heads.parameters()]
    trainer.fit()

    records = read_step_log(tmp_path / "run" / "steps.jsonl")
    assert all(math.isfinite(record["adv"]) and math.isfinite(record["disc/loss"]) for record in records)
    for name, value in disc.encoder.state_dict().items():
        assert torch.equal(value, frozen_before[name]), f"frozen VideoMAE weight {name} changed"
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, disc.heads.parameters(), strict=True))


def test_missing_encoder_names_model_id(tmp_path: Path, clips_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = final_config(tmp_path, clips_dir, "final.assignment=uniform:4", "loss.alignment_weight=0.7")
    with pytest.raises(PretrainedWeightsMissingError, match="facebook/vjepa2-vitl-fpc64-256"):
        Trainer(FinalRecipe(config), config)
