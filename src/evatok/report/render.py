"""Render report sections as one self-contained HTML file and as markdown.

The HTML embeds every image as a base64 data URI and its stylesheet inline, so it opens offline and
refers to no other file. The markdown links the images by their path relative to the run folder.
Every string from the run's files is escaped (html.escape in HTML, markdown syntax characters in
markdown).
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from urllib.parse import quote

from evatok.report.document import BulletList, Figure, Paragraph, Section, Table

MIME_TYPES = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
SMALL_IMAGE_WIDTH = 300  # GIFs narrower than this (in pixels) are shown enlarged

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
img.pixelated { image-rendering: pixelated; }
figcaption { font-size: 0.9em; color: #444; }
p.missing { color: #8a4b00; background: #fff6e5; padding: 0.4em 0.6em; border-left: 3px solid #e0a030; }
nav ol { columns: 2; }
"""

NUMBER_PATTERN = re.compile(r"^[+-]?\d+(\.\d+)?%?$")


def _anchor(index: int) -> str:
    return f"section-{index + 1}"


def _data_uri(path: Path) -> tuple[str, int | None]:
    """Return the image at ``path`` as a data URI and its width in pixels (None if unreadable)."""
    from PIL import Image, UnidentifiedImageError

    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: unsupported image type {path.suffix!r}: the report embeds PNG, GIF or JPEG only")
    data = path.read_bytes()
    try:
        with Image.open(path) as image:
            width: int | None = image.width
    except (OSError, UnidentifiedImageError):
        width = None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", width


def _html_table(table: Table) -> str:
    lines = ["<table>"]
    if table.caption:
        lines.append(f"<caption>{html.escape(table.caption)}</caption>")
    lines.append("<tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in table.header) + "</tr>")
    for row in table.rows:
        cells = []
        for cell in row:
            kind = ' class="number"' if NUMBER_PATTERN.match(cell) else ""
            cells.append(f"<td{kind}>{html.escape(cell)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _html_figure(figure: Figure) -> str:
    caption = html.escape(figure.caption)
    try:
        uri, width = _data_uri(figure.path)
    except (OSError, ValueError) as error:
        return f'<p class="missing">Image {html.escape(str(figure.path))} could not be embedded: ' \
               f"{html.escape(str(error))}</p>"
    size = ""
    if figure.path.suffix.lower() == ".gif" and width is not None and width < SMALL_IMAGE_WIDTH:
        size = f' class="pixelated" width="{width * 3}"'
    return f'<figure><img src="{uri}" alt="{caption}"{size}><figcaption>{caption}</figcaption></figure>'


def _html_block(block: object) -> str:
    if isinstance(block, Paragraph):
        kind = ' class="missing"' if block.missing else ""
        return f"<p{kind}>{html.escape(block.text)}</p>"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return _html_figure(block)
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(title: str, subtitle: str, sections: list[Section]) -> str:
    """Return the report as one HTML document with inline style and embedded images."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(subtitle)}</p>",
        "<nav><ol>" + "".join(
            f'<li><a href="#{_anchor(index)}">{html.escape(section.title)}</a></li>'
            for index, section in enumerate(sections)
        ) + "</ol></nav>",
    ]
    for index, section in enumerate(sections):
        parts.append(f'<section id="{_anchor(index)}"><h2>{html.escape(section.title)}</h2>')
        parts.extend(_html_block(block) for block in section.blocks)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----- markdown -----------------------------------------------------------------------------------

MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]<>|])")


def escape_markdown(text: str) -> str:
    """Escape markdown syntax characters and flatten newlines so text stays on its line or cell."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def _markdown_table(table: Table) -> str:
    lines = []
    if table.caption:
        lines += [f"**{escape_markdown(table.caption)}**", ""]
    lines.append("| " + " | ".join(escape_markdown(cell) for cell in table.header) + " |")
    lines.append("|" + "|".join(" --- " for _ in table.header) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(escape_markdown(cell) for cell in row) + " |")
    return "\n".join(lines)


def _markdown_block(block: object, run_dir: Path) -> str:
    if isinstance(block, Paragraph):
        return f"> {escape_markdown(block.text)}" if block.missing else escape_markdown(block.text)
    if isinstance(block, BulletList):
        return "\n".join(f"- {escape_markdown(item)}" for item in block.items)
    if isinstance(block, Table):
        return _markdown_table(block)
    if isinstance(block, Figure):
        relative = Path(os.path.relpath(block.path, run_dir)).as_posix()
        caption = escape_markdown(block.caption)
        return f"![{caption}]({quote(relative)})\n\n*{caption}*"
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(title: str, subtitle: str, sections: list[Section], run_dir: Path) -> str:
    """Return the report as markdown with images linked relative to ``run_dir``."""
    parts = [f"# {escape_markdown(title)}", escape_markdown(subtitle)]
    for section in sections:
        parts.append(f"## {escape_markdown(section.title)}")
        parts.extend(_markdown_block(block, run_dir) for block in section.blocks)
    return "\n\n".join(parts) + "\n"
