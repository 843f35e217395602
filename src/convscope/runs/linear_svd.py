"""``convscope linear svd``: top singular values, eigen-inputs and eigen-outputs of F."""

from __future__ import annotations

import math
import os

from typing_extensions import Unpack

from convscope.errors import ConvscopeError
from convscope.report import linear_figures as lf
from convscope.runs.inputs import ImageSource
from convscope.runs.linear_setup import Output, check_mode, freeze, picture
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["OWNED", "run"]

OWNED = ("svd.json", "svd.png")
METHODS = ("power", "randomized")


def run(
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "freeze",
    output: Output = None,
    k: int = 4,
    steps: int = 100,
    method: str = "power",
    **options: Unpack[Options],
) -> RunResult:
    """Top-k singular values, eigen-inputs and eigen-outputs of F (seed 001 Fig. 5, 12).

    Writes ``svd.json`` and ``svd.png``.

    Args:
        model, image, out, mode, **options: As in
            :func:`convscope.runs.linear_residual.run`.
        k: Singular triplets, 1 to min(inputs, outputs).
        steps: ``"power"``: at most this many steps per pair.
        method: ``"power"`` (the paper's Algorithm 1) or ``"randomized"``.
        output: Models whose output is a dict, tuple or dataclass: the key, index or
            callable that picks the tensor to interpret (``"out"`` for segmentation).

    Returns:
        The :class:`~convscope.runs.RunResult`; ``result`` is the
        :class:`~convscope.linear.SVDResult`. Its metrics hold ``k``, ``method``,
        ``steps`` (None for randomized), ``singular_values``, ``iterations`` and
        ``converged`` per pair.
    """
    import torch

    check_mode(mode)
    if method not in METHODS:
        raise ConvscopeError(f"--method must be power or randomized; got {method!r}")
    if k < 1:
        raise ConvscopeError(f"--k must be >= 1; got {k}")
    s = start("svd", model, image, out, OWNED, options, dtype=torch.float64)
    return s.plan.run(
        lambda src, o: _one(s, src, o, mode, output, k, steps, method),
        progress=s.progress,
        row=lambda r: [", ".join(f"{v:.4g}" for v in r.metrics["singular_values"])],
        headers=["singular values"],
        title=f"{s.model.short_name}: SVD of F",
    )


def _one(
    s: Started,
    src: ImageSource,
    o: Outputs,
    mode: str,
    output: Output,
    k: int,
    steps: int,
    method: str,
) -> RunResult:
    fr = freeze(s, src, mode, output)
    li, m = fr.li, fr.metrics
    limit = min(math.prod(li.in_shape), math.prod(li.out_shape))
    if not 1 <= k <= limit:
        raise ConvscopeError(f"--k must lie in [1, {limit}]; got {k}")
    if method == "power":
        res = li.svd(k=k, steps=steps, progress=s.progress)
    else:
        res = li.svd(k=k, method="randomized", progress=s.progress)
    m.update(
        k=k,
        method=method,
        steps=steps if method == "power" else None,
        singular_values=[float(v) for v in res.S],
        iterations=list(res.iterations),
        converged=[bool(c) for c in res.converged],
    )
    fig = lf.plot_svd_pairs(res.S.cpu().numpy(), res.U.cpu().numpy(), res.V.cpu().numpy(),
                            image=picture(fr.x0),
                            title=f"{s.model.short_name}: SVD of F ({method})")  # fmt: skip
    o.figure("svd.png", fig)
    o.json("svd.json", m)
    return RunResult(o.folder, list(o.written), m, result=res)
