"""Where the sample index of every input-dependent tensor is, and which ops keep the
samples of a pass apart.

A pass runs the model on ``[x0, p_1 ... p_B]`` (``rows = B + 1`` samples). Convolutional
networks keep the sample index first; transformers move it: ViT's attention transposes
``(B, N, D)`` to ``(N, B, D)``, and a window partition (Swin, MaxViT) reshapes
``(B, H, W, C)`` into ``(B * windows, ws * ws, C)``, merging the samples with the
windows while every sample's windows stay one contiguous block. A :class:`Layout`
describes both: dimension ``dim`` of the tensor has size ``outer * rows * inner`` and
its index is ``(a * rows + r) * inner + j`` for sample ``r`` (``a < outer``,
``j < inner``). The usual layout is :data:`FIRST` (``dim=0``, no merged factors).

An op that keeps every sample's values apart (each output value depends on one sample
only, and on every sample in the same way) is allowed wherever it sits: it gets the
layout of its output from the layouts of its inputs. An op that would mix, reorder,
drop or reduce the samples (indexing, gathering, rolling, flipping, sorting or
reducing along the sample index, a reshape that splits it, a product that contracts
over it) is refused with a :class:`ConvscopeError` naming the op and the module.

Rules that read ``x0`` work on a *canonical* view (:func:`canon`): the sample index
moved to the front and the merged factors kept as their own dimensions, so ``t[:1]``
is ``x0``'s part again; :func:`uncanon` puts the result back. For :data:`FIRST` both
are the identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from convscope.errors import ConvscopeError
from convscope.linear.context import PassContext, op_name

__all__ = [
    "FIRST",
    "Layout",
    "add_constant",
    "canon",
    "canon_const",
    "canon_dim",
    "check_invariant",
    "getitem_layout",
    "layout_of",
    "refuse",
    "require_first",
    "reshape_layout",
    "row0_full",
    "track",
    "uncanon",
]

T = torch.Tensor


@dataclass(frozen=True)
class Layout:
    """Where the samples are in one input-dependent tensor.

    Attributes:
        dim: the dimension that holds the sample index.
        outer: size of the factor of that dimension before the sample index.
        inner: size of the factor after it (``dim`` has ``outer * rows * inner`` entries).
    """

    dim: int = 0
    outer: int = 1
    inner: int = 1

    @property
    def merged(self) -> bool:
        return self.outer > 1 or self.inner > 1

    def moved(self, dim: int) -> Layout:
        return Layout(dim, self.outer, self.inner)

    def describe(self) -> str:
        parts = [f"dimension {self.dim}"]
        if self.merged:
            parts.append(f"merged as ({self.outer}, samples, {self.inner})")
        return " ".join(parts)


FIRST = Layout()
"""The sample index first and alone: ``(rows, ...)``."""


def layout_of(ctx: PassContext, t: Any) -> Layout:
    """The layout of a tracked tensor (:data:`FIRST` unless an op moved the samples)."""
    layout = ctx.layout(t)
    return FIRST if layout is None else layout


def track(ctx: PassContext, out: Any, func: Callable[..., Any] | None, layout: Layout) -> Any:
    """``ctx.track`` with ``layout`` (checked against ``out``'s shape)."""
    if isinstance(out, torch.Tensor) and layout != FIRST:
        if not 0 <= layout.dim < out.ndim or out.shape[layout.dim] != (
            layout.outer * ctx.rows * layout.inner
        ):  # an internal error: a handler computed a layout that does not fit
            raise ConvscopeError(
                f"{op_name(func) if func else 'an op'} in {ctx.where()}: the batch layout "
                f"{layout} does not fit the output shape {tuple(out.shape)}"
            )
    return ctx.track(out, func, None if layout == FIRST else layout)


def refuse(ctx: PassContext, func: Callable[..., Any], what: str) -> ConvscopeError:
    """The error for an op that would mix the samples: ``raise refuse(...)``."""
    return ConvscopeError(
        f"{op_name(func)} in {ctx.where()} {what}; the linear interpreter needs the "
        "samples of a batch to stay separate (each output value computed from one sample)"
    )


def require_first(
    ctx: PassContext, func: Callable[..., Any], *tensors: Any, merged_ok: bool = False
) -> Layout:
    """The common layout of the tracked ``tensors`` when the op needs the sample index
    in dimension 0 (``merged_ok``: merged factors allowed there, for ops that treat
    every index of dimension 0 alike, such as convolutions and pools)."""
    for t in tensors:
        if not ctx.is_tracked(t):
            continue
        layout = layout_of(ctx, t)
        if layout == FIRST or (merged_ok and layout.dim == 0):
            return layout
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} needs the sample index in dimension 0 "
            f"(its input has it in {layout.describe()}); the linear interpreter supports "
            "this op only with the samples first"
        )
    return FIRST


# -- the canonical view ------------------------------------------------------------------


def _split_shape(shape: Sequence[int], layout: Layout, rows: int) -> tuple[list[int], int]:
    d = layout.dim
    mid = [layout.outer] if layout.outer > 1 else []
    pos = d + len(mid)
    mid.append(rows)
    if layout.inner > 1:
        mid.append(layout.inner)
    return [*shape[:d], *mid, *shape[d + 1 :]], pos


def canon(t: T, layout: Layout, rows: int) -> T:
    """``t`` with the sample index first: ``(rows, *before, [outer], [inner], *after)``.

    A view where the strides allow it (always for :data:`FIRST`, which returns ``t``).
    """
    if layout == FIRST:
        return t
    shape, pos = _split_shape(t.shape, layout, rows)
    return t.reshape(shape).movedim(pos, 0)


def uncanon(tc: T, layout: Layout, shape: Sequence[int], rows: int) -> T:
    """Inverse of :func:`canon`: ``tc`` back to ``shape`` with the samples at ``layout``."""
    if layout == FIRST:
        return tc
    _, pos = _split_shape(shape, layout, rows)
    return tc.movedim(0, pos).reshape(tuple(shape))


def canon_dim(dim: int, layout: Layout, ndim: int) -> int:
    """Where dimension ``dim`` (not the sample dimension) of a tensor is in its canonical view."""
    dim = dim % ndim
    if layout == FIRST:
        return dim
    if dim < layout.dim:
        return dim + 1
    return dim + (layout.outer > 1) + (layout.inner > 1)


def _right_align(c: T, ndim: int) -> T:
    if c.ndim > ndim:
        raise ConvscopeError(
            f"internal: a constant of {c.ndim} dimensions broadcast to {ndim} dimensions"
        )
    return c.reshape((1,) * (ndim - c.ndim) + tuple(c.shape))


def check_invariant(
    ctx: PassContext, func: Callable[..., Any], c: Any, layout: Layout, ndim: int, what: str
) -> None:
    """Refuse a constant (broadcast against a tracked tensor of ``ndim`` dimensions with
    ``layout``) whose values differ between the samples."""
    if not isinstance(c, torch.Tensor) or c.ndim == 0:
        return
    pos = layout.dim - (ndim - c.ndim)
    if pos < 0 or c.shape[pos] == 1 or c.stride(pos) == 0:
        return
    rows = ctx.rows
    if c.shape[pos] != layout.outer * rows * layout.inner:
        return  # a broadcast error the op itself reports
    split, p = _split_shape(c.shape, layout.moved(pos), rows)
    cs = c.detach().reshape(split)
    if not ctx.decide(lambda: (cs == cs.narrow(p, 0, 1)).all()):
        raise refuse(ctx, func, f"{what} a constant that differs between the samples of the batch")


def _split_ones(shape: Sequence[int], layout: Layout) -> tuple[list[int], int]:
    """``_split_shape`` for a constant with size 1 at the sample dimension."""
    d = layout.dim
    mid = [1] * (1 + (layout.outer > 1) + (layout.inner > 1))
    return [*shape[:d], *mid, *shape[d + 1 :]], d + (layout.outer > 1)


def canon_const(c: Any, layout: Layout, ndim: int, rows: int) -> Any:
    """A constant broadcast against a tracked tensor (``ndim`` dimensions, ``layout``),
    as it broadcasts against that tensor's canonical view. A constant with the full
    sample dimension must be the same for every sample (see :func:`check_invariant`):
    sample 0's part is kept."""
    if not isinstance(c, torch.Tensor) or c.ndim == 0:
        return c
    c = _right_align(c, ndim)
    if c.shape[layout.dim] != 1:
        shape, pos = _split_shape(c.shape, layout, rows)
        return c.reshape(shape).narrow(pos, 0, 1).movedim(pos, 0)
    if layout == FIRST:
        return c
    shape, pos = _split_ones(c.shape, layout)
    return c.reshape(shape).movedim(pos, 0)


def row0_full(ctx: PassContext, t: T, layout: Layout) -> T:
    """``t`` (detached) with every sample's values replaced by sample 0's: the ``x0``
    operand of a product, shaped like ``t`` (an expanded view for :data:`FIRST`).

    Sample 0's part is read through :meth:`PassContext.frozen` (one row, kept by a
    recording pass, given back in a probes-only pass)."""
    if layout == FIRST:
        return ctx.frozen(lambda: t.detach()[:1]).expand(t.shape)
    shape, pos = _split_shape(t.shape, layout, ctx.rows)
    row = ctx.frozen(lambda: t.detach().reshape(shape).narrow(pos, 0, 1))
    return row.expand(shape).reshape(t.shape)


def add_constant(ctx: PassContext, lin: T, layout: Layout, const: Any, op: str) -> T:
    """``ctx.add_constant`` for a tracked ``lin`` with any layout.

    ``const`` broadcasts against ``lin`` (no larger than it) and is the same for every
    sample: either without the sample dimension (size 1 there) or with it in full and
    equal for every sample (then sample 0's part is taken, as built by :func:`row0_full`).
    """
    if isinstance(const, torch.Tensor) and const.ndim > lin.ndim:
        raise ConvscopeError(f"internal: constant {tuple(const.shape)} larger than {lin.shape}")
    if isinstance(const, torch.Tensor) and const.ndim > 0:
        shape = torch.broadcast_shapes(lin.shape, const.shape)
        if tuple(shape) != tuple(lin.shape):
            raise ConvscopeError(
                f"internal: constant {tuple(const.shape)} widens {tuple(lin.shape)}"
            )
    lc = canon(lin, layout, ctx.rows)
    cc = canon_const(const, layout, lin.ndim, ctx.rows)
    out = ctx.add_constant(lc, cc, op)
    return uncanon(out, layout, lin.shape, ctx.rows)


# -- layouts through reshapes and indexing -----------------------------------------------------


def reshape_layout(
    in_shape: Sequence[int], layout: Layout, out_shape: Sequence[int], rows: int
) -> Layout | None:
    """The layout after a reshape from ``in_shape`` to ``out_shape``, or ``None`` when
    the reshape splits the samples (some output dimension would hold part of one
    sample's index and part of another's).

    In the flat (row-major) index the sample index is one digit, with ``before``
    values of the digits above it and ``after`` below it. The output keeps the samples
    apart when one output dimension holds that whole digit: the product of the output
    sizes before it divides ``before`` and the product after it divides ``after``
    (the quotients are the merged factors).
    """
    d = layout.dim
    before = layout.outer * math.prod(in_shape[:d])
    after = layout.inner * math.prod(in_shape[d + 1 :])
    acc = 1
    for j, size in enumerate(out_shape):
        rest = math.prod(out_shape[j + 1 :])
        if before % acc == 0 and rest and after % rest == 0:
            o, i = before // acc, after // rest
            if size == o * rows * i:
                return Layout(j, o, i)
        acc *= size
        if acc and before % acc:
            return None
    return None


def _expand_index(index: Any) -> tuple[Any, ...]:
    return index if isinstance(index, tuple) else (index,)


def _as_index(item: Any) -> Any:
    """A list index (``x[[0, 2]]``, ``x[[True, False]]``) as the tensor it stands for."""
    if isinstance(item, list):
        return torch.as_tensor(item)
    return item


def _consumes(item: Any) -> int:
    if item is None or item is Ellipsis or isinstance(item, bool):
        return 0
    if isinstance(item, torch.Tensor) and item.dtype in (torch.bool, torch.uint8):
        return max(item.ndim, 1)
    return 1


def _full_slice(item: Any, size: int) -> bool:
    return isinstance(item, slice) and item.indices(size) == (0, size, 1)


def _meta_item(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        if item.dtype in (torch.bool, torch.uint8):
            return tuple(i.to("meta") for i in item.bool().nonzero(as_tuple=True))
        return item.to("meta")
    return item


def getitem_layout(
    ctx: PassContext, func: Callable[..., Any], x: T, layout: Layout, index: Any
) -> Layout:
    """The layout of ``x[index]``; refused when the index touches the sample dimension
    (anything but ``:`` there: an integer, a partial slice, an index tensor, a mask)."""
    items = tuple(_as_index(i) for i in _expand_index(index))
    n_used = sum(_consumes(i) for i in items)
    dims: list[tuple[int, int, Any]] = []  # (first input dim, count, item)
    pos = 0
    for item in items:
        if item is Ellipsis:
            pos += x.ndim - n_used
            continue
        k = _consumes(item)
        if k:
            dims.append((pos, k, item))
        pos += k
    d = layout.dim
    for start, k, item in dims:
        if start <= d < start + k and not _full_slice(item, x.shape[d]):
            raise refuse(ctx, func, "indexes along the batch dimension")
    # where the sample dimension lands: index a meta tensor whose sample dimension has
    # a size no other dimension (or index) has
    sizes = [*x.shape, *(it.numel() for it in items if isinstance(it, torch.Tensor))]
    unique = max(sizes, default=1) + 1
    shape = list(x.shape)
    shape[d] = unique
    meta_items: list[Any] = []
    for it in items:
        m = _meta_item(it)
        if isinstance(m, tuple) and isinstance(it, torch.Tensor):
            meta_items.extend(m)  # a mask of k dims is k index tensors
        else:
            meta_items.append(m)
    out_shape = torch.empty(shape, device="meta")[tuple(meta_items)].shape
    hits = [j for j, s in enumerate(out_shape) if s == unique]
    if len(hits) != 1:
        raise refuse(ctx, func, "indexes along the batch dimension")
    return layout.moved(hits[0])
