"""HTML reports from Jinja2 templates.

A report is a list of :class:`Section` objects (text, tables, figures). It is
written as ``report.html`` next to its PNG figures, and its content is kept in
``report.json`` so ``convscope report DIR`` can render it again.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from convscope.errors import ConvscopeError
from convscope.io import atomic_path, write_json

__all__ = [
    "Figure",
    "Link",
    "Section",
    "Table",
    "load_report",
    "render_report",
    "write_report",
]


@dataclass
class Figure:
    """A figure next to the report and its caption.

    ``file`` names it as the run claimed it (``x.png``); where the run wrote only
    ``x.svg`` or ``x.pdf`` (``--format``), the report shows that one.
    """

    file: str
    caption: str = ""


@dataclass
class Table:
    """A table of already formatted cells."""

    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Link:
    """A link to another page (e.g. one image's report from an index page)."""

    text: str
    href: str


@dataclass
class Section:
    """One part of a report: paragraphs, tables, figures, links, in that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("convscope.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )


def render_report(title: str, sections: list[Section], meta: dict[str, Any] | None = None) -> str:
    """The report as an HTML string."""
    from convscope import __version__

    return (
        _env()
        .get_template("report.html.j2")
        .render(
            title=title,
            sections=sections,
            meta=meta or {},
            version=__version__,
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


FIGURE_ORDER = (".png", ".svg", ".pdf")
"""The format a report shows a figure in, of those written: a browser draws PNG and SVG in
the page; a PDF alone (``--format pdf``) becomes a link."""


def _shown(out: Path, fig: Figure) -> Figure:
    """``fig`` with its file in the first format of :data:`FIGURE_ORDER` the run wrote.

    Runs name their figures ``x.png``; under ``--format svg`` (or ``pdf``) only ``x.svg``
    (or ``x.pdf``) is there.
    """
    stem, suffix = os.path.splitext(fig.file)
    if suffix.lower() not in FIGURE_ORDER or (out / fig.file).is_file():
        return fig
    for ext in FIGURE_ORDER:
        if (out / f"{stem}{ext}").is_file():
            return replace(fig, file=f"{stem}{ext}")
    return fig


def write_report(
    out_dir: str | os.PathLike[str],
    title: str,
    sections: list[Section],
    meta: dict[str, Any] | None = None,
    *,
    name: str = "report",
) -> Path:
    """Write ``<name>.html`` and ``<name>.json`` into ``out_dir``; return the HTML path.

    Each figure is shown in the first of PNG, SVG, PDF that is there (see :func:`_shown`).

    Raises:
        ConvscopeError: a figure of the report in none of them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [replace(s, figures=[_shown(out, f) for f in s.figures]) for s in sections]
    missing = [f.file for s in sections for f in s.figures if not (out / f.file).is_file()]
    if missing:
        raise ConvscopeError(f"report figures missing in {out}: {', '.join(missing)}")
    write_json(
        out / f"{name}.json",
        {"title": title, "meta": meta or {}, "sections": [asdict(s) for s in sections]},
    )
    dst = out / f"{name}.html"
    with atomic_path(dst) as tmp:
        tmp.write_text(render_report(title, sections, meta), encoding="utf-8")
    return dst


def load_report(
    out_dir: str | os.PathLike[str], name: str = "report"
) -> tuple[str, list[Section], dict[str, Any]]:
    """Read back what :func:`write_report` stored in ``<name>.json``."""
    path = Path(out_dir) / f"{name}.json"
    if not path.is_file():
        raise ConvscopeError(f"{path} not found: point at a folder written by a convscope command")
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
        sections = [
            Section(
                title=s["title"],
                paragraphs=list(s["paragraphs"]),
                tables=[Table(**t) for t in s["tables"]],
                figures=[Figure(**f) for f in s["figures"]],
                links=[Link(**k) for k in s.get("links", [])],
            )
            for s in blob["sections"]
        ]
        return str(blob["title"]), sections, dict(blob.get("meta", {}))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConvscopeError(f"{path} is not a convscope report description ({e})") from None


def escape(text: str) -> str:
    """HTML-escape text for callers building paragraphs by hand."""
    return html.escape(text)
