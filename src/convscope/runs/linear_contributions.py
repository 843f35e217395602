"""``convscope linear contributions``: f(x0) split into the input's part and each bias source's."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from typing_extensions import Unpack

from convscope.errors import ConvscopeError
from convscope.report import linear_figures as lf
from convscope.runs.inputs import ImageSource
from convscope.runs.linear_setup import Output, check_mode, flat_target, freeze, picture
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["DATA_OWNED", "OWNED", "run", "run_data", "summarise_contributions"]

OWNED = ("contributions.json", "contributions.png")


def run(
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "freeze",
    output: Output = None,
    target: int | None = None,
    **options: Unpack[Options],
) -> RunResult:
    """Split f(x0) into the input's part F x0 and every bias source's (seed 001 Fig. 4).

    Writes ``contributions.json`` and ``contributions.png``.

    Args:
        model, image, out, mode, **options: As in
            :func:`convscope.runs.linear_residual.run`.
        target: Flat output index / class (default: the largest score for a classifier;
            an image-to-image model without a target is split as a whole).
        output: Models whose output is a dict, tuple or dataclass: the key, index or
            callable that picks the tensor to interpret (``"out"`` for segmentation).

    Returns:
        The :class:`~convscope.runs.RunResult`; ``result`` is the
        :class:`~convscope.linear.Contributions`. Its metrics hold ``sources`` (name,
        module, op of each bias source) and, for a score, ``target``, ``class_name``,
        ``score``, ``sum`` (of the contributions: the score, to rounding),
        ``contributions``, ``groups`` (summed by layer), ``shares`` (groups over the
        score) and ``residual_share``; for a whole output, ``contributions`` and
        ``groups`` as ``{"sum", "norm"}`` of each map, and ``output`` likewise.
    """
    import torch

    check_mode(mode)
    s = start("contributions", model, image, out, OWNED, options, dtype=torch.float64)
    return s.plan.run(
        lambda src, o: _one(s, src, o, mode, output, target),
        progress=s.progress,
        row=lambda r: [r.metrics.get("class_name", ""), f"{r.metrics.get('score', 0):.4g}",
                       f"{100 * r.metrics.get('residual_share', float('nan')):.2f}%"],
        headers=["class", "score", "residual share"],
        title=f"{s.model.short_name}: contributions",
    )  # fmt: skip


def _one(
    s: Started, src: ImageSource, o: Outputs, mode: str, output: Output, target: int | None
) -> RunResult:
    fr = freeze(s, src, mode, output)
    li, m = fr.li, fr.metrics
    m["sources"] = [{"name": x.name, "module": x.module, "op": x.op} for x in li.sources]
    if len(li.out_shape) == 1 or target is not None:
        c = flat_target(li, target)
        contribs = li.contributions(target=c)
        groups = contribs.groups()
        shares = contribs.shares()
        name = s.model.class_name(c)
        m.update(
            target=c,
            class_name=name,
            score=contribs.score,
            sum=contribs.total,
            contributions={k: float(v) for k, v in contribs.items()},
            groups={k: float(v) for k, v in groups.items()},
            shares=shares,
            residual_share=contribs.residual_share,
        )
        values = np.array(list(shares.values()))
        fig = lf.plot_contribution_histogram(
            list(groups),
            {"this image": (values, np.zeros_like(values))},
            residual={"this image": (contribs.residual_share, 0.0)},
            title=f"{s.model.short_name}: contributions to {name} (score {contribs.score:.4g})",
            ylabel="share of the score",
        )
    else:
        contribs = li.contributions()
        groups = contribs.groups()
        m.update(
            contributions={k: {"sum": float(v.sum()), "norm": float(v.norm())}
                           for k, v in contribs.items()},
            groups={k: {"sum": float(v.sum()), "norm": float(v.norm())}
                    for k, v in groups.items()},
            output={"sum": float(li.output.sum()), "norm": float(li.output.norm())},
        )  # fmt: skip
        fig = lf.plot_signed_maps(
            [v[0].cpu().numpy() for v in groups.values()],
            [f"{k} (|.| {float(v.norm()):.3g})" for k, v in groups.items()],
            image=picture(fr.x0),
            title=f"{s.model.short_name}: f(x0) = input + biases",
            unit="output units",
        )
    o.figure("contributions.png", fig)
    o.json("contributions.json", m)
    return RunResult(o.folder, list(o.written), m, result=contribs)


# -- over a dataset: --data ------------------------------------------------------------------

DATA_OWNED = ("residual_shares.png", "contributions.png", "report.html", "report.json")


def run_data(
    model: ModelLike,
    data: str,
    out: str | os.PathLike[str],
    *,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    mode: str = "freeze",
    output: Output = None,
    target: int | None = None,
    **options: Unpack[Options],
) -> Any:
    """The contributions of every image of ``data``: seed 001 Tables 3/4 and Fig. 4 at scale.

    Each image is frozen on its own (float64) and its target score (``target``, or the
    top-1 class) split into the input's part and each layer's bias contribution. Writes
    ``per_image.parquet`` (one row per image: index, label, path, target, score, input,
    residual, residual share, each layer's contribution and share), ``summary.json``
    (residual share and input share statistics and histograms, each layer's mean share
    and histogram, a per-class table, accuracy, the largest conservation error),
    ``residual_shares.png``, ``contributions.png`` and ``report.html``. Resumes an
    interrupted run into the same ``out``; under torchrun the images are split between
    the processes (see :mod:`convscope.runs.dataset_run`).

    Args:
        model, out, mode, output, target, **options: As in :func:`run`.
        data, split, limit: ``--data`` (see :mod:`convscope.runs.data`).
        batch_size: Images per DataLoader batch (and per shard on disk).
        workers: DataLoader worker processes reading the images.

    Returns:
        The :class:`~convscope.runs.dataset_run.DatasetResult`.
    """
    import torch

    from convscope.runs.dataset_run import DatasetAnalysis, prepare, run_over

    check_mode(mode)
    p = prepare(model, data, split=split, limit=limit, options=dict(options),
                dtype=torch.float64)  # fmt: skip
    try:
        names, device, module = p.class_names, p.process.device, p.model.module
        kwargs: dict[str, Any] = {} if output is None else {"output": output}

        def rows(indices: list[int], x: Any, labels: Any) -> list[dict[str, Any]]:
            return [_row(module, x[i : i + 1].to(device, torch.float64), mode, kwargs, target,
                         names) for i in range(len(indices))]  # fmt: skip

        shown = output if output is None or isinstance(output, (str, int)) else repr(output)
        config = {**p.config, "mode": mode, "target": target, "output": shown}
        head = {"model": p.model.metadata(), "data": p.data.describe(), "mode": mode}
        analysis = DatasetAnalysis(
            command="linear contributions",
            config=config,
            rows=rows,
            summarise=lambda table: {**head, **summarise_contributions(table, names)},
            report=lambda o, summary: _data_report(o, summary, p.model.name, data, split),
            owned=DATA_OWNED,
        )
        return run_over(analysis, p.data, out, p.process, batch_size=batch_size,
                        workers=workers, overwrite=p.options["overwrite"],
                        formats=p.options["formats"], progress=p.options["progress"])  # fmt: skip
    finally:
        p.process.leave()


def _row(
    module: Any, x0: Any, mode: str, kwargs: dict[str, Any], target: int | None,
    names: list[str] | None,
) -> dict[str, Any]:  # fmt: skip
    """One image's row: its target score split into the input and each layer's part."""
    from convscope.linear import LinearInterpreter

    li = LinearInterpreter(module, x0, mode=mode, **kwargs)  # type: ignore[arg-type]
    if len(li.out_shape) != 1 and target is None:
        raise ConvscopeError(
            f"the model's output is {tuple(li.out_shape)}, not one score per class: over a "
            "dataset give --target (a flat output index)"
        )
    c = flat_target(li, target)
    contribs = li.contributions(target=c)
    groups = contribs.groups()
    shares = contribs.shares()
    score = contribs.score
    row: dict[str, Any] = {
        "predicted": int(li.output.reshape(-1).argmax()),
        "target": c,
        "score": score,
        "sum": contribs.total,
        "input": float(groups["input"]),
        "residual": score - float(groups["input"]),
        "residual_share": contribs.residual_share,
    }
    for k, v in groups.items():
        row[f"contribution/{k}"] = float(v)
    for k, share in shares.items():
        row[f"share/{k}"] = share
    return row


def summarise_contributions(table: Any, names: list[str] | None) -> dict[str, Any]:
    """``summary.json`` of a contributions run from its per-image table."""
    from convscope.runs.summaries import column, histogram, per_class, stats

    rs = column(table, "residual_share")
    score = column(table, "score")
    total = column(table, "sum")
    groups = [c[len("share/") :] for c in table.column_names if c.startswith("share/")]
    label = column(table, "label").astype(np.int64)
    predicted = column(table, "predicted").astype(np.int64)
    known = label >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        conservation = np.abs(total - score) / np.abs(score)
    return {
        "images": int(table.num_rows),
        "accuracy": float((predicted[known] == label[known]).mean()) if known.any() else None,
        "residual_share": stats(rs),
        "residual_share_histogram": histogram(rs),
        "input_share": stats(column(table, "share/input")),
        "score": stats(score),
        "groups": {
            g: {
                **stats(column(table, f"share/{g}")),
                "histogram": histogram(column(table, f"share/{g}")),
            }
            for g in groups
        },  # fmt: skip
        "per_class": per_class(
            column(table, "target").astype(np.int64), {"residual_share": rs, "score": score}, names
        ),  # fmt: skip
        "conservation_max_relative_error": float(np.nanmax(conservation)),
    }


def _data_report(o: Outputs, s: dict[str, Any], model: str, data: str, split: str) -> None:
    from convscope.report.html import Figure, Section, Table, write_report

    name = os.path.basename(model)
    rs = s["residual_share"]
    o.figure("residual_shares.png", lf.plot_histogram(
        s["residual_share_histogram"]["edges"], s["residual_share_histogram"]["counts"],
        xlabel="residual share of the target score", mean=rs.get("mean"),
        title=f"{name}: residual share over {s['images']} images"))  # fmt: skip
    groups = list(s["groups"])
    mean = np.array([s["groups"][g]["mean"] for g in groups], dtype=np.float64)
    std = np.array([s["groups"][g]["std"] or 0.0 for g in groups], dtype=np.float64)
    o.figure("contributions.png", lf.plot_contribution_histogram(
        groups, {f"{s['images']} images": (mean, std)},
        residual={f"{s['images']} images": (rs["mean"], rs.get("std") or 0.0)},
        title=f"{name}: share of the target score per source",
        ylabel="share of the target score"))  # fmt: skip
    fmt = "png" if "png" in o.formats else o.formats[0]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    acc = "" if s["accuracy"] is None else f" Top-1 accuracy {100 * s['accuracy']:.2f}%."
    sections = [
        Section("Residual share", [
            f"Over {s['images']} images of {data} ({split}), the biases carry "
            f"{pct(rs['mean'])} of the target score on average (median {pct(rs['median'])}, "
            f"5-95 % of images between {pct(rs['q05'])} and {pct(rs['q95'])}); the input's "
            f"part F x0 carries the rest.{acc} The contributions sum to the score to a "
            f"relative {s['conservation_max_relative_error']:.1e} at worst.",
            "One row per image is in per_image.parquet (pyarrow, pandas or polars read it); "
            "summary.json holds every number on this page."],
            figures=[Figure(f"residual_shares.{fmt}")]),
        Section("Per source", ["Mean share of the target score per source, with one "
                "standard deviation over the images; the residual is all biases together."],
                tables=[Table(["source", "mean share", "std"],
                              [[g, pct(s["groups"][g]["mean"]), pct(s["groups"][g]["std"])]
                               for g in groups])],
                figures=[Figure(f"contributions.{fmt}")]),
        Section("Per class", tables=[Table(
            ["class", "images", "mean residual share", "mean score"],
            [[k, str(v["images"]), pct(v["residual_share"]["mean"]),
              f"{v['score']['mean']:.4g}"] for k, v in s["per_class"].items()])]),
    ]  # fmt: skip
    write_report(o.folder, f"convscope linear contributions: {name} on {data}", sections)
    o.file("report.html")
    o.file("report.json")
