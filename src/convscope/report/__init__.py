"""Figures (matplotlib) and HTML reports (Jinja2)."""

from __future__ import annotations

from convscope.report.html import (
    Figure,
    Link,
    Section,
    Table,
    load_report,
    render_report,
    write_report,
)

__all__ = ["Figure", "Link", "Section", "Table", "load_report", "render_report", "write_report"]
