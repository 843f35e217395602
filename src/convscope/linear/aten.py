"""ATen ops of exported programs, run by the rule of their torch-level op.

A model saved with ``torch.export.save`` and loaded with ``torch.export.load(p).module()``
or ``torch.export.unflatten(torch.export.load(p))`` does not call ``F.conv2d`` or
``Tensor.relu_``: its graph calls ATen overloads (``aten.conv2d.default``,
``aten.relu_.default``, ``aten.add_.Tensor`` ...), and those are what the interceptor
sees. :data:`ATEN` maps each overload (and its ``OpOverloadPacket``) to the torch-level
function with the same meaning, adapting the arguments where the ATen schema differs
(``aten.batch_norm`` puts the affine parameters before the running statistics and has a
``cudnn_enabled`` flag; ``aten.native_layer_norm`` returns its statistics too;
``aten.addmm`` is a linear layer with a transposed weight). The call then goes through
the interceptor again with that function, so an exported program meets exactly the
rules an eager one does. An ATen op missing here is refused by the interceptor like any
unknown op, its error naming the overload (``aten.erf.default``).

Two more kinds of calls are handled here because they come with exported programs:

- shape guards. ``.module()`` checks the input shapes it was exported for with
  ``torch._assert(cond, "Guard failed: x.size()[0] == 1")``;
  ``torch.export.unflatten`` reads the placeholders' example shapes (fake tensors).
  A program exported with a static batch size cannot run the interpreter's batch
  ``[x0, probes ...]``: both become a :class:`ConvscopeError` that says how to export
  it with a dynamic batch dimension. ``aten.sym_size`` and friends on tracked tensors
  only read shapes and run as usual.
- ``aten._assert_tensor_metadata``: a dtype/device check on a tracked tensor, run as is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor

from convscope.errors import ConvscopeError
from convscope.linear.context import PassContext, op_name

__all__ = ["ATEN", "AtenHandler", "Route", "torch_level"]

T = torch.Tensor
_nn = torch._C._nn
_aten = torch.ops.aten

Route = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
"""The interceptor's ``__torch_function__(func, types, args, kwargs)``."""

AtenHandler = Callable[
    [PassContext, Route, Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any
]
"""``handler(ctx, route, op, types, args, kwargs)``: runs one intercepted call."""

_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
_Adapter = Callable[[dict[str, Any]], _Call | None]


@dataclass(frozen=True)
class _Map:
    """How one ATen overload runs as a torch-level call.

    Attributes:
        target: the torch-level function, called with the ATen call's own arguments
            (its Python binding is generated from the same schema), when ``adapt`` is None.
        adapt: builds ``(function, args, kwargs)`` from the arguments bound by schema
            name (defaults filled in); ``None`` from it means "not in this form".
        extra: how many further outputs the ATen op returns (saved statistics, masks)
            that the graph does not read in inference; they come back as empty tensors.
    """

    target: Callable[..., Any] | None = None
    adapt: _Adapter | None = None
    extra: int = 0


def _bind(
    op: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The arguments of an ATen call by schema name, defaults filled in."""
    bound: dict[str, Any] = {}
    for i, arg in enumerate(op._schema.arguments):
        if i < len(args) and not arg.kwarg_only:
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound


# -- adapters for schemas that differ from the torch-level function ----------------------


def _batch_norm(a: dict[str, Any]) -> _Call:
    # aten.batch_norm / native_batch_norm / _native_batch_norm_legit(.no_stats):
    # (input, weight, bias, running_mean, running_var, training, momentum, eps)
    return (
        F.batch_norm,
        (a["input"], a.get("running_mean"), a.get("running_var"), a["weight"], a["bias"]),
        {"training": bool(a["training"]), "momentum": a["momentum"], "eps": a["eps"]},
    )


def _batch_norm_eval(a: dict[str, Any]) -> _Call:
    return _batch_norm({**a, "training": False})


def _instance_norm(a: dict[str, Any]) -> _Call:
    return (
        F.instance_norm,
        (a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"]),
        {"use_input_stats": bool(a["use_input_stats"]), "momentum": a["momentum"], "eps": a["eps"]},
    )


def _group_norm(a: dict[str, Any]) -> _Call:
    groups = a["num_groups"] if "num_groups" in a else a["group"]
    return F.group_norm, (a["input"], groups, a["weight"], a["bias"], a["eps"]), {}


def _layer_norm(a: dict[str, Any]) -> _Call:
    return (
        F.layer_norm,
        (a["input"], list(a["normalized_shape"]), a["weight"], a["bias"], a["eps"]),
        {},
    )


def _rms_norm(a: dict[str, Any]) -> _Call:
    return F.rms_norm, (a["input"], list(a["normalized_shape"]), a["weight"], a["eps"]), {}


def _convolution(a: dict[str, Any]) -> _Call | None:
    x, w = a["input"], a["weight"]
    nd = w.ndim - 2
    if nd not in (1, 2, 3):
        return None
    if a["transposed"]:
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        args = (x, w, a["bias"], a["stride"], a["padding"], a["output_padding"], a["groups"])
        return conv_t, (*args, a["dilation"]), {}
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return conv, (x, w, a["bias"], a["stride"], a["padding"], a["dilation"], a["groups"]), {}


def _addmm(a: dict[str, Any]) -> _Call | None:
    """``beta * bias + alpha * (x @ W)``: ``F.linear(x, alpha * W^T, beta * bias)``.

    Only the form of a linear layer (a constant 2-D weight, a constant bias of one row)
    is translated; anything else stays ``aten.addmm`` and is refused when tracked.
    """
    bias, x, w, alpha, beta = a["self"], a["mat1"], a["mat2"], a["alpha"], a["beta"]
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        return None
    if isinstance(bias, torch.Tensor) and bias.ndim == 2 and bias.shape[0] == 1:
        bias = bias[0]
    if not isinstance(bias, torch.Tensor) or bias.ndim != 1:
        return None
    weight = w.t() if alpha == 1 else alpha * w.t()
    b = None if beta == 0 else bias if beta == 1 else beta * bias
    return F.linear, (x, weight, b), {}


def _max_pool_indices(nd: int) -> _Adapter:
    with_indices = getattr(F, f"max_pool{nd}d_with_indices")

    def adapt(a: dict[str, Any]) -> _Call:
        args = (a["self"], a["kernel_size"], a["stride"] or None, a["padding"], a["dilation"])
        return with_indices, (*args, a["ceil_mode"]), {}

    return adapt


def _interpolate(mode: str, antialias: bool = False) -> _Adapter:
    """``aten.upsample_*.vec(input, output_size, [align_corners,] scale_factors)`` and
    ``aten.upsample_*(self, output_size, [align_corners,] scales...)`` without scales."""

    def adapt(a: dict[str, Any]) -> _Call | None:
        if any(a.get(k) is not None for k in ("scales", "scales_d", "scales_h", "scales_w")):
            return None  # sizes and scales together: no F.interpolate call says both
        size: Any = a.get("output_size")
        scales: Any = a.get("scale_factors")
        if (size is None) == (scales is None):
            return None
        kw: dict[str, Any] = {"mode": mode}
        if size is not None:
            kw["size"] = list(size)
        else:
            kw["scale_factor"] = list(scales)
        if "align_corners" in a:
            kw["align_corners"] = a["align_corners"]
        if antialias:
            kw["antialias"] = True
        return F.interpolate, (a["input"] if "input" in a else a["self"],), kw

    return adapt


def _pad(mode: str) -> _Adapter:
    def adapt(a: dict[str, Any]) -> _Call:
        return (
            F.pad,
            (a["self"], list(a["padding"] if "padding" in a else a["pad"])),
            {"mode": mode},
        )

    return adapt


def _constant_pad(a: dict[str, Any]) -> _Call:
    return F.pad, (a["self"], list(a["pad"])), {"mode": "constant", "value": a["value"]}


def _pad_any(a: dict[str, Any]) -> _Call:
    return F.pad, (a["self"], list(a["pad"])), {"mode": a["mode"], "value": a["value"]}


def _slice(a: dict[str, Any]) -> _Call:
    x = a["self"]
    dim = int(a["dim"]) % max(x.ndim, 1)
    index = (*([slice(None)] * dim), slice(a["start"], a["end"], a["step"]))
    return T.__getitem__, (x, index), {}


def _index(a: dict[str, Any]) -> _Call:
    index = tuple(slice(None) if i is None else i for i in a["indices"])
    return T.__getitem__, (a["self"], index), {}


def _to(a: dict[str, Any]) -> _Call:
    """``aten.to.*`` and ``aten._to_copy`` (which always copies)."""
    copy = bool(a.get("copy", True))
    if "other" in a:
        return T.to, (a["self"], a["other"]), {"copy": copy}
    kw = {k: a[k] for k in ("dtype", "device", "memory_format") if a.get(k) is not None}
    return T.to, (a["self"],), {**kw, "copy": copy}


def _alias(a: dict[str, Any]) -> _Call:
    return T.view_as, (a["self"], a["self"]), {}


def _reduce_one(func: Callable[..., Any]) -> _Adapter:
    """``aten.amax(self, dim=[d], keepdim)`` -> ``torch.amax(x, d, keepdim)``."""

    def adapt(a: dict[str, Any]) -> _Call | None:
        dim = list(a["dim"])
        if len(dim) != 1:
            return None
        return func, (a["self"], int(dim[0]), bool(a["keepdim"])), {}

    return adapt


def _native_dropout(a: dict[str, Any]) -> _Call | None:
    if a["train"] is not False and a["p"] != 0:  # None means training
        return None  # the mask output cannot be given back
    return torch.clone, (a["input"],), {}


def _mish_(a: dict[str, Any]) -> _Call:
    return F.mish, (a["self"],), {"inplace": True}


# -- the table ------------------------------------------------------------------------------

# ATen name -> torch-level function taking the same arguments
_SAME: dict[str, Callable[..., Any]] = {
    # non-linear units (convscope.linear.rules)
    "relu": torch.relu,
    "relu_": torch.relu_,
    "leaky_relu": _nn.leaky_relu,
    "leaky_relu_": _nn.leaky_relu_,
    "prelu": torch.prelu,
    "_prelu_kernel": torch.prelu,
    "hardtanh": _nn.hardtanh,
    "hardtanh_": _nn.hardtanh_,
    "relu6": _nn.relu6,
    "relu6_": _nn.relu6_,
    "clamp": torch.clamp,
    "clamp_": torch.clamp_,
    "clip": torch.clip,
    "clip_": torch.clip_,
    "clamp_min": torch.clamp_min,
    "clamp_min_": torch.clamp_min_,
    "clamp_max": torch.clamp_max,
    "clamp_max_": torch.clamp_max_,
    "threshold": torch.threshold,
    "threshold_": torch.threshold_,
    "sigmoid": torch.sigmoid,
    "sigmoid_": torch.sigmoid_,
    "tanh": torch.tanh,
    "tanh_": torch.tanh_,
    "hardsigmoid": _nn.hardsigmoid,
    "hardsigmoid_": _nn.hardsigmoid_,
    "hardswish": _nn.hardswish,
    "hardswish_": _nn.hardswish_,
    "silu": _nn.silu,
    "silu_": _nn.silu_,
    "gelu": F.gelu,
    "elu": _nn.elu,
    "elu_": F.elu_,
    "selu": torch.selu,
    "selu_": torch.selu_,
    "celu": torch.celu,
    "celu_": torch.celu_,
    "mish": F.mish,
    "softplus": F.softplus,
    "log_sigmoid": F.logsigmoid,
    "max_pool1d": torch.max_pool1d,
    "max_pool2d": torch.max_pool2d,
    "max_pool3d": torch.max_pool3d,
    "max_pool2d_with_indices": _nn.max_pool2d_with_indices,
    "max_pool3d_with_indices": _nn.max_pool3d_with_indices,
    "adaptive_max_pool1d": torch.adaptive_max_pool1d,
    "adaptive_max_pool2d": _nn.adaptive_max_pool2d,
    "adaptive_max_pool3d": _nn.adaptive_max_pool3d,
    "dropout": torch.dropout,
    "dropout_": torch.dropout_,
    "feature_dropout": torch.feature_dropout,
    "feature_dropout_": torch.feature_dropout_,
    "alpha_dropout": torch.alpha_dropout,
    "alpha_dropout_": torch.alpha_dropout_,
    "feature_alpha_dropout": torch.feature_alpha_dropout,
    "feature_alpha_dropout_": torch.feature_alpha_dropout_,
    "mul": torch.mul,
    "mul_": T.mul_,
    "div": torch.div,
    "div_": T.div_,
    "matmul": torch.matmul,
    "mm": torch.mm,
    "bmm": torch.bmm,
    "einsum": torch.einsum,
    "max": torch.max,
    "min": torch.min,
    # affine ops with a bias source (convscope.linear.affine)
    "conv1d": F.conv1d,
    "conv2d": F.conv2d,
    "conv3d": F.conv3d,
    "conv_transpose1d": F.conv_transpose1d,
    "conv_transpose2d": F.conv_transpose2d,
    "conv_transpose3d": F.conv_transpose3d,
    "linear": F.linear,
    "add": torch.add,
    "add_": T.add_,
    "sub": torch.sub,
    "sub_": T.sub_,
    "rsub": torch.rsub,
    "cat": torch.cat,
    "concat": torch.concat,
    "concatenate": torch.concatenate,
    "stack": torch.stack,
    "mean": torch.mean,
    "sum": torch.sum,
    "permute": torch.permute,
    "transpose": torch.transpose,
    "transpose_": T.transpose_,
    "t": torch.t,
    "movedim": torch.movedim,
    "flip": torch.flip,
    "roll": torch.roll,
    "copy_": T.copy_,
    "fill_": T.fill_,
    # linear ops (the whitelist). A view runs as reshape, which is the same view where
    # one exists: the rules' outputs need not have the strides the exported graph
    # was traced with (a frozen layer norm of a permuted tensor stays permuted)
    "view": T.reshape,
    "_unsafe_view": T.reshape,
    "reshape": torch.reshape,
    "flatten": torch.flatten,
    "unflatten": torch.unflatten,
    "squeeze": torch.squeeze,
    "squeeze_": T.squeeze_,
    "unsqueeze": torch.unsqueeze,
    "unsqueeze_": T.unsqueeze_,
    "contiguous": T.contiguous,
    "clone": torch.clone,
    "expand": T.expand,
    "expand_as": T.expand_as,
    "repeat": T.repeat,
    "narrow": torch.narrow,
    "select": torch.select,
    "split": torch.split,
    "split_with_sizes": T.split_with_sizes,
    "tensor_split": torch.tensor_split,
    "chunk": torch.chunk,
    "unbind": torch.unbind,
    "neg": torch.neg,
    "zero_": T.zero_,
    "avg_pool1d": torch.avg_pool1d,
    "avg_pool2d": _nn.avg_pool2d,
    "avg_pool3d": _nn.avg_pool3d,
    "adaptive_avg_pool1d": torch.adaptive_avg_pool1d,
    "adaptive_avg_pool2d": _nn.adaptive_avg_pool2d,
    "_adaptive_avg_pool2d": _nn.adaptive_avg_pool2d,
    "adaptive_avg_pool3d": _nn.adaptive_avg_pool3d,
    "_adaptive_avg_pool3d": _nn.adaptive_avg_pool3d,
    "pixel_shuffle": torch.pixel_shuffle,
    "pixel_unshuffle": torch.pixel_unshuffle,
    "channel_shuffle": torch.channel_shuffle,
    "native_channel_shuffle": torch.native_channel_shuffle,
    "index_select": torch.index_select,
    "gather": torch.gather,
    "repeat_interleave": torch.repeat_interleave,
    # shape reads and constants of a shape
    "sym_size": T.size,
    "size": T.size,
    "sym_numel": T.numel,
    "numel": T.numel,
    "sym_stride": T.stride,
    "stride": T.stride,
    "sym_storage_offset": T.storage_offset,
    "dim": T.dim,
    "zeros_like": torch.zeros_like,
    "ones_like": torch.ones_like,
    "empty_like": torch.empty_like,
    "full_like": torch.full_like,
    "rand_like": torch.rand_like,
    "randn_like": torch.randn_like,
    "new_zeros": T.new_zeros,
    "new_ones": T.new_ones,
    "new_empty": T.new_empty,
    "new_full": T.new_full,
}

# ATen name -> adapter (all overloads of the name)
_ADAPTED: dict[str, tuple[_Adapter, int]] = {
    "batch_norm": (_batch_norm, 0),
    "native_batch_norm": (_batch_norm, 2),
    "_native_batch_norm_legit": (_batch_norm, 2),
    "_native_batch_norm_legit_no_training": (_batch_norm_eval, 2),
    "instance_norm": (_instance_norm, 0),
    "group_norm": (_group_norm, 0),
    "native_group_norm": (_group_norm, 2),
    "layer_norm": (_layer_norm, 0),
    "native_layer_norm": (_layer_norm, 2),
    "convolution": (_convolution, 0),
    "addmm": (_addmm, 0),
    "max_pool1d_with_indices": (_max_pool_indices(1), 0),
    "upsample_nearest1d": (_interpolate("nearest"), 0),
    "upsample_nearest2d": (_interpolate("nearest"), 0),
    "upsample_nearest3d": (_interpolate("nearest"), 0),
    "_upsample_nearest_exact1d": (_interpolate("nearest-exact"), 0),
    "_upsample_nearest_exact2d": (_interpolate("nearest-exact"), 0),
    "_upsample_nearest_exact3d": (_interpolate("nearest-exact"), 0),
    "upsample_linear1d": (_interpolate("linear"), 0),
    "upsample_bilinear2d": (_interpolate("bilinear"), 0),
    "_upsample_bilinear2d_aa": (_interpolate("bilinear", antialias=True), 0),
    "upsample_bicubic2d": (_interpolate("bicubic"), 0),
    "_upsample_bicubic2d_aa": (_interpolate("bicubic", antialias=True), 0),
    "upsample_trilinear3d": (_interpolate("trilinear"), 0),
    "constant_pad_nd": (_constant_pad, 0),
    "pad": (_pad_any, 0),
    "reflection_pad1d": (_pad("reflect"), 0),
    "reflection_pad2d": (_pad("reflect"), 0),
    "reflection_pad3d": (_pad("reflect"), 0),
    "replication_pad1d": (_pad("replicate"), 0),
    "replication_pad2d": (_pad("replicate"), 0),
    "replication_pad3d": (_pad("replicate"), 0),
    "_pad_circular": (_pad("circular"), 0),
    "slice": (_slice, 0),
    "index": (_index, 0),
    "_to_copy": (_to, 0),
    "to": (_to, 0),
    "alias": (_alias, 0),
    "native_dropout": (_native_dropout, 1),
    "mish_": (_mish_, 0),
    "amax": (_reduce_one(torch.amax), 0),
    "amin": (_reduce_one(torch.amin), 0),
}
if hasattr(F, "rms_norm"):
    _ADAPTED["rms_norm"] = (_rms_norm, 0)

# overloads their name-mates above do not describe: a reinterpretation of the bits, an
# output dtype, list methods
_REFUSED = {"view.dtype", "addmm.dtype", "index.list_Tensor"}


def _overloads() -> dict[torch._ops.OpOverload, _Map]:
    table: dict[torch._ops.OpOverload, _Map] = {}
    names = [(n, _Map(target=f)) for n, f in _SAME.items()]
    names += [(n, _Map(adapt=ad, extra=extra)) for n, (ad, extra) in _ADAPTED.items()]
    for name, spec in names:
        packet = getattr(_aten, name, None)
        if packet is None:
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            key = f"{name}.{overload}"
            arguments = op._schema.arguments
            if key in _REFUSED or any(arg.is_out for arg in arguments):
                continue
            if not any("Tensor" in str(arg.type) for arg in arguments):
                continue  # aten.slice.str and friends
            table[op] = spec
    return table


_TABLE = _overloads()


def torch_level(op: Callable[..., Any]) -> Callable[..., Any] | None:
    """The torch-level function an ATen overload runs as (``None``: not mapped, or
    only through an adapter that decides per call)."""
    spec = _TABLE.get(op)  # type: ignore[call-overload]
    return None if spec is None else spec.target


# -- the handlers ---------------------------------------------------------------------------


def _refuse(ctx: PassContext, op: Callable[..., Any]) -> ConvscopeError:
    return ConvscopeError(
        f"{op_name(op)} in {ctx.where()} is not linear in this form and convscope.linear "
        "has no rule for it"
    )


def _mapped(spec: _Map) -> AtenHandler:
    def handle(
        ctx: PassContext,
        route: Route,
        op: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not ctx.any_tracked(args, kwargs):
            return op(*args, **kwargs)
        if spec.adapt is None:
            assert spec.target is not None
            out = route(spec.target, types, args, kwargs)
        else:
            call = spec.adapt(_bind(op, args, kwargs))  # type: ignore[arg-type]
            if call is None:
                raise _refuse(ctx, op)
            func, a, k = call
            out = route(func, types, a, k)
        if spec.extra:
            # statistics or masks the inference graph does not read
            empty = out.new_empty(0)
            return (out, *([empty] * spec.extra))
        return out

    return handle


def _packet(ctx: PassContext, route: Route, packet: Any, types: Any, args: Any, kwargs: Any) -> Any:
    """An ``OpOverloadPacket`` call (``torch.ops.aten.relu(x)``): pick the overload."""
    name = torch._C._jit_resolve_packet(packet._qualified_op_name, *args, **kwargs)
    op = getattr(packet, name)
    spec = _TABLE.get(op)
    if spec is None:
        if not ctx.any_tracked(args, kwargs):
            return op(*args, **kwargs)
        raise _refuse(ctx, op)
    return _HANDLERS[op](ctx, route, op, types, args, kwargs)


_BATCH_HINT = (
    "the linear interpreter runs x0 and its probes in one batch: export it with a dynamic "
    'batch dimension, e.g. dynamic_shapes={{"{name}": {{0: torch.export.Dim("batch")}}}}'
)
_GUARD = re.compile(r"Guard failed: (\w+)\.size\(\)\[0\] == (\d+)")


def _assert(ctx: PassContext, route: Route, op: Any, types: Any, args: Any, kwargs: Any) -> Any:
    """``torch._assert``: a failed shape guard of an exported program is a user error."""
    if ctx.any_tracked(args, kwargs):
        raise ConvscopeError(
            f"torch._assert in {ctx.where()} checks the values of an input-dependent tensor, "
            "which the probes of the linear interpreter do not satisfy"
        )
    cond = args[0] if args else kwargs.get("condition")
    message = args[1] if len(args) > 1 else kwargs.get("message", "")
    if not isinstance(cond, torch.Tensor) and not cond and isinstance(message, str):
        match = _GUARD.match(message)
        if match:
            name, size = match.groups()
            raise ConvscopeError(
                f"the exported program was exported with a static batch size of {size} "
                f"({message.lower()} for a batch of {ctx.rows}); " + _BATCH_HINT.format(name=name)
            )
        if message.startswith("Guard failed:"):
            raise ConvscopeError(
                f"x0 does not fit the shapes the program was exported for ({message}); "
                "pass an x0 of the exported shape or export with dynamic_shapes for it"
            )
    return op(*args, **kwargs)


def _shape(ctx: PassContext, route: Route, op: Any, types: Any, args: Any, kwargs: Any) -> Any:
    """``Tensor.shape``: on a placeholder's example value (a fake tensor, read by
    ``torch.export.unflatten``'s input check), a static batch size that is not the pass's
    is refused before the check fails with a bare ``RuntimeError``."""
    t = args[0] if args else None
    if (
        isinstance(t, FakeTensor)
        and t.ndim > 0
        and isinstance(t.shape[0], int)
        and t.shape[0] != ctx.rows
    ):
        shape = tuple(t.shape)
        raise ConvscopeError(
            f"the exported program was exported with a static batch size of {shape[0]} "
            f"(its input has the fixed shape {shape}, the pass a batch of {ctx.rows}); "
            + _BATCH_HINT.format(name="x")
        )
    return op(*args, **kwargs)


def _as_is(ctx: PassContext, route: Route, op: Any, types: Any, args: Any, kwargs: Any) -> Any:
    return op(*args, **kwargs)


_HANDLERS: dict[Any, AtenHandler] = {op: _mapped(spec) for op, spec in _TABLE.items()}

ATEN: dict[Any, AtenHandler] = {
    **_HANDLERS,
    **{op.overloadpacket: _packet for op in _TABLE},
    torch._assert: _assert,
    T.shape.__get__: _shape,  # type: ignore[attr-defined]
    _aten._assert_tensor_metadata.default: _as_is,
}
"""Intercepted calls that exported programs make, by the op (``OpOverload``,
``OpOverloadPacket``, ``torch._assert``, the ``Tensor.shape`` getter): each handler
runs the call through the interceptor's ``route`` as its torch-level op."""
