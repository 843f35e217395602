"""``convscope linear residual``: the residual r(x0) and its share of a score (seed 001 Table 3)."""

from __future__ import annotations

import os

from typing_extensions import Unpack

from convscope.report import linear_figures as lf
from convscope.runs.inputs import ImageSource
from convscope.runs.linear_setup import Output, check_mode, flat_target, freeze, picture, share
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["OWNED", "run"]

OWNED = ("residual.json", "residual.png")


def run(
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "freeze",
    output: Output = None,
    target: int | None = None,
    top: int = 5,
    **options: Unpack[Options],
) -> RunResult:
    """The residual r(x0): its share r_c / y_c of a score, or |r| / |f(x0)| for a whole output.

    A classifier (or any model given a ``target``) gets the score split into ``F x0``
    and ``r`` for its ``top`` largest scores; an image-to-image model gets its output
    and residual side by side. Writes ``residual.json`` and ``residual.png``.

    Args:
        model: A model spec, an ``nn.Module`` or a :class:`~convscope.runs.LoadedModel`.
        image: A file, ``sample:NAME``, a folder or a glob (several: one folder each).
        out: The folder to write into.
        mode: ``"freeze"`` (the paper's frozen decisions) or ``"taylor"``.
        output: Models whose output is a dict, tuple or dataclass: the key, index or
            callable that picks the tensor to interpret (``"out"`` for segmentation).
        target: Flat output index / class (default: the largest score).
        top: Classifiers: scores shown.
        **options: The shared :class:`~convscope.runs.Options`.

    Returns:
        The :class:`~convscope.runs.RunResult`; its metrics hold ``target``,
        ``class_name``, ``score``, ``residual``, ``input_part``, ``residual_share`` and
        ``top`` for a score, or ``output_norm``, ``residual_norm``, ``residual_max_abs``
        and ``relative_residual`` for a whole output.
    """
    import torch

    check_mode(mode)
    s = start("residual", model, image, out, OWNED, options, dtype=torch.float64)
    return s.plan.run(
        lambda src, o: _one(s, src, o, mode, output, target, top),
        progress=s.progress,
        row=lambda r: [f"{100 * r.metrics.get('residual_share', float('nan')):.2f}%"],
        headers=["residual share"],
        title=f"{s.model.short_name}: residual r(x0)",
    )


def _one(
    s: Started,
    src: ImageSource,
    o: Outputs,
    mode: str,
    output: Output,
    target: int | None,
    top: int,
) -> RunResult:
    fr = freeze(s, src, mode, output)
    li, m, name = fr.li, fr.metrics, s.model.class_name
    y = li.output.reshape(-1).cpu()
    r = li.residual.reshape(-1).cpu()
    if len(li.out_shape) == 1 or target is not None:
        c = flat_target(li, target)
        order = y.argsort(descending=True)[: max(1, top)].tolist()
        if c not in order:
            order = [c, *order[:-1]]
        m.update(
            target=c,
            class_name=name(c),
            score=float(y[c]),
            residual=float(r[c]),
            input_part=float(y[c] - r[c]),
            residual_share=share(r[c], y[c]),
            top=[
                {"index": k, "name": name(k), "score": float(y[k]),
                 "residual": float(r[k]), "residual_share": share(r[k], y[k])}
                for k in order
            ],
        )  # fmt: skip
        fig = lf.plot_score_split(
            [name(k) for k in order],
            (y[order] - r[order]).numpy(),
            r[order].numpy(),
            image=picture(fr.x0),
            title=f"{s.model.short_name}: scores = F x0 + r",
        )
    else:
        rel = share(r.norm(), y.norm())
        m.update(
            output_norm=float(y.norm()),
            residual_norm=float(r.norm()),
            residual_max_abs=float(r.abs().max()),
            relative_residual=rel,
        )
        fig = lf.plot_signed_maps(
            [li.output[0].cpu().numpy(), li.residual[0].cpu().numpy()],
            ["output f(x0)", f"residual r (|r|/|f| = {rel:.3g})"],
            image=picture(fr.x0),
            unit="output units",
        )
    o.figure("residual.png", fig)
    o.json("residual.json", m)
    return RunResult(o.folder, list(o.written), m, result=li)
