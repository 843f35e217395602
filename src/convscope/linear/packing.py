"""Receptive-field packing: many columns (or rows) of ``F`` from one probe, exactly.

A column of ``F`` for a convolutional network is zero outside a small box around its
pixel (the projective field), and so is a row (the receptive field). Impulses at pixels
whose boxes do not overlap can share one probe: ``F (e_a + e_b) = F e_a + F e_b``, and
each member's filter is read off inside its own box. On a 128x128 ESPCN x4 input this
turns the explorer's 4,096 column probes into a few dozen.

Soundness does not rest on the model being translation invariant. The boxes are
*estimated* from a few sample pixels, then every packed probe is *checked*: NaN probes
through the same frozen pass (``0 * NaN`` is NaN, so a NaN marks every output entry the
computation reads a member's input into, a superset of the true support) show which
member's input reaches which output entries. With ``n`` check probes per group, each
member NaN in a different half-size subset of them (a Sperner family: no member's
subset holds another's), member ``a`` reaching into member ``b``'s box shows as a NaN
in ``b``'s box in a probe without ``b``; reaching outside every box shows as a NaN
there. Where a check fails, :func:`pack_filters` returns ``None`` and the caller
computes the filters one probe each. Where no member's input reaches another's box, the
packed output in each box is computed from the member's impulse alone, so the packed
filters are the unpacked ones (to rounding: the same arithmetic, in other batch sizes).

The same code serves columns (impulses in the input, boxes in the output, through
``F``) and rows (impulses in the output, boxes in the input, through ``F^T``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Packed", "pack_filters", "sperner_codes"]

# Packing is used only when it needs at most this fraction of the unpacked probes.
_PAYS = 0.5
# ... and only on grids where the footprint's samples cost at most this fraction.
_SAMPLES = 0.1

Apply = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Packed:
    """Filters read off packed probes.

    Attributes:
        values: ``(G, M, C, bh, bw)`` float64: for channel group ``g`` (one source
            channel each when split, else one group of impulses in every channel) and
            member ``m``, the filter inside its box; zero where the box leaves the map.
        origin: ``(M, 2)`` top-left of each member's box in the target map (may be
            negative or past the edge: the box is the footprint, not clipped).
        probes: Passes' probes used (value and check probes together).
    """

    values: np.ndarray
    origin: np.ndarray
    probes: int


def _nan_reach(out: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` -> ``(B, H, W)`` bool: a NaN in any channel."""
    return torch.isnan(out).any(dim=1).cpu().numpy()


def _footprint(
    apply: Apply,
    src_shape: tuple[int, ...],
    src: list[tuple[int, int]],
    anchors: list[tuple[int, int]],
    like: torch.Tensor,
) -> tuple[int, int, int, int] | None:
    """Offsets ``(y0, y1, x0, x1)`` from the anchor that hold the NaN reach of every
    sample, or ``None`` when no sample reaches anything."""
    e = torch.zeros((len(src), *src_shape), dtype=like.dtype, device=like.device)
    for b, (y, x) in enumerate(src):
        e[b, :, y, x] = float("nan")
    reach = _nan_reach(apply(e))
    box: list[int] | None = None
    for b, (ay, ax) in enumerate(anchors):
        ys, xs = np.nonzero(reach[b])
        if len(ys) == 0:
            continue
        lo_hi = [int(ys.min()) - ay, int(ys.max()) - ay, int(xs.min()) - ax, int(xs.max()) - ax]
        if box is None:
            box = lo_hi
        else:
            box = [min(box[0], lo_hi[0]), max(box[1], lo_hi[1]),
                   min(box[2], lo_hi[2]), max(box[3], lo_hi[3])]  # fmt: skip
    return None if box is None else (box[0], box[1], box[2], box[3])


def _period(anchor: Sequence[int], size: int) -> int:
    """Smallest ``k`` with ``anchor[i + k] - anchor[i] >= size`` for every ``i``: members
    ``k`` grid steps apart have disjoint boxes of ``size`` along this axis."""
    n = len(anchor)
    for k in range(1, n):
        if all(anchor[i + k] - anchor[i] >= size for i in range(n - k)):
            return k
    return n


def _samples(n: int) -> list[int]:
    """Grid indices along one axis to estimate the footprint at: the middle two (both
    parities of a stride-2 model) and both ends."""
    mid = n // 2
    return sorted({0, max(0, mid - 1), mid, n - 1})


def _window(maps: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """``maps[..., y0:y0+h, x0:x0+w]`` with zeros where the window leaves the map."""
    out = np.zeros((*maps.shape[:-2], h, w), dtype=maps.dtype)
    mh, mw = maps.shape[-2:]
    ty0, tx0 = max(y0, 0), max(x0, 0)
    ty1, tx1 = min(y0 + h, mh), min(x0 + w, mw)
    if ty1 > ty0 and tx1 > tx0:
        out[..., ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = maps[..., ty0:ty1, tx0:tx1]
    return out


def sperner_codes(m: int) -> tuple[int, list[tuple[int, ...]]]:
    """``m`` distinct subsets of ``range(n)``, none inside another, for the smallest ``n``.

    Returns:
        ``(n, codes)``: every code has ``(n + 1) // 2`` elements (``C(n, (n+1)//2) >= m``).
    """
    n = 1
    while math.comb(n, (n + 1) // 2) < m:
        n += 1
    codes = list(itertools.islice(itertools.combinations(range(n), (n + 1) // 2), m))
    return n, codes


def _paint(shape: tuple[int, ...], origin: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``shape`` bool map, True inside every box (corners ``origin``, clipped to the map)."""
    out = np.zeros(shape, dtype=bool)
    for oy, ox in origin:
        out[max(oy, 0) : max(oy + size[0], 0), max(ox, 0) : max(ox + size[1], 0)] = True
    return out


def pack_filters(
    apply: Apply,
    src_shape: tuple[int, ...],
    dst_shape: tuple[int, ...],
    src_y: Sequence[int],
    src_x: Sequence[int],
    dst_y: Sequence[int],
    dst_x: Sequence[int],
    split: bool,
    batch_size: int,
    like: torch.Tensor,
    *,
    adjoint: Apply | None = None,
    tick: Callable[[int], None] | None = None,
) -> Packed | None:
    """The filters of impulses on a grid, packed by their footprint, or ``None``.

    Args:
        apply: The linear map, probes ``(B, *src_shape)`` -> ``(B, *dst_shape)``, exact
            on non-finite probes (``li.linear`` or ``li.transpose`` without the
            finiteness check).
        src_shape, dst_shape: ``(C, H, W)`` of the impulses and of the filters.
        src_y, src_x: The grid: member ``(i, j)`` (row-major) is an impulse at
            ``(src_y[i], src_x[j])``, in every channel (or one channel per group when
            ``split``).
        dst_y, dst_x: Each member's anchor in the target map (the output pixel under an
            input pixel for columns, the input pixel for rows); must grow with the index.
        split: One channel group per source channel.
        batch_size: Probes per pass.
        like: dtype and device of the probes.
        adjoint: The transposed map ``(B, *dst_shape)`` -> ``(B, *src_shape)``: the
            checks run through it instead (rows checked by forward passes, which cost
            less than the backward ones): NaN on other members' boxes, or outside every
            box, must not reach a member's impulse.
        tick: Called with the number of probes of each pass done.

    Returns:
        The :class:`Packed` filters, or ``None`` when packing would not save half the
        probes (or the grid is too small for the footprint's samples to pay), or a
        check found a member whose filter reaches outside its box.
    """
    c_src = src_shape[0]
    ny, nx = len(src_y), len(src_x)
    m = ny * nx
    groups_c = c_src if split else 1
    sy, sx = _samples(ny), _samples(nx)
    samples = [(i, j) for i in sy for j in sx]
    if len(samples) > _SAMPLES * m * groups_c:  # too few filters for packing to pay
        return None
    box = _footprint(
        apply,
        src_shape,
        [(src_y[i], src_x[j]) for i, j in samples],
        [(dst_y[i], dst_x[j]) for i, j in samples],
        like,
    )
    if tick is not None:
        tick(len(samples))
    if box is None:  # every filter is zero: a 1x1 box at the anchor, checked below
        box = (0, 0, 0, 0)
    size = (box[1] - box[0] + 1, box[3] - box[2] + 1)
    ky, kx = _period(dst_y, size[0]), _period(dst_x, size[1])
    groups = [
        [i * nx + j for i in range(gy, ny, ky) for j in range(gx, nx, kx)]
        for gy in range(ky)
        for gx in range(kx)
    ]
    n_check, codes = sperner_codes(max(len(g) for g in groups))
    n_check += adjoint is not None  # the probe NaN outside every box
    if len(groups) * (groups_c + n_check) > _PAYS * m * groups_c:
        return None
    origin = np.array(
        [(dst_y[i] + box[0], dst_x[j] + box[2]) for i in range(ny) for j in range(nx)]
    ).reshape(-1, 2)
    src = [(src_y[k // nx], src_x[k % nx]) for k in range(m)]
    # the checks first (a failure then costs the least), then the value probes
    jobs = [(g, "check", j) for g in range(len(groups)) for j in range(n_check)]
    jobs += [(g, "value", ch) for g in range(len(groups)) for ch in range(groups_c)]
    values = np.zeros((groups_c, m, dst_shape[0], *size), dtype=np.float64)
    used = len(samples)
    nan = float("nan")
    for start in range(0, len(jobs), max(batch_size, 1)):
        chunk = jobs[start : start + batch_size]
        checks = [job for job in chunk if job[1] == "check"]
        vals = [job for job in chunk if job[1] == "value"]
        if checks:
            through, shape = (apply, src_shape) if adjoint is None else (adjoint, dst_shape)
            probes = torch.zeros((len(checks), *shape), dtype=like.dtype)
            for b, (g, _, j) in enumerate(checks):
                mem = groups[g]
                if adjoint is None:  # NaN impulses at the members of code j
                    for slot, k in enumerate(mem):
                        if j in codes[slot]:
                            probes[b, :, src[k][0], src[k][1]] = nan
                elif j < n_check - 1:  # NaN on the boxes of the members of code j
                    on = [k for slot, k in enumerate(mem) if j in codes[slot]]
                    probes[b, :, torch.from_numpy(_paint(shape[1:], origin[on], size))] = nan
                else:  # NaN outside every box of the group
                    inside = torch.from_numpy(_paint(shape[1:], origin[mem], size))
                    probes[b, :, ~inside] = nan
            reach = _nan_reach(through(probes.to(like.device)))
            used += len(probes)
            if tick is not None:
                tick(len(probes))
            for b, (g, _, j) in enumerate(checks):
                mem = groups[g]
                if adjoint is None:  # the reach must stay inside the boxes of code j
                    on = [k for slot, k in enumerate(mem) if j in codes[slot]]
                    if bool((reach[b] & ~_paint(dst_shape[1:], origin[on], size)).any()):
                        return None
                    continue
                # no member outside code j (outside every box: no member) may see NaN
                off = [k for slot, k in enumerate(mem) if j == n_check - 1 or j not in codes[slot]]
                if any(bool(reach[b, src[k][0], src[k][1]]) for k in off):
                    return None
        if vals:
            probes = torch.zeros((len(vals), *src_shape), dtype=like.dtype)
            for b, (g, _, ch) in enumerate(vals):
                iy = torch.tensor([src[k][0] for k in groups[g]])
                ix = torch.tensor([src[k][1] for k in groups[g]])
                if split:
                    probes[b, ch, iy, ix] = 1
                else:
                    probes[b, :, iy, ix] = 1
            out = apply(probes.to(like.device)).detach().cpu().double().numpy()
            used += len(probes)
            if tick is not None:
                tick(len(probes))
            for b, (g, _, ch) in enumerate(vals):
                for k in groups[g]:
                    values[ch, k] = _window(out[b], int(origin[k, 0]), int(origin[k, 1]), *size)
    return Packed(values, origin, used)
