"""What the explorer page shows, computed: ``F``'s rows and columns on a grid of pixels.

:func:`explore` freezes a model at one image with the linear interpreter
(:class:`convscope.linear.LinearInterpreter`) and returns an :class:`ExplorerData`:
at every pixel of a grid over the image, the two filters of ``y = F(x0) x + r(x0)``

- the **column** of ``F`` (projective filter): what a unit impulse at the pixel does to
  the output, ``F e_p``;
- the **row** of ``F`` (receptive filter): how every input pixel weighs into the output
  at the position that corresponds to the pixel, ``F^T e_q``;

plus the top singular pairs of ``F`` (eigen-inputs and eigen-outputs). The page itself
is drawn from that result by :func:`convscope.report.explorer.write_explorer_page`,
which computes nothing. Two kinds of model are supported:

- **image-to-image** (output ``(C', H', W')``, e.g. super-resolution with ``H' = s H``):
  the pointer position maps between the input grid and the output grid by the ratio of
  their sizes (:class:`Geometry`). Each filter is cropped to a window around its pixel
  (rows: ``tile x tile`` input pixels; columns: the same span in output pixels); the
  result keeps the windows and, of the whole filter, its peak, sum, the entry ``F[q, p]``
  and the fraction of its energy the window keeps.
- **classifier** (output ``(K,)``): a row is a whole input image per class, so the result
  keeps the rows of the top classes, and at every grid pixel the column restricted to
  those classes, ``F e_p``, read off the rows (``(F e_p)_c = (F^T e_c)_p``) for free.

Channels (:class:`ChannelViews`): one input channel or ``"sum"``, and for image-to-image
models one output channel or ``"sum"``. For input channel ``i`` and output channel ``o``
the column at ``p`` is ``F[(o, .), (i, p)]`` and the row at ``q`` is ``F[(o, q), (i, .)]``;
``"sum"`` adds the filters of every channel: the column for an impulse in every input
channel at once (``sum_i F e_(i,p)``), the row of the sum of the output channels.
``per_channel=False`` computes only the sums (the probes per pixel drop from ``C`` to 1
for columns and from ``C'`` to 1 for rows). On images larger than ``max_pixels`` the
filters are computed on every ``stride``-th pixel only (:func:`pixel_grid`).

Also here: :func:`explorer_image` (an image file or sample photo at the model's channels
and a size the CPU affords) and :func:`trained_espcn_checkpoint` (the trained ESPCN x4
kept in the repository), the inputs of ``convscope linear explore``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from convscope.errors import ConvscopeError
from convscope.linear.context import ALL_OFF
from convscope.linear.interpreter import LinearInterpreter
from convscope.linear.packing import Packed, pack_filters

__all__ = [
    "ESPCN_CHECKPOINT",
    "ChannelViews",
    "ClassRows",
    "ExplorerData",
    "Filters",
    "Geometry",
    "ViewFilters",
    "explore",
    "explorer_image",
    "pixel_grid",
    "trained_espcn_checkpoint",
]

ESPCN_CHECKPOINT = Path("experiments") / "results" / "espcn" / "espcn_x4.pt"
"""The trained ESPCN x4 checkpoint, relative to the repository root (``--model espcn``)."""

# Filters whose every entry is below this fraction of their peak are treated as zero
# when the window size is chosen automatically (rounding noise must not widen it).
_SUPPORT_RTOL = 1e-4
# An automatic window never exceeds this many input pixels a side: a model whose filters
# span the whole image still gets a page of reasonable size (the kept energy says so).
_MAX_AUTO_TILE = 41
# Above this many entries F is not materialized for an exact SVD (64 MiB in float32).
_MAX_DENSE = 2**24

Pixel = tuple[int, int]
ViewKey = tuple[str, str]


# -- the result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """How input pixels map to output positions for an image-to-image model."""

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """``(H' / H, W' / W)``."""
        return (self.out_hw[0] / self.in_hw[0], self.out_hw[1] / self.in_hw[1])

    def target(self, y: int, x: int) -> Pixel:
        """The output pixel whose row is shown for input pixel ``(y, x)``: the one under
        the input pixel's centre (for an x4 upscaler, ``(4 y + 2, 4 x + 2)``)."""
        sy, sx = self.scale
        qy = min(self.out_hw[0] - 1, math.floor((y + 0.5) * sy))
        qx = min(self.out_hw[1] - 1, math.floor((x + 0.5) * sx))
        return qy, qx

    def column_origin(self, y: int, x: int, th: int, tw: int) -> Pixel:
        """Top-left output pixel of a ``th x tw`` window centred on input pixel ``(y, x)``."""
        sy, sx = self.scale
        cy, cx = (y + 0.5) * sy - 0.5, (x + 0.5) * sx - 0.5
        return _round_half_up(cy - (th - 1) / 2), _round_half_up(cx - (tw - 1) / 2)


@dataclass(frozen=True)
class ChannelViews:
    """The channel choices: ``"sum"`` and, when filters are computed per channel and
    there are several, each channel index (as a string)."""

    n_in: int
    n_out: int
    split_in: bool
    split_out: bool

    @classmethod
    def make(cls, n_in: int, n_out: int, per_channel: bool) -> ChannelViews:
        return cls(n_in, n_out, per_channel and n_in > 1, per_channel and n_out > 1)

    @property
    def inputs(self) -> list[str]:
        return ["sum", *map(str, range(self.n_in))] if self.split_in else ["sum"]

    @property
    def outputs(self) -> list[str]:
        return ["sum", *map(str, range(self.n_out))] if self.split_out else ["sum"]

    @property
    def keys(self) -> list[ViewKey]:
        """Every ``(input, output)`` choice, the sums first."""
        return [(i, o) for i in self.inputs for o in self.outputs]


@dataclass(frozen=True, eq=False)
class Filters:
    """One kind of filter (columns or rows) of one channel choice, at every grid pixel.

    ``G`` is the number of grid pixels, row-major over ``(ys, xs)``; every number is of
    the whole filter, not of its window.

    Attributes:
        windows: ``(G, h, w)`` float64, each filter cropped to its window (zero outside
            the image): columns ``column_tile``, rows ``tile x tile``.
        peak: ``(G,)`` largest ``|entry|``.
        total: ``(G,)`` sum of the entries.
        at: ``(G,)`` the entry ``F[q, p]`` (columns at the target ``q``, rows at ``p``).
        kept: ``(G,)`` fraction of the energy (sum of squares) inside the window.
    """

    windows: np.ndarray
    peak: np.ndarray
    total: np.ndarray
    at: np.ndarray
    kept: np.ndarray


@dataclass(frozen=True, eq=False)
class ViewFilters:
    """Image-to-image models: the columns and rows of one channel choice."""

    columns: Filters
    rows: Filters


@dataclass(frozen=True, eq=False)
class ClassRows:
    """Classifiers: the rows of the top classes for one input-channel choice.

    Attributes:
        rows: ``(T, H, W)`` float64, ``F^T e_c`` of each top class ``c``.
        peak: ``(T,)`` largest ``|entry|`` of each row.
        total: ``(T,)`` sum of each row.
        columns: ``(G, T)`` at every grid pixel ``p`` the column entries ``(F e_p)_c``.
    """

    rows: np.ndarray
    peak: np.ndarray
    total: np.ndarray
    columns: np.ndarray


@dataclass(frozen=True, eq=False)
class ExplorerData:
    """Everything the explorer page shows, as NumPy arrays (see the module docstring).

    Attributes:
        kind: ``"image"`` (image-to-image) or ``"classifier"``.
        mode: The interpreter's mode, ``"freeze"`` or ``"taylor"``.
        model_name: The model's class name (the page's default title).
        image: ``(C, H, W)`` the operating point ``x0``.
        output: ``f(x0)``, ``(C', H', W')`` or ``(K,)``.
        ys, xs, stride: The pixel grid (:func:`pixel_grid`); ``G = len(ys) * len(xs)``.
        views: The channel choices the filters were computed for.
        svd_method: ``"exact"``, ``"randomized"``, ``"power"``, or ``"none"`` (k = 0).
        singular_values: ``(k,)`` the top singular values of ``F``, decreasing.
        eigen_inputs: ``(k, C, H, W)`` right singular vectors, signed so that each one's
            largest entry is positive.
        eigen_outputs: ``(k, *output.shape)`` the matching left singular vectors.
        seconds: Time taken to compute all of it.
        geometry: Image-to-image: input and output sizes; ``None`` for classifiers.
        tile: Image-to-image: the row window's side in input pixels.
        column_tile: Image-to-image: ``(th, tw)`` the column window in output pixels.
        targets: Image-to-image: per grid pixel ``p`` the output pixel ``q`` whose row
            is kept (``geometry.target``).
        column_origin, row_origin: Image-to-image: ``(G, 2)`` top-left corner of each
            column's (output pixels) and row's (input pixels) window.
        filters: Image-to-image: per channel choice ``(input, output)``.
        classes: Classifiers: the top classes, highest score first.
        class_names: Classifiers: the names of all ``K`` outputs.
        class_rows: Classifiers: per channel choice ``(input, "sum")``.
        packed: Image-to-image: whether the columns and the rows were computed from
            packed probes (:mod:`convscope.linear.packing`).
        probes: Image-to-image: probes the columns and rows took (packing checks
            included).
    """

    kind: str
    mode: str
    model_name: str
    image: np.ndarray
    output: np.ndarray
    ys: list[int]
    xs: list[int]
    stride: int
    views: ChannelViews
    svd_method: str
    singular_values: np.ndarray
    eigen_inputs: np.ndarray
    eigen_outputs: np.ndarray
    seconds: float = 0.0
    geometry: Geometry | None = None
    tile: int | None = None
    column_tile: tuple[int, int] | None = None
    targets: list[Pixel] = field(default_factory=list)
    column_origin: np.ndarray | None = None
    row_origin: np.ndarray | None = None
    filters: dict[ViewKey, ViewFilters] = field(default_factory=dict)
    classes: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    class_rows: dict[ViewKey, ClassRows] = field(default_factory=dict)
    packed: tuple[bool, bool] = (False, False)
    probes: int = 0

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.output.shape)

    @property
    def grid_count(self) -> int:
        return len(self.ys) * len(self.xs)


# -- the pixel grid ---------------------------------------------------------------------


def pixel_grid(height: int, width: int, max_pixels: int) -> tuple[list[int], list[int], int]:
    """The input pixels filters are computed at: every ``stride``-th row and column.

    Args:
        height, width: Input size.
        max_pixels: At most about this many grid pixels; ``stride`` is the smallest
            integer with ``ceil(H / stride) * ceil(W / stride) <= max_pixels``.

    Returns:
        ``(ys, xs, stride)``: grid rows and columns, each starting at ``stride // 2`` so
        the grid pixels sit in the middle of the blocks they stand for.

    Raises:
        ConvscopeError: ``max_pixels < 1``.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConvscopeError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    stride = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    while math.ceil(height / stride) * math.ceil(width / stride) > max_pixels:
        stride += 1
    off = stride // 2
    ys = list(range(min(off, height - 1), height, stride))
    xs = list(range(min(off, width - 1), width, stride))
    return ys, xs, stride


# -- the filters --------------------------------------------------------------------------


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5)


def _crop(
    maps: np.ndarray, origin: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int, w: int
) -> np.ndarray:
    """Windows ``(B, h, w)`` at ``(y0[b], x0[b])`` of maps ``(B, mh, mw)`` whose top-left
    corner is at ``origin[b]`` in the same coordinates; zero outside the map."""
    b, mh, mw = maps.shape
    out = np.zeros((b, h, w), dtype=maps.dtype)
    for i in range(b):
        ty, tx = int(y0[i]) - int(origin[i, 0]), int(x0[i]) - int(origin[i, 1])
        sy0, sx0 = max(ty, 0), max(tx, 0)
        sy1, sx1 = min(ty + h, mh), min(tx + w, mw)
        if sy1 > sy0 and sx1 > sx0:
            out[i, sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx] = maps[i, sy0:sy1, sx0:sx1]
    return out


def _entries(maps: np.ndarray, origin: np.ndarray, at: Sequence[Pixel]) -> np.ndarray:
    """``maps[b]`` at the pixel ``at[b]`` (map corner at ``origin[b]``), 0 off the map."""
    out = np.zeros(len(maps), dtype=maps.dtype)
    mh, mw = maps.shape[1:]
    for i, (y, x) in enumerate(at):
        ty, tx = y - int(origin[i, 0]), x - int(origin[i, 1])
        if 0 <= ty < mh and 0 <= tx < mw:
            out[i] = maps[i, ty, tx]
    return out


def _impulses(
    shape: tuple[int, ...], positions: Sequence[Pixel], like: torch.Tensor
) -> torch.Tensor:
    """``(B, *shape)`` with a 1 in every channel at each ``(y, x)`` and 0 elsewhere."""
    e = torch.zeros((len(positions), *shape), dtype=like.dtype, device=like.device)
    for b, (y, x) in enumerate(positions):
        e[b, :, y, x] = 1
    return e


def _one_channel_each(e: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` impulses in every channel -> ``(C * B, C, h, w)``: group ``k``
    keeps channel ``k`` only."""
    c = e.shape[1]
    picks = [e * (torch.arange(c, device=e.device) == k).view(1, c, 1, 1) for k in range(c)]
    return torch.stack(picks).reshape(-1, *e.shape[1:])


def _columns(
    li: LinearInterpreter, positions: Sequence[Pixel], split: bool, batch_size: int
) -> np.ndarray:
    """``(G, B, C', H', W')`` float64 columns: ``G = C`` groups of impulses in one input
    channel each when ``split``, else ``G = 1`` group of impulses in every channel."""
    e = _impulses(li.in_shape, positions, li.x0)
    if split:
        e = _one_channel_each(e)
    out = li.linear(e, batch_size=batch_size).detach().cpu().double().numpy()
    return out.reshape(-1, len(positions), *li.out_shape)


def _rows(
    li: LinearInterpreter, targets: Sequence[Pixel], split: bool, batch_size: int
) -> np.ndarray:
    """``(G, B, C, H, W)`` float64 rows: ``G = C'`` groups, one output channel each, when
    ``split``, else ``G = 1``: the rows of the sum of the output channels."""
    e = _impulses(li.out_shape, targets, li.output)
    if split:
        e = _one_channel_each(e)
    out = li.transpose(e, batch_size=batch_size).detach().cpu().double().numpy()
    return out.reshape(-1, len(targets), *li.in_shape)


def _pick(full: np.ndarray, group: str, channel: str) -> np.ndarray:
    """From ``(G, B, C, h, w)`` the maps ``(B, h, w)`` of one group (or their sum over
    the groups) and one channel (or their sum over the channels)."""
    x = full.sum(axis=0) if group == "sum" else full[int(group)]
    return x.sum(axis=1) if channel == "sum" else x[:, int(channel)]


def _support_radius(maps: np.ndarray, cy: float, cx: float, sy: float, sx: float) -> float:
    """Largest distance, in input pixels, from ``(cy, cx)`` to a non-negligible entry."""
    peak = float(np.abs(maps).max())
    if peak == 0:
        return 0.0
    ys, xs = np.nonzero(np.abs(maps) > _SUPPORT_RTOL * peak)
    return float(max(np.abs(ys - cy).max() / sy, np.abs(xs - cx).max() / sx))


def _auto_tile(li: LinearInterpreter, geo: Geometry, batch_size: int) -> int:
    """Smallest odd window (input pixels) holding the centre pixel's row and column."""
    h, w = geo.in_hw
    y, x = h // 2, w // 2
    sy, sx = geo.scale
    # The "sum" view: an impulse in every input channel, the output channels summed.
    e = _impulses(li.in_shape, [(y, x)], li.x0)
    col = li.linear(e, batch_size=batch_size).sum(dim=1)[0].detach().cpu().numpy()
    radius = _support_radius(col, (y + 0.5) * sy - 0.5, (x + 0.5) * sx - 0.5, sy, sx)
    e = _impulses(li.out_shape, [geo.target(y, x)], li.output)
    row = li.transpose(e, batch_size=batch_size).sum(dim=1)[0].detach().cpu().numpy()
    radius = max(radius, _support_radius(row, y, x, 1.0, 1.0))
    # A window larger than twice the image holds every filter whole from any pixel.
    cap = min(_MAX_AUTO_TILE, 2 * max(h, w) - 1)
    return min(cap, 2 * math.ceil(radius) + 1)


def _kept(full: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Fraction of each map's energy (sum of squares) inside its window; 1 for zero maps."""
    total = (full.astype(np.float64) ** 2).sum(axis=(1, 2))
    inside = (crop.astype(np.float64) ** 2).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 1.0)


def _placed(maps: np.ndarray, origin: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Maps ``(B, C, mh, mw)`` with corners at ``origin`` put into zero maps ``(B, *shape)``."""
    b, _, mh, mw = maps.shape
    if (mh, mw) == shape[1:] and not origin.any():
        return maps
    out = np.zeros((b, *shape), dtype=maps.dtype)
    for i in range(b):
        oy, ox = int(origin[i, 0]), int(origin[i, 1])
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + mh, shape[1]), min(ox + mw, shape[2])
        if y1 > y0 and x1 > x0:
            out[i, :, y0:y1, x0:x1] = maps[i, :, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out


def _fix_sign(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip a singular pair so the eigen-input's largest entry is positive (SVD signs are free)."""
    flat = v.reshape(-1)
    if flat[np.abs(flat).argmax()] < 0:
        return -u, -v
    return u, v


def _bar(total: int, desc: str, unit: str, progress: bool) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit=unit, disable=not progress, file=sys.stderr, dynamic_ncols=True
    )


class _Tally:
    """A progress bar over probes that also counts them (a disabled tqdm counts nothing)."""

    def __init__(self, bar: tqdm, total: int) -> None:
        self.bar, self.done, self.total = bar, 0, total

    def __call__(self, n: int) -> None:
        self.done += n
        self.bar.update(n)

    def retotal(self, total: int) -> None:
        self.total = total
        self.bar.total = total
        self.bar.refresh()


def _filters(
    maps: np.ndarray,
    origin: np.ndarray,
    win: np.ndarray,
    h: int,
    w: int,
    at: Sequence[Pixel],
) -> dict[str, np.ndarray]:
    """The numbers of a batch of whole filters ``maps`` ``(B, mh, mw)`` (corner at
    ``origin``; zero outside) and of their ``h x w`` windows at ``win``."""
    b = len(maps)
    crops = _crop(maps, origin, win[:, 0], win[:, 1], h, w)
    return {
        "peak": np.abs(maps).reshape(b, -1).max(axis=1),
        "total": maps.reshape(b, -1).sum(axis=1),
        "at": _entries(maps, origin, at),
        "kept": _kept(maps, crops),
        "windows": crops,
    }


def _packed(
    li: LinearInterpreter,
    kind: str,
    ys: list[int],
    xs: list[int],
    geo: Geometry,
    split: bool,
    batch_size: int,
    tick: _Tally,
) -> Packed | None:
    """Columns or rows on the grid packed by their footprint (:mod:`.packing`), or
    ``None`` where that is not exact or does not pay."""
    ty = [geo.target(y, 0)[0] for y in ys]
    tx = [geo.target(0, x)[1] for x in xs]
    if kind == "columns":
        return pack_filters(
            lambda e: li._forward(e, ALL_OFF, batch_size, check=False),
            li.in_shape, li.out_shape, ys, xs, ty, tx, split, batch_size, li.x0, tick=tick,
        )  # fmt: skip
    # rows are checked through F by forward passes, cheaper than F^T's backward ones
    return pack_filters(
        lambda e: li._transpose(e, batch_size, check=False),
        li.out_shape, li.in_shape, ty, tx, ys, xs, split, batch_size, li.x0,
        adjoint=lambda e: li._forward(e, ALL_OFF, batch_size, check=False), tick=tick,
    )  # fmt: skip


def _image_to_image(
    li: LinearInterpreter,
    ys: list[int],
    xs: list[int],
    tile: int | None,
    batch_size: int,
    svd_method: str,
    per_channel: bool,
    pack: bool,
    progress: bool,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Rows and columns on the grid, one pair per channel choice: the fields of
    :class:`ExplorerData` they fill, and dense ``F^T`` (n, N) if kept for an exact SVD."""
    c, h, w = li.in_shape
    co, ho, wo = li.out_shape
    geo = Geometry((h, w), (ho, wo))
    sy, sx = geo.scale
    views = ChannelViews.make(c, co, per_channel)
    if tile is None:
        tile = _auto_tile(li, geo, batch_size)
    th, tw = max(1, math.ceil(tile * sy)), max(1, math.ceil(tile * sx))
    points = [(y, x) for y in ys for x in xs]
    targets = [geo.target(y, x) for y, x in points]
    half = (tile - 1) // 2
    col_origin = np.array([geo.column_origin(y, x, th, tw) for y, x in points]).reshape(-1, 2)
    row_origin = np.array([(y - half, x - half) for y, x in points]).reshape(-1, 2)
    # F is kept whole for an exact SVD only when the grid columns are all of F's columns.
    keep_dense = (
        svd_method in ("auto", "exact")
        and c == 1
        and len(points) == h * w
        and h * w * co * ho * wo <= _MAX_DENSE
    )
    if svd_method == "exact" and not keep_dense:
        raise ConvscopeError(
            "svd_method='exact' needs a one-channel input, every pixel on the grid "
            f"(max_pixels >= {h * w}) and at most {_MAX_DENSE} entries in F; use 'randomized'"
        )
    dense = np.zeros((h * w, co * ho * wo), dtype=np.float32) if keep_dense else None
    parts: dict[tuple[str, str, str], list[dict[str, np.ndarray]]] = {
        (i, o, kind): [] for i, o in views.keys for kind in ("columns", "rows")
    }
    n_col = len(points) * (c if views.split_in else 1)
    n_row = len(points) * (co if views.split_out else 1)
    chunk = max(batch_size, 1)
    starts = range(0, len(points), chunk)
    with _bar(n_col + n_row, "explorer columns and rows", "probe", progress) as bar:
        tally = _Tally(bar, n_col + n_row)
        packs: dict[str, Packed | None] = {"columns": None, "rows": None}
        kinds = (("columns", views.split_in, n_col), ("rows", views.split_out, n_row))
        for kind, split, n in kinds:
            if pack:
                before = tally.done
                packs[kind] = _packed(li, kind, ys, xs, geo, split, batch_size, tally)
                spent = tally.done - before
                tally.retotal(tally.total + spent - (n if packs[kind] is not None else 0))
        zero = np.zeros((len(points), 2), dtype=np.int64)
        for start in starts:
            sl = slice(start, min(len(points), start + chunk))
            pts, tgs = points[sl], targets[sl]
            col_pack, row_pack = packs["columns"], packs["rows"]
            if col_pack is None:
                full_c = _columns(li, pts, views.split_in, batch_size)  # (G, B, C', H', W')
                c_at = zero[sl]
                tally(full_c.shape[0] * full_c.shape[1])
            else:
                full_c, c_at = col_pack.values[:, sl], col_pack.origin[sl]
            if row_pack is None:
                full_r = _rows(li, tgs, views.split_out, batch_size)  # (G', B, C, H, W)
                r_at = zero[sl]
                tally(full_r.shape[0] * full_r.shape[1])
            else:
                full_r, r_at = row_pack.values[:, sl], row_pack.origin[sl]
            if dense is not None:  # one input channel: the columns are F's columns
                dense[sl] = _placed(full_c[0], c_at, (co, ho, wo)).reshape(len(pts), -1)
            for i, o in views.keys:
                cols = _pick(full_c, i, o)
                rows = _pick(full_r, o, i)
                parts[i, o, "columns"].append(_filters(cols, c_at, col_origin[sl], th, tw, tgs))
                parts[i, o, "rows"].append(_filters(rows, r_at, row_origin[sl], tile, tile, pts))
        probes = tally.done

    def joined(i: str, o: str, kind: str) -> Filters:
        batches = parts[i, o, kind]
        return Filters(**{k: np.concatenate([b[k] for b in batches]) for k in batches[0]})

    fields = {
        "kind": "image",
        "views": views,
        "geometry": geo,
        "tile": tile,
        "column_tile": (th, tw),
        "targets": targets,
        "column_origin": col_origin,
        "row_origin": row_origin,
        "filters": {
            (i, o): ViewFilters(joined(i, o, "columns"), joined(i, o, "rows"))
            for i, o in views.keys
        },
        "packed": (packs["columns"] is not None, packs["rows"] is not None),
        "probes": probes,
    }
    return fields, dense


def _svd_fields(
    li: LinearInterpreter, used: str, S: np.ndarray, U: np.ndarray, V: np.ndarray
) -> dict[str, Any]:
    """The SVD fields of :class:`ExplorerData`, every pair's signs fixed."""
    k = len(S)
    pairs = [_fix_sign(U[i], V[i]) for i in range(k)]
    return {
        "svd_method": used,
        "singular_values": np.asarray(S, dtype=np.float64),
        "eigen_outputs": np.stack([u for u, _ in pairs]) if k else np.zeros((0, *li.out_shape)),
        "eigen_inputs": np.stack([v for _, v in pairs]) if k else np.zeros((0, *li.in_shape)),
    }


def _svd_image(
    li: LinearInterpreter, k: int, method: str, dense: np.ndarray | None, progress: bool
) -> dict[str, Any]:
    k = min(k, math.prod(li.in_shape), math.prod(li.out_shape))
    if k == 0:
        return _svd_fields(li, "none", np.zeros(0), np.zeros(0), np.zeros(0))
    if dense is not None:
        # dense is F^T (n, N), n <= N. The eigen-decomposition of the small Gram matrix
        # F^T F (n x n) gives the same top pairs as a full SVD for a fraction of the time
        # (LAPACK's SVD of 576 x 9216 took 30 s here, eigh of 576 x 576 half a second);
        # squaring only costs precision in the smallest singular values, never shown.
        with _bar(2, "exact svd", "step", progress) as bar:
            ft = torch.from_numpy(dense).double()
            gram = ft @ ft.T
            bar.update(1)
            evals, evecs = torch.linalg.eigh(gram)
            bar.update(1)
        top = torch.argsort(evals, descending=True)[:k]
        S_ = evals[top].clamp_min(0).sqrt()
        V_ = evecs[:, top].T  # (k, n) eigen-inputs
        U_ = (V_ @ ft) / torch.where(S_ > 0, S_, 1.0)[:, None]  # (k, N): F v / s
        S = S_.numpy()
        V = V_.numpy().reshape(k, *li.in_shape)
        U = U_.numpy().reshape(k, *li.out_shape)
        used = "exact"
    else:
        used = "randomized" if method in ("auto", "randomized") else "power"
        res = li.svd(k, method=used, progress=progress)
        S, U, V = (t.detach().cpu().numpy() for t in (res.S, res.U, res.V))
    return _svd_fields(li, used, S[:k], U, V)


def _class_names(names: Sequence[str] | None, k: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(k)]
    if len(names) != k:
        raise ConvscopeError(f"class_names has {len(names)} names but the model has {k} outputs")
    return [str(n) for n in names]


def _classifier(
    li: LinearInterpreter,
    ys: list[int],
    xs: list[int],
    top: int,
    class_names: Sequence[str] | None,
    batch_size: int,
    per_channel: bool,
    progress: bool,
) -> dict[str, Any]:
    """Rows of the top classes per channel choice, and the columns on the grid read off
    those rows: the fields of :class:`ExplorerData` they fill."""
    (k_out,) = li.out_shape
    c, _, _ = li.in_shape
    names = _class_names(class_names, k_out)
    scores = li.output[0].detach().cpu()
    order = torch.argsort(scores, descending=True)[: min(top, k_out)].tolist()
    e = torch.zeros((len(order), k_out), dtype=li.output.dtype, device=li.output.device)
    for t, cls in enumerate(order):
        e[t, cls] = 1
    chunks = []
    starts = range(0, len(order), batch_size)
    with _bar(len(starts), "explorer rows", "batch", progress) as bar:
        for start in starts:
            part = li.transpose(e[start : start + batch_size], batch_size=batch_size)
            chunks.append(part.detach().cpu().double().numpy())
            bar.update(1)
    rows = np.concatenate(chunks)  # (T, C, H, W)
    views = ChannelViews.make(c, 1, per_channel)
    class_rows = {}
    for i, o in views.keys:
        # (T, H, W): the column entry (F e_p)_c of one input channel, or summed over them
        flat = _pick(rows[None], "sum", i)
        class_rows[i, o] = ClassRows(
            rows=flat,
            peak=np.abs(flat).reshape(len(order), -1).max(axis=1),
            total=flat.reshape(len(order), -1).sum(axis=1),
            columns=np.stack([flat[:, y, x] for y in ys for x in xs]),
        )
    return {
        "kind": "classifier",
        "views": views,
        "classes": order,
        "class_names": names,
        "class_rows": class_rows,
    }


def _svd_classifier(li: LinearInterpreter, k: int, method: str, progress: bool) -> dict[str, Any]:
    k = min(k, math.prod(li.in_shape), math.prod(li.out_shape))
    if k == 0:
        return _svd_fields(li, "none", np.zeros(0), np.zeros(0), np.zeros(0))
    used = "power" if method == "power" else "randomized"
    res = li.svd(k, method=used, progress=progress)
    S, U, V = (t.detach().cpu().numpy() for t in (res.S, res.U, res.V))
    return _svd_fields(li, used, S[:k], U, V)


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise ConvscopeError(f"image must be a tensor (1, C, H, W); got {type(image).__name__}")
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ConvscopeError(f"image must be (1, C, H, W) or (C, H, W); got {tuple(image.shape)}")
    if not x.is_floating_point():
        raise ConvscopeError(f"image must hold floats; got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ConvscopeError("image contains NaN or infinite values")
    return x.detach()


def explore(
    model: nn.Module,
    x: torch.Tensor,
    *,
    mode: str = "freeze",
    tile: int | None = None,
    k_svd: int = 4,
    max_pixels: int = 1024,
    batch_size: int = 64,
    svd_method: str = "auto",
    top_classes: int = 5,
    class_names: Sequence[str] | None = None,
    per_channel: bool = True,
    pack: bool = True,
    progress: bool = False,
) -> ExplorerData:
    """Compute what the explorer page shows for ``model`` at ``x``.

    Args:
        model: An image-to-image network ``(N, C, H, W) -> (N, C', H', W')`` or a
            classifier ``(N, C, H, W) -> (N, K)``, in the mode it should be read in
            (usually eval).
        x: ``(1, C, H, W)`` or ``(C, H, W)``, the operating point ``x0``.
        mode: ``"freeze"`` or ``"taylor"``, as in :class:`~convscope.linear.LinearInterpreter`.
        tile: Window side in input pixels for image-to-image filters (odd; columns get
            the same span in output pixels). ``None`` takes the smallest window holding
            the centre pixel's row and column whole, at most 41.
        k_svd: Singular pairs computed (0 for none).
        max_pixels: Filters are computed on a grid of at most this many input pixels.
        batch_size: Probes per forward pass of the interpreter; grid pixels per batch.
        svd_method: ``"exact"`` (materialize ``F`` from all columns: one-channel
            image-to-image models at full grid only, and small ``F``), ``"randomized"``,
            ``"power"`` (the paper's Algorithm 1; slow), or ``"auto"`` (exact when
            possible, else randomized).
        top_classes: Classifiers: classes whose rows are kept.
        class_names: Classifiers: names of the ``K`` outputs (default: their indices).
        per_channel: Compute the filters of every input channel (and, for image-to-image
            models, every output channel) next to their sum. Costs ``C`` column probes
            per grid pixel instead of one, and ``C'`` row probes (classifiers: nothing
            extra). ``False``: the sums only.
        pack: Image-to-image models: share one probe among grid pixels whose filters
            cannot overlap (:mod:`convscope.linear.packing`), where a check shows that
            is exact and it saves at least half the probes; the filters are the same
            either way. ``False``: one probe per filter.
        progress: Show progress bars on stderr over the probes (columns and rows)
            and the SVD steps.

    Returns:
        The :class:`ExplorerData`, for :func:`convscope.report.explorer.write_explorer_page`.

    Raises:
        ConvscopeError: A bad image or option, a model whose output is neither an image
            nor a vector, or an op the interpreter cannot freeze.
    """
    started = time.perf_counter()
    x0 = _check_image(x)
    checks = (("k_svd", k_svd, 0), ("batch_size", batch_size, 1), ("top_classes", top_classes, 1))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConvscopeError(f"{name} must be an integer >= {low}, got {value!r}")
    if tile is not None and (
        isinstance(tile, bool) or not isinstance(tile, int) or tile < 1 or tile % 2 == 0
    ):
        raise ConvscopeError(f"tile must be a positive odd integer, got {tile!r}")
    if svd_method not in ("auto", "exact", "randomized", "power"):
        raise ConvscopeError(
            f"svd_method must be auto, exact, randomized or power; got {svd_method!r}"
        )
    if not isinstance(pack, bool):
        raise ConvscopeError(f"pack must be True or False, got {pack!r}")
    li = LinearInterpreter(model, x0, mode=mode, batch_size=batch_size)  # type: ignore[arg-type]
    ys, xs, stride = pixel_grid(x0.shape[2], x0.shape[3], max_pixels)
    if len(li.out_shape) == 3:
        fields, dense = _image_to_image(
            li, ys, xs, tile, batch_size, svd_method, per_channel, pack, progress
        )
        fields |= _svd_image(li, k_svd, svd_method, dense, progress)
    elif len(li.out_shape) == 1:
        if svd_method == "exact":
            raise ConvscopeError(
                "svd_method='exact' is for image-to-image models; use 'randomized'"
            )
        fields = _classifier(
            li, ys, xs, top_classes, class_names, batch_size, per_channel, progress
        )
        fields |= _svd_classifier(li, k_svd, svd_method, progress)
    else:
        raise ConvscopeError(
            f"the explorer page needs an image-to-image model (output C, H, W) or a "
            f"classifier (output K); this model's output is {tuple(li.out_shape)}"
        )
    return ExplorerData(
        mode=mode,
        model_name=type(model).__name__,
        image=x0[0].cpu().numpy(),
        output=li.output[0].detach().cpu().numpy(),
        ys=ys,
        xs=xs,
        stride=stride,
        seconds=time.perf_counter() - started,
        **fields,
    )


# -- inputs for the command line -----------------------------------------------------------


def trained_espcn_checkpoint() -> Path:
    """The trained ESPCN x4 checkpoint kept in the repository (``--model espcn``).

    Raises:
        ConvscopeError: When it is not there (an install without the repository).
    """
    # src/convscope/linear/explorer.py -> the repository root of an editable install.
    ckpt = Path(__file__).resolve().parents[3] / ESPCN_CHECKPOINT
    if not ckpt.is_file():
        raise ConvscopeError(
            f"the trained ESPCN checkpoint is not at {ckpt} (it ships with the repository as "
            f"{ESPCN_CHECKPOINT.as_posix()}); pass its path to --model"
        )
    return ckpt


def explorer_image(
    source: str | os.PathLike[str],
    channels: int,
    size: tuple[int, int] | None = None,
    *,
    max_side: int = 64,
) -> torch.Tensor:
    """Read an image for the explorer with the model's channels, at a size the CPU affords.

    Every pixel's row and column costs a pass through the model, so an image that is
    not given a size is shrunk (aspect kept) until its longer side is ``max_side``.

    Args:
        source: An image file, or ``"sample:NAME"`` for a scikit-image photo
            (:func:`convscope.data.sample_photo`).
        channels: The model's input channels: 3 for RGB, 1 for luma (ITU-R 601-2),
            others repeat the grey image.
        size: ``(H, W)`` to resize to; ``None`` keeps the size, shrunk as above.
        max_side: See above.

    Returns:
        float32 ``(1, channels, H, W)`` in [0, 1].

    Raises:
        ConvscopeError: A missing or unreadable file, an unknown sample photo, a bad size.
    """
    from convscope.data import load_image, prepare_for_model, sample_photo

    text = os.fspath(source)
    if text.startswith("sample:"):
        rgb = sample_photo(text[len("sample:") :])
        x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    else:
        x = load_image(text)
    if size is None:
        h, w = x.shape[-2:]
        if max(h, w) > max_side:
            f = max_side / max(h, w)
            size = (max(1, round(h * f)), max(1, round(w * f)))
    return prepare_for_model(x, channels, size)
