"""The converted I3D classifies real Kinetics footage; the shipped Kinetics-400 class names."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evatok.data import kinetics400_classes
from evatok.models.pretrained import load_network

PANCAKE_CLIP = "decord__flipping_a_pancake.mkv"
PANCAKE_INDEX = 129


def decode_frames(path, start: int, count: int) -> np.ndarray:
    """Decode `count` consecutive frames from `start` as uint8 RGB (T, H, W, 3) with PyAV."""
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


def resize_center_crop(frames: np.ndarray, size: int = 224) -> torch.Tensor:
    """Resize the shorter side to `size` (bilinear), centre-crop, return (1, 3, T, size, size) in [-1, 1]."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    height, width = video.shape[-2:]
    scale = size / min(height, width)
    video = F.interpolate(
        video,
        size=(round(height * scale), round(width * scale)),
        mode="bilinear",
        align_corners=False,
    )
    top = (video.shape[-2] - size) // 2
    left = (video.shape[-1] - size) // 2
    video = video[:, :, top : top + size, left : left + size]
    return video.permute(1, 0, 2, 3)[None].clamp(-1.0, 1.0)


def test_kinetics_names_are_the_400_classes():
    names = list(kinetics400_classes())
    assert len(names) == 400
    assert len(set(names)) == 400
    assert names == sorted(names, key=str.lower)
    assert names[PANCAKE_INDEX] == "flipping pancake"
    assert names[0] == "abseiling"
    assert names[-1] == "zumba"


@pytest.mark.slow
def test_i3d_classifies_pancake_clip(clips_dir):
    network = load_network("i3d-k400")
    frames = decode_frames(clips_dir / PANCAKE_CLIP, start=123, count=64)
    assert frames.shape == (64, 240, 426, 3)
    with torch.no_grad():
        logits = network(resize_center_crop(frames))
    assert logits.shape == (1, 400)
    top5 = logits[0].topk(5).indices.tolist()
    names = list(kinetics400_classes())
    assert names[top5[0]] == "flipping pancake", [names[i] for i in top5]
    # The winning margin guards against a conversion that is only barely right.
    ordered = logits[0].sort(descending=True).values
    assert float(ordered[0] - ordered[1]) > 5.0


def test_i3d_rejects_too_short_clip():
    network = load_network("i3d-k400")
    with pytest.raises(ValueError, match="too small"):
        network(torch.zeros(1, 3, 4, 224, 224))
