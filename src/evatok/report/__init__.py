"""The pipeline report: ``report.html`` (self-contained) and ``report.md`` in a run folder.

The report reads the files the pipeline stages write (pipeline.json, split.json, proxy/eval.json,
curve/curve.json and curve.png, router/router_eval.json, eval/final.json with its sample arrays).
Any of them may be missing, and the section that needs one then states which stage has not run. The
figures it draws go to ``report_files/`` in the run folder and the side-by-side GIFs go next to
their sample arrays under ``eval/samples/``, so that the markdown can link them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from evatok.report.inputs import read_run
from evatok.report.render import render_html, render_markdown
from evatok.report.sections import build_sections

logger = logging.getLogger(__name__)

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"

__all__ = ["HTML_NAME", "MARKDOWN_NAME", "write_report"]


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for the run folder and return their paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found: pass the --run folder of `evatok pipeline`")
    run = read_run(run_dir)
    sections = build_sections(run)
    name = str((run.pipeline or {}).get("run") or run_dir.resolve())
    title = f"evatok report: {Path(name).name}"
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"Run folder {name}, report written {written}."

    html_path = run_dir / HTML_NAME
    md_path = run_dir / MARKDOWN_NAME
    html_path.write_text(render_html(title, subtitle, sections), encoding="utf-8")
    md_path.write_text(render_markdown(title, subtitle, sections, run_dir), encoding="utf-8")
    logger.info("report written to %s and %s", html_path, md_path)
    return html_path, md_path
