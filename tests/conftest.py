"""Shared fixtures: the real videos beside the repository and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("EVATOK_SHARED", REPO_ROOT.parent / "shared"))
VIDEOS_DIR = SHARED_DIR / "videos"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail the whole run in CI when the real test videos are missing, instead of skipping."""
    if os.environ.get("CI") and not (VIDEOS_DIR / "MANIFEST.tsv").is_file():
        raise pytest.UsageError(
            f"CI is set but the test videos are missing: {VIDEOS_DIR / 'MANIFEST.tsv'} not found. "
            "Place the shared/ folder beside the repository or set EVATOK_SHARED."
        )


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    """Return the folder of real test videos, or skip outside CI when it is absent."""
    if not (VIDEOS_DIR / "MANIFEST.tsv").is_file():
        pytest.skip(f"real test videos not found at {VIDEOS_DIR} (set EVATOK_SHARED)")
    return VIDEOS_DIR


@pytest.fixture(scope="session")
def clips_dir(videos_dir: Path) -> Path:
    """Return the folder of real clips."""
    return videos_dir / "clips"
