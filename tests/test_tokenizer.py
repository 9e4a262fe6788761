"""Tests of the Q-Former tokenizer: block causality, mixed batches, caches, quantizer, weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from evatok.models import PAD_ID, Tokenizer, TokenizerConfig
from evatok.models.tokenizer import pooling_grids
from evatok.presets import tokenizer_config


@pytest.fixture(scope="module")
def tiny() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(tokenizer_config("tiny")).eval()


def random_clips(batch: int, config: TokenizerConfig, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.channels, config.frames, config.height, config.width)
    return torch.rand(shape, generator=generator) * 2 - 1


def block_frames(video: torch.Tensor, block: int, patch_frames: int) -> torch.Tensor:
    return video[:, :, block * patch_frames : (block + 1) * patch_frames]


def test_pooling_grids_cover_prefixes():
    assert pooling_grids(16, 16) == [
        (1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16)
    ]
    assert pooling_grids(8, 8)[-1] == (8, 8)
    assert pooling_grids(3, 5)[-1] == (3, 5)


def test_queries_are_prefixes(tiny):
    embeddings = torch.randn(2, tiny.config.patches_per_block, tiny.config.encoder_width)
    with torch.no_grad():
        longest = tiny.query_init(embeddings, 32)
        for count in tiny.config.candidates:
            assert torch.equal(tiny.query_init(embeddings, count), longest[:, :count])


def test_encode_decode_shapes(tiny):
    video = random_clips(2, tiny.config)
    assignment = [(4, 8, 16, 32), (32, 24, 8, 4)]
    with torch.no_grad():
        encoding = tiny.encode(video, assignment)
        reconstruction = tiny.decode(encoding)
    assert reconstruction.shape == video.shape
    assert encoding.assignment.tolist() == [list(row) for row in assignment]
    for index, block in enumerate(encoding.blocks):
        assert block.ids.shape == (2, max(row[index] for row in assignment))
        for sample, row in enumerate(assignment):
            ids = block.ids[sample]
            assert bool((ids[: row[index]] >= 0).all())
            assert bool((ids[: row[index]] < tiny.config.codebook_size).all())
            assert bool((ids[row[index] :] == PAD_ID).all())
    assert [ids.numel() for ids in encoding.ids_of(1)] == [32, 24, 8, 4]


@pytest.mark.parametrize("changed_block", [1, 2, 3])
def test_causality_changed_frames(tiny, changed_block):
    config = tiny.config
    video = random_clips(2, config)
    changed = video.clone()
    start = changed_block * config.patch_frames
    changed[:, :, start:] = random_clips(2, config, seed=7)[:, :, start:]
    assignment = [(8, 16, 24, 32), (32, 4, 16, 8)]
    with torch.no_grad():
        first = tiny.encode(video, assignment)
        second = tiny.encode(changed, assignment)
        first_video = tiny.decode(first)
        second_video = tiny.decode(second)
    for block in range(changed_block):
        assert torch.equal(first.blocks[block].ids, second.blocks[block].ids)
    assert torch.equal(first_video[:, :, :start], second_video[:, :, :start])
    assert not torch.equal(first_video[:, :, start:], second_video[:, :, start:])


@pytest.mark.parametrize("changed_block", [0, 1, 2, 3])
def test_causality_changed_count(tiny, changed_block):
    config = tiny.config
    video = random_clips(2, config)
    first_assignment = [(8, 16, 24, 32), (4, 4, 4, 4)]
    second_assignment = [list(row) for row in first_assignment]
    # Change one sample's count: the batch's padded width of that block changes too.
    second_assignment[1][changed_block] = 32
    start = changed_block * config.patch_frames
    with torch.no_grad():
        first_video = tiny.decode(tiny.encode(video, first_assignment))
        second_video = tiny.decode(tiny.encode(video, second_assignment))
        first_train = tiny(video, first_assignment).reconstruction
        second_train = tiny(video, second_assignment).reconstruction
    assert torch.equal(first_video[:, :, :start], second_video[:, :, :start])
    assert torch.equal(first_train[:, :, :start], second_train[:, :, :start])
    assert not torch.equal(first_video[1, :, start:], second_video[1, :, start:])


def test_mixed_batch_matches_single(tiny):
    video = random_clips(3, tiny.config, seed=3)
    assignment = [(4, 32, 8, 24), (32, 4, 24, 8), (16, 16, 16, 16)]
    with torch.no_grad():
        batch_encoding = tiny.encode(video, assignment)
        batch_video = tiny.decode(batch_encoding)
        batch_train = tiny(video, assignment).reconstruction
        for sample, row in enumerate(assignment):
            alone = tiny.encode(video[sample : sample + 1], row)
            for block, count in enumerate(row):
                assert torch.equal(
                    alone.blocks[block].ids[0], batch_encoding.blocks[block].ids[sample, :count]
                )
            alone_video = tiny.decode(alone)
            torch.testing.assert_close(alone_video[0], batch_video[sample], atol=1e-5, rtol=0)
            alone_train = tiny(video[sample : sample + 1], row).reconstruction
            torch.testing.assert_close(alone_train[0], batch_train[sample], atol=1e-5, rtol=0)


def test_incremental_equals_full(tiny):
    config = tiny.config
    video = random_clips(2, config, seed=4)
    assignment = [(8, 16, 24, 32), (24, 4, 4, 16)]
    with torch.no_grad():
        full = tiny.encode(video, assignment)
        full_video = tiny.decode(full)
        encoder_cache = decoder_cache = None
        pieces = []
        for block in range(config.num_blocks):
            counts = [row[block] for row in assignment]
            encoded, encoder_cache = tiny.encode_block(
                block_frames(video, block, config.patch_frames), counts, encoder_cache
            )
            assert torch.equal(encoded.ids, full.blocks[block].ids)
            frames, decoder_cache = tiny.decode_block(encoded.ids, counts, decoder_cache)
            pieces.append(frames)
    assert encoder_cache.num_blocks == config.num_blocks
    assert torch.equal(torch.cat(pieces, dim=2), full_video)


def test_cache_branches_like_full_runs(tiny):
    config = tiny.config
    video = random_clips(1, config, seed=5)
    prefix = (16, 8)
    with torch.no_grad():
        encoder_cache = decoder_cache = None
        for block, count in enumerate(prefix):
            encoded, encoder_cache = tiny.encode_block(
                block_frames(video, block, config.patch_frames), count, encoder_cache
            )
            _, decoder_cache = tiny.decode_block(encoded.ids, count, decoder_cache)
        # Extend the same prefix with every candidate of block 2 at once through select().
        candidates = config.candidates
        repeat = torch.zeros(len(candidates), dtype=torch.long)
        branch_encoded, _ = tiny.encode_block(
            block_frames(video, 2, config.patch_frames).expand(len(candidates), -1, -1, -1, -1),
            list(candidates),
            encoder_cache.select(repeat),
        )
        branch_frames, _ = tiny.decode_block(
            branch_encoded.ids, list(candidates), decoder_cache.select(repeat)
        )
        for row, count in enumerate(candidates):
            full = tiny.encode(video, (*prefix, count, 4))
            assert torch.equal(full.blocks[2].ids[0], branch_encoded.ids[row, :count])
            full_video = tiny.decode(full)
            block_video = block_frames(full_video, 2, config.patch_frames)[0]
            torch.testing.assert_close(branch_frames[row], block_video, atol=1e-5, rtol=0)


def test_padding_never_reaches_quantizer():
    torch.manual_seed(0)
    model = Tokenizer(tokenizer_config("micro")).train()
    video = random_clips(3, model.config, seed=6)
    assignment = [(2, 8, 2, 4), (8, 2, 4, 2), (4, 4, 8, 8)]
    output = model(video, assignment)
    assert output.num_tokens == sum(map(sum, assignment))
    assert model.quantizer.restart_pool.shape == (output.num_tokens, model.config.code_dim)
    for block in output.encoding.blocks:
        assert bool((block.ids[~block.valid] == PAD_ID).all())
        assert bool((block.ids[block.valid] >= 0).all())


def test_losses_and_gradients():
    torch.manual_seed(0)
    model = Tokenizer(tokenizer_config("micro")).train()
    video = random_clips(2, model.config, seed=8)
    output = model(video, [(2, 4, 8, 2), (8, 8, 2, 2)])
    for value in (output.codebook_loss, output.commitment_loss, output.entropy_loss):
        assert torch.isfinite(value)
    assert float(output.perplexity) >= 1.0
    assert 1 <= output.used_codes <= model.config.codebook_size
    expected = output.codebook_loss + model.config.commitment_weight * output.commitment_loss
    assert torch.equal(output.quantizer_loss, expected)
    loss = (output.reconstruction - video).abs().mean() + output.quantizer_loss + 0.02 * output.entropy_loss
    loss.backward()
    assert model.patch_embedding.weight.grad.abs().sum() > 0
    assert model.query_init.project.weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0
    without = model(video, (2, 2, 2, 2), with_entropy=False)
    assert float(without.entropy_loss) == 0.0


def test_dead_code_restart():
    torch.manual_seed(0)
    config = TokenizerConfig.from_dict(
        {**tokenizer_config("micro").to_dict(), "dead_code_patience": 1}
    )
    model = Tokenizer(config).train()
    video = random_clips(2, config, seed=9)
    output = model(video, (2, 2, 2, 2))
    dead_before = config.codebook_size - output.used_codes
    assert dead_before > 0
    before = model.quantizer.codebook.detach().clone()
    restarted = model.restart_dead_codes()
    assert restarted == dead_before
    changed = (model.quantizer.codebook != before).any(dim=1)
    assert int(changed.sum()) == dead_before
    assert int(model.quantizer.steps_unused.max()) == 0
    assert model.restart_dead_codes() == 0


def test_input_errors(tiny):
    config = tiny.config
    video = random_clips(1, config)
    with pytest.raises(ValueError, match="expected \\(batch, 3, 16, 64, 64\\)"):
        tiny.encode(video[:, :, :8], (4, 4, 4, 4))
    with pytest.raises(ValueError, match="convert uint8 frames to float"):
        tiny.encode(video.to(torch.uint8), (4, 4, 4, 4))
    with pytest.raises(ValueError, match="count 5 at block 0, which is not a candidate"):
        tiny.encode(video, (5, 4, 4, 4))
    with pytest.raises(ValueError, match="got 2 assignments for a batch of 1 clips"):
        tiny.encode(video, [(4, 4, 4, 4), (4, 4, 4, 4)])
    encoding = tiny.encode(video, (4, 4, 4, 4))
    ids = [block.ids.clone() for block in encoding.blocks]
    ids[2][0, 1] = config.codebook_size
    with pytest.raises(ValueError, match=f"block 2 contains code id {config.codebook_size}"):
        tiny.decode(ids, (4, 4, 4, 4))
    cache = None
    for block in range(config.num_blocks):
        _, cache = tiny.encode_block(block_frames(video, block, 4), 4, cache)
    with pytest.raises(ValueError, match="already contains all 4 blocks"):
        tiny.encode_block(block_frames(video, 0, 4), 4, cache)


def test_save_and_load_pretrained(tmp_path, tiny, monkeypatch):
    tiny.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / "config.json").is_file()
    assert not list(tmp_path.glob("*.bin"))
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        stored = json.loads(handle.metadata()[Tokenizer.config_metadata_key])
    assert stored == tiny.config.to_dict()

    def reject_torch_load(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called while loading a checkpoint")

    monkeypatch.setattr(torch, "load", reject_torch_load)
    loaded = Tokenizer.from_pretrained(str(tmp_path)).eval()
    from_file = Tokenizer.from_safetensors(tmp_path / "model.safetensors").eval()
    assert loaded.config == tiny.config
    assert from_file.config == tiny.config
    video = random_clips(1, tiny.config, seed=11)
    with torch.no_grad():
        expected = tiny.decode(tiny.encode(video, (8, 8, 8, 8)))
        assert torch.equal(loaded.decode(loaded.encode(video, (8, 8, 8, 8))), expected)
        assert torch.equal(from_file.decode(from_file.encode(video, (8, 8, 8, 8))), expected)


def test_from_safetensors_without_config(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="has no 'evatok_tokenizer_config' metadata"):
        Tokenizer.from_safetensors(path)


def test_forward_under_bf16_autocast():
    torch.manual_seed(0)
    model = Tokenizer(tokenizer_config("micro")).train()
    video = random_clips(2, model.config, seed=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(video, [(2, 4, 8, 2), (8, 2, 2, 4)])
    assert output.quantizer_loss.dtype == torch.float32
    assert output.entropy_loss.dtype == torch.float32
    loss = (output.reconstruction.float() - video).abs().mean() + output.quantizer_loss
    loss.backward()
    assert torch.isfinite(model.quantizer.codebook.grad).all()
    assert model.patch_embedding.weight.grad.abs().sum() > 0
