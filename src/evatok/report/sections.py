"""Build the report's sections from a run folder's files, drawing the figures they show."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from evatok.report import figures
from evatok.report.document import (
    NONE_TEXT,
    Block,
    BulletList,
    Figure,
    Paragraph,
    Section,
    Table,
    format_assignment,
    format_metric,
    format_seconds,
    format_value,
)
from evatok.report.inputs import (
    CURVE_FILE,
    CURVE_PLOT_FILE,
    FINAL_FILE,
    PIPELINE_FILE,
    PROXY_EVAL_FILE,
    ROUTER_EVAL_FILE,
    SPLIT_FILE,
    STAGES,
    RunFiles,
)

logger = logging.getLogger(__name__)

FIGURES_DIR = "report_files"  # figures drawn by the report, inside the run folder

# Errors a malformed (but parseable) input file can raise while a section is built.
SECTION_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError)

# Metric column -> the eval/final.json protocol key that explains a null value of it.
PROTOCOL_KEYS = {"psnr": "psnr", "ssim": "ssim", "lpips": "lpips", "rfvd": "fvd"}
METRIC_NAMES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "rfvd": "rFVD"}


def _key_value_table(values: Mapping[str, Any], caption: str | None = None) -> Table:
    return Table(["key", "value"], [[str(key), format_value(value)] for key, value in values.items()], caption)


# ----- 1. run header ------------------------------------------------------------------------------


def _stage_table(stages: Mapping[str, Any]) -> Table:
    names = list(STAGES) + [name for name in stages if name not in STAGES]
    rows = []
    total = 0.0
    for name in names:
        entry = stages.get(name)
        if not isinstance(entry, Mapping):
            rows.append([name, "not listed", NONE_TEXT, NONE_TEXT])
            continue
        seconds = entry.get("seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            total += float(seconds)
        rows.append([name, str(entry.get("status", "unknown")), format_seconds(seconds),
                     format_value(entry.get("finished"))])
    rows.append(["total", "", format_seconds(total), ""])
    return Table(["stage", "status", "wall time", "finished"], rows, "Stages")


def _split_paragraph(run: RunFiles) -> Paragraph:
    split = run.split
    if split is None:
        return Paragraph(run.absence(SPLIT_FILE, "split"), missing=True)
    return Paragraph(
        f"Split by file: {len(split['train'])} training files, {len(split['held_out'])} held-out files "
        f"(held-out fraction {format_value(split.get('held_out_fraction'))}, split seed "
        f"{format_value(split.get('split_seed'))}) under {format_value(split.get('root'))}."
    )


def run_blocks(run: RunFiles) -> list[Block]:
    """Describe the run: its arguments, every stage's status and wall time, the split and the notes."""
    blocks: list[Block] = []
    pipeline = run.pipeline
    if pipeline is None:
        blocks.append(Paragraph(
            f"{PIPELINE_FILE} " + (f"could not be read: {run.errors[PIPELINE_FILE]}" if PIPELINE_FILE in run.errors
                                    else "not found: the pipeline has not started in this folder"),
            missing=True,
        ))
    else:
        fields = {key: pipeline.get(key) for key in ("run", "preset", "videos", "command")}
        blocks.append(_key_value_table(fields))
        blocks.append(_stage_table(pipeline.get("stages") or {}))
        notes = [str(note) for note in pipeline.get("notes") or []]
        if notes:
            blocks.append(Paragraph("Notes:"))
            blocks.append(BulletList(notes))
    blocks.append(_split_paragraph(run))
    return blocks


# ----- 2. quality-cost curves -----------------------------------------------------------------------


def _proxy_curve_table(curve: Mapping[str, Any]) -> Table:
    rows = []
    points = list(curve.get("uniform") or []) + list(curve.get("max_reward") or [])
    if curve.get("router"):
        points.append(curve["router"])
    for point in points:
        if point.get("kind") == "uniform":
            saving = NONE_TEXT
        elif point.get("saving_percent") is None:
            saving = "outside the uniform range"
        else:
            saving = (f"{point['saving_percent']:+.1f}% (uniform needs "
                      f"{format_metric(point.get('uniform_tokens'), 'tokens')})")
        rows.append([str(point.get("label")), format_value(point.get("clips")),
                     format_metric(point.get("tokens"), "tokens"), format_metric(point.get("lpips"), "lpips"),
                     format_metric(point.get("psnr"), "psnr"), saving])
    header = ["point", "clips", "mean tokens", "LPIPS", "PSNR (dB)", "tokens saved at equal LPIPS"]
    return Table(header, rows, "Proxy tokenizer: points computed from the stage 2 labels")


def proxy_curve_blocks(run: RunFiles, figure_dir: Path) -> list[Block]:
    """Show the proxy curve (written by the router stage from the labels): curve/curve.png and its points.

    The plot is redrawn from curve/curve.json when the PNG is absent.
    """
    plot_path = run.run_dir / CURVE_PLOT_FILE
    if run.curve is None and not plot_path.is_file():
        return [Paragraph(run.absence(CURVE_FILE, "router"), missing=True)]
    if not plot_path.is_file():
        plot_path = figures.plot_proxy_curve(run.curve, figure_dir / "proxy_curve.png")
    blocks: list[Block] = [Figure(plot_path, "Proxy tokenizer: mean tokens per clip against LPIPS and PSNR for "
                                             "uniform assignments, the max-reward sweep and the router.")]
    if run.curve is not None:
        blocks.append(_proxy_curve_table(run.curve))
        blocks.append(_key_value_table(run.curve.get("protocol") or {}, "Proxy curve protocol"))
    return blocks


def final_curve_blocks(run: RunFiles, figure_dir: Path) -> list[Block]:
    """Plot the final tokenizer's points from eval/final.json."""
    if run.final is None:
        return [Paragraph(run.absence(FINAL_FILE, "eval"), missing=True)]
    points = run.final.get("points") or []
    if not points:
        return [Paragraph(f"{FINAL_FILE} lists no points.", missing=True)]
    path = figures.plot_final_curve(points, figure_dir / "final_curve.png")
    return [Figure(path, "Final tokenizer on the held-out clips: mean tokens per clip against LPIPS and PSNR "
                         "(numbers in the table under Reconstruction quality).")]


# ----- 3. router ---------------------------------------------------------------------------------------


def router_blocks(run: RunFiles) -> list[Block]:
    """Show the router's held-out top-1 / top-5 accuracy and reward percentile against uniform."""
    result = run.router_eval
    if result is None:
        return [Paragraph(run.absence(ROUTER_EVAL_FILE, "router"), missing=True)]
    uniform = format_assignment(result.get("uniform_assignment"))
    rows = [
        ["top-1 accuracy (%)", format_metric(result.get("top1"), "percent")],
        ["top-5 accuracy (%)", format_metric(result.get("top5"), "percent")],
        ["reward percentile of the router's choice", format_metric(result.get("percentile"), "percent")],
        [f"reward percentile of the best single uniform assignment {uniform}",
         format_metric(result.get("uniform_percentile"), "percent")],
    ]
    if "uniform_train_percentile" in result:
        rows.append(["the same uniform assignment's percentile on the training clips",
                     format_metric(result.get("uniform_train_percentile"), "percent")])
    rows.append(["held-out clips", format_value(result.get("clips"))])
    if "unscored_clips" in result:
        rows.append(["clips without a score", format_value(result.get("unscored_clips"))])
    caption = ("Router on held-out clips (percentile: rank of the chosen assignment's reward among every "
               "assignment of the clip, mean over clips)")
    return [Table(["metric", "value"], rows, caption)]


# ----- 4. chosen counts ---------------------------------------------------------------------------------


def _candidate_counts(run: RunFiles) -> list[int]:
    """Return the token counts per block the proxy was evaluated at, which are the candidate counts."""
    if not run.proxy_eval or not isinstance(run.proxy_eval[-1], Mapping):
        return []
    counts = run.proxy_eval[-1].get("counts")
    if not isinstance(counts, Mapping):
        return []
    return sorted(int(count) for count in counts if str(count).isdigit())


def assignment_blocks(run: RunFiles, figure_dir: Path) -> list[Block]:
    """Draw the map of chosen counts per clip and block and the histogram of tokens per clip."""
    if run.final is None:
        return [Paragraph(run.absence(FINAL_FILE, "eval"), missing=True)]
    assignments = run.final.get("assignments") or []
    if not assignments:
        return [Paragraph(f"{FINAL_FILE} lists no assignments.", missing=True)]
    totals = [sum(int(count) for count in item["assignment"]) for item in assignments]
    summary = Paragraph(
        f"{len(assignments)} held-out clips: {min(totals)} to {max(totals)} tokens per clip, "
        f"mean {format_metric(sum(totals) / len(totals), 'tokens')}."
    )
    heatmap = figures.plot_assignment_map(assignments, figure_dir / "assignment_map.png", _candidate_counts(run))
    histogram = figures.plot_tokens_histogram(assignments, figure_dir / "tokens_histogram.png")
    return [
        summary,
        Figure(heatmap, "Router's token count per clip (rows, fewest tokens on top) and block (columns)."),
        Figure(histogram, "Total tokens per held-out clip."),
    ]


# ----- 5. samples ----------------------------------------------------------------------------------------


def _gif_path(original: Path) -> Path:
    stem = original.stem
    base = stem[: -len("-original")] if stem.endswith("-original") else f"{stem}-side-by-side"
    return original.with_name(f"{base}.gif")


def _sample_block(run: RunFiles, sample: Mapping[str, Any]) -> Block:
    original_path = run.run_dir / str(sample["original"])
    reconstruction_path = run.run_dir / str(sample["reconstruction"])
    caption = (
        f"{sample.get('kind', 'sample')}: {sample.get('clip_key')}, assignment "
        f"{format_assignment(sample.get('assignment'))}, {format_value(sample.get('tokens'))} tokens, "
        f"LPIPS {format_metric(sample.get('lpips'), 'lpips')}. Left: original, right: reconstruction."
    )
    try:
        original = figures.load_frames(original_path)
        reconstruction = figures.load_frames(reconstruction_path)
        fps = sample.get("fps")
        frame_ms = round(1000 / fps) if isinstance(fps, (int, float)) and fps > 0 else figures.GIF_FRAME_MS
        gif = figures.write_side_by_side_gif(original, reconstruction, _gif_path(original_path), frame_ms)
    except (OSError, ValueError) as error:
        logger.warning("report: sample %s skipped: %s", sample.get("clip_key"), error)
        return Paragraph(f"Sample {sample.get('clip_key')} could not be drawn: {error}", missing=True)
    return Figure(gif, caption)


def sample_blocks(run: RunFiles) -> list[Block]:
    """Write and show a side-by-side GIF of each easy and hard sample clip."""
    if run.final is None:
        return [Paragraph(run.absence(FINAL_FILE, "eval"), missing=True)]
    samples = run.final.get("samples") or []
    if not samples:
        return [Paragraph(f"{FINAL_FILE} lists no samples.", missing=True)]
    return [_sample_block(run, sample) for sample in samples]


# ----- 6. reconstruction tables --------------------------------------------------------------------------


def _comparison_text(comparison: Mapping[str, Any]) -> str:
    label = str(comparison.get("baseline_label", "the baseline"))
    text = (f"Adaptive uses {format_metric(comparison.get('adaptive_tokens'), 'tokens')} tokens per clip vs "
            f"{format_metric(comparison.get('baseline_tokens'), 'tokens')} for {label}.")
    if comparison.get("lpips_saving_percent") is not None:
        text += f" LPIPS saving against {label}: {format_metric(comparison['lpips_saving_percent'], 'percent')}%."
    if comparison.get("tokens_at_equal_lpips") is not None:
        text += (f" At equal LPIPS uniform needs {format_metric(comparison['tokens_at_equal_lpips'], 'tokens')} "
                 f"tokens (saving {format_metric(comparison.get('tokens_saved_percent'), 'percent')}%).")
    else:
        text += " At equal LPIPS there is no uniform comparison: the adaptive LPIPS is outside the uniform range."
    if comparison.get("source"):
        text += f" Computed as: {comparison['source']}."
    return text


def _points_table(points: list[Mapping[str, Any]]) -> Table:
    rows = []
    for point in points:
        rows.append([
            str(point.get("label")), format_value(point.get("tokenizer")), format_value(point.get("assignment")),
            format_value(point.get("clips")), format_metric(point.get("tokens"), "tokens"),
            format_metric(point.get("psnr"), "psnr"), format_metric(point.get("ssim"), "ssim"),
            format_metric(point.get("lpips"), "lpips"), format_metric(point.get("rfvd"), "rfvd"),
            format_value(point.get("note")),
        ])
    header = ["point", "tokenizer", "assignment", "clips", "mean tokens", "PSNR (dB)", "SSIM", "LPIPS", "rFVD", "note"]
    return Table(header, rows, "Final tokenizer and baseline on the held-out clips")


def _null_reasons(points: list[Mapping[str, Any]], protocol: Mapping[str, Any]) -> list[str]:
    reasons = []
    for metric, key in PROTOCOL_KEYS.items():
        if not any(point.get(metric) is None for point in points):
            continue
        reason = protocol.get(key)
        text = f"{METRIC_NAMES[metric]} is '{NONE_TEXT}' where it was not computed"
        reasons.append(f"{text}; protocol: {format_value(reason)}" if reason is not None else f"{text}.")
    return reasons


def final_table_blocks(run: RunFiles) -> list[Block]:
    """Tabulate the final points, the comparison sentence and the protocol of every number."""
    if run.final is None:
        return [Paragraph(run.absence(FINAL_FILE, "eval"), missing=True)]
    points = list(run.final.get("points") or [])
    protocol = run.final.get("protocol") or {}
    blocks: list[Block] = [_points_table(points)]
    comparison = run.final.get("comparison")
    if isinstance(comparison, Mapping):
        blocks.append(Paragraph(_comparison_text(comparison)))
    blocks.extend(Paragraph(reason) for reason in _null_reasons(points, protocol))
    blocks.append(_key_value_table(protocol, "Protocol of every number in the table above"))
    return blocks


def proxy_counts_blocks(run: RunFiles) -> list[Block]:
    """Tabulate the trained proxy's PSNR and LPIPS per uniform token count from proxy/eval.json."""
    if not run.proxy_eval:
        return [Paragraph(run.absence(PROXY_EVAL_FILE, "proxy"), missing=True)]
    # The proxy is evaluated at every checkpoint, so the last record is the trained proxy.
    record = run.proxy_eval[-1]
    counts = record.get("counts") or {}
    rows = [[f"uniform {count}", format_metric(counts[count].get("psnr"), "psnr"),
             format_metric(counts[count].get("lpips"), "lpips")]
            for count in sorted(counts, key=int)]
    colour = record.get("mean_colour")
    if isinstance(colour, Mapping):
        rows.append(["mean colour of each clip (no tokens)", format_metric(colour.get("psnr"), "psnr"),
                     format_metric(colour.get("lpips"), "lpips")])
    weights = record.get("lpips_weights") or {}
    caption = (f"Proxy tokenizer per token count per block at step {format_value(record.get('step'))} "
               f"({format_value(record.get('checkpoint'))}): {format_value(record.get('clips'))} held-out clips "
               f"from {format_value(record.get('files'))} files, LPIPS network "
               f"{format_value(weights.get('network'))} from {format_value(weights.get('source'))}")
    return [Table(["tokens per block", "PSNR (dB)", "LPIPS"], rows, caption)]


# ----- all sections ---------------------------------------------------------------------------------------


def _guarded(part: str, build: Callable[[], list[Block]]) -> list[Block]:
    """Build part of a section, turning the errors of a malformed input file into a message in the report."""
    try:
        return build()
    except SECTION_ERRORS as error:
        logger.warning("report: %s could not be built: %r", part, error)
        return [Paragraph(f"This part could not be built from the run's files: {type(error).__name__}: {error}",
                          missing=True)]


def build_sections(run: RunFiles) -> list[Section]:
    """Build every section of the report in order, drawing figures into the run folder."""
    figure_dir = run.run_dir / FIGURES_DIR
    return [
        Section("Run", _guarded("run", lambda: run_blocks(run))),
        Section("Quality-cost curve", _guarded("proxy curve", lambda: proxy_curve_blocks(run, figure_dir))
                + _guarded("final curve", lambda: final_curve_blocks(run, figure_dir))),
        Section("Router", _guarded("router", lambda: router_blocks(run))),
        Section("Chosen token counts", _guarded("assignment", lambda: assignment_blocks(run, figure_dir))),
        Section("Samples", _guarded("sample", lambda: sample_blocks(run))),
        Section("Reconstruction quality", _guarded("final table", lambda: final_table_blocks(run))
                + _guarded("proxy counts", lambda: proxy_counts_blocks(run))),
    ]
