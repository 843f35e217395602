"""``convscope explain``: one image explained by saliency, gradient x input and filter scores.

The numbers come from :mod:`convscope.attribution`, the pictures from
:mod:`convscope.report.figures`. Filter scores (which kernel, which colour, which pixel a
decision used; seed 000) need a model with a fixed kernel bank (GFNN, GF-ResNet); any
other classifier gets the two gradient maps.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from typing_extensions import Unpack

from convscope import attribution as attr
from convscope import kernels as kb
from convscope.errors import ConvscopeError
from convscope.runs.inputs import ImageSource
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["DATA_OWNED", "METHODS", "OWNED", "run", "run_data", "summarise_filter_scores"]

METHODS = ("auto", "filter-scores", "gradients")
OWNED = (
    "metrics.json",
    "attributions.png",
    "filter_scores.png",
    "top_filters.png",
    "report.html",
    "report.json",
)
_CHANNEL_NAMES = {1: ["grey"], 3: ["red", "green", "blue"]}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def run(
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    target: int | None = None,
    method: str = "auto",
    top: int = 3,
    **options: Unpack[Options],
) -> RunResult:
    """Explain an image: saliency, gradient x input and, with a kernel bank, filter scores.

    Writes ``metrics.json``, ``attributions.png``, with filter scores
    ``filter_scores.png`` and ``top_filters.png``, and ``report.html``.

    Args:
        model: A model spec, an ``nn.Module`` or a loaded model (a classifier).
        image: A file, ``sample:NAME``, a folder or a glob (several: one folder each).
        out: The folder to write into.
        target: The class to explain (default: the predicted one).
        method: ``"auto"`` (filter scores when the model has a fixed kernel bank),
            ``"filter-scores"`` (required) or ``"gradients"`` (saliency and gradient x
            input only).
        top: Kernels shown with their filter score images.
        **options: The shared :class:`~convscope.runs.Options`.

    Returns:
        The :class:`~convscope.runs.RunResult` (``result``: the
        :class:`~convscope.attribution.FilterScores`, or ``None`` without a bank). Its
        metrics hold ``target``, ``target_name``, ``logit``, ``probabilities``, and
        with filter scores ``filter_scores`` (by kernel), ``top_kernels`` and, for
        colour models, ``color_scores`` (by channel name).

    Raises:
        ConvscopeError: A bad method, model, image or target, or filter scores asked of
            a model without a kernel bank.
    """
    if method not in METHODS:
        raise ConvscopeError(f"--method must be auto, filter-scores or gradients; got {method!r}")
    if top < 1:
        raise ConvscopeError(f"--top must be >= 1; got {top}")
    s = start("explain", model, image, out, OWNED, options)
    from convscope.models import find_kernel_bank

    try:
        find_kernel_bank(s.model.module)
        has_bank = True
    except ConvscopeError:
        if method == "filter-scores":
            raise
        has_bank = False
    use_fs = has_bank and method != "gradients"
    return s.plan.run(
        lambda src, o: _one(s, src, o, target, use_fs, top),
        progress=s.progress,
        row=lambda r: [r.metrics["target_name"], ", ".join(r.metrics.get("top_kernels", []))],
        headers=["class", "top kernels"],
        title=f"{s.model.short_name}: explanations",
    )


def _one(
    s: Started, src: ImageSource, o: Outputs, target: int | None, use_fs: bool, top: int
) -> RunResult:
    from convscope.report import figures as figs
    from convscope.report.html import Figure, Section, Table, write_report

    net = s.model.module
    x, notes = s.read(src)
    with torch.no_grad():
        logits = net(x)[0].cpu()
    n = len(logits)
    classes = [s.model.class_name(i) for i in range(n)]
    t = int(logits.argmax()) if target is None else int(target)
    if not 0 <= t < n:
        raise ConvscopeError(f"--target {t} is out of range: the model has {n} classes")
    probs = torch.softmax(logits.double(), 0)
    sal = attr.saliency(net, x, target=t, abs=False)
    gxi = attr.gradient_x_input(net, x, target=t)
    maps = {"saliency": _np(sal).sum(1), "gradient x input": _np(gxi).sum(1)}
    m = s.head(notes)
    m.update(
        target=t,
        target_name=classes[t],
        logit=float(logits[t]),
        probabilities={c: float(p) for c, p in zip(classes, probs, strict=True)},
    )
    figures: list[Figure] = []
    tables: list[Table] = []
    fs = None
    if use_fs:
        fs = attr.filter_scores(net, x, target=t)
        maps["filter-score pixel map"] = _np(fs.pixel_map)
        k = min(top, len(fs.kernel_names))
        v, i = fs.top_k(k)
        names = [fs.kernel_names[j] for j in i[0].tolist()]
        m["filter_scores"] = dict(zip(fs.kernel_names, _np(fs.scores[0]).tolist(), strict=True))
        m["top_kernels"] = names
        if fs.color_scores is not None:
            cs = _np(fs.color_scores[0])
            ch = _CHANNEL_NAMES.get(len(cs), [f"channel {c}" for c in range(len(cs))])
            m["color_scores"] = dict(zip(ch, cs.tolist(), strict=True))
            total = float(cs.sum())
            tables.append(
                Table(
                    ["channel", "colour score", "share of the filter scores"],
                    [[c, f"{v_:.4g}", f"{100 * v_ / total:.1f}%" if total else "-"]
                     for c, v_ in zip(ch, cs.tolist(), strict=True)],
                    caption="Colour scores: the filter scores summed over each colour "
                    "channel's maps (seed 000, colour front-end).",
                )
            )  # fmt: skip
        o.figure(
            "top_filters.png",
            figs.plot_top_filter_images(
                _np(x), _np(fs.images[0, i[0]])[None], [names], _np(v), [classes[t]]
            ),
        )
        scores = _np(fs.normalized(relative=True))[0][None]
        try:
            cats = [kb.get(name).category for name in fs.kernel_names]
        except ConvscopeError:  # random kernels have no registry entry
            cats = ["kernel"] * len(fs.kernel_names)
        o.figure(
            "filter_scores.png",
            figs.plot_class_filter_scores(
                scores,
                fs.kernel_names,
                cats,
                [classes[t]],
                title="Filter scores of this image (share of the logit)",
            ),
        )
        figures += [
            Figure("filter_scores.png", "Filter scores as a share of the logit."),
            Figure("top_filters.png", f"Top {k} kernels and their filter score images."),
        ]
    o.figure("attributions.png", figs.plot_attribution_comparison(_np(x), maps, [classes[t]]))
    figures.insert(0, Figure("attributions.png", "Pixel attributions for the explained class."))
    o.json("metrics.json", m)
    top5 = torch.topk(probs, min(5, n))
    rows = [[classes[j], f"{p:.4f}"] for p, j in zip(top5.values, top5.indices, strict=True)]
    untrained = " (untrained model: random weights)" if s.model.trained is False else ""
    write_report(
        o.folder,
        f"convscope explain: {os.path.basename(src.label)}",
        [
            Section(
                "Prediction",
                [f"Explained class: {classes[t]} (logit {m['logit']:.3f}){untrained}."],
                [Table(["class", "probability"], rows), *tables],
                figures,
            )
        ],
        {"model": s.model.name, "trained": s.model.trained},
    )
    o.file("report.json")
    o.file("report.html")
    return RunResult(o.folder, list(o.written), m, result=fs)


# -- over a dataset: --data ------------------------------------------------------------------

DATA_OWNED = ("class_filter_scores.png", "report.html", "report.json")


def run_data(
    model: ModelLike,
    data: str,
    out: str | os.PathLike[str],
    *,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    target: int | None = None,
    top: int = 3,
    **options: Unpack[Options],
) -> Any:
    """Filter scores of every image of ``data``, averaged per class (seed 000 Figs. 4, 6-8).

    Each image is explained for its label where the dataset has labels (seed 000's class
    averages; ``target`` overrides, unlabelled images take the predicted class). Writes
    ``per_image.parquet`` (index, label, path, predicted, target, logit, probability,
    each kernel's filter score ``score/<kernel>``, colour scores ``color/<channel>``, the
    top kernels), ``summary.json`` (accuracy; per class: images, mean filter score and
    mean share of the logit of every kernel, mean colour scores, top kernels),
    ``class_filter_scores.png`` and ``report.html``. Resumes into the same ``out``; split
    across processes under torchrun (see :mod:`convscope.runs.dataset_run`).

    Args:
        model: A model with a fixed kernel bank (GFNN, GF-ResNet).
        data, split, limit, batch_size, workers: As in
            :func:`convscope.runs.linear_contributions.run_data`.
        target: Explain every image for this class.
        top: Kernels listed per image and per class.
        **options: The shared :class:`~convscope.runs.Options`.

    Raises:
        ConvscopeError: A model without a kernel bank, bad options or data (before any work).
    """
    from convscope.models import find_kernel_bank
    from convscope.runs.dataset_run import DatasetAnalysis, prepare, run_over

    if top < 1:
        raise ConvscopeError(f"--top must be >= 1; got {top}")

    def check(loaded: Any) -> None:
        try:
            find_kernel_bank(loaded.module)
        except ConvscopeError as e:
            raise ConvscopeError(
                f"{e}; explain --data averages filter scores, which need a kernel bank "
                "(for other models compare explanations with convscope evaluate --data)"
            ) from None

    p = prepare(model, data, split=split, limit=limit, options=dict(options), check=check)
    try:
        names, device, net = p.class_names, p.process.device, p.model.module

        def rows(indices: list[int], x: torch.Tensor, labels: torch.Tensor) -> list[dict[str, Any]]:
            return _rows(net, x.to(device), labels, target, top)

        head = {"model": p.model.metadata(), "data": p.data.describe()}
        analysis = DatasetAnalysis(
            command="explain",
            config={**p.config, "target": target, "top": top},
            rows=rows,
            summarise=lambda table: {**head, **summarise_filter_scores(table, names, top)},
            report=lambda o, summary: _data_report(o, summary, p.model.name, data, split),
            owned=DATA_OWNED,
            batch_dependent=True,  # one float32 pass per batch
        )
        return run_over(analysis, p.data, out, p.process, batch_size=batch_size,
                        workers=workers, overwrite=p.options["overwrite"],
                        formats=p.options["formats"], progress=p.options["progress"])  # fmt: skip
    finally:
        p.process.leave()


def _rows(
    net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, target: int | None, top: int
) -> list[dict[str, Any]]:
    """One batch's rows: the prediction and the filter scores of the explained class."""
    with torch.no_grad():
        logits = net(x)
    n = logits.shape[1]
    pred = logits.argmax(1)
    if target is not None:
        if not 0 <= target < n:
            raise ConvscopeError(f"--target {target} is out of range: the model has {n} classes")
        t = torch.full_like(pred, target)
    else:
        lab = labels.to(pred.device)
        known = (lab >= 0) & (lab < n)
        t = torch.where(known, lab, pred)
    fs = attr.filter_scores(net, x, target=t)
    probs = torch.softmax(logits.double(), 1).gather(1, t[:, None])[:, 0]
    k = min(top, len(fs.kernel_names))
    _, order = fs.top_k(k)
    scores = _np(fs.scores)
    colors = None if fs.color_scores is None else _np(fs.color_scores)
    channels = _CHANNEL_NAMES.get(colors.shape[1], []) if colors is not None else []
    out = []
    for i in range(len(x)):
        row: dict[str, Any] = {
            "predicted": int(pred[i]),
            "target": int(t[i]),
            "logit": float(fs.logits[i]),
            "probability": float(probs[i]),
            "top_kernels": [fs.kernel_names[j] for j in order[i].tolist()],
        }
        for name, v in zip(fs.kernel_names, scores[i].tolist(), strict=True):
            row[f"score/{name}"] = v
        if colors is not None:
            for c, name in enumerate(channels or [f"channel {c}" for c in range(colors.shape[1])]):
                row[f"color/{name}"] = float(colors[i, c])
        out.append(row)
    return out


def summarise_filter_scores(table: Any, names: list[str] | None, top: int) -> dict[str, Any]:
    """``summary.json`` of an explain run from its per-image table."""
    from convscope.runs.summaries import column

    kernels = [c[len("score/") :] for c in table.column_names if c.startswith("score/")]
    colors = [c[len("color/") :] for c in table.column_names if c.startswith("color/")]
    scores = np.stack([column(table, f"score/{k}") for k in kernels], 1)
    logit = column(table, "logit")
    target = column(table, "target").astype(np.int64)
    label = column(table, "label").astype(np.int64)
    predicted = column(table, "predicted").astype(np.int64)
    known = label >= 0
    k = min(top, len(kernels))

    def block(sel: np.ndarray) -> dict[str, Any]:
        mean = scores[sel].mean(0)
        share = (scores[sel] / logit[sel, None]).mean(0)
        b: dict[str, Any] = {
            "images": int(sel.sum()),
            "mean_logit": float(logit[sel].mean()),
            "mean_scores": dict(zip(kernels, mean.tolist(), strict=True)),
            "mean_shares": dict(zip(kernels, share.tolist(), strict=True)),
            "top_kernels": [kernels[j] for j in np.argsort(-mean, kind="stable")[:k]],
        }
        if colors:
            b["color_scores"] = {c: float(column(table, f"color/{c}")[sel].mean()) for c in colors}
        return b

    per_class = {}
    for c in np.unique(target):
        name = names[c] if names is not None and 0 <= c < len(names) else str(int(c))
        per_class[name] = {"class": int(c), **block(target == c)}
    return {
        "images": int(table.num_rows),
        "accuracy": float((predicted[known] == label[known]).mean()) if known.any() else None,
        "explained": "label" if known.all() else "label where known, else the prediction",
        "kernels": kernels,
        "all": block(np.ones(len(target), dtype=bool)),
        "per_class": per_class,
    }


def _data_report(o: Outputs, s: dict[str, Any], model: str, data: str, split: str) -> None:
    from convscope.report import figures as figs
    from convscope.report.html import Figure, Section, Table, write_report

    name = os.path.basename(model)
    kernels = s["kernels"]
    classes = list(s["per_class"])
    shares = np.array([[s["per_class"][c]["mean_shares"][k] for k in kernels] for c in classes])
    try:
        cats = [kb.get(k).category for k in kernels]
    except ConvscopeError:  # random kernels have no registry entry
        cats = ["kernel"] * len(kernels)
    o.figure("class_filter_scores.png",
             figs.plot_class_filter_scores(shares, kernels, cats, classes))  # fmt: skip
    fmt = "png" if "png" in o.formats else o.formats[0]
    colors = "color_scores" in s["all"]
    headers = ["class", "images", "mean logit", "top kernels"] + (
        list(s["all"]["color_scores"]) if colors else []
    )
    rows = []
    for c in classes:
        b = s["per_class"][c]
        cells = [c, str(b["images"]), f"{b['mean_logit']:.3f}", ", ".join(b["top_kernels"])]
        rows.append(cells + ([f"{v:.4g}" for v in b["color_scores"].values()] if colors else []))
    acc = "" if s["accuracy"] is None else f" Top-1 accuracy {100 * s['accuracy']:.2f}%."
    sections = [
        Section("Class-average filter scores", [
            f"{s['images']} images of {data} ({split}), each explained for its "
            f"{s['explained']}.{acc} Each panel: the mean share of the logit of every kernel "
            "over the images of one class.",
            "One row per image is in per_image.parquet; summary.json holds every number on "
            "this page."],
            tables=[Table(headers, rows)],
            figures=[Figure(f"class_filter_scores.{fmt}")]),
    ]  # fmt: skip
    write_report(o.folder, f"convscope explain: {name} on {data}", sections)
    o.file("report.html")
    o.file("report.json")
