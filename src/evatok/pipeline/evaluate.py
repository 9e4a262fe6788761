"""The pipeline's evaluation stage: the final tokenizer on the held-out files, adaptive versus uniform.

Points, all on the same held-out clips (centre crop, the run's frame sampling):

- adaptive: the final tokenizer with the router's assignment of each clip;
- baseline: the fixed-length tokenizer trained with the same recipe at the candidate count nearest
  to the router's mean, at that count (the matched-length comparison);
- the final tokenizer at every uniform count, a curve that lies outside the assignments it was
  trained on, so it is drawn for reference and not used for the comparison.

Tokens saved at equal LPIPS come from the proxy's curve (one model that was trained for every
assignment), where the uniform curve is interpolated at the router's LPIPS.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evatok.pipeline.stages import PipelineSettings, StageContext
from evatok.pipeline.state import write_json_atomic

logger = logging.getLogger(__name__)

SPLIT_NAME = "held-out files"


def load_i3d(ctx: StageContext) -> Any:
    """Return the I3D feature network, or None with a note when its weights are not cached."""
    from evatok.metrics import I3DFeatures
    from evatok.models.pretrained import MissingWeightsError

    try:
        return I3DFeatures()
    except MissingWeightsError as error:
        ctx.state.add_note(f"rFVD not computed: the I3D weights are missing ({error}); run `evatok weights fetch`")
        return None


def point_of(result: dict[str, Any], label: str, kind: str, tokenizer: str, note: str | None = None) -> dict[str, Any]:
    """Return one row of the comparison table from an evaluation result."""
    summary = result["summary"]
    return {
        "label": label, "kind": kind, "tokenizer": tokenizer, "tokens": summary["tokens"],
        "psnr": summary["psnr"], "ssim": summary["ssim"], "lpips": summary["lpips"], "rfvd": summary["rfvd"],
        "clips": summary["clips"], "assignment": result["protocol"]["assignment"], "note": note,
        "rfvd_reason": result["protocol"]["fvd"]["reason"],
    }


def proxy_saving(ctx: StageContext) -> dict[str, Any]:
    """Return the router's tokens and the uniform tokens at its LPIPS on the proxy's curve, if drawn."""
    path = ctx.path("curve", "curve.json")
    if not path.is_file():
        return {}
    curve = json.loads(path.read_text())
    router = curve.get("router")
    if not router:
        return {}
    return {
        "tokens_at_equal_lpips": router.get("uniform_tokens"),
        "tokens_saved_percent": router.get("saving_percent"),
        "proxy_router_tokens": router.get("tokens"),
        "proxy_router_lpips": router.get("lpips"),
    }


def to_uint8_frames(video: torch.Tensor, real_frames: int) -> np.ndarray:
    """Convert one clip (C, T, H, W) in [-1, 1] to uint8 (T, H, W, 3), real frames only."""
    frames = ((video[:, :real_frames].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def sampled_fps(path: str | Path, spec: Any) -> float | None:
    """Return the frame rate of a clip's sampled frames (the source rate over the stride, or spec.fps)."""
    from evatok.video.io import VideoDecodeError, probe

    if spec.fps is not None:
        return float(spec.fps)
    try:
        return probe(path).fps / spec.frame_stride
    except (VideoDecodeError, OSError):
        return None


def write_samples(ctx: StageContext, model: Any, router: Any, dataset: Any, rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Save the originals and reconstructions of the clips with the fewest and the most tokens."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["tokens"], rows[i]["lpips"]))
    picks = [("easy", i) for i in order[:count]]
    picks += [("hard", i) for i in reversed(order[-count:]) if i not in order[:count]]
    folder = ctx.path("eval", "samples")
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for number, (kind, index) in enumerate(picks):
        item = dataset[index]
        video = item["video"][None]
        assignment = router.predict(video)[0]
        with torch.no_grad():
            reconstruction = model(video, [assignment], with_entropy=False).reconstruction[0]
        real = int(item["mask"].sum())
        stem = f"{kind}-{number}"
        np.save(folder / f"{stem}-original.npy", to_uint8_frames(item["video"], real))
        np.save(folder / f"{stem}-reconstruction.npy", to_uint8_frames(reconstruction, real))
        samples.append({
            "kind": kind, "clip_key": rows[index]["clip_key"], "assignment": list(assignment),
            "fps": sampled_fps(dataset.items[index][0], dataset.spec),
            "tokens": int(sum(assignment)), "lpips": rows[index]["lpips"],
            "original": f"eval/samples/{stem}-original.npy", "reconstruction": f"eval/samples/{stem}-reconstruction.npy",
        })
    return samples


def run_eval(ctx: StageContext) -> dict[str, Any]:
    """Evaluate the final tokenizer (adaptive), the baseline and the uniform curve; write eval/final.json."""
    from evatok.evaluation import AssignmentRule, RouterRule, evaluate_reconstruction
    from evatok.metrics import LPIPSMetric
    from evatok.models.router import Router
    from evatok.models.tokenizer import Tokenizer
    from evatok.training.proxy_eval import held_out_dataset

    config = ctx.config
    settings = PipelineSettings.from_config(config)
    dataset = held_out_dataset(config)
    lpips = LPIPSMetric(config.loss.perceptual_net)
    i3d = load_i3d(ctx)
    model = Tokenizer.from_pretrained(ctx.path("tokenizer", "final")).eval()
    router = Router.load(ctx.path("router"))
    real_stats = ctx.path("eval", "real_i3d_stats.npz")
    ctx.path("eval").mkdir(parents=True, exist_ok=True)

    def evaluate(tokenizer: Any, rule: Any, with_fvd: bool, name: str) -> dict[str, Any]:
        logger.info("evaluating %s on %d held-out clips", name, len(dataset))
        result = evaluate_reconstruction(
            tokenizer, dataset, rule, lpips, i3d=i3d if with_fvd else None, fvd_min_clips=settings.fvd_min_clips,
            real_stats=real_stats if with_fvd else None, split=SPLIT_NAME,
        )
        write_json_atomic(ctx.path("eval", f"{name}.json"), result)
        return result

    adaptive = evaluate(model, RouterRule(router, "the run's router"), True, "adaptive")
    points = [point_of(adaptive, "adaptive (router)", "router", "final")]
    comparison: dict[str, Any] = {"adaptive_tokens": adaptive["summary"]["tokens"]}

    choice_path = ctx.path("baseline", "choice.json")
    if ctx.state.status("baseline") == "done" and choice_path.is_file():
        choice = json.loads(choice_path.read_text())
        baseline_model = Tokenizer.from_pretrained(ctx.path("baseline", "final")).eval()
        rule = AssignmentRule("uniform", model.space.uniform(choice["count"]))
        baseline = evaluate(baseline_model, rule, True, "baseline")
        label = f"baseline uniform {choice['count']}"
        points.append(point_of(baseline, label, "baseline", "baseline", "fixed-length tokenizer, same recipe and steps"))
        summary = baseline["summary"]
        comparison.update(
            baseline_tokens=summary["tokens"], baseline_label=label,
            lpips_saving_percent=100.0 * (summary["lpips"] - adaptive["summary"]["lpips"]) / summary["lpips"],
        )

    for count in model.space.candidates:
        rule = AssignmentRule("uniform", model.space.uniform(count))
        result = evaluate(model, rule, False, f"uniform-{count}")
        points.append(point_of(result, f"uniform {count}", "uniform", "final", "final tokenizer outside its routed assignments"))

    comparison.update(proxy_saving(ctx))
    comparison["source"] = (
        "adaptive vs baseline: the same held-out clips; tokens at equal LPIPS: the proxy tokenizer's "
        "uniform curve on the held-out labelled clips, linearly interpolated at the router's LPIPS"
    )
    root = Path(config.data.videos)
    rows = [
        {"clip_key": f"{Path(row['path']).relative_to(root).as_posix()}#{row['clip']}",
         "assignment": row["assignment"], "tokens": int(row["tokens"]), "lpips": row["lpips"]}
        for row in adaptive["clips"]
    ]
    samples = write_samples(ctx, model, router, dataset, rows, settings.samples)
    protocol = {
        "split": SPLIT_NAME,
        "clips": len(dataset),
        "files": len({row["path"] for row in adaptive["clips"]}),
        "clip": adaptive["protocol"]["clip"],
        "frame_stride": adaptive["protocol"]["frame_stride"],
        "crop": adaptive["protocol"]["crop"],
        "average": adaptive["protocol"]["average"],
        "lpips": adaptive["protocol"]["lpips"].get("network", "lpips"),
        "fvd": adaptive["protocol"]["fvd"].get("reason"),
    }
    final = {"protocol": protocol, "points": points, "comparison": comparison, "assignments": rows, "samples": samples}
    write_json_atomic(ctx.path("eval", "final.json"), final)
    return {"adaptive_tokens": round(comparison["adaptive_tokens"], 2), "adaptive_lpips": round(adaptive["summary"]["lpips"], 4)}
