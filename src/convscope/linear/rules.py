"""One rule per non-linear op: what a unit computes on the probes, chosen from ``x0``.

Every rule receives the whole batch ``x = [x0, x1 ...]`` (``rows`` first) and returns
``A(x0) x + c(x0)`` on every row, with ``A`` and ``c`` read from row 0 only, so row 0
still gets ``h(x0)`` and a probe equal to ``x0`` gets it too (seed 001 eq. 3). ``c``
goes through :meth:`PassContext.add_constant`, which makes it a bias source.

The two modes (see DESIGN.md, "Linear interpreter"):

- ``"freeze"``: the paper's reading. ReLU-like units keep their mask or slopes,
  clamps their pattern (the clamped value is ``c``), max-pools their selected
  positions; norms use the mean and standard deviation of ``x0``; smooth units use
  the ratio ``h(x0) / x0`` with ``c = 0`` (the derivative where ``x0 == 0``, plus
  ``c = h(0)`` there when ``h(0) != 0``); a product of two input-dependent tensors
  keeps the gate at its ``x0`` value.
- ``"taylor"``: every unit by its first-order expansion at ``x0``, ``A = h'(x0)``,
  ``c = h(x0) - h'(x0) x0``; norms and products by their exact derivatives. The
  frozen system is then the tangent map, ``F(x0) = J(x0)``.

Piecewise-linear units (ReLU, leaky ReLU, PReLU, hardtanh/ReLU6, clamp, threshold,
max-pool) are the same in both modes. Slopes of the smooth units come from
``torch.func.jvp`` on row 0, so they are PyTorch's own derivative formulas.

Which operand of a product is the gate: the one with fewer elements per sample
(squeeze-excitation scales ``(N, C, 1, 1)``); on a tie the output of a sigmoid-like
unit or a softmax; otherwise the second operand. Products of two input-dependent
matrices (``matmul``, ``einsum`` ...) freeze the gate if there is one, else the second
operand; attention (:mod:`convscope.linear.attention`) freezes its weights. A softmax
in freeze mode is a gate: its value at ``x0`` for every probe.

Rules read ``x0`` from the canonical view of their input
(:func:`convscope.linear.batchdim.canon`: the samples first), so they work wherever
an op moved the samples; rules that need them in dimension 0 (pools, batch, instance
and group norm) say so.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from convscope.errors import ConvscopeError
from convscope.linear import batchdim as bd
from convscope.linear.affine import (
    Handler,
    elementwise_layout,
    pop_arg,
    refuse_tracked,
    torch_funcs,
)
from convscope.linear.attention import ATTENTION
from convscope.linear.context import PassContext, op_name

__all__ = ["RULES"]

T = torch.Tensor
_nn = torch._C._nn


# -- elementwise units -------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """An elementwise non-linearity.

    Attributes:
        name: used in source descriptions.
        fn: the out-of-place function, ``fn(x, *params)``.
        kind: ``"relu"`` (mask from ``x0 > 0``), ``"piecewise"`` (slope and clamp
            value from ``x0``, both modes) or ``"smooth"`` (ratio or derivative).
        constant: whether ``c(x0)`` of a piecewise unit can be non-zero (clamps).
        gate: whether the output counts as a gate for products.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    kind: Literal["relu", "piecewise", "smooth"]
    constant: bool = False
    gate: bool = False


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """The signature of an op (cached: the same few functions are asked for every pass)."""
    try:
        return _cached_signature(func)
    except TypeError:  # an unhashable callable
        return _uncached_signature(func)


@functools.lru_cache(maxsize=4096)
def _cached_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    return _uncached_signature(func)


def _uncached_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):  # builtins without text signatures
        return None


def _split_call(
    func: Callable[..., Any], inplace: bool | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, tuple[Any, ...], dict[str, Any], bool]:
    """``(x, params, keyword params, inplace)`` of an activation call.

    ``inplace=None`` means the function takes an ``inplace`` argument (``F.relu``).
    """
    if inplace is None:
        if func in _SIGNATURES:
            names = _parameters(func)[0]
            if len(args) > len(names) or not set(kwargs) <= set(names):
                _SIGNATURES[func].bind(*args, **kwargs)  # let inspect word the error
            arguments = dict(zip(names, args, strict=False))  # what was given, by name
            arguments.update(kwargs)
            flag = bool(arguments.pop("inplace", False))
            x = arguments.pop("input")
            return x, (), arguments, flag
        inplace = False
    kw = dict(kwargs)
    x = args[0] if args else kw.pop("input")
    return x, tuple(args[1:]), kw, inplace


def _slope(h: Callable[[T], T], x0: T) -> tuple[T, T]:
    """``(h(x0), h'(x0))`` elementwise, by forward-mode autodiff."""
    y0, d = torch.func.jvp(h, (x0,), (torch.ones_like(x0),))[:2]
    return y0.detach(), d.detach()


def _unit_rule(unit: _Unit, inplace_spec: bool | None) -> Handler:
    def rule(
        ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        x, params, kw, inplace = _split_call(func, inplace_spec, args, kwargs)
        if ctx.any_tracked(params, kw):
            refuse_tracked(ctx, func, (x, *params), kw)
        layout = bd.layout_of(ctx, x)
        if layout != bd.FIRST and (unit.name == "prelu" or _has_tensor(params, kw)):
            layout = bd.require_first(ctx, func, x)  # parameters broadcast along dim 1
        xc = bd.canon(x, layout, ctx.rows)  # x itself unless the samples were moved
        out: T
        if unit.kind == "relu":
            # kept as bool (a byte per value), multiplied as x's dtype (faster than bool)
            mask = ctx.frozen(lambda: xc[:1].detach() > 0).to(x.dtype)
            if inplace and xc is x:
                return ctx.track(x.mul_(mask), func)
            out = xc * mask
        else:

            def h(t: T) -> T:
                return unit.fn(t, *params, **kw)

            if unit.kind == "piecewise" or ctx.mode == "taylor":
                with_constant = unit.kind == "smooth" or unit.constant

                def slope() -> tuple[T, T | None]:
                    x0 = xc[:1].detach()
                    y0, a = _slope(h, x0)
                    return a, (y0 - a * x0 if with_constant else None)

                a, c = ctx.frozen(slope)
                out = xc * a
                if c is not None:
                    out = ctx.add_constant(out, c, f"{unit.name} c(x0)")
            elif inplace and xc is x:  # in place, as the unit itself would be
                out = _ratio(ctx, unit, h, xc, inplace=True)
                bd.track(ctx, out, func, layout)
                if unit.gate:
                    ctx.mark_gate(out)
                return out
            else:
                out = _ratio(ctx, unit, h, xc)
        out = bd.uncanon(out, layout, x.shape, ctx.rows)
        if inplace:
            x.copy_(out)
            out = x
        bd.track(ctx, out, func, layout)
        if unit.gate:
            ctx.mark_gate(out)
        return out

    return rule


def _has_tensor(params: tuple[Any, ...], kw: dict[str, Any]) -> bool:
    return any(isinstance(p, torch.Tensor) and p.ndim > 0 for p in (*params, *kw.values()))


def _ratio(ctx: PassContext, unit: _Unit, h: Callable[[T], T], x: T, inplace: bool = False) -> T:
    """Freeze rule of a smooth unit: ``h(x0) / x0`` times the input, no constant
    (``inplace``: into ``x``)."""

    def ratio() -> tuple[T, T | None]:
        x0 = x[:1].detach()
        y0 = h(x0).detach()
        zero = x0 == 0
        if not ctx.decide(zero.any):
            return y0 / x0, None
        # at x0 == 0 the ratio is the derivative; if h(0) != 0 (sigmoid) the value there
        # cannot come from a multiple of 0, so it stays as a constant
        _, d = _slope(h, x0)
        a = torch.where(zero, d, y0 / torch.where(zero, torch.ones_like(x0), x0))
        c = torch.where(zero, y0, torch.zeros_like(y0))
        return a, (c if ctx.decide(c.ne(0).any) else None)

    a, c = ctx.frozen(ratio)
    out = x.mul_(a) if inplace else x * a
    if c is not None:
        with_c = ctx.add_constant(out, c, f"{unit.name} h(0)")
        out = x.copy_(with_c) if inplace else with_c
    return out


def _hardtanh(x: T, min_val: float = -1.0, max_val: float = 1.0) -> T:
    return F.hardtanh(x, min_val, max_val)


def _relu6(x: T) -> T:
    return F.hardtanh(x, 0.0, 6.0)


def _threshold(x: T, threshold: float, value: float) -> T:
    return torch.threshold(x, threshold, value)


_RELU = _Unit("relu", torch.relu, "relu")
_UNITS: list[tuple[_Unit, dict[Callable[..., Any], bool | None]]] = [
    (_RELU, {torch.relu: False, T.relu: False, torch.relu_: True, T.relu_: True, F.relu: None}),
    (
        _Unit("leaky_relu", F.leaky_relu, "piecewise"),
        {F.leaky_relu: None, _nn.leaky_relu: False, _nn.leaky_relu_: True},
    ),
    (_Unit("prelu", torch.prelu, "piecewise"), {torch.prelu: False, T.prelu: False}),
    (
        _Unit("hardtanh", _hardtanh, "piecewise", constant=True),
        {F.hardtanh: None, _nn.hardtanh: False, _nn.hardtanh_: True},
    ),
    (
        _Unit("relu6", _relu6, "piecewise", constant=True),
        {F.relu6: None, _nn.relu6: False, _nn.relu6_: True},
    ),
    (
        _Unit("clamp", torch.clamp, "piecewise", constant=True),
        {
            **dict.fromkeys(torch_funcs(torch, "clamp clip") | torch_funcs(T, "clamp clip"), False),
            **dict.fromkeys(
                torch_funcs(torch, "clamp_ clip_") | torch_funcs(T, "clamp_ clip_"), True
            ),
        },
    ),
    (
        _Unit("clamp_min", torch.clamp_min, "piecewise", constant=True),
        {torch.clamp_min: False, T.clamp_min: False, torch.clamp_min_: True, T.clamp_min_: True},
    ),
    (
        _Unit("clamp_max", torch.clamp_max, "piecewise", constant=True),
        {torch.clamp_max: False, T.clamp_max: False, torch.clamp_max_: True, T.clamp_max_: True},
    ),
    (
        _Unit("threshold", _threshold, "piecewise", constant=True),
        {F.threshold: None, torch.threshold: False, torch.threshold_: True},
    ),
    (
        _Unit("sigmoid", torch.sigmoid, "smooth", gate=True),
        {
            torch.sigmoid: False,
            T.sigmoid: False,
            F.sigmoid: None,
            torch.sigmoid_: True,
            T.sigmoid_: True,
        },
    ),
    (
        _Unit("tanh", torch.tanh, "smooth", gate=True),
        {torch.tanh: False, T.tanh: False, F.tanh: None, torch.tanh_: True, T.tanh_: True},
    ),
    (
        _Unit("hardsigmoid", F.hardsigmoid, "smooth", gate=True),
        {F.hardsigmoid: None, _nn.hardsigmoid: False, _nn.hardsigmoid_: True},
    ),
    (
        _Unit("hardswish", F.hardswish, "smooth"),
        {F.hardswish: None, _nn.hardswish: False, _nn.hardswish_: True},
    ),
    (_Unit("silu", F.silu, "smooth"), {F.silu: None, _nn.silu: False, _nn.silu_: True}),
    (_Unit("gelu", F.gelu, "smooth"), {F.gelu: False}),
    (_Unit("elu", F.elu, "smooth"), {F.elu: None, _nn.elu: False, F.elu_: True}),
    (_Unit("selu", F.selu, "smooth"), {F.selu: None, torch.selu: False, torch.selu_: True}),
    (_Unit("celu", F.celu, "smooth"), {F.celu: None, torch.celu: False, torch.celu_: True}),
    (_Unit("mish", F.mish, "smooth"), {F.mish: None}),
    (_Unit("softplus", F.softplus, "smooth"), {F.softplus: False}),
    (_Unit("logsigmoid", F.logsigmoid, "smooth"), {F.logsigmoid: False}),
]

_SIGNATURES: dict[Callable[..., Any], inspect.Signature] = {}
for _, _variants in _UNITS:
    for _f, _spec in _variants.items():
        if _spec is None and (_sig := _signature(_f)) is not None:
            _SIGNATURES[_f] = _sig


# -- max-pool: the selected positions of x0 --------------------------------------------


def _pool_variants(nd: int, adaptive: bool) -> dict[Callable[..., Any], None]:
    stem = f"adaptive_max_pool{nd}d" if adaptive else f"max_pool{nd}d"
    names = f"{stem} {stem}_with_indices _{stem}"
    return dict.fromkeys(torch_funcs(F, names) | torch_funcs(torch, stem) | torch_funcs(_nn, names))


def _pool_rule(nd: int, adaptive: bool) -> Handler:
    with_indices = getattr(
        F, f"adaptive_max_pool{nd}d_with_indices" if adaptive else f"max_pool{nd}d_with_indices"
    )
    n_params = 1 if adaptive else 5

    def rule(
        ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        refuse_tracked(ctx, func, args, kwargs)
        x = args[0]
        bd.require_first(ctx, func, x)
        params = args[1 : 1 + n_params]
        kw = {k: v for k, v in kwargs.items() if k != "return_indices"}

        def selected() -> tuple[T, bool]:
            x0 = x[:1].detach()
            pair = isinstance(func(x0, *args[1:], **kwargs), tuple)
            return with_indices(x0, *params, **kw, return_indices=True)[1], pair

        idx, pair = ctx.frozen(selected)
        rows, channels = x.shape[0], x.shape[1]
        flat_idx = idx.reshape(1, channels, -1).expand(rows, -1, -1)
        out = x.reshape(rows, channels, -1).gather(2, flat_idx)
        out = out.reshape(rows, *idx.shape[1:])
        ctx.track(out, func)
        if pair:
            return out, idx.expand(rows, *idx.shape[1:])
        return out

    return rule


# -- normalization -----------------------------------------------------------------------


def _bind(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``func``'s arguments by name, defaults filled in (``Signature.bind`` is slow
    enough to show in a pass: the names and defaults are looked up once per function)."""
    names, defaults = _parameters(func)
    if len(args) > len(names) or not set(kwargs) <= set(names):
        sig = _signature(func)  # let inspect word the error
        assert sig is not None
        sig.bind(*args, **kwargs)
    bound = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key in bound:
            raise TypeError(f"{op_name(func)} got multiple values for argument {key!r}")
        bound[key] = value
    for key in names[len(args) :]:
        if key not in bound:
            if key not in defaults:
                raise TypeError(f"{op_name(func)} missing a required argument: {key!r}")
            bound[key] = defaults[key]
    return bound


@functools.lru_cache(maxsize=256)
def _parameters(func: Callable[..., Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    sig = _signature(func)
    assert sig is not None
    names = tuple(sig.parameters)
    defaults = {
        k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty
    }
    return names, defaults


def _channel_view(t: T | None, ndim: int) -> T | None:
    return None if t is None else t.view(1, -1, *([1] * (ndim - 2)))


def _affine_norm(
    ctx: PassContext,
    func: Callable[..., Any],
    x: T,
    affine: Callable[[], tuple[T, T]],
    name: str,
    call: Any,
) -> T:
    """``x * scale + shift`` (eval batch norm, instance norm on running statistics);
    ``affine()`` gives ``(scale, shift)``, asked for only when the constant is not
    added as usual."""
    if ctx.plain:
        ctx.new_source(f"{name} shift")
        return ctx.track(call(), func)
    scale, shift = affine()
    if ctx.silent:  # no row adds the shift
        ctx.new_source(f"{name} shift")
        return ctx.track(x * scale, func)
    return ctx.track(ctx.add_constant(x * scale, shift, f"{name} shift"), func)


def _normalize(
    ctx: PassContext,
    func: Callable[..., Any],
    name: str,
    x: T,
    y0: Callable[[T], T],
    core: Callable[[T], T],
    dims: tuple[int, ...],
    eps: float,
    weight: T | None,
    bias: T | None,
) -> T:
    """A norm with statistics of ``x0``: freeze them, or expand exactly (taylor).

    ``core`` reshapes ``x`` so the statistics are taken over ``dims`` (group norm
    folds channels into groups); the affine ``weight``/``bias`` are broadcast views;
    ``y0(x0)`` is the norm's output at ``x0`` (taylor mode's constant).
    """
    xc = core(x)

    def statistics() -> tuple[T, T]:
        xc0 = xc[:1].detach()
        mean0 = xc0.mean(dims, keepdim=True)
        rstd0 = ((xc0 - mean0).square().mean(dims, keepdim=True) + eps).rsqrt()
        if ctx.mode == "taylor":
            return (xc0 - mean0) * rstd0, rstd0
        const = (-mean0 * rstd0).expand_as(xc0).reshape(1, *x.shape[1:])
        if weight is not None:
            const = const * weight
        if bias is not None:
            const = const + bias
        return const, rstd0

    first, rstd0 = ctx.frozen(statistics)
    if ctx.mode == "freeze":
        lin = (xc * rstd0).reshape(x.shape)
        if weight is not None:
            lin = lin * weight
        const = first
    else:
        xhat0 = first
        centred = xc - xc.mean(dims, keepdim=True)
        lin = ((centred - xhat0 * (xhat0 * xc).mean(dims, keepdim=True)) * rstd0).reshape(x.shape)
        if weight is not None:
            lin = lin * weight
        const = ctx.frozen(lambda: y0(x[:1].detach()) - lin[:1].detach())
    return ctx.track(ctx.add_constant(lin, const, f"{name} shift"), func)


def _running_affine(a: dict[str, Any], x: T) -> tuple[T, T]:
    """``(scale, shift)`` views of a norm on running statistics: ``x * scale + shift``."""
    scale = (a["running_var"] + a["eps"]).rsqrt()
    if a["weight"] is not None:
        scale = scale * a["weight"]
    shift = -a["running_mean"] * scale
    if a["bias"] is not None:
        shift = shift + a["bias"]
    view = (1, -1, *([1] * (x.ndim - 2)))
    return scale.view(view), shift.view(view)


def _batch_norm(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    refuse_tracked(ctx, func, args, kwargs)
    a = _bind(F.batch_norm, args, kwargs)
    x: T = a["input"]
    bd.require_first(ctx, func, x)
    if not a["training"]:
        return _affine_norm(
            ctx,
            func,
            x,
            lambda: _running_affine(a, x),
            "batch_norm",
            lambda: func(*args, **kwargs),
        )

    # train mode: the statistics of x0 alone; no running statistics are updated
    def y0(x0: T) -> T:
        return F.batch_norm(x0, None, None, a["weight"], a["bias"], True, 0.0, a["eps"])

    w, b = _channel_view(a["weight"], x.ndim), _channel_view(a["bias"], x.ndim)
    dims = tuple(range(2, x.ndim))
    return _normalize(ctx, func, "batch_norm", x, y0, lambda t: t, dims, a["eps"], w, b)


def _instance_norm(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    refuse_tracked(ctx, func, args, kwargs)
    a = _bind(F.instance_norm, args, kwargs)
    x: T = a["input"]
    bd.require_first(ctx, func, x)
    if not a["use_input_stats"]:
        return _affine_norm(
            ctx,
            func,
            x,
            lambda: _running_affine(a, x),
            "instance_norm",
            lambda: func(*args, **kwargs),
        )

    def y0(x0: T) -> T:
        return F.instance_norm(x0, None, None, a["weight"], a["bias"], True, 0.0, a["eps"])

    w, b = _channel_view(a["weight"], x.ndim), _channel_view(a["bias"], x.ndim)
    dims = tuple(range(2, x.ndim))
    return _normalize(ctx, func, "instance_norm", x, y0, lambda t: t, dims, a["eps"], w, b)


def _group_norm(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    refuse_tracked(ctx, func, args, kwargs)
    a = _bind(F.group_norm, args, kwargs)
    x: T = a["input"]
    bd.require_first(ctx, func, x)
    groups = a["num_groups"]

    def y0(x0: T) -> T:
        return F.group_norm(x0, groups, a["weight"], a["bias"], a["eps"])

    w, b = _channel_view(a["weight"], x.ndim), _channel_view(a["bias"], x.ndim)
    return _normalize(
        ctx,
        func,
        "group_norm",
        x,
        y0,
        lambda t: t.reshape(t.shape[0], groups, -1),
        (2,),
        a["eps"],
        w,
        b,
    )


def _layer_norm(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    refuse_tracked(ctx, func, args, kwargs)
    a = _bind(F.layer_norm, args, kwargs)
    x: T = a["input"]
    shape = tuple(a["normalized_shape"])
    layout = _trailing_layout(ctx, func, x, len(shape))
    xc = bd.canon(x, layout, ctx.rows)
    dims = tuple(range(xc.ndim - len(shape), xc.ndim))

    def y0(x0: T) -> T:  # x0 in the canonical view
        return F.layer_norm(x0, shape, a["weight"], a["bias"], a["eps"])

    out = _normalize(
        ctx, func, "layer_norm", xc, y0, lambda t: t, dims, a["eps"], a["weight"], a["bias"]
    )
    return bd.track(ctx, bd.uncanon(out, layout, x.shape, ctx.rows), func, layout)


def _trailing_layout(ctx: PassContext, func: Callable[..., Any], x: T, k: int) -> bd.Layout:
    """The layout of the input of an op over its last ``k`` dimensions (not the samples')."""
    layout = bd.layout_of(ctx, x)
    if layout.dim >= x.ndim - k:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} normalizes over the batch dimension; the "
            "linear interpreter needs the samples of a batch to stay independent"
        )
    return layout


def _rms_norm(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    refuse_tracked(ctx, func, args, kwargs)
    a = _bind(F.rms_norm, args, kwargs)
    x_in: T = a["input"]
    shape = tuple(a["normalized_shape"])
    layout = _trailing_layout(ctx, func, x_in, len(shape))
    x = bd.canon(x_in, layout, ctx.rows)
    eps = a["eps"] if a["eps"] is not None else torch.finfo(x.dtype).eps
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    weight = a["weight"]

    def statistics() -> tuple[T, T]:
        x0 = x[:1].detach()
        r0 = (x0.square().mean(dims, keepdim=True) + eps).rsqrt()
        return r0, x0 * r0

    r0, xh0 = ctx.frozen(statistics)
    if ctx.mode == "freeze":
        out = x * r0 if weight is None else x * r0 * weight
    else:
        lin = (x - xh0 * (xh0 * x).mean(dims, keepdim=True)) * r0
        if weight is not None:
            lin = lin * weight
        const = ctx.frozen(
            lambda: F.rms_norm(x[:1].detach(), shape, weight, a["eps"]) - lin[:1].detach()
        )
        out = ctx.add_constant(lin, const, "rms_norm c(x0)")
    return bd.track(ctx, bd.uncanon(out, layout, x_in.shape, ctx.rows), func, layout)


def _normalize_p(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``F.normalize``, ``x / max(||x||_p, eps)`` along ``dim``: freeze the norm of
    ``x0`` (``c = 0``), or expand exactly (taylor)."""
    refuse_tracked(ctx, func, args, kwargs)
    a = _bind(F.normalize, args, kwargs)
    x_in: T = a["input"]
    p, dim, eps = float(a["p"]), int(a["dim"]), float(a["eps"])
    layout = bd.layout_of(ctx, x_in)
    if dim % x_in.ndim == layout.dim:
        raise bd.refuse(ctx, func, "normalizes over the batch dimension")
    x = bd.canon(x_in, layout, ctx.rows)
    d = bd.canon_dim(dim, layout, x_in.ndim)

    def statistics() -> tuple[T, T | None, T | None]:
        x0 = x[:1].detach()
        n0 = x0.norm(p, d, keepdim=True)
        denom = n0.clamp_min(eps)
        if ctx.mode == "freeze":
            return denom, None, None
        # d||x||_p = sum(sign(x0) |x0|^(p-1) dx) / ||x0||^(p-1), where the norm exceeds eps
        weight = x0.sign() * x0.abs().pow(p - 1) / n0.pow(p - 1).clamp_min(eps**p)
        return denom, weight * (n0 > eps).to(x.dtype), x0 / denom.square()

    denom, weight, scaled0 = ctx.frozen(statistics)
    if ctx.mode == "freeze":
        out = x / denom
    else:
        assert weight is not None and scaled0 is not None
        lin = x / denom - scaled0 * (weight * x).sum(d, keepdim=True)
        const = ctx.frozen(lambda: x[:1].detach() / denom - lin[:1].detach())
        out = ctx.add_constant(lin, const, "normalize c(x0)")
    return bd.track(ctx, bd.uncanon(out, layout, x_in.shape, ctx.rows), func, layout)


# -- dropout: the same random mask on every row --------------------------------------------


def _dropout_rule(multiplicative: bool) -> Handler:
    def rule(
        ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        refuse_tracked(ctx, func, args, kwargs)
        sig = _signature(func)
        if sig is not None:
            a = sig.bind(*args, **kwargs)
            a.apply_defaults()
            x, p, training = a.arguments["input"], a.arguments["p"], a.arguments["training"]
            inplace = bool(a.arguments.get("inplace", False))
        else:  # torch.dropout(input, p, train) and friends
            x, p, training = args[0], args[1], args[2] if len(args) > 2 else kwargs["train"]
            inplace = func in _DROPOUT_INPLACE
        layout = bd.layout_of(ctx, x)
        if not training or p == 0:
            out = func(*args, **kwargs)
            if ctx.is_gate(x):  # attention weights after an (inactive) dropout
                ctx.mark_gate(out)
            return bd.track(ctx, out, func, layout)
        if not multiplicative:
            raise ConvscopeError(
                f"{op_name(func)} in {ctx.where()} is random and affine in training mode; "
                "put the model in eval mode"
            )
        if func not in _ELEMENTWISE_DROPOUT:  # channel dropout: one draw per (sample, channel)
            layout = bd.require_first(ctx, func, x)
        xc = bd.canon(x, layout, ctx.rows)
        mask = ctx.frozen(lambda: func(torch.ones_like(xc[:1]), p, True))
        if inplace and xc is x:
            return ctx.track(x.mul_(mask), func)
        out = bd.uncanon(xc * mask, layout, x.shape, ctx.rows)
        if inplace:
            x.copy_(out)
            out = x
        return bd.track(ctx, out, func, layout)

    return rule


_DROPOUT_INPLACE = torch_funcs(torch, "dropout_ feature_dropout_")
_ELEMENTWISE_DROPOUT = torch_funcs(F, "dropout") | torch_funcs(torch, "dropout dropout_")


# -- products and quotients of two input-dependent tensors -------------------------------------

_MUL = torch_funcs(torch, "mul multiply") | torch_funcs(T, "mul multiply __mul__ __rmul__")
_MUL_INPLACE = torch_funcs(T, "mul_ multiply_ __imul__")
_DIV = torch_funcs(torch, "div divide true_divide") | torch_funcs(
    T, "div divide true_divide __truediv__"
)
_DIV_INPLACE = torch_funcs(T, "div_ divide_ true_divide_ __itruediv__")
_RDIV = torch_funcs(T, "__rtruediv__ __rdiv__")


def _gate_first(ctx: PassContext, a: T, b: T) -> bool:
    """Whether ``a`` (not ``b``) is the gate of the product ``a * b``."""
    na, nb = a.numel() // ctx.rows, b.numel() // ctx.rows  # values per sample
    if na != nb:
        return na < nb
    return ctx.is_gate(a) and not ctx.is_gate(b)


def _mul_div(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    a: T = args[0]
    b: T = args[1] if len(args) > 1 else kwargs["other"]
    ta, tb = ctx.is_tracked(a), ctx.is_tracked(b)
    divide = func in _DIV or func in _DIV_INPLACE
    if kwargs.get("rounding_mode") is not None:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} divides with rounding "
            f"(rounding_mode={kwargs['rounding_mode']!r}), which is not linear"
        )
    if (divide and tb and not ta) or func in _RDIV:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} divides a constant by an input-dependent "
            "tensor; only a quotient of two input-dependent tensors (a / b) or division by "
            "a constant is supported"
        )
    inplace = func in _MUL_INPLACE or func in _DIV_INPLACE
    layout = elementwise_layout(ctx, func, a, b, "divides" if divide else "multiplies")
    if not (ta and tb):
        result = func(*args, **kwargs)
        return bd.track(ctx, a if inplace else result, func, layout)
    a0 = bd.row0_full(ctx, a, bd.layout_of(ctx, a))
    b0 = bd.row0_full(ctx, b, bd.layout_of(ctx, b))
    out: T
    if divide:
        if ctx.mode == "freeze":
            out = a / b0
        else:
            lin = a / b0 - (a0 / b0.square()) * b
            out = bd.add_constant(ctx, lin, layout, a0 / b0, "div c(x0)")
    elif ctx.mode == "freeze":
        out = b * a0 if _gate_first(ctx, a, b) else a * b0
    else:
        out = bd.add_constant(ctx, a * b0 + a0 * b, layout, -(a0 * b0), "mul c(x0)")
    if inplace:
        a.copy_(out)
        out = a
    return bd.track(ctx, out, func, layout)


# -- contractions: matmul, einsum, tensordot ... -------------------------------------------------

_BILINEAR = torch_funcs(torch, "matmul mm bmm einsum tensordot inner outer dot") | torch_funcs(
    T, "matmul mm bmm __matmul__ __rmatmul__ inner outer dot"
)
_RMATMUL = torch_funcs(T, "__rmatmul__")

Labels = list[str]


def _matmul_labels(na: int, nb: int) -> tuple[Labels, Labels, Labels]:
    """Dimension labels of ``a @ b`` (NumPy's matmul: broadcast batch, vectors promoted)."""
    batch = max(na - 2, nb - 2, 0)
    la = ["k"] if na == 1 else [f"b{j}" for j in range(batch - (na - 2), batch)] + ["n", "k"]
    lb = ["k"] if nb == 1 else [f"b{j}" for j in range(batch - (nb - 2), batch)] + ["k", "m"]
    out = [f"b{j}" for j in range(batch)] + (["n"] if na > 1 else []) + (["m"] if nb > 1 else [])
    return la, lb, out


def _einsum_labels(equation: str, operands: list[T]) -> tuple[list[Labels], Labels]:
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise ValueError("einsum: operands and subscripts differ in number")
    ell = max(
        (
            op.ndim - len(term.replace("...", ""))
            for term, op in zip(terms, operands, strict=True)
            if "..." in term
        ),
        default=0,
    )

    def expand(term: str, ndim: int | None) -> Labels:
        if "..." not in term:
            return list(term)
        before, after = term.split("...")
        n = (ndim - len(before) - len(after)) if ndim is not None else ell
        return [*before, *(f".{j}" for j in range(ell - n, ell)), *after]

    labels = [expand(t, op.ndim) for t, op in zip(terms, operands, strict=True)]
    if "->" in eq:
        out = expand(rhs, None)
    else:
        letters = [c for t in terms for c in t.replace("...", "")]
        out = [f".{j}" for j in range(ell)] + sorted(
            c for c in set(letters) if letters.count(c) == 1
        )
    return labels, out


def _contraction(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[tuple[T, Labels]], Labels]:
    """``[(operand, its dimension labels) ...]`` and the output's labels: a label missing
    from the output is summed over."""
    name = op_name(func).rsplit(".", 1)[-1]
    if name == "einsum":
        equation = args[0]
        ops = (
            list(args[1])
            if len(args) == 2 and isinstance(args[1], (list, tuple))
            else list(args[1:])
        )
        if not isinstance(equation, str):
            raise ValueError("einsum in the sublist format")
        labels, out = _einsum_labels(equation, ops)
        return list(zip(ops, labels, strict=True)), out
    a: Any = args[0]
    b: Any = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
    if func in _RMATMUL:
        a, b = b, a
    if name == "tensordot":
        dims = args[2] if len(args) > 2 else kwargs.get("dims", 2)
        if isinstance(dims, int):
            ca, cb = list(range(a.ndim - dims, a.ndim)), list(range(dims))
        else:
            ca, cb = ([int(d) for d in ds] for ds in dims)
        la = [f"a{j}" for j in range(a.ndim)]
        lb = [f"c{j}" for j in range(b.ndim)]
        for q, (i, j) in enumerate(zip(ca, cb, strict=True)):
            la[i % a.ndim] = lb[j % b.ndim] = f"k{q}"
        return [(a, la), (b, lb)], [x for x in la if x[0] == "a"] + [x for x in lb if x[0] == "c"]
    if name == "inner":
        la = [f"a{j}" for j in range(a.ndim - 1)] + ["k"] if a.ndim else []
        lb = [f"c{j}" for j in range(b.ndim - 1)] + ["k"] if b.ndim else []
        return [(a, la), (b, lb)], [x for x in la + lb if x != "k"]
    if name == "outer":
        return [(a, ["n"]), (b, ["m"])], ["n", "m"]
    if name == "dot":
        return [(a, ["k"]), (b, ["k"])], []
    la, lb, out = _matmul_labels(a.ndim, b.ndim)
    return [(a, la), (b, lb)], out


def _contraction_layout(
    ctx: PassContext, func: Callable[..., Any], operands: list[tuple[T, Labels]], out: Labels
) -> bd.Layout:
    """The output layout of a contraction: the samples of every tracked operand must sit
    on one label that survives into the output, and a constant with that label must be
    the same for every sample."""
    label: str | None = None
    ref: bd.Layout | None = None
    for t, labels in operands:
        if not ctx.is_tracked(t):
            continue
        layout = bd.layout_of(ctx, t)
        lab = labels[layout.dim]
        if lab not in out or labels.count(lab) > 1:
            raise bd.refuse(ctx, func, "contracts over the batch dimension")
        if label is None:
            label, ref = lab, layout
        elif lab != label or (layout.outer, layout.inner) != (ref.outer, ref.inner):  # type: ignore[union-attr]
            raise bd.refuse(
                ctx,
                func,
                "multiplies input-dependent tensors whose samples are on different "
                "dimensions (an outer product across the samples)",
            )
    assert label is not None and ref is not None
    for t, labels in operands:
        if isinstance(t, T) and not ctx.is_tracked(t) and label in labels:
            pos = labels.index(label)
            bd.check_invariant(ctx, func, t, ref.moved(pos), t.ndim, "multiplies by")
    return ref.moved(out.index(label))


def _tensor_leaves(value: Any) -> list[T]:
    """The tensors in ``value`` (nested lists and tuples), in order."""
    if isinstance(value, T):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensor_leaves(v)]
    return []


def _rebuild(value: Any, new: dict[int, T], counter: list[int]) -> Any:
    """``value`` with its ``i``-th tensor leaf replaced by ``new[i]``."""
    if isinstance(value, T):
        i = counter[0]
        counter[0] += 1
        return new.get(i, value)
    if isinstance(value, (list, tuple)):
        return type(value)(_rebuild(v, new, counter) for v in value)
    return value


def _bilinear(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``matmul``, ``einsum`` and the other contractions: linear in each operand.

    One input-dependent operand: linear. Two (attention's ``q k^T`` and ``P v``): the
    product rule in taylor mode, ``f(a, b0) + f(a0, b) - f(a0, b0)``; in freeze mode one
    operand is held at its ``x0`` value, the gate (a softmax or sigmoid output) if
    there is one, else the second operand.
    """
    try:
        operands, out_labels = _contraction(func, args, kwargs)
    except (ValueError, TypeError, IndexError) as e:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()}: the interpreter cannot read this call ({e})"
        ) from None
    layout = _contraction_layout(ctx, func, operands, out_labels)
    leaves = _tensor_leaves((args, kwargs))
    slots = [i for i, t in enumerate(leaves) if ctx.is_tracked(t)]
    if len(slots) == 1:
        return bd.track(ctx, func(*args, **kwargs), func, layout)
    if len(slots) > 2:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} multiplies more than two input-dependent "
            "tensors; the linear interpreter supports products of two"
        )
    if func in _RMATMUL:  # x.__rmatmul__(y) is y @ x: y is the first factor
        slots.reverse()
    a, b = leaves[slots[0]], leaves[slots[1]]
    a0 = bd.row0_full(ctx, a, bd.layout_of(ctx, a))
    b0 = bd.row0_full(ctx, b, bd.layout_of(ctx, b))

    def f(x: T, y: T) -> T:
        new_args, new_kwargs = _rebuild((args, kwargs), {slots[0]: x, slots[1]: y}, [0])
        return func(*new_args, **new_kwargs)

    if ctx.mode == "freeze":
        freeze_a = ctx.is_gate(a) and not ctx.is_gate(b)
        out = f(a0, b) if freeze_a else f(a, b0)
    else:
        lin = f(a, b0) + f(a0, b)
        out = bd.add_constant(
            ctx, lin, layout, -f(a0, b0), f"{op_name(func).rsplit('.', 1)[-1]} c(x0)"
        )
    return bd.track(ctx, out, func, layout)


# -- softmax: a gate (freeze) or its Jacobian (taylor) --------------------------------------------


def _softmax_rule(log: bool) -> Handler:
    def rule(
        ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        refuse_tracked(ctx, func, args, kwargs)
        x: T = args[0] if args else kwargs["input"]
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        dtype = kwargs.get("dtype")
        if dtype is None and len(args) > 2 and isinstance(args[-1], torch.dtype):
            dtype = args[-1]
        if dim is None:  # the legacy implicit choice of F.softmax
            dim = 0 if x.ndim in (0, 1, 3) else 1
        if dtype is not None:
            x = x.to(dtype)
        layout = bd.layout_of(ctx, x if ctx.is_tracked(x) else args[0])
        if int(dim) % x.ndim == layout.dim:
            raise bd.refuse(ctx, func, "normalizes over the batch dimension")
        xc = bd.canon(x, layout, ctx.rows)
        dc = bd.canon_dim(int(dim), layout, x.ndim)
        name = "log_softmax" if log else "softmax"

        def at_x0() -> T:
            x0 = xc[:1].detach()
            if ctx.mode == "freeze" and log:  # the normalizer of x0: z - logsumexp(z0)
                return -torch.logsumexp(x0, dc, keepdim=True)
            return torch.softmax(x0, dc)

        s0 = ctx.frozen(at_x0)
        if ctx.mode == "freeze":
            if log:
                out = ctx.add_constant(xc, s0, f"{name} shift")
            else:  # a gate decided by x0: its value, for every probe
                out = ctx.add_constant(torch.zeros_like(xc), s0, f"{name} gate")
        else:
            mean = (s0 * xc).sum(dc, keepdim=True)
            lin = xc - mean if log else s0 * (xc - mean)

            def const() -> T:
                y0 = torch.log_softmax(xc[:1].detach(), dc) if log else s0
                return y0 - lin[:1].detach()

            out = ctx.add_constant(lin, ctx.frozen(const), f"{name} c(x0)")
        out = bd.uncanon(out, layout, x.shape, ctx.rows)
        bd.track(ctx, out, func, layout)
        if not log:
            ctx.mark_gate(out)
        return out

    return rule


# -- selections along a dimension: torch.max(x, dim) ------------------------------------------


def _select_rule(largest: bool) -> Handler:
    def rule(
        ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        args2, kwargs2, dim = pop_arg(args, kwargs, 1, "dim")
        x_in: T = args[0]
        layout = bd.layout_of(ctx, x_in)
        if (
            not isinstance(dim, int)
            or ctx.any_tracked(args[1:], kwargs2)
            or dim % x_in.ndim == layout.dim
        ):
            raise ConvscopeError(
                f"{op_name(func)} in {ctx.where()}: only a max/min over one non-batch "
                "dimension (torch.max(x, dim)) is supported"
            )
        keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
        x = bd.canon(x_in, layout, ctx.rows)
        dc = bd.canon_dim(dim, layout, x_in.ndim)

        def selected() -> T:
            x0 = x[:1].detach()
            return x0.argmax(dc, keepdim=True) if largest else x0.argmin(dc, keepdim=True)

        idx = ctx.frozen(selected)
        shape = list(x.shape)
        shape[dc] = 1
        full_idx = idx.expand(*shape)
        values = x.gather(dc, full_idx)
        out_shape = list(x_in.shape)
        out_shape[dim % x_in.ndim] = 1
        values = bd.uncanon(values, layout, out_shape, ctx.rows)
        full_idx = bd.uncanon(full_idx, layout, out_shape, ctx.rows)
        out_layout = layout
        if not keepdim:
            values, full_idx = values.squeeze(dim), full_idx.squeeze(dim)
            if dim % x_in.ndim < layout.dim:
                out_layout = layout.moved(layout.dim - 1)
        bd.track(ctx, values, func, out_layout)
        name = getattr(func, "__name__", "")
        if name.startswith("am"):
            return values
        return (
            torch.return_types.max((values, full_idx))
            if largest
            else torch.return_types.min((values, full_idx))
        )

    return rule


def _sort_rule(top: bool) -> Handler:
    """``sort`` / ``topk`` along a non-batch dimension: the order of ``x0`` (a selection,
    the same in both modes, like a max-pool)."""

    def rule(
        ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        refuse_tracked(ctx, func, args, kwargs)
        x_in: T = args[0]
        if top:
            names: tuple[str, ...] = ("k", "dim", "largest", "sorted")
            a = {
                "dim": -1,
                "largest": True,
                "sorted": True,
                **dict(zip(names, args[1:], strict=False)),
            }
        else:
            names = ("dim", "descending")
            a = {"dim": -1, "descending": False, **dict(zip(names, args[1:], strict=False))}
        a.update(kwargs)
        layout = bd.layout_of(ctx, x_in)
        dim = int(a.pop("dim")) % x_in.ndim
        if dim == layout.dim:
            raise bd.refuse(ctx, func, "sorts along the batch dimension")
        x = bd.canon(x_in, layout, ctx.rows)
        dc = bd.canon_dim(dim, layout, x_in.ndim)

        def order() -> T:
            x0 = x[:1].detach()
            if top:
                return torch.topk(x0, a["k"], dc, a["largest"], a["sorted"])[1]
            return torch.sort(
                x0, dim=dc, descending=a["descending"], stable=a.get("stable", False)
            )[1]

        idx = ctx.frozen(order)
        shape = list(x.shape)
        shape[dc] = idx.shape[dc]
        full_idx = idx.expand(shape)
        values = x.gather(dc, full_idx)
        out_shape = list(x_in.shape)
        out_shape[dim] = idx.shape[dc]
        values = bd.uncanon(values, layout, out_shape, ctx.rows)
        indices = bd.uncanon(full_idx, layout, out_shape, ctx.rows)
        bd.track(ctx, values, func, layout)
        kind = torch.return_types.topk if top else torch.return_types.sort
        return kind((values, indices))

    return rule


def _build() -> dict[Callable[..., Any], Handler]:
    rules: dict[Callable[..., Any], Handler] = {}
    for unit, variants in _UNITS:
        for func, spec in variants.items():
            rules[func] = _unit_rule(unit, spec)
    for nd in (1, 2, 3):
        for adaptive in (False, True):
            rule = _pool_rule(nd, adaptive)
            rules.update(dict.fromkeys(_pool_variants(nd, adaptive), rule))
    rules[F.batch_norm] = _batch_norm
    rules[F.instance_norm] = _instance_norm
    rules[F.group_norm] = _group_norm
    rules[F.layer_norm] = _layer_norm
    if hasattr(F, "rms_norm"):
        rules[F.rms_norm] = _rms_norm
    rules[F.normalize] = _normalize_p
    multiplicative = torch_funcs(F, "dropout dropout1d dropout2d dropout3d") | torch_funcs(
        torch, "dropout dropout_ feature_dropout feature_dropout_"
    )
    rules.update(dict.fromkeys(multiplicative, _dropout_rule(True)))
    alpha = torch_funcs(F, "alpha_dropout feature_alpha_dropout") | torch_funcs(
        torch, "alpha_dropout alpha_dropout_ feature_alpha_dropout feature_alpha_dropout_"
    )
    rules.update(dict.fromkeys(alpha, _dropout_rule(False)))
    rules.update(dict.fromkeys(_MUL | _MUL_INPLACE | _DIV | _DIV_INPLACE | _RDIV, _mul_div))
    rules.update(dict.fromkeys(_BILINEAR, _bilinear))
    rules.update(ATTENTION)
    rules.update(
        dict.fromkeys(
            torch_funcs(F, "softmax") | torch_funcs(torch, "softmax") | torch_funcs(T, "softmax"),
            _softmax_rule(False),
        )
    )
    rules.update(
        dict.fromkeys(
            torch_funcs(F, "log_softmax")
            | torch_funcs(torch, "log_softmax")
            | torch_funcs(T, "log_softmax"),
            _softmax_rule(True),
        )
    )
    rules.update(
        dict.fromkeys(torch_funcs(torch, "amax") | torch_funcs(T, "amax"), _select_rule(True))
    )
    rules.update(
        dict.fromkeys(torch_funcs(torch, "sort") | torch_funcs(T, "sort"), _sort_rule(False))
    )
    rules.update(
        dict.fromkeys(torch_funcs(torch, "topk") | torch_funcs(T, "topk"), _sort_rule(True))
    )
    rules.update(
        dict.fromkeys(torch_funcs(torch, "amin") | torch_funcs(T, "amin"), _select_rule(False))
    )
    rules.update(
        dict.fromkeys(torch_funcs(torch, "max") | torch_funcs(T, "max"), _select_rule(True))
    )
    rules.update(
        dict.fromkeys(torch_funcs(torch, "min") | torch_funcs(T, "min"), _select_rule(False))
    )
    return rules


RULES: dict[Callable[..., Any], Handler] = _build()
"""Non-linear ops (and products) by the torch function or method that reaches the mode."""
