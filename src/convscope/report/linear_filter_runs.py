"""The runs behind ``convscope linear rows|columns``: filters of F at chosen positions.

A row of F is a receptive filter (what an output reads from the input, ``F^T e``),
a column a projective filter (what one input pixel writes into the output,
``F e``). On an image-to-image model they are taken at ``at`` positions (rows in
output pixels, columns in input pixels); on a classifier a row is the transposed
class, a column the scores one input position moves. Each run writes one figure and
``metrics.json`` with each filter's sum, peak, centroid and spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from convscope.errors import ConvscopeError
from convscope.report import linear_figures as lf
from convscope.report.linear_runs import (
    Pair,
    PathLike,
    _class_name,
    _flat_target,
    _picture,
    _write,
    parse_pair,
    prepare_linear,
)

__all__ = ["map_stats", "run_columns", "run_rows"]


def _positions(
    at: Sequence[Pair] | None, shape: Sequence[int], where: str
) -> list[tuple[int, int]]:
    h, w = shape[-2:]
    if not at:
        return [(h // 2, w // 2)]
    pos = [parse_pair(a, "--at", "12,30 (y,x)") for a in at]
    for y, x in pos:
        if not (0 <= y < h and 0 <= x < w):
            raise ConvscopeError(f"--at {y},{x} lies outside the {where} ({h}x{w} pixels)")
    return pos


def _impulses(
    shape: Sequence[int], pos: list[tuple[int, int]], channel: int | None
) -> torch.Tensor:
    """(P, *shape) probes: 1 at each position, in one channel or in all (a white impulse)."""
    c = shape[0]
    if channel is not None and not 0 <= channel < c:
        raise ConvscopeError(f"--channel {channel} is out of range for {c} channels")
    e = torch.zeros((len(pos), *shape), dtype=torch.float64)
    for i, (y, x) in enumerate(pos):
        if channel is None:
            e[i, :, y, x] = 1
        else:
            e[i, channel, y, x] = 1
    return e


def map_stats(maps: torch.Tensor, centres: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
    """Sum, peak and spread of each filter map, channels summed.

    Args:
        maps: (P, ..., H, W) maps, one per centre.
        centres: The (y, x) each map is expected to centre on, in its own pixels.

    Returns:
        Per map: ``sum``, ``max_abs``, ``peak`` [y, x] of |map|, ``centroid`` [y, x] of
        |map|^2, ``centroid_shift`` (centroid minus centre) and ``spread`` (RMS distance
        of |map|^2 from its centroid; NaN for an all-zero map).
    """
    stats = []
    for m, (cy, cx) in zip(maps, centres, strict=True):
        a = m.reshape(-1, *m.shape[-2:]).sum(0) if m.ndim >= 3 else m
        p = a.abs() ** 2
        total = float(p.sum())
        ys = torch.arange(a.shape[0], dtype=a.dtype)[:, None]
        xs = torch.arange(a.shape[1], dtype=a.dtype)[None, :]
        if total > 0:
            my, mx = float((p * ys).sum() / total), float((p * xs).sum() / total)
            spread = float(((p * ((ys - my) ** 2 + (xs - mx) ** 2)).sum() / total) ** 0.5)
        else:
            my = mx = spread = float("nan")
        peak = divmod(int(a.abs().argmax()), a.shape[1])
        stats.append(
            {"sum": float(a.sum()), "max_abs": float(a.abs().max()), "peak": list(peak),
             "centroid": [my, mx], "centroid_shift": [my - cy, mx - cx], "spread": spread}
        )  # fmt: skip
    return stats


def _rows_or_columns(
    kind: str,
    model: PathLike,
    image: PathLike,
    out: PathLike,
    *,
    mode: str,
    weights: bool,
    channels: int | None,
    size: Pair | None,
    at: Sequence[Pair] | None,
    channel: int | None,
    target: int | None,
) -> dict[str, Any]:
    s = prepare_linear(model, image, mode=mode, weights=weights, channels=channels, size=size)
    li, info, m = s.interpreter, s.info, s.metrics
    classifier = len(li.out_shape) == 1
    picture = _picture(s.x0)
    in_hw = li.in_shape[-2:]
    if kind == "row" and classifier:
        if at:
            raise ConvscopeError(
                "a classifier's outputs have no positions: rows take --target, not --at"
            )
        c = _flat_target(li, target)
        maps = li.rows([c])
        m.update(target=c, class_name=_class_name(info, c), flat_indices=[c])
        m["maps"] = map_stats(maps, [((in_hw[0] - 1) / 2, (in_hw[1] - 1) / 2)])
        fig = lf.plot_signed_maps([maps[0].numpy()], [f"row of {_class_name(info, c)}: F^T e_c"],
                                  image=picture)  # fmt: skip
    else:
        if len(li.in_shape) != 3 or (kind == "row" and len(li.out_shape) != 3):
            raise ConvscopeError(
                f"{kind}s at positions need images (C, H, W); this model maps "
                f"{tuple(li.in_shape)} to {tuple(li.out_shape)}"
            )
        if target is not None:
            raise ConvscopeError(f"{kind}s take --at positions; --target is for classifier rows")
        space = li.in_shape if kind == "column" else li.out_shape
        pos = _positions(at, space, "input" if kind == "column" else "output")
        e = _impulses(space, pos, channel)
        maps = li.linear(e) if kind == "column" else li.transpose(e)
        sy = li.out_shape[-2] / li.in_shape[-2] if not classifier else 1.0
        sx = li.out_shape[-1] / li.in_shape[-1] if not classifier else 1.0
        if kind == "column":
            marks = pos
            centres = [((y + 0.5) * sy - 0.5, (x + 0.5) * sx - 0.5) for y, x in pos]
        else:
            marks = [(int(y / sy), int(x / sx)) for y, x in pos]
            centres = [((y + 0.5) / sy - 0.5, (x + 0.5) / sx - 0.5) for y, x in pos]
        hw = (space[1], space[2])
        chans = list(range(space[0])) if channel is None else [channel]
        flat = [[c * hw[0] * hw[1] + y * hw[1] + x for c in chans] for y, x in pos]
        m.update(at=[list(p) for p in pos], channel=channel, flat_indices=flat)
        if classifier:  # columns of a classifier: one score vector per input position
            m["columns"] = maps.tolist()
            fig = lf.plot_signed_maps([maps.numpy()], ["columns (position x class)"], image=picture)
        else:
            m["maps"] = map_stats(maps, centres)
            ratio = max(sy, sx) if kind == "column" else 1 / min(sy, sx)
            size_map = maps.shape[-2:]
            window = int(min(min(size_map), max(11, round(8 * ratio))))
            fig = lf.plot_filter_maps(
                picture,
                maps.numpy(),
                marks,
                centres=[(round(cy), round(cx)) for cy, cx in centres],
                window=window,
                kind=kind,
            )
    _write(out, m, {f"{kind}s.png": fig})
    return m


def run_rows(
    model: PathLike,
    image: PathLike,
    out: PathLike,
    *,
    mode: str = "freeze",
    at: Sequence[Pair] | None = None,
    channel: int | None = None,
    target: int | None = None,
    weights: bool = False,
    channels: int | None = None,
    size: Pair | None = None,
) -> dict[str, Any]:
    """Rows of F (receptive filters) at output positions, or of a class (seed 001 Fig. 11).

    Writes ``rows.png`` and ``metrics.json``.

    Args:
        model, image, mode, weights, channels, size: As in
            :func:`convscope.report.linear_runs.prepare_linear`.
        out: Folder to write into (created).
        at: Image-to-image models: output positions (y, x) or ``"y,x"`` (default: the
            centre).
        channel: One output channel at each position (default: all at once).
        target: Classifiers: the class whose row is taken (default: the top-1).

    Returns:
        The metrics written: the head of ``prepare_linear``; for a classifier
        ``target``, ``class_name``, ``flat_indices`` and ``maps`` (one
        :func:`map_stats` entry); otherwise ``at``, ``channel``, ``flat_indices`` (per
        position, the flat output indices summed into its row) and ``maps``.

    Raises:
        ConvscopeError: As ``prepare_linear``, positions on a classifier, a target on
            an image-to-image model, or a position, channel or target out of range.
    """
    return _rows_or_columns("row", model, image, out, mode=mode, weights=weights,
                            channels=channels, size=size, at=at, channel=channel,
                            target=target)  # fmt: skip


def run_columns(
    model: PathLike,
    image: PathLike,
    out: PathLike,
    *,
    mode: str = "freeze",
    at: Sequence[Pair] | None = None,
    channel: int | None = None,
    weights: bool = False,
    channels: int | None = None,
    size: Pair | None = None,
) -> dict[str, Any]:
    """Columns of F (projective filters) at input positions (seed 001 Fig. 11).

    Writes ``columns.png`` and ``metrics.json``.

    Args:
        model, image, mode, weights, channels, size: As in
            :func:`convscope.report.linear_runs.prepare_linear`.
        out: Folder to write into (created).
        at: Input positions (y, x) or ``"y,x"`` (default: the centre).
        channel: One input channel at each position (default: all at once).

    Returns:
        The metrics written: the head of ``prepare_linear``, ``at``, ``channel``,
        ``flat_indices`` (per position, the flat input indices summed into its column),
        and ``maps`` (:func:`map_stats` per column) for an image-to-image model or
        ``columns`` (one score vector per position) for a classifier.

    Raises:
        ConvscopeError: As ``prepare_linear``, or a position or channel out of range.
    """
    return _rows_or_columns("column", model, image, out, mode=mode, weights=weights,
                            channels=channels, size=size, at=at, channel=channel,
                            target=None)  # fmt: skip
