"""``convscope evaluate``: whose explanations are faithful, on a model and a dataset.

The numbers come from :func:`convscope.evaluate.compare` (methods of
:mod:`convscope.evaluate.methods`, metrics of :mod:`convscope.evaluate.metrics`, Quantus's
where Quantus has them), the pictures from :mod:`convscope.report.evaluation_figures`.
Writes ``evaluation.json`` (method -> metric -> mean, 95 % interval, n; curves, timings),
``evaluation.md`` (the table), ``curves.png``, ``scores.png``, ``examples.png`` and
``report.html``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from convscope.errors import ConvscopeError
from convscope.runs.data import load_data
from convscope.runs.inputs import parse_size
from convscope.runs.outputs import open_out
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike, resolve_model, warn_untrained

__all__ = ["OWNED", "run"]

OWNED = (
    "evaluation.json",
    "evaluation.md",
    "curves.png",
    "scores.png",
    "examples.png",
    "report.html",
    "report.json",
)


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v.strip()] or None


def _cell(c: dict[str, Any]) -> str:
    if not c["n"]:
        return "-"
    if not math.isfinite(c["low"]):
        return f"{c['mean']:.3f}"
    return f"{c['mean']:.3f} ± {(c['high'] - c['low']) / 2:.3f}"


def table_markdown(ev: Any, title: str) -> str:
    """The method x metric table as Markdown, best of each column in bold."""
    best = {k: ev.best(k) for k in ev.metrics if any(ev.table[m][k]["n"] for m in ev.methods)}
    arrows = {k: "↑" if ev.higher_is_better[k] else "↓" for k in ev.metrics}
    lines = [
        f"# {title}",
        "",
        f"{ev.images} images, seed {ev.seed}; mean ± half the 95 % interval (Student's t); "
        "↑ higher is better, ↓ lower; the best mean of each column in bold.",
        "",
        "| method | " + " | ".join(f"{k} {arrows[k]}" for k in ev.metrics) + " | s / image |",
        "| --- | " + " | ".join("---" for _ in ev.metrics) + " | --- |",
    ]
    for m in ev.methods:
        cells = []
        for k in ev.metrics:
            text = _cell(ev.table[m][k])
            cells.append(f"**{text}**" if best.get(k) == m else text)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {ev.seconds_per_image[m]:.4f} |")
    for m, why in {**ev.skipped, **ev.notes}.items():
        lines.append(f"\n{m}: {why}")
    return "\n".join(lines) + "\n"


def run(
    model: ModelLike,
    out: str | os.PathLike[str],
    *,
    data: str = "mnist-subset",
    split: str = "test",
    limit: int | None = None,
    methods: str | Sequence[str] | None = None,
    metrics: str | Sequence[str] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    examples: int = 4,
    device: str | None = "cpu",
    state_dict: str | os.PathLike[str] | None = None,
    weights: str | None = None,
    channels: int | None = None,
    invert: bool = False,
    size: str | tuple[int, int] | None = None,
    overwrite: bool = False,
    formats: Sequence[str] = ("png",),
    progress: bool = False,
) -> RunResult:
    """Compare explanation methods on ``model`` over ``data`` and write the table and page.

    Args:
        model: A model spec, an ``nn.Module`` or a loaded model (a classifier).
        out: The folder to write into.
        data: ``--data`` (see :mod:`convscope.runs.data`).
        split: The split of a named dataset.
        limit: The first ``limit`` images.
        methods, metrics: Comma-separated names (default: every method that applies to
            the model, every metric).
        batch_size: Images per batch.
        seed: Seed of every metric's random draws.
        examples: Images shown in ``examples.png``.
        device, state_dict, weights, channels, invert, size, overwrite, formats, progress:
            As for every analysis.

    Returns:
        The :class:`~convscope.runs.RunResult` (``result``: the
        :class:`~convscope.evaluate.Evaluation`).

    Raises:
        ConvscopeError: bad options, data, method or metric names, or ``out`` (all
            before any work).
    """
    from convscope.evaluate import compare, get_method, get_metric

    if batch_size < 1:
        raise ConvscopeError(f"--batch-size must be at least 1; got {batch_size}")
    if examples < 0:
        raise ConvscopeError(f"--examples must be 0 or more; got {examples}")
    chosen, measures = _names(methods), _names(metrics)
    for name in chosen or []:
        get_method(name)
    for name in measures or []:
        get_metric(name)
    o = open_out(out, OWNED, overwrite=overwrite, formats=formats)
    loaded = resolve_model(model, weights=weights, state_dict=state_dict, device=device,
                           warn=False)  # fmt: skip
    ds = load_data(data, split=split, limit=limit, info=loaded.info, channels=channels,
                   invert=invert, size=parse_size(size))  # fmt: skip
    warn_untrained(loaded)
    bar = None
    if progress:
        from tqdm import tqdm

        def bar(it: Any) -> Any:
            return tqdm(it, desc="evaluate", unit="batch", leave=False)

    ev = compare(loaded.module, ds.dataset, chosen, measures, batch_size=batch_size,
                 seed=seed, examples=examples, progress=bar)  # fmt: skip
    families = {m: get_method(m).family for m in ev.methods}
    blob = {"model": loaded.metadata(), "data": ds.describe(), **ev.to_dict(),
            "families": families}  # fmt: skip
    o.json("evaluation.json", blob)
    title = f"{os.path.basename(loaded.name)} on {data} ({split})"
    md = table_markdown(ev, f"Explanation methods on {title}")
    from convscope.io import atomic_write_bytes

    atomic_write_bytes(o.path("evaluation.md"), md.encode())
    o.file("evaluation.md")
    _figures(o, ev, families, loaded.class_names)
    _page(o, ev, title, md, families)
    return RunResult(o.folder, list(o.written), blob, result=ev)


def _figures(o: Any, ev: Any, families: dict[str, str], names: list[str] | None) -> None:
    from convscope.report.evaluation_figures import plot_curves, plot_examples, plot_scores

    o.figure("curves.png", plot_curves(ev.curves, families))
    o.figure("scores.png", plot_scores(ev.table, ev.metrics, ev.higher_is_better, families))
    ex = ev.examples
    if ex.get("images") is not None and len(ex["images"]):
        titles = [names[t] if names and 0 <= t < len(names) else f"class {t}"
                  for t in ex["targets"]]  # fmt: skip
        o.figure("examples.png", plot_examples(ex["images"], ex["maps"], titles))


def _shown(o: Any, stem: str) -> str:
    """The file of a figure the page shows: the PNG, or the first format written."""
    fmt = "png" if "png" in o.formats else o.formats[0]
    return f"{stem}.{fmt}"


def _page(o: Any, ev: Any, title: str, md: str, families: dict[str, str]) -> None:
    from convscope.report.html import Figure, Section, Table, write_report

    headers = ["method", "from", *ev.metrics, "s / image"]
    rows = [[m, families[m], *(_cell(ev.table[m][k]) for k in ev.metrics),
             f"{ev.seconds_per_image[m]:.4f}"] for m in ev.methods]  # fmt: skip
    arrows = ", ".join(f"{k} {'↑' if ev.higher_is_better[k] else '↓'}" for k in ev.metrics)
    sections = [
        Section(
            "The table",
            [f"{ev.images} images, seed {ev.seed}. Each cell: the mean over images ± half its "
             f"95 % interval. Directions: {arrows}."],
            tables=[Table(headers, rows)],
        ),
        Section("Scores with their intervals", figures=[Figure(_shown(o, "scores"),
                "red: convscope's methods; blue: the peers'")]),
        Section("Deletion and insertion curves", figures=[Figure(_shown(o, "curves"),
                "solid: convscope's methods; dashed: the peers'")]),
    ]  # fmt: skip
    if (o.folder / _shown(o, "examples")).exists():
        sections.append(Section("Example maps", figures=[Figure(_shown(o, "examples"))]))
    write_report(o.folder, f"convscope evaluate: {title}", sections, {"seed": ev.seed})
    o.file("report.html")
    o.file("report.json")
