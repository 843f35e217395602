"""What ``convscope linear rows`` and ``columns`` share: filters of F at chosen positions.

A row of F is a receptive filter (what an output reads from the input, ``F^T e``), a
column a projective filter (what one input pixel writes into the output, ``F e``). On an
image-to-image model they are taken at ``at`` positions (rows in output pixels, columns
in input pixels); on a classifier a row is the transposed class, a column the scores one
input position moves. Each run writes one figure and a JSON file with each filter's sum,
peak, centroid and spread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter
from convscope.report import linear_figures as lf
from convscope.runs.inputs import ImageSource
from convscope.runs.linear_setup import Output, check_mode, flat_target, freeze, picture
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["filters_run", "map_stats", "parse_position"]

Position = tuple[int, int] | str


def parse_position(text: Position) -> tuple[int, int]:
    """``"y,x"`` or ``(y, x)`` -> two integers.

    Raises:
        ConvscopeError: Anything but two integers.
    """
    parts = (
        [str(v) for v in text] if not isinstance(text, str) else text.replace(" ", "").split(",")
    )
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ConvscopeError(f"--at must look like 12,30 (y,x); got {text!r}")
    return int(parts[0]), int(parts[1])


def _positions(
    at: Sequence[Position] | None, shape: Sequence[int], where: str
) -> list[tuple[int, int]]:
    h, w = shape[-2:]
    if not at:
        return [(h // 2, w // 2)]
    pos = [parse_position(a) for a in at]
    for y, x in pos:
        if not (0 <= y < h and 0 <= x < w):
            raise ConvscopeError(f"--at {y},{x} lies outside the {where} ({h}x{w} pixels)")
    return pos


def _impulses(
    shape: Sequence[int], pos: list[tuple[int, int]], channel: int | None, like: torch.Tensor
) -> torch.Tensor:
    """(P, *shape) probes: 1 at each position, in one channel or in all (a white impulse)."""
    c = shape[0]
    if channel is not None and not 0 <= channel < c:
        raise ConvscopeError(f"--channel {channel} is out of range for {c} channels")
    e = torch.zeros((len(pos), *shape), dtype=like.dtype, device=like.device)
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
    for m, (cy, cx) in zip(maps.cpu(), centres, strict=True):
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


def _batched(li: LinearInterpreter, kind: str, e: torch.Tensor, progress: bool) -> torch.Tensor:
    """``F e`` (columns) or ``F^T e`` (rows) in passes of the interpreter's batch size."""
    from tqdm.auto import tqdm

    fn = li.linear if kind == "column" else li.transpose
    step = max(1, li.batch_size)
    starts = range(0, len(e), step)
    parts = [
        fn(e[i : i + step])
        for i in tqdm(
            starts, desc=f"{kind}s", unit="batch", disable=not progress or len(starts) < 2
        )
    ]
    return torch.cat(parts).detach()


def _rows_or_columns(
    kind: str,
    s: Started,
    src: ImageSource,
    o: Outputs,
    mode: str,
    output: Output,
    at: Sequence[Position] | None,
    channel: int | None,
    target: int | None,
) -> RunResult:
    fr = freeze(s, src, mode, output)
    li, m, name = fr.li, fr.metrics, s.model.class_name
    classifier = len(li.out_shape) == 1
    pic = picture(fr.x0)
    in_hw = li.in_shape[-2:]
    if kind == "row" and classifier:
        if at:
            raise ConvscopeError(
                "a classifier's outputs have no positions: rows take --target, not --at"
            )
        c = flat_target(li, target)
        maps = li.rows([c]).detach().cpu()
        m.update(target=c, class_name=name(c), flat_indices=[c])
        m["maps"] = map_stats(maps, [((in_hw[0] - 1) / 2, (in_hw[1] - 1) / 2)])
        fig = lf.plot_signed_maps([maps[0].numpy()], [f"row of {name(c)}: F^T e_c"], image=pic,
                                   unit="entry of F")  # fmt: skip
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
        e = _impulses(space, pos, channel, fr.x0)
        maps = _batched(li, kind, e, s.progress).cpu()
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
            fig = lf.plot_signed_maps([maps.numpy()], ["columns (position x class)"], image=pic,
                                   unit="entry of F")  # fmt: skip
        else:
            m["maps"] = map_stats(maps, centres)
            ratio = max(sy, sx) if kind == "column" else 1 / min(sy, sx)
            window = int(min(min(maps.shape[-2:]), max(11, round(8 * ratio))))
            fig = lf.plot_filter_maps(
                pic,
                maps.numpy(),
                marks,
                centres=[(round(cy), round(cx)) for cy, cx in centres],
                window=window,
                kind=kind,
            )
    o.figure(f"{kind}s.png", fig)
    o.json(f"{kind}s.json", m)
    return RunResult(o.folder, list(o.written), m, result=maps)


def filters_run(
    kind: str,
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mode: str,
    output: Output,
    at: Sequence[Position] | None,
    channel: int | None,
    target: int | None,
    options: Options,
) -> RunResult:
    """The run of ``kind`` ``"row"`` or ``"column"`` (see the two commands' modules)."""
    check_mode(mode)
    owned = (f"{kind}s.json", f"{kind}s.png")
    s = start(f"{kind}s", model, image, out, owned, options, dtype=torch.float64)
    return s.plan.run(
        lambda src, o: _rows_or_columns(kind, s, src, o, mode, output, at, channel, target),
        progress=s.progress,
        title=f"{s.model.short_name}: {kind}s of F",
    )
