"""``convscope linear contributions``: f(x0) split into the input's part and each bias source's."""

from __future__ import annotations

import os

import numpy as np
from typing_extensions import Unpack

from convscope.report import linear_figures as lf
from convscope.runs.inputs import ImageSource
from convscope.runs.linear_setup import Output, check_mode, flat_target, freeze, picture
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["OWNED", "run"]

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
        title=f"{s.model.name}: contributions",
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
            title=f"{s.model.name}: contributions to {name} (score {contribs.score:.4g})",
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
            title=f"{s.model.name}: f(x0) = input + biases",
        )
    o.figure("contributions.png", fig)
    o.json("contributions.json", m)
    return RunResult(o.folder, list(o.written), m, result=contribs)
