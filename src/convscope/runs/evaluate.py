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

from typing_extensions import Unpack

from convscope.errors import ConvscopeError
from convscope.runs.options import Options
from convscope.runs.sources import ModelLike

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
    workers: int = 0,
    seed: int = 0,
    examples: int = 4,
    **options: Unpack[Options],
) -> Any:
    """Compare explanation methods on ``model`` over ``data`` and write the table and page.

    A dataset run (:mod:`convscope.runs.dataset_run`): one row per image in
    ``per_image.parquet`` (every method's score on every metric, its curves, the
    explaining time), resumed when rerun into the same ``out`` and split across processes
    under torchrun; the summary is ``evaluation.json``.

    Args:
        model: A model spec, an ``nn.Module`` or a loaded model (a classifier).
        out: The folder to write into.
        data: ``--data`` (see :mod:`convscope.runs.data`).
        split: The split of a named dataset.
        limit: The first ``limit`` images.
        methods, metrics: Comma-separated names (default: every method that applies to
            the model, every metric).
        batch_size: Images per batch (the metrics' random draws are seeded per batch, so
            it belongs to the run: a resume keeps it).
        workers: DataLoader processes reading the images.
        seed: Seed of every metric's random draws.
        examples: Images shown in ``examples.png``.
        **options: The shared :class:`~convscope.runs.Options`.

    Returns:
        The :class:`~convscope.runs.dataset_run.DatasetResult`; ``summary`` is the
        content of ``evaluation.json``, ``result`` the
        :class:`~convscope.evaluate.Evaluation`.

    Raises:
        ConvscopeError: bad options, data, method or metric names, or ``out`` (all
            before any work).
    """
    from convscope.evaluate import choose, get_method, get_metric
    from convscope.runs.dataset_run import DatasetAnalysis, prepare, run_over

    if examples < 0:
        raise ConvscopeError(f"--examples must be 0 or more; got {examples}")
    chosen, measures = _names(methods), _names(metrics)
    for name in chosen or []:
        get_method(name)
    for name in measures or []:
        get_metric(name)
    picked: dict[str, Any] = {}

    def check(loaded: Any) -> None:
        picked["m"], picked["k"], picked["skipped"] = choose(loaded.module, chosen, measures)

    p = prepare(model, data, split=split, limit=limit, options=dict(options), check=check)
    try:
        net = p.model.module.eval()
        names: list[str] = picked["m"]
        keys: list[str] = picked["k"]

        def rows(indices: list[int], x: Any, labels: Any) -> list[dict[str, Any]]:
            return _rows(net, x.to(p.process.device), names, keys, seed)

        title = f"{os.path.basename(p.model.name)} on {data} ({split})"
        families = {m: get_method(m).family for m in names}
        held: dict[str, Any] = {}

        def summarise(table: Any) -> dict[str, Any]:
            ev = _evaluation(table, net, p.data, names, keys, picked["skipped"], seed,
                             examples, p.process.device)  # fmt: skip
            held["ev"] = ev
            return {"model": p.model.metadata(), "data": p.data.describe(), **ev.to_dict(),
                    "families": families}  # fmt: skip

        def report(o: Any, summary: dict[str, Any]) -> None:
            ev = held["ev"]
            md = table_markdown(ev, f"Explanation methods on {title}")
            from convscope.io import atomic_write_bytes

            atomic_write_bytes(o.path("evaluation.md"), md.encode())
            o.file("evaluation.md")
            _figures(o, ev, families, p.class_names)
            _page(o, ev, title, md, families)

        analysis = DatasetAnalysis(
            command="evaluate",
            config={
                **p.config,
                "methods": names,
                "metrics": keys,
                "seed": seed,
                "examples": examples,
            },  # fmt: skip
            rows=rows,
            summarise=summarise,
            report=report,
            owned=tuple(n for n in OWNED if n != "evaluation.json"),
            batch_dependent=True,
            summary_name="evaluation.json",
        )
        res = run_over(analysis, p.data, out, p.process, batch_size=batch_size,
                       workers=workers, overwrite=p.options["overwrite"],
                       formats=p.options["formats"], progress=p.options["progress"])  # fmt: skip
        res.result = held.get("ev")
        return res
    finally:
        p.process.leave()


def _rows(
    net: Any, x: Any, methods: list[str], metrics: list[str], seed: int
) -> list[dict[str, Any]]:
    """One batch's rows: every method's score on every metric, its curves and time."""
    import json

    import torch

    from convscope.evaluate import score_batch

    with torch.no_grad():
        t = net(x).argmax(1)
    b = score_batch(net, x, t, methods, metrics, seed)
    notes = json.dumps(b.notes, sort_keys=True)
    out = []
    for i in range(len(x)):
        row: dict[str, Any] = {"target": int(t[i]), "notes": notes}
        for m in methods:
            row[f"seconds/{m}"] = b.seconds[m] / len(x)
            for k in metrics:
                row[f"{m}/{k}"] = float(b.scores[m][k][i])
            for k, c in b.curves[m].items():
                row[f"curve/{m}/{k}"] = [float(v) for v in c[i]]
        out.append(row)
    return out


def _evaluation(
    table: Any, net: Any, data: Any, methods: list[str], metrics: list[str],
    skipped: dict[str, str], seed: int, examples: int, device: Any,
) -> Any:  # fmt: skip
    """The :class:`~convscope.evaluate.Evaluation` of a merged per-image table."""
    import json

    import numpy as np
    import torch

    from convscope.evaluate import get_method, summarise
    from convscope.evaluate.compare import examples_dict
    from convscope.runs.summaries import column

    cols = set(table.column_names)
    scores = {m: {k: column(table, f"{m}/{k}") for k in metrics} for m in methods}
    curves = {m: {k: np.asarray(table.column(f"curve/{m}/{k}").to_pylist(), dtype=np.float64)
                  for k in metrics if f"curve/{m}/{k}" in cols} for m in methods}  # fmt: skip
    seconds = {m: float(column(table, f"seconds/{m}").sum()) for m in methods}
    notes: dict[str, str] = {}
    for blob in dict.fromkeys(table.column("notes").to_pylist()):
        for k, v in json.loads(blob).items():
            notes.setdefault(k, v)
    kept: dict[str, Any] = {"images": [], "targets": [], "maps": {m: [] for m in methods}}
    n = min(examples, table.num_rows)
    if n:
        x = torch.stack([data[j][1] for j in range(n)]).to(device)
        t = torch.as_tensor(table.column("target").to_pylist()[:n], device=device)
        kept["images"] = list(x.cpu().numpy())
        kept["targets"] = [int(v) for v in t.cpu()]
        for m in methods:
            kept["maps"][m] = list(get_method(m).explain(net, x, t).detach().float().cpu().numpy())
    return summarise(methods, metrics, scores, curves, seconds, table.num_rows, skipped=skipped,
                     notes=notes, examples=examples_dict(kept), seed=seed)  # fmt: skip


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
