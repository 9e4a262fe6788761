"""Tests of TokenizedVideo: save/load round trips, across processes, and corrupt files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from evatok.models import Tokenizer
from evatok.presets import tokenizer_config
from evatok.tokens import FORMAT_VERSION, METADATA_KEY, TokenizedVideo

CANDIDATES = (2, 4, 8)


def make_tokens(**changes) -> TokenizedVideo:
    assignments = torch.tensor([[2, 4, 8, 2], [8, 8, 2, 4]])
    total = int(assignments.sum())
    fields = dict(
        ids=torch.arange(total) % 64,
        assignments=assignments,
        codebook_size=64,
        candidates=CANDIDATES,
        frames=16,
        height=32,
        width=32,
        fps=24.0,
        crop="center",
        source_frames=27,
    )
    fields.update(changes)
    return TokenizedVideo(**fields)


def write_raw(path, ids, assignments, meta) -> None:
    save_file(
        {"ids": ids, "assignments": assignments}, str(path), metadata={METADATA_KEY: json.dumps(meta)}
    )


def assert_same(first: TokenizedVideo, second: TokenizedVideo) -> None:
    assert torch.equal(first.ids, second.ids)
    assert torch.equal(first.assignments, second.assignments)
    assert first.metadata() == second.metadata()


def test_round_trip(tmp_path):
    tokens = make_tokens()
    path = tmp_path / "video.tokens.safetensors"
    tokens.save(path)
    loaded = TokenizedVideo.load(path)
    assert_same(tokens, loaded)
    assert loaded.num_clips == 2
    assert loaded.num_blocks == 4
    assert loaded.num_tokens == 38
    assert [ids.tolist() for ids in loaded.clip_ids(1)] == [
        list(range(16, 24)), list(range(24, 32)), [32, 33], [34, 35, 36, 37]
    ]
    assert not list(tmp_path.glob(".*.tmp"))


def test_round_trip_across_processes(tmp_path):
    path_here = tmp_path / "here.safetensors"
    path_there = tmp_path / "there.safetensors"
    tokens = make_tokens(fps=None, crop="random")
    tokens.save(path_here)
    script = textwrap.dedent(
        f"""
        import json, sys
        import torch
        from evatok.tokens import TokenizedVideo
        tokens = TokenizedVideo.load({str(path_here)!r})
        tokens.save({str(path_there)!r})
        print(json.dumps({{"ids": tokens.ids.tolist(), "meta": tokens.metadata()}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    reported = json.loads(result.stdout)
    assert reported["ids"] == tokens.ids.tolist()
    assert reported["meta"] == tokens.metadata()
    assert_same(tokens, TokenizedVideo.load(path_there))


def test_encode_save_load_decode(tmp_path):
    torch.manual_seed(0)
    config = tokenizer_config("micro")
    model = Tokenizer(config).eval()
    video = torch.rand(3, 3, config.frames, config.height, config.width) * 2 - 1
    assignment = [(2, 4, 8, 2), (8, 2, 2, 4), (4, 4, 4, 4)]
    with torch.no_grad():
        encoding = model.encode(video, assignment)
        expected = model.decode(encoding)
    tokens = TokenizedVideo.from_encoding(
        encoding,
        codebook_size=config.codebook_size,
        candidates=config.candidates,
        frames=config.frames,
        height=config.height,
        width=config.width,
        fps=8.0,
        crop="center",
        source_frames=40,
    )
    tokens.save(tmp_path / "clip.safetensors")
    loaded = TokenizedVideo.load(tmp_path / "clip.safetensors")
    with torch.no_grad():
        decoded = model.decode(loaded.padded_blocks(), loaded.assignments)
    assert torch.equal(decoded, expected)


def test_padded_blocks_layout():
    blocks = make_tokens().padded_blocks()
    assert [tuple(block.shape) for block in blocks] == [(2, 8), (2, 8), (2, 8), (2, 4)]
    assert blocks[0][0].tolist() == [0, 1, -1, -1, -1, -1, -1, -1]
    assert blocks[3][1].tolist() == [34, 35, 36, 37]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ids": torch.arange(37)}, "there are 37 code ids but the assignments need 38"),
        ({"ids": torch.full((38,), 64)}, "code id 64 is outside the codebook \\[0, 63\\]"),
        ({"ids": torch.full((38,), -1)}, "code id -1 is outside the codebook"),
        ({"assignments": torch.tensor([[2, 4, 8, 2], [8, 8, 3, 3]])}, "token counts \\[3\\] that are not candidates"),
        ({"source_frames": 33}, "source_frames=33 does not fit 2 consecutive clips of 16 frames"),
        ({"source_frames": 16}, "expected a count in \\[17, 32\\]"),
        ({"frames": 18}, "frames=18 is not a multiple of the 4 blocks per clip"),
        ({"height": 0}, "height is 0, expected at least 1"),
        ({"fps": -1.0}, "fps is -1.0, expected a positive frame rate or None"),
    ],
)
def test_invalid_fields(changes, message):
    if "ids" not in changes and "assignments" in changes:
        changes["ids"] = torch.zeros(int(changes["assignments"].sum()), dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        make_tokens(**changes)


def valid_meta() -> dict:
    return make_tokens().metadata()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: meta.update(format_version=2), "token format version 2 is not supported"),
        (lambda meta: meta.pop("height"), "metadata field 'height' is None, expected int"),
        (lambda meta: meta.update(frames="16"), "metadata field 'frames' is '16', expected int"),
        (lambda meta: meta.update(width=True), "metadata field 'width' is True, expected int"),
        (lambda meta: meta.update(fps="fast"), "metadata field 'fps' is 'fast'"),
        (lambda meta: meta.update(candidates="2,4,8"), "metadata field 'candidates' is '2,4,8'"),
        (lambda meta: meta.update(codebook_size=32), "code id 32 is outside the codebook \\[0, 31\\]"),
    ],
)
def test_corrupt_metadata(tmp_path, edit, message):
    tokens = make_tokens()
    meta = valid_meta()
    edit(meta)
    path = tmp_path / "bad.safetensors"
    write_raw(path, tokens.ids.int(), tokens.assignments.int(), meta)
    with pytest.raises(ValueError, match=message) as error:
        TokenizedVideo.load(path)
    assert str(path) in str(error.value)


def test_corrupt_files(tmp_path):
    tokens = make_tokens()
    good = tmp_path / "good.safetensors"
    tokens.save(good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        TokenizedVideo.load(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        TokenizedVideo.load(garbage)

    with pytest.raises(ValueError, match="not found"):
        TokenizedVideo.load(tmp_path / "missing.safetensors")

    no_meta = tmp_path / "no_meta.safetensors"
    save_file({"ids": tokens.ids.int(), "assignments": tokens.assignments.int()}, str(no_meta))
    with pytest.raises(ValueError, match="metadata key 'evatok_tokens' is missing"):
        TokenizedVideo.load(no_meta)

    bad_json = tmp_path / "bad_json.safetensors"
    save_file(
        {"ids": tokens.ids.int(), "assignments": tokens.assignments.int()},
        str(bad_json),
        metadata={METADATA_KEY: "{not json"},
    )
    with pytest.raises(ValueError, match="metadata is not valid JSON"):
        TokenizedVideo.load(bad_json)

    missing_tensor = tmp_path / "missing_tensor.safetensors"
    save_file({"ids": tokens.ids.int()}, str(missing_tensor), metadata={METADATA_KEY: json.dumps(valid_meta())})
    with pytest.raises(ValueError, match="tensor 'assignments' is missing"):
        TokenizedVideo.load(missing_tensor)

    float_ids = tmp_path / "float_ids.safetensors"
    write_raw(float_ids, tokens.ids.float(), tokens.assignments.int(), valid_meta())
    with pytest.raises(ValueError, match="tensor 'ids' has dtype torch.float32, expected int32"):
        TokenizedVideo.load(float_ids)

    flat_assignments = tmp_path / "flat.safetensors"
    write_raw(flat_assignments, tokens.ids.int(), tokens.assignments.flatten().int(), valid_meta())
    with pytest.raises(ValueError, match="expected \\(num_clips, num_blocks\\)"):
        TokenizedVideo.load(flat_assignments)


def test_format_version_constant():
    assert make_tokens().metadata()["format_version"] == FORMAT_VERSION == 1


def read_frames(path, count: int) -> torch.Tensor:
    """Decode the first ``count`` frames of a real video as uint8 (frames, height, width, 3)."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            if len(frames) == count:
                break
    return torch.stack(frames)


def test_real_video_tokens_across_processes(tmp_path, clips_dir):
    """Tokenize a real clip here, decode its token file in another process, compare."""
    torch.manual_seed(0)
    config = tokenizer_config("micro")
    model = Tokenizer(config).eval()
    model.save_pretrained(tmp_path / "model")

    source_frames = 20  # two clips of 16 frames, the second padded by repeating the last frame
    frames = read_frames(clips_dir / "infotok__0_360p.mp4", source_frames)
    assert frames.shape == (source_frames, 360, 576, 3)
    # Centre square crop, then resize to the preset's clip size.
    height, width = frames.shape[1:3]
    left = (width - height) // 2
    square = frames[:, :, left : left + height].permute(3, 0, 1, 2).float() / 127.5 - 1
    square = torch.nn.functional.interpolate(square, size=(config.height, config.width), mode="area")
    padded = torch.cat([square, square[:, -1:].expand(-1, 2 * config.frames - source_frames, -1, -1)], dim=1)
    clips = torch.stack(padded.split(config.frames, dim=1))
    with torch.no_grad():
        encoding = model.encode(clips, [(8, 4, 2, 2), (2, 2, 4, 8)])
        expected = torch.cat(list(model.decode(encoding)), dim=1)[:, :source_frames]
    tokens = TokenizedVideo.from_encoding(
        encoding,
        codebook_size=config.codebook_size,
        candidates=config.candidates,
        frames=config.frames,
        height=config.height,
        width=config.width,
        fps=30.0,
        crop="center",
        source_frames=source_frames,
    )
    tokens.save(tmp_path / "video.safetensors")

    script = textwrap.dedent(
        f"""
        import torch
        from safetensors.torch import save_file
        from evatok.models import Tokenizer
        from evatok.tokens import TokenizedVideo
        torch.set_num_threads({torch.get_num_threads()})
        model = Tokenizer.from_pretrained({str(tmp_path / "model")!r}).eval()
        tokens = TokenizedVideo.load({str(tmp_path / "video.safetensors")!r})
        with torch.no_grad():
            clips = model.decode(tokens.padded_blocks(), tokens.assignments)
        video = torch.cat(list(clips), dim=1)[:, : tokens.source_frames]
        save_file({{"video": video.contiguous()}}, {str(tmp_path / "decoded.safetensors")!r})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file

    decoded = load_file(str(tmp_path / "decoded.safetensors"))["video"]
    assert decoded.shape == (3, source_frames, config.height, config.width)
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)
