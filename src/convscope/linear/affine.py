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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from convscope.errors import ConvscopeError
from convscope.linear.context import PassContext, op_name

__all__ = [
    "CONSTANT_OF_SHAPE",
    "FIRST_LINEAR",
    "HANDLERS",
    "Handler",
    "JOINT_LINEAR",
    "METADATA",
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
        "diagonal tril triu real clone",
    )
    | torch_funcs(
        T,
        "view view_as reshape reshape_as flatten unflatten squeeze unsqueeze squeeze_ "
        "unsqueeze_ contiguous clone expand expand_as repeat narrow select split "
        "split_with_sizes tensor_split chunk unbind neg negative neg_ __neg__ __pos__ "
        "positive diagonal tril triu to type type_as float double half bfloat16 cpu cuda "
        "requires_grad_ zero_",
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


def _is_zero(ctx: PassContext, value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not ctx.decide(lambda: value.detach().ne(0).any())
    return isinstance(value, (int, float, bool)) and value == 0


def linear_joint(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return ctx.track(func(*args, **kwargs), func)


def linear_first(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    refuse_tracked(ctx, func, args, kwargs)
    return ctx.track(func(*args, **kwargs), func)


# -- affine ops with a bias ------------------------------------------------------------


def _with_bias(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """conv*, conv_transpose*, linear: ``op(x, W) + b``, ``b`` at position 2."""
    refuse_tracked(ctx, func, args, kwargs)
    bare_args, bare_kwargs, bias = pop_arg(args, kwargs, 2, "bias")
    if bias is None:
        return ctx.track(func(*args, **kwargs), func)
    name = op_name(func).rsplit(".", 1)[-1]
    if ctx.plain:
        ctx.new_source(f"{name} bias")
        return ctx.track(func(*args, **kwargs), func)
    lin = func(*bare_args, **bare_kwargs)
    x = args[0]
    const = bias if name == "linear" else bias.view(-1, *([1] * (x.ndim - 2)))
    return ctx.track(ctx.add_constant(lin, const, f"{name} bias"), func)


# result = sa * a + sb * b for the additive ops; alpha scales the second operand of
# add/sub and the first of rsub (torch.rsub(input, other, alpha) = other - alpha * input)
_ADD = torch_funcs(torch, "add") | torch_funcs(T, "add add_ __add__ __iadd__")
_RADD = torch_funcs(T, "__radd__")
_SUB = torch_funcs(torch, "sub subtract") | torch_funcs(
    T, "sub sub_ subtract subtract_ __sub__ __isub__"
)
_RSUB = torch_funcs(torch, "rsub") | torch_funcs(T, "__rsub__")
_INPLACE_ADD = torch_funcs(T, "add_ __iadd__ sub_ subtract_ __isub__")


def _add_like(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``a + b``, ``a - b``, ``b - a`` with one side constant: the constant is a source."""
    a: Any = args[0]
    b: Any = args[1] if len(args) > 1 else kwargs.get("other")
    ta, tb = ctx.is_tracked(a), ctx.is_tracked(b)
    inplace = func in _INPLACE_ADD
    if (ta and tb) or _is_zero(ctx, b if ta else a) or (ctx.plain and not inplace):
        if not (ta and tb) and not _is_zero(ctx, b if ta else a):
            ctx.new_source(f"{op_name(func).rsplit('.', 1)[-1]} constant")
        out = func(*args, **kwargs)
        if inplace:
            ctx.track(a, func)
        return ctx.track(out, func)
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
    out = ctx.add_constant(lin, const * s_c, f"{op_name(func).rsplit('.', 1)[-1]} constant")
    if inplace:
        a.copy_(out)
        return ctx.track(a, func)
    return ctx.track(out, func)


_CAT = torch_funcs(torch, "cat concat concatenate stack hstack vstack dstack")


def _cat_like(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Concatenation: constant pieces next to tracked ones form a source."""
    seq = args[0] if args else kwargs.get("tensors")
    if not isinstance(seq, (list, tuple)):
        return linear_joint(ctx, func, args, kwargs)
    constants = [t for t in seq if not ctx.is_tracked(t)]
    if not constants or all(_is_zero(ctx, t) for t in constants):
        return linear_joint(ctx, func, args, kwargs)
    if ctx.plain:
        ctx.new_source(f"{op_name(func).rsplit('.', 1)[-1]} constant")
        return ctx.track(func(*args, **kwargs), func)
    rest = args[1:]
    lin = func([t if ctx.is_tracked(t) else torch.zeros_like(t) for t in seq], *rest, **kwargs)
    const = func([torch.zeros_like(t) if ctx.is_tracked(t) else t for t in seq], *rest, **kwargs)
    out = ctx.add_constant(lin, const, f"{op_name(func).rsplit('.', 1)[-1]} constant")
    return ctx.track(out, func)


def _pad(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``F.pad``: every mode is linear; a non-zero constant border is a source."""
    refuse_tracked(ctx, func, args, kwargs)
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value")
    if mode != "constant" or not value:
        return ctx.track(func(*args, **kwargs), func)
    if ctx.plain:
        ctx.new_source("pad value")
        return ctx.track(func(*args, **kwargs), func)
    x, pad = args[0], args[1] if len(args) > 1 else kwargs["pad"]
    lin = F.pad(x, pad, mode="constant", value=0.0)
    const = F.pad(torch.zeros_like(x[:1]), pad, mode="constant", value=float(value))
    return ctx.track(ctx.add_constant(lin, const, "pad value"), func)


def _reduce(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``sum``/``mean`` over dimensions other than the batch."""
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
    dims = (
        () if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)  # type: ignore[arg-type]
    )
    if not dims or any(int(d) % x.ndim == 0 for d in dims):
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} reduces over the batch dimension; the "
            "linear interpreter needs the samples of a batch to stay independent"
        )
    return ctx.track(func(*args, **kwargs), func)


def _setitem(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``target[index] = value``: linear when a tracked value goes into a zero (or tracked)
    target, or a zero goes into a tracked one."""
    target, _, value = args
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
    out = func(*args, **kwargs)
    ctx.track(target, func)
    return out


def _copy(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    target, src = args[0], args[1] if len(args) > 1 else kwargs.get("src")
    if not ctx.is_tracked(src) and not _is_zero(ctx, src):
        raise ConvscopeError(
            f"{ctx.where()} overwrites an input-dependent tensor with a constant "
            "(Tensor.copy_); this is not supported"
        )
    out = func(*args, **kwargs)
    return ctx.track(out if isinstance(out, torch.Tensor) else target, func)


def _fill(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    value = args[1] if len(args) > 1 else kwargs.get("value")
    if not _is_zero(ctx, value):
        raise ConvscopeError(
            f"{ctx.where()} fills an input-dependent tensor with a non-zero constant "
            f"({op_name(func)}); this is not supported"
        )
    return ctx.track(func(*args, **kwargs), func)


def _ints(values: Any) -> list[int]:
    out: list[int] = []
    for v in values if isinstance(values, (list, tuple)) else (values,):
        if isinstance(v, (list, tuple)):
            out.extend(int(d) for d in v)
        elif isinstance(v, int):
            out.append(v)
    return out


def _touched_dims(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The dimensions a permuting op moves or reverses (``None``: all of them)."""
    name = op_name(func).rsplit(".", 1)[-1]
    x = args[0]
    if name in ("flip", "fliplr", "flipud"):
        if name == "fliplr":
            return [1]
        if name == "flipud":
            return [0]
        return _ints((*args[1:], kwargs.get("dims", ())))
    if name == "roll":
        dims = args[2] if len(args) > 2 else kwargs.get("dims")
        return None if dims is None else _ints(dims)
    if name == "rot90":
        return _ints(args[2] if len(args) > 2 else kwargs.get("dims", [0, 1]))
    if name == "permute":
        order = _ints((*args[1:], kwargs.get("dims", ())))
        return [] if order and order[0] % x.ndim == 0 else [0]
    if name in ("movedim", "moveaxis"):
        src = _ints(args[1] if len(args) > 1 else kwargs.get("source"))
        dst = _ints(args[2] if len(args) > 2 else kwargs.get("destination"))
        return [s for s, d in zip(src, dst, strict=False) if s % x.ndim != d % x.ndim]
    full = op_name(func)
    if full.endswith(".mT.__get__"):
        return [0] if x.ndim == 2 else []
    if full.endswith(".T.__get__") or name in ("t", "t_"):
        return [0] if x.ndim >= 2 else []
    # transpose, swapaxes, swapdims
    d = _ints((*args[1:3], kwargs.get("dim0", ()), kwargs.get("dim1", ())))
    return [] if len(set(i % x.ndim for i in d)) < 2 else d


def _permuting(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Flips, rolls, transposes: linear unless they touch the batch dimension."""
    refuse_tracked(ctx, func, args, kwargs)
    dims = _touched_dims(func, args, kwargs)
    if dims is None or any(d % args[0].ndim == 0 for d in dims):
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} moves or reverses the batch dimension; the "
            "linear interpreter needs the sample index to stay first"
        )
    return ctx.track(func(*args, **kwargs), func)


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
