"""``convscope explain``: one image explained by saliency, gradient x input and filter scores.

The numbers come from :mod:`convscope.attribution`, the pictures from
:mod:`convscope.report.figures`. Filter scores (which kernel, which colour, which pixel a
decision used; seed 000) need a model with a fixed kernel bank (GFNN, GF-ResNet); any
other classifier gets the two gradient maps.
"""

from __future__ import annotations

import os

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

__all__ = ["METHODS", "OWNED", "run"]

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
        title=f"{s.model.name}: explanations",
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
            figs.plot_class_filter_scores(scores, fs.kernel_names, cats, [classes[t]]),
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
