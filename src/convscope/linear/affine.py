"""Ops that are already linear or affine in the input: the whitelist, and the handlers
that split an affine op into its linear part and its additive constant.

Three kinds of entries, looked up by the interceptor for an op with a tracked
(input-dependent) argument:

- :data:`JOINT_LINEAR`: linear in all their tensor arguments together (views,
  reshapes, slicing, concatenation, sums over non-batch dimensions ...). They run on
  the whole batch and their outputs are tracked.
- :data:`FIRST_LINEAR`: linear in the first argument only (pools, padding,
  interpolation, gathers with a constant index ...); a tracked tensor in any other
  position is refused, since the op is then no longer linear.
- :data:`HANDLERS`: affine ops whose constant is a bias source (conv and linear
  biases, ``x + c``, constant padding, writes of constants) and in-place writes.
  Batch norm, products and the non-linear units are in :mod:`convscope.linear.rules`.

:data:`CONSTANT_OF_SHAPE` (``zeros_like`` ...) and :data:`METADATA` (``size``,
``shape`` ...) read only the shape of a tracked tensor: they run as usual and their
outputs are constants.

Every entry also follows the sample (batch) dimension (:mod:`convscope.linear.batchdim`):
it computes where the samples are in its output from where they are in its inputs, and
refuses, naming the op and the module, what would mix, reorder, drop or reduce them
(``y[perm]``, ``index_select(0, ...)``, ``roll``/``flip`` along them, ``sum(0)``, a
reshape that splits them), and casts to integer or boolean types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from convscope.errors import ConvscopeError
from convscope.linear import batchdim as bd
from convscope.linear.context import PassContext, op_name

__all__ = [
    "CONSTANT_OF_SHAPE",
    "FIRST_LINEAR",
    "HANDLERS",
    "Handler",
    "JOINT_LINEAR",
    "METADATA",
    "elementwise_layout",
    "linear_first",
    "linear_joint",
    "pop_arg",
    "refuse_tracked",
    "torch_funcs",
]

Handler = Callable[[PassContext, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
T = torch.Tensor


def torch_funcs(owner: object, names: str) -> set[Callable[..., Any]]:
    """The attributes of ``owner`` with these names that exist in this torch version."""
    out = set()
    for n in names.split():
        f = getattr(owner, n, None)
        if f is not None:
            out.add(f)
    return out


def _getters(names: str) -> set[Callable[..., Any]]:
    # property access on a tensor reaches __torch_function__ as the descriptor's __get__
    return {getattr(T, n).__get__ for n in names.split() if hasattr(T, n)}


JOINT_LINEAR: frozenset[Callable[..., Any]] = frozenset(
    torch_funcs(
        torch,
        "cat concat concatenate stack hstack vstack dstack flatten unflatten reshape "
        "squeeze unsqueeze narrow split tensor_split chunk unbind select neg negative "
        "diagonal tril triu real clone cumsum",
    )
    | torch_funcs(
        T,
        "view view_as reshape reshape_as flatten unflatten squeeze unsqueeze squeeze_ "
        "unsqueeze_ contiguous clone expand expand_as repeat narrow select split "
        "split_with_sizes tensor_split chunk unbind neg negative neg_ __neg__ __pos__ "
        "positive diagonal tril triu to type type_as float double half bfloat16 cpu cuda "
        "requires_grad_ zero_ cumsum",
    )
    | _getters("real")
)
"""Linear in every tensor argument together; no constant added."""

FIRST_LINEAR: frozenset[Callable[..., Any]] = frozenset(
    torch_funcs(
        F,
        "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
        "adaptive_avg_pool3d interpolate upsample upsample_nearest upsample_bilinear "
        "pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle unfold fold "
        "grid_sample affine_grid max_unpool1d max_unpool2d max_unpool3d",
    )
    | torch_funcs(
        torch,
        "avg_pool1d adaptive_avg_pool1d pixel_shuffle pixel_unshuffle channel_shuffle "
        "index_select gather take_along_dim repeat_interleave",
    )
    | torch_funcs(T, "__getitem__ index_select gather take_along_dim repeat_interleave")
    | torch_funcs(torch._C._nn, "avg_pool2d avg_pool3d adaptive_avg_pool2d adaptive_avg_pool3d")
)
"""Linear in the first argument; every other tensor argument must be a constant."""

CONSTANT_OF_SHAPE: frozenset[Callable[..., Any]] = frozenset(
    torch_funcs(
        torch, "zeros_like ones_like empty_like full_like rand_like randn_like randint_like"
    )
    | torch_funcs(T, "new_zeros new_ones new_empty new_full new_tensor")
)
"""Read only the shape (and dtype/device) of their argument: outputs are constants."""

METADATA: frozenset[Callable[..., Any]] = frozenset(
    torch_funcs(
        T,
        "dim ndimension size numel nelement stride is_contiguous is_floating_point "
        "is_complex element_size get_device data_ptr storage_offset __len__ __repr__ "
        "__str__ __format__ __hash__ __dir__ is_set_to",
    )
    | torch_funcs(torch, "numel is_floating_point is_complex is_tensor")
    | _getters(
        "shape ndim dtype device layout requires_grad is_cuda is_leaf grad_fn names "
        "is_sparse is_quantized is_meta is_mkldnn grad _version output_nr itemsize nbytes "
        "is_nested is_cpu"
    )
)
"""Queries of shape, dtype, device and autograd state: no tensor values involved."""


# -- small helpers shared with the rules -----------------------------------------------


def refuse_tracked(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Raise unless only the first argument depends on the input."""
    if ctx.any_tracked(args[1:], kwargs):
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} is linear in its input only, but another "
            "argument (a weight, index or grid) depends on the input here; products of "
            "input-dependent tensors other than elementwise gates are not supported"
        )


def pop_arg(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None
) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """Take argument ``name`` (positional ``index``) out, leaving ``default`` in its place."""
    if len(args) > index:
        value = args[index]
        args = (*args[:index], default, *args[index + 1 :])
        return args, kwargs, value
    if name in kwargs:
        kwargs = dict(kwargs)
        value = kwargs.pop(name)
        kwargs[name] = default
        return args, kwargs, value
    return args, kwargs, default


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    """Argument ``name`` (positional ``index``) of a call, or ``default``."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _is_zero(ctx: PassContext, value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not ctx.decide(lambda: value.detach().ne(0).any())
    return isinstance(value, (int, float, bool)) and value == 0


def _short(func: Callable[..., Any]) -> str:
    return op_name(func).rsplit(".", 1)[-1]


def _propagate_gate(ctx: PassContext, src: Any, out: Any) -> None:
    """Outputs of a linear op on a gate (softmax, sigmoid output) are gates too, so a
    product after a reshape or dropout still knows which operand to freeze."""
    if isinstance(src, torch.Tensor) and ctx.is_gate(src):
        for o in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(o, torch.Tensor):
                ctx.mark_gate(o)


# -- the linear whitelist, with the sample dimension followed ------------------------------

_RESHAPES = torch_funcs(torch, "flatten unflatten reshape squeeze unsqueeze") | torch_funcs(
    T, "view view_as reshape reshape_as flatten unflatten squeeze unsqueeze squeeze_ unsqueeze_"
)
# the other tensor gives only a shape or a dtype
_SHAPE_FROM_OTHER = torch_funcs(T, "view_as reshape_as expand_as type_as to")
_CASTS = torch_funcs(T, "to type type_as")
_REMOVES_DIM = torch_funcs(torch, "select unbind") | torch_funcs(T, "select unbind")
# dim argument (position, default) of the ops that slice along one dimension
_SLICING: dict[Callable[..., Any], tuple[int, int | None]] = {
    **dict.fromkeys(
        torch_funcs(torch, "narrow select") | torch_funcs(T, "narrow select"), (1, None)
    ),
    **dict.fromkeys(torch_funcs(torch, "unbind") | torch_funcs(T, "unbind"), (1, 0)),
    **dict.fromkeys(
        torch_funcs(torch, "split tensor_split chunk")
        | torch_funcs(T, "split split_with_sizes tensor_split chunk"),
        (2, 0),
    ),
}
_EXPANDS = torch_funcs(T, "expand expand_as")
_REPEAT = torch_funcs(T, "repeat")
_DIAGONAL = torch_funcs(torch, "diagonal") | torch_funcs(T, "diagonal")
_TRIANGLE = torch_funcs(torch, "tril triu") | torch_funcs(T, "tril triu")
_CUMULATIVE = torch_funcs(torch, "cumsum") | torch_funcs(T, "cumsum")


def _target_dtype(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The dtype a ``to``/``type``/``type_as`` call casts to (``None``: no cast)."""
    if func in torch_funcs(T, "type_as"):
        other = _arg(args, kwargs, 1, "other", None)
        return other.dtype if isinstance(other, torch.Tensor) else None
    candidates = [*args[1:], kwargs.get("dtype")]
    for c in candidates:
        if isinstance(c, torch.dtype):
            return c
        if isinstance(c, torch.Tensor) and func in torch_funcs(T, "to"):
            return c.dtype
        if isinstance(c, str) and func in torch_funcs(T, "type"):
            name = c.replace("torch.cuda.", "torch.").rsplit(".", 1)[-1]
            kind = getattr(torch, name, None)
            return getattr(kind, "dtype", None)
    return None


def _joint_layout(
    ctx: PassContext,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    x: torch.Tensor,
    in_shape: tuple[int, ...],
    layout: bd.Layout,
    out: Any,
) -> bd.Layout:
    """The layout of the outputs of a whitelisted linear op on ``x``."""
    d = layout.dim
    if func in _RESHAPES:
        first = out[0] if isinstance(out, (list, tuple)) else out
        new = bd.reshape_layout(in_shape, layout, tuple(first.shape), ctx.rows)
        if new is None:
            raise bd.refuse(
                ctx,
                func,
                f"reshapes {in_shape} to {tuple(first.shape)}, which splits or mixes the "
                f"samples (the sample index is in {layout.describe()})",
            )
        return new
    if func in _SLICING:
        index, default = _SLICING[func]
        dim = _arg(args, kwargs, index, "dim", default)
        if dim is None:
            dim = kwargs.get("axis", 0)
        dim = int(dim) % len(in_shape)
        if dim == d:
            raise bd.refuse(ctx, func, "slices along the batch dimension")
        if func in _REMOVES_DIM and dim < d:
            return layout.moved(d - 1)
        return layout
    if func in _EXPANDS:
        return layout.moved(d + out.ndim - len(in_shape))
    if func in _REPEAT:
        new_d = d + out.ndim - len(in_shape)
        k = out.shape[new_d] // in_shape[d]
        return bd.Layout(new_d, layout.outer * k, layout.inner)
    if func in _DIAGONAL:
        n = len(in_shape)
        dim1 = int(_arg(args, kwargs, 2, "dim1", 0)) % n
        dim2 = int(_arg(args, kwargs, 3, "dim2", 1)) % n
        if d in (dim1, dim2):
            raise bd.refuse(ctx, func, "takes a diagonal across the batch dimension")
        return layout.moved(d - (dim1 < d) - (dim2 < d))
    if func in _TRIANGLE and d >= len(in_shape) - 2:
        raise bd.refuse(ctx, func, "masks a triangle that spans the batch dimension")
    if func in _CUMULATIVE and int(_arg(args, kwargs, 1, "dim", 0)) % len(in_shape) == d:
        raise bd.refuse(ctx, func, "accumulates along the batch dimension")
    # every other whitelisted op keeps the shape: clone, contiguous, neg, casts, ...
    first = out[0] if isinstance(out, (list, tuple)) else out
    if isinstance(first, torch.Tensor) and tuple(first.shape) != in_shape:
        raise bd.refuse(ctx, func, "changes the shape in a way the interpreter cannot follow")
    return layout


def linear_joint(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A whitelisted linear op (:data:`JOINT_LINEAR`): run it, follow the samples."""
    x: Any = args[0] if args else kwargs.get("input", kwargs.get("self"))
    if not ctx.is_tracked(x):
        if func in _SHAPE_FROM_OTHER:  # constant.view_as(tracked), constant.to(tracked)
            return func(*args, **kwargs)
        return ctx.track(func(*args, **kwargs), func)
    if func in _CASTS or "dtype" in kwargs:
        dtype = _target_dtype(func, args, kwargs)
        if dtype is not None and not (dtype.is_floating_point or dtype.is_complex):
            raise ConvscopeError(
                f"{op_name(func)} in {ctx.where()} casts an input-dependent tensor to "
                f"{dtype}, which is not linear (it rounds); the linear interpreter supports "
                "casts between floating-point types only"
            )
    if func in _RESHAPES and any(isinstance(a, torch.dtype) for a in (*args, *kwargs.values())):
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} reinterprets the bits of an input-dependent "
            "tensor as another dtype, which is not linear"
        )
    layout = bd.layout_of(ctx, x)
    in_shape = tuple(x.shape)
    out = func(*args, **kwargs)
    if isinstance(out, str):  # x.type() with no argument: the type's name
        return out
    new = _joint_layout(ctx, func, args, kwargs, x, in_shape, layout, out)
    _propagate_gate(ctx, x, out)
    return bd.track(ctx, out, func, new)


_FIRST_BATCH0 = (
    torch_funcs(
        F,
        "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
        "adaptive_avg_pool3d interpolate upsample upsample_nearest upsample_bilinear "
        "pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle unfold fold "
        "grid_sample affine_grid max_unpool1d max_unpool2d max_unpool3d",
    )
    | torch_funcs(
        torch, "avg_pool1d adaptive_avg_pool1d pixel_shuffle pixel_unshuffle channel_shuffle"
    )
    | torch_funcs(torch._C._nn, "avg_pool2d avg_pool3d adaptive_avg_pool2d adaptive_avg_pool3d")
)
# ops that take unbatched inputs too, and then mix dimension 0 with others: the number
# of dimensions they have when dimension 0 is the batch
_BATCHED_NDIM: dict[str, tuple[int, ...]] = {
    "pixel_shuffle": (4, 5, 6, 7, 8),
    "pixel_unshuffle": (4, 5, 6, 7, 8),
    "unfold": (4,),
    "fold": (3,),
}
_GETITEM = torch_funcs(T, "__getitem__")
_INDEX_SELECT = torch_funcs(torch, "index_select") | torch_funcs(T, "index_select")
_GATHER = torch_funcs(torch, "gather") | torch_funcs(T, "gather")
_TAKE_ALONG = torch_funcs(torch, "take_along_dim") | torch_funcs(T, "take_along_dim")
_REPEAT_INTERLEAVE = torch_funcs(torch, "repeat_interleave") | torch_funcs(T, "repeat_interleave")


def _first_layout(
    ctx: PassContext,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    x: torch.Tensor,
    layout: bd.Layout,
) -> bd.Layout:
    d = layout.dim
    if func in _GETITEM:
        return bd.getitem_layout(ctx, func, x, layout, args[1])
    if func in _INDEX_SELECT:
        if int(_arg(args, kwargs, 1, "dim", 0)) % x.ndim == d:
            raise bd.refuse(ctx, func, "selects along the batch dimension")
        return layout
    if func in _GATHER or func in _TAKE_ALONG:
        gather = func in _GATHER
        dim = _arg(args, kwargs, 1 if gather else 2, "dim", None)
        index = _arg(args, kwargs, 2 if gather else 1, "index" if gather else "indices", None)
        if dim is None or int(dim) % x.ndim == d:
            raise bd.refuse(ctx, func, "gathers along (or across) the batch dimension")
        if isinstance(index, torch.Tensor) and index.ndim == x.ndim:
            if gather and index.shape[d] != x.shape[d]:
                raise bd.refuse(ctx, func, "keeps only some of the samples")
            bd.check_invariant(ctx, func, index, layout, x.ndim, "gathers with")
        return layout
    if func in _REPEAT_INTERLEAVE:
        dim = _arg(args, kwargs, 2, "dim", None)
        repeats = _arg(args, kwargs, 1, "repeats", None)
        if isinstance(repeats, torch.Tensor) and repeats.numel() == 1:
            repeats = int(repeats)
        if dim is None and x.ndim == 1:
            dim = 0
        if dim is None:
            raise bd.refuse(ctx, func, "flattens the batch dimension into its output")
        if int(dim) % x.ndim != d:
            return layout
        if not isinstance(repeats, int):
            raise bd.refuse(ctx, func, "repeats the samples unevenly")
        return bd.Layout(d, layout.outer, layout.inner * repeats)
    # pools, interpolation, pixel shuffles, grids: dimension 0 is their batch
    layout = bd.require_first(ctx, func, x, merged_ok=True)
    need = _BATCHED_NDIM.get(_short(func))
    if need is not None and x.ndim not in need:
        raise bd.refuse(
            ctx, func, "reads an input without a batch dimension (its dimension 0 is channels)"
        )
    for a in (*args[1:], *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.ndim == x.ndim:  # grids, unpool indices
            bd.check_invariant(ctx, func, a, layout, a.ndim, "reads")
    return layout


def linear_first(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A whitelisted op linear in its first argument (:data:`FIRST_LINEAR`)."""
    refuse_tracked(ctx, func, args, kwargs)
    x: Any = args[0] if args else kwargs.get("input")
    layout = _first_layout(ctx, func, args, kwargs, x, bd.layout_of(ctx, x))
    out = func(*args, **kwargs)
    if func in _GETITEM:
        _propagate_gate(ctx, x, out)
    return bd.track(ctx, out, func, layout)


# -- affine ops with a bias ------------------------------------------------------------


def _with_bias(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """conv*, conv_transpose*, linear: ``op(x, W) + b``, ``b`` at position 2."""
    refuse_tracked(ctx, func, args, kwargs)
    name = _short(func)
    x = args[0] if args else kwargs["input"]
    layout = bd.layout_of(ctx, x)
    if name == "linear":
        if layout.dim == x.ndim - 1:
            raise bd.refuse(ctx, func, "mixes the batch dimension (it is its feature dimension)")
    else:
        layout = bd.require_first(ctx, func, x, merged_ok=True)
        spatial = int(name[-2])  # conv2d, conv_transpose3d ...
        if x.ndim != spatial + 2:
            raise bd.refuse(
                ctx, func, "convolves an input without a batch dimension (it mixes dimension 0)"
            )
    bare_args, bare_kwargs, bias = pop_arg(args, kwargs, 2, "bias")
    if bias is None:
        return bd.track(ctx, func(*args, **kwargs), func, layout)
    if ctx.plain:
        ctx.new_source(f"{name} bias")
        return bd.track(ctx, func(*args, **kwargs), func, layout)
    lin = func(*bare_args, **bare_kwargs)
    if ctx.silent:  # no row adds the bias: leave it out rather than add it times 0
        ctx.new_source(f"{name} bias")
        return bd.track(ctx, lin, func, layout)
    const = bias if name == "linear" else bias.view(-1, *([1] * (x.ndim - 2)))
    return bd.track(ctx, bd.add_constant(ctx, lin, layout, const, f"{name} bias"), func, layout)


# result = sa * a + sb * b for the additive ops; alpha scales the second operand of
# add/sub and the first of rsub (torch.rsub(input, other, alpha) = other - alpha * input)
_ADD = torch_funcs(torch, "add") | torch_funcs(T, "add add_ __add__ __iadd__")
_RADD = torch_funcs(T, "__radd__")
_SUB = torch_funcs(torch, "sub subtract") | torch_funcs(
    T, "sub sub_ subtract subtract_ __sub__ __isub__"
)
_RSUB = torch_funcs(torch, "rsub") | torch_funcs(T, "__rsub__")
_INPLACE_ADD = torch_funcs(T, "add_ __iadd__ sub_ subtract_ __isub__")


def elementwise_layout(
    ctx: PassContext, func: Callable[..., Any], a: Any, b: Any, what: str
) -> bd.Layout:
    """The layout of ``a (op) b`` with broadcasting, at least one side tracked: two
    tracked sides must hold the samples at the same place, and a constant side must be
    the same for every sample."""
    ta, tb = ctx.is_tracked(a), ctx.is_tracked(b)
    nd_a = a.ndim if isinstance(a, torch.Tensor) else 0
    nd_b = b.ndim if isinstance(b, torch.Tensor) else 0
    out_nd = max(nd_a, nd_b)
    x, nd_x, other = (a, nd_a, b) if ta else (b, nd_b, a)
    lx = bd.layout_of(ctx, x)
    layout = lx.moved(lx.dim + out_nd - nd_x)
    if ta and tb:
        lb = bd.layout_of(ctx, b)
        if lb.moved(lb.dim + out_nd - nd_b) != layout:
            raise bd.refuse(
                ctx,
                func,
                f"{what} two input-dependent tensors whose samples are in different places "
                f"({lx.describe()} of {tuple(a.shape)}, {lb.describe()} of {tuple(b.shape)})",
            )
    else:
        bd.check_invariant(ctx, func, other, layout, out_nd, what)
    return layout


def _add_like(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``a + b``, ``a - b``, ``b - a`` with one side constant: the constant is a source."""
    a: Any = args[0]
    b: Any = args[1] if len(args) > 1 else kwargs.get("other")
    ta, tb = ctx.is_tracked(a), ctx.is_tracked(b)
    inplace = func in _INPLACE_ADD
    layout = elementwise_layout(ctx, func, a, b, "adds")
    if (ta and tb) or _is_zero(ctx, b if ta else a) or (ctx.plain and not inplace):
        if not (ta and tb) and not _is_zero(ctx, b if ta else a):
            ctx.new_source(f"{_short(func)} constant")
        out = func(*args, **kwargs)
        if inplace:
            bd.track(ctx, a, func, layout)
        return bd.track(ctx, out, func, layout)
    alpha = kwargs.get("alpha", 1)
    if func in _ADD:
        sa, sb = 1, alpha
    elif func in _RADD:
        sa, sb = 1, 1
    elif func in _SUB:
        sa, sb = 1, -alpha
    else:  # rsub
        sa, sb = -alpha, 1
    x: torch.Tensor = a if ta else b
    s_x, s_c = (sa, sb) if ta else (sb, sa)
    lin = x if s_x == 1 else x * s_x
    const = ctx.constant(b if ta else a, lin)
    if inplace:
        # a is the target; for an untracked target its old value is the constant
        const = const.clone()
    shape = torch.broadcast_shapes(lin.shape, const.shape)
    if tuple(shape) != tuple(lin.shape):
        lin = lin.expand(shape)
    out = bd.add_constant(ctx, lin, layout, const * s_c, f"{_short(func)} constant")
    if inplace:
        a.copy_(out)
        return bd.track(ctx, a, func, layout)
    return bd.track(ctx, out, func, layout)


_CAT = torch_funcs(torch, "cat concat concatenate stack hstack vstack dstack")
_STACK = torch_funcs(torch, "stack")


def _cat_layout(
    ctx: PassContext, func: Callable[..., Any], seq: Sequence[Any], dim: int
) -> bd.Layout:
    """The layout of a concatenation (or stack) along ``dim`` of ``seq``."""
    name = _short(func)
    tracked = [t for t in seq if ctx.is_tracked(t)]
    x = tracked[0]
    layout = bd.layout_of(ctx, x)
    nd = x.ndim
    if name in ("vstack", "dstack", "hstack"):
        if name == "vstack" and nd == 1 or name == "dstack" and nd < 3:
            layout = layout.moved(layout.dim + (nd == 1))  # atleast_2d/3d put a 1 first
        nd = max(nd, {"vstack": 2, "dstack": 3, "hstack": 1}[name])
        dim = {"vstack": 0, "dstack": 2, "hstack": 0 if nd == 1 else 1}[name]
    for t in tracked[1:]:
        if bd.layout_of(ctx, t) != bd.layout_of(ctx, x) or t.ndim != x.ndim:
            raise bd.refuse(
                ctx, func, "joins input-dependent tensors whose samples are in different places"
            )
    if func in _STACK:
        dim = dim % (nd + 1)
        return layout.moved(layout.dim + (dim <= layout.dim))
    if dim % nd == layout.dim:
        raise bd.refuse(ctx, func, "concatenates along the batch dimension")
    for t in seq:
        if isinstance(t, torch.Tensor) and not ctx.is_tracked(t):
            bd.check_invariant(ctx, func, t, layout, t.ndim, "joins")
    return layout


def _cat_like(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Concatenation: constant pieces next to tracked ones form a source."""
    seq = args[0] if args else kwargs.get("tensors")
    if not isinstance(seq, (list, tuple)):
        return linear_joint(ctx, func, args, kwargs)
    dim = int(_arg(args, kwargs, 1, "dim", kwargs.get("axis", 0)))
    layout = _cat_layout(ctx, func, seq, dim)
    constants = [t for t in seq if not ctx.is_tracked(t)]
    if not constants or all(_is_zero(ctx, t) for t in constants):
        return bd.track(ctx, func(*args, **kwargs), func, layout)
    if ctx.plain:
        ctx.new_source(f"{_short(func)} constant")
        return bd.track(ctx, func(*args, **kwargs), func, layout)
    rest = args[1:]
    lin = func([t if ctx.is_tracked(t) else torch.zeros_like(t) for t in seq], *rest, **kwargs)
    const = func([torch.zeros_like(t) if ctx.is_tracked(t) else t for t in seq], *rest, **kwargs)
    out = bd.add_constant(ctx, lin, layout, const, f"{_short(func)} constant")
    return bd.track(ctx, out, func, layout)


def _pad(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``F.pad``: every mode is linear; a non-zero constant border is a source."""
    refuse_tracked(ctx, func, args, kwargs)
    x = args[0]
    pad = args[1] if len(args) > 1 else kwargs["pad"]
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value")
    layout = bd.layout_of(ctx, x)
    if layout.dim >= x.ndim - len(pad) // 2:
        raise bd.refuse(ctx, func, "pads along the batch dimension")
    if mode != "constant" or not value:
        return bd.track(ctx, func(*args, **kwargs), func, layout)
    if ctx.plain:
        ctx.new_source("pad value")
        return bd.track(ctx, func(*args, **kwargs), func, layout)
    xc = bd.canon(x, layout, ctx.rows)
    lin = F.pad(xc, pad, mode="constant", value=0.0)
    const = F.pad(torch.zeros_like(xc[:1]), pad, mode="constant", value=float(value))
    out = ctx.add_constant(lin, const, "pad value")
    shape = list(x.shape)
    for k in range(len(pad) // 2):
        shape[-1 - k] += pad[2 * k] + pad[2 * k + 1]
    return bd.track(ctx, bd.uncanon(out, layout, shape, ctx.rows), func, layout)


def _reduce(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``sum``/``mean`` over dimensions other than the batch."""
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
    if isinstance(dim, torch.dtype):  # x.sum(torch.float64): every dimension
        dim = None
    dims = (
        () if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)  # type: ignore[arg-type]
    )
    layout = bd.layout_of(ctx, x)
    dims = tuple(int(d) % x.ndim for d in dims)
    if not dims or layout.dim in dims:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} reduces over the batch dimension; the "
            "linear interpreter needs the samples of a batch to stay independent"
        )
    keepdim = bool(
        args[2] if len(args) > 2 and isinstance(args[2], bool) else kwargs.get("keepdim", False)
    )
    if not keepdim:
        layout = layout.moved(layout.dim - sum(d < layout.dim for d in set(dims)))
    return bd.track(ctx, func(*args, **kwargs), func, layout)


def _write_layout(
    ctx: PassContext, func: Callable[..., Any], target: torch.Tensor, index: Any, value: Any
) -> bd.Layout:
    """The layout of ``target`` after ``target[index] = value`` (checked)."""
    if ctx.is_tracked(target):
        layout = bd.layout_of(ctx, target)
    elif target.ndim and target.shape[0] == ctx.rows:
        layout = bd.FIRST  # a constant of the batch's size that becomes input dependent
    else:
        raise bd.refuse(
            ctx, func, "writes input-dependent values into a tensor without the batch dimension"
        )
    region = bd.getitem_layout(ctx, func, target, layout, index)
    region_nd = target[index].ndim
    if ctx.is_tracked(value):
        lv = bd.layout_of(ctx, value)
        if lv.moved(lv.dim + region_nd - value.ndim) != region:
            raise bd.refuse(ctx, func, "writes input-dependent values whose samples are elsewhere")
    else:
        bd.check_invariant(ctx, func, value, region, region_nd, "writes")
    return layout


def _setitem(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``target[index] = value``: linear when a tracked value goes into a zero (or tracked)
    target, or a zero goes into a tracked one."""
    target, index, value = args
    t_target, t_value = ctx.is_tracked(target), ctx.is_tracked(value)
    if t_value and not t_target and not _is_zero(ctx, target):
        raise ConvscopeError(
            f"{ctx.where()} writes an input-dependent tensor into a constant that is not "
            "zero (Tensor.__setitem__); this affine step is not supported"
        )
    if t_target and not t_value and not _is_zero(ctx, value):
        raise ConvscopeError(
            f"{ctx.where()} writes a non-zero constant into an input-dependent tensor "
            "(Tensor.__setitem__); this affine step is not supported"
        )
    layout = _write_layout(ctx, func, target, index, value)
    out = func(*args, **kwargs)
    bd.track(ctx, target, func, layout)
    return out


def _copy(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    target: Any = args[0]
    src: Any = args[1] if len(args) > 1 else kwargs.get("src")
    if not ctx.is_tracked(src) and not _is_zero(ctx, src):
        raise ConvscopeError(
            f"{ctx.where()} overwrites an input-dependent tensor with a constant "
            "(Tensor.copy_); this is not supported"
        )
    if ctx.is_tracked(src):
        ls = bd.layout_of(ctx, src)
        layout = ls.moved(ls.dim + target.ndim - src.ndim)
    else:
        layout = bd.layout_of(ctx, target)
    out = func(*args, **kwargs)
    return bd.track(ctx, out if isinstance(out, torch.Tensor) else target, func, layout)


def _fill(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    value = args[1] if len(args) > 1 else kwargs.get("value")
    if not _is_zero(ctx, value):
        raise ConvscopeError(
            f"{ctx.where()} fills an input-dependent tensor with a non-zero constant "
            f"({op_name(func)}); this is not supported"
        )
    layout = bd.layout_of(ctx, args[0])
    return bd.track(ctx, func(*args, **kwargs), func, layout)


def _ints(values: Any) -> list[int]:
    out: list[int] = []
    for v in values if isinstance(values, (list, tuple)) else (values,):
        if isinstance(v, (list, tuple)):
            out.extend(int(d) for d in v)
        elif isinstance(v, int):
            out.append(v)
    return out


_FLIPS = ("flip", "fliplr", "flipud", "roll", "rot90")


def _touched_dims(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The dimensions a flip, roll or rotation reverses or shifts (``None``: all of them)."""
    name = _short(func)
    if name == "fliplr":
        return [1]
    if name == "flipud":
        return [0]
    if name == "flip":
        return _ints((*args[1:], kwargs.get("dims", ())))
    if name == "roll":
        dims = args[2] if len(args) > 2 else kwargs.get("dims")
        return None if dims is None else _ints(dims)
    # rot90
    return _ints(args[2] if len(args) > 2 else kwargs.get("dims", [0, 1]))


def _permutation(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], n: int
) -> list[int]:
    """``order`` with ``out.shape[j] == x.shape[order[j]]`` for a dimension-moving op."""
    name = _short(func)
    full = op_name(func)
    order = list(range(n))
    if name == "permute":
        return [d % n for d in _ints((*args[1:], kwargs.get("dims", ())))]
    if name in ("movedim", "moveaxis"):
        src = [d % n for d in _ints(args[1] if len(args) > 1 else kwargs.get("source"))]
        dst = [d % n for d in _ints(args[2] if len(args) > 2 else kwargs.get("destination"))]
        out: list[int | None] = [None] * n
        for s, t in zip(src, dst, strict=False):
            out[t] = s
        rest = iter(d for d in range(n) if d not in src)
        return [next(rest) if o is None else o for o in out]
    if full.endswith(".mT.__get__"):
        pair = [n - 2, n - 1] if n >= 2 else []
    elif full.endswith(".T.__get__") or name in ("t", "t_"):
        return order[::-1]
    else:  # transpose, swapaxes, swapdims
        pair = [d % n for d in _ints((*args[1:3], kwargs.get("dim0", ()), kwargs.get("dim1", ())))]
        pair += [d % n for d in _ints((kwargs.get("axis0", ()), kwargs.get("axis1", ())))]
    if len(pair) == 2:
        order[pair[0]], order[pair[1]] = order[pair[1]], order[pair[0]]
    return order


def _permuting(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Flips, rolls, rotations (linear unless they touch the batch dimension) and the
    dimension-moving ops (permute, transpose, movedim ...), which move it along."""
    refuse_tracked(ctx, func, args, kwargs)
    x = args[0]
    layout = bd.layout_of(ctx, x)
    if _short(func) in _FLIPS:
        dims = _touched_dims(func, args, kwargs)
        if dims is None or any(d % x.ndim == layout.dim for d in dims):
            raise ConvscopeError(
                f"{op_name(func)} in {ctx.where()} reverses or shifts the batch dimension; "
                "the linear interpreter needs the samples of a batch to stay in their places"
            )
    elif x.ndim:
        order = _permutation(func, args, kwargs, x.ndim)
        layout = layout.moved(order.index(layout.dim))
    out = func(*args, **kwargs)
    _propagate_gate(ctx, x, out)
    return bd.track(ctx, out, func, layout)


_PERMUTING = (
    torch_funcs(torch, "flip fliplr flipud roll rot90 permute movedim moveaxis t transpose")
    | torch_funcs(torch, "swapaxes swapdims")
    | torch_funcs(
        T,
        "flip fliplr flipud roll rot90 permute movedim moveaxis t t_ transpose transpose_ "
        "swapaxes swapdims",
    )
)


_REDUCE = torch_funcs(torch, "sum mean") | torch_funcs(T, "sum mean")

HANDLERS: dict[Callable[..., Any], Handler] = {
    **dict.fromkeys(
        torch_funcs(
            F, "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear"
        ),
        _with_bias,
    ),
    **dict.fromkeys(_ADD | _RADD | _SUB | _RSUB, _add_like),
    **dict.fromkeys(_CAT, _cat_like),
    **dict.fromkeys(_REDUCE, _reduce),
    **dict.fromkeys(_PERMUTING, _permuting),
    **dict.fromkeys(_getters("T mT"), _permuting),
    F.pad: _pad,
    T.__setitem__: _setitem,
    T.copy_: _copy,
    T.fill_: _fill,
}
"""Affine ops with a constant (bias sources) and in-place writes."""
