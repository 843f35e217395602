"""Every rule of the interpreter's op tables against its definition (issue 11, "no op
that the interpreter lets through is wrong").

Each entry of ``rules.RULES`` and ``affine.HANDLERS`` is called directly, outside any
model, on a pass of ``ROWS`` rows (``x0`` and two random probes) with every bias source
off, so the probe rows hold the linear part ``A(x0) x`` alone:

- taylor mode: ``A(x0) x`` must be ``torch.func.jvp`` of the op at ``x0`` in the
  direction ``x`` (per sample), for every entry;
- freeze mode: the paper's definition: the ReLU mask, clamp pattern and max-pool
  selection (the derivative again), the ratio ``h(x0) / x0`` of a smooth unit, the
  statistics of ``x0`` in a norm, the frozen gate of a product (the smaller operand, or
  the softmax output), a softmax as a constant gate, attention as ``P0 v``;
- row 0 is the op's own output at ``x0``;
- an op that would mix the samples (along the batch dimension) is refused.

Cases are found by the op's name (``torch.relu``, ``Tensor.relu_`` and ``F.relu``
share one), so a new table entry without a case fails :func:`test_every_entry_has_a_case`.
Left out of the generic harness, with where they are tested instead:

- train-mode dropout (random: one mask for every row, checked by hand below) and
  alpha dropout in train mode (refused; also checked below);
- ``F.multi_head_attention_forward`` in freeze mode: checked against a hand-built
  ``P0 (x Wv) Wo`` in tests/test_linear_transformers.py (taylor is fuzzed here).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from convscope.errors import ConvscopeError
from convscope.linear import batchdim as bd
from convscope.linear.affine import HANDLERS
from convscope.linear.cache import DecisionCache
from convscope.linear.context import ALL_OFF, PassContext, op_name
from convscope.linear.rules import RULES

T = torch.Tensor
ROWS = 3
TOL = 1e-10

Build = Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]


@dataclass(frozen=True)
class Case:
    """How to call one op.

    Attributes:
        shapes: per-sample shapes of the tracked inputs.
        build: ``build(func, *tracked) -> (args, kwargs)``.
        freeze: the freeze-mode definition (a key of :data:`FREEZE`), ``"jvp"`` when it
            is the derivative, ``"refused"`` when the call must be refused.
        scale: inputs are ``scale * randn``.
    """

    shapes: tuple[tuple[int, ...], ...]
    build: Build
    freeze: str = "jvp"
    scale: float = 1.0
    refused: bool = False


def _x(*extra: Any, **kw: Any) -> Build:
    """``func(x, *extra, **kw)``."""
    return lambda func, x: ((x, *extra), dict(kw))


def _xy(*extra: Any, **kw: Any) -> Build:
    """``func(x, y, *extra, **kw)``, both tracked."""
    return lambda func, x, y: ((x, y, *extra), dict(kw))


def _const(value: T) -> Build:
    """``func(x, value)`` with a constant second operand."""
    return lambda func, x: ((x, value), {})


_G = torch.Generator().manual_seed(0)


def _c(*shape: int) -> T:
    return torch.randn(*shape, generator=_G, dtype=torch.float64)


S1 = ((3, 5),)  # per-sample shape of one tracked input
IMG = ((2, 6, 6),)

# -- the cases, by op name ------------------------------------------------------------------------

CASES: dict[str, Case] = {}


def _add(names: str, case: Case) -> None:
    for n in names.split():
        CASES[n] = case


# elementwise units
_add("relu", Case(S1, _x()))
_add("leaky_relu", Case(S1, _x(0.1)))
_add("prelu", Case(S1, _x(_c(3).abs())))
_add("hardtanh", Case(S1, _x(-0.5, 0.7)))
_add("relu6", Case(S1, _x(), scale=5.0))
_add("clamp", Case(S1, _x(-0.5, 0.5)))
_add("clamp_min", Case(S1, _x(-0.2)))
_add("clamp_max", Case(S1, _x(0.3)))
_add("threshold", Case(S1, _x(0.1, -2.0)))
_add(
    "sigmoid tanh hardsigmoid hardswish silu gelu elu selu celu mish softplus logsigmoid",
    Case(S1, _x(), freeze="ratio", scale=2.0),
)
# max-pools: the selected positions
_add("max_pool1d", Case(((2, 8),), _x(2)))
_add("max_pool2d", Case(IMG, _x(2)))
_add("max_pool3d", Case(((2, 4, 4, 4),), _x(2)))
_add("adaptive_max_pool1d", Case(((2, 8),), _x(3)))
_add("adaptive_max_pool2d", Case(IMG, _x(4)))
_add("adaptive_max_pool3d", Case(((2, 4, 4, 4),), _x(3)))
# norms
_W3, _B3 = _c(2).abs() + 0.5, _c(2)
_add(
    "batch_norm",
    Case(IMG, _x(_c(2), _c(2).abs() + 0.5, _W3, _B3, True), freeze="norm_channels"),
)
_add("instance_norm", Case(IMG, _x(weight=_W3, bias=_B3), freeze="norm_channels"))
_add("group_norm", Case(((4, 3, 3),), _x(2, _c(4).abs() + 0.5, _c(4)), freeze="norm_groups"))
_add("layer_norm", Case(S1, _x((5,), _c(5).abs() + 0.5, _c(5)), freeze="norm_last"))
_add("rms_norm", Case(S1, _x((5,), _c(5).abs() + 0.5, 1e-6), freeze="rms_last"))
_add("normalize", Case(S1, _x(2.0, -1), freeze="l2_last"))
# dropout in eval mode: the identity (train mode: below)
_add("dropout", Case(S1, _x(0.5, False)))
_add("dropout1d", Case(((2, 8),), _x(0.5, False)))
_add("dropout2d", Case(IMG, _x(0.5, False)))
_add("dropout3d", Case(((2, 4, 4, 4),), _x(0.5, False)))
_add("feature_dropout alpha_dropout feature_alpha_dropout", Case(S1, _x(0.5, False)))
# products and quotients
_add("mul", Case(((3, 5), (3, 1)), _xy(), freeze="gate_smaller"))
_add("rmul", Case(((3, 5), (3, 5)), _xy(), freeze="gate_second"))
_add("div", Case(((3, 5), (3, 1)), _xy(), freeze="div"))
_add("rdiv", Case(S1, _x(2.0), refused=True))
# contractions
_add("matmul", Case(((3, 4), (4, 2)), _xy(), freeze="frozen_second"))
_add("rmatmul", Case(((4, 2), (3, 4)), _xy(), freeze="frozen_first"))
_add("bmm", Case(((3, 4), (4, 2)), _xy(), freeze="frozen_second"))
_MM = _c(4, 3)
_add("mm", Case(((4,),), lambda f, x: ((x, _MM), {})))
_add(
    "einsum",
    Case(((3, 4), (4, 2)), lambda f, x, y: (("bij,bjk->bik", x, y), {}), freeze="frozen_second"),
)
_add("tensordot", Case(((3, 4),), lambda f, x, c=_c(4, 5): ((x, c), {"dims": 1})))
_add("inner", Case(((3, 4),), lambda f, x, c=_c(5, 4): ((x, c), {})))
_add("outer", Case(((),), lambda f, x, c=_c(3): ((x, c), {})))
_add("dot", Case(((),), lambda f, x, c=_c(ROWS): ((x, c), {}), refused=True))
_add(
    "scaled_dot_product_attention",
    Case(((2, 5, 4), (2, 6, 4), (2, 6, 3)), lambda f, q, k, v: ((q, k, v), {}), freeze="attention"),
)
_add("softmax", Case(S1, _x(-1), freeze="zero"))
_add("log_softmax", Case(S1, _x(-1), freeze="identity"))
_add("max min", Case(S1, _x(1)))
_add("amax amin", Case(S1, _x(1)))
_add("sort", Case(S1, _x(1, True)))
_add("topk", Case(S1, _x(2, 2)))
# affine handlers: the linear part is the derivative in both modes
_add("conv1d", Case(((2, 8),), _x(_c(3, 2, 3), _c(3), padding=1)))
_add("conv2d", Case(IMG, _x(_c(3, 2, 3, 3), _c(3), padding=1)))
_add("conv3d", Case(((2, 4, 4, 4),), _x(_c(3, 2, 3, 3, 3), _c(3))))
_add("conv_transpose1d", Case(((2, 8),), _x(_c(2, 3, 3), _c(3), stride=2)))
_add("conv_transpose2d", Case(IMG, _x(_c(2, 3, 3, 3), _c(3), stride=2)))
_add("conv_transpose3d", Case(((2, 3, 3, 3),), _x(_c(2, 3, 2, 2, 2), _c(3))))
_add("linear", Case(S1, _x(_c(4, 5), _c(4))))
_add("add sub", Case(((3, 5),), _const(_c(5))))
_add("radd rsub", Case(((3, 5),), _const(_c(3, 5))))
_add(
    "cat concat concatenate",
    Case(
        ((3, 5), (3, 5)),
        lambda f, x, y, c=_c(1, 2, 5): (([x, c.expand(x.shape[0], -1, -1), y], 1), {}),
    ),
)
_add("stack", Case(((3, 5), (3, 5)), lambda f, x, y: (([x, y],), {"dim": 2})))
_add(
    "hstack",
    Case(((3, 5),), lambda f, x, c=_c(1, 2, 5): (([x, c.expand(x.shape[0], -1, -1)],), {})),
)
_add("dstack", Case(((3, 5),), lambda f, x: (([x, x],), {})))
_add("vstack", Case(((3, 5),), lambda f, x: (([x, x],), {}), refused=True))
_add("sum mean", Case(((3, 5),), _x((1, 2))))
_add("flip", Case(((3, 5),), _x([2])))
_add("fliplr", Case(((3, 5),), _x()))
_add("flipud", Case(((3, 5),), _x(), refused=True))
_add("roll", Case(((3, 5),), _x(2, 1)))
_add("rot90", Case(((3, 5),), _x(1, [1, 2])))
_add("permute", Case(((3, 5),), _x((0, 2, 1))))
_add("movedim", Case(((3, 5),), _x(0, 2)))
_add("transpose", Case(((3, 5),), _x(0, 1)))
_add("t", Case(((5,),), _x()))
_add("T mT", Case(((5,),), _x()))
_add("pad", Case(((3, 5),), _x((1, 2), value=0.5)))
_add("setitem", Case(((3, 5),), lambda f, x: ((x, (slice(None), 1), 0.0), {})))
_add("copy_", Case(((3, 5),), lambda f, x: ((torch.zeros_like(x), x), {})))
_add("fill_", Case(((3, 5),), lambda f, x: ((x, 0.0), {})))
_add(
    "multi_head_attention_forward",
    Case(((2, 6),), lambda f, x: _mha_args(x), freeze="skip"),
)

_MHA_W, _MHA_B, _MHA_WO, _MHA_BO = _c(18, 6), _c(18), _c(6, 6), _c(6)


def _mha_args(x: T) -> tuple[tuple[Any, ...], dict[str, Any]]:
    q = x.transpose(0, 1)  # (L, N, E): the samples in dimension 1
    args = (q, q, q, 6, 2, _MHA_W, _MHA_B, None, None, False, 0.0, _MHA_WO, _MHA_BO)
    return args, {"training": False, "need_weights": False}


_ALIASES = {
    "__add__": "add", "__iadd__": "add", "add_": "add", "__radd__": "radd",
    "__sub__": "sub", "__isub__": "sub", "sub_": "sub", "subtract": "sub",
    "subtract_": "sub", "__rsub__": "rsub",
    "__mul__": "mul", "__imul__": "mul", "mul_": "mul", "multiply": "mul",
    "multiply_": "mul", "__rmul__": "rmul",
    "__truediv__": "div", "__itruediv__": "div", "div_": "div", "divide": "div",
    "divide_": "div", "true_divide": "div", "true_divide_": "div",
    "__rtruediv__": "rdiv", "__rdiv__": "rdiv",
    "__matmul__": "matmul", "__rmatmul__": "rmatmul", "spmm": "mm",
    "__setitem__": "setitem", "clip": "clamp", "clip_": "clamp",
    "swapaxes": "transpose", "swapdims": "transpose", "transpose_": "transpose",
    "moveaxis": "movedim", "t_": "t",
}  # fmt: skip


def _name(func: Callable[..., Any]) -> str:
    full = op_name(func)
    parts = full.split(".")
    short = parts[-2] if parts[-1] == "__get__" else parts[-1]
    if short in _ALIASES:
        return _ALIASES[short]
    short = short.lstrip("_") if not short.startswith("__") else short
    for suffix in ("_with_indices",):
        short = short.removesuffix(suffix)
    if short in CASES or short in ("copy_", "fill_"):
        return short
    return short.removesuffix("_")


ENTRIES = sorted(
    {**HANDLERS, **RULES}.items(), key=lambda kv: op_name(kv[0])
)  # every op of the two tables


def test_every_entry_has_a_case() -> None:
    missing = sorted(op_name(f) for f, _ in ENTRIES if _name(f) not in CASES)
    assert not missing, missing


# -- the harness ---------------------------------------------------------------------------------


def _inputs(case: Case, seed: int) -> list[T]:
    gen = torch.Generator().manual_seed(seed)
    return [
        case.scale * torch.randn(ROWS, *s, generator=gen, dtype=torch.float64) for s in case.shapes
    ]


def _main(out: Any, args: tuple[Any, ...]) -> T:
    """The tensor output of a call (the values of ``max``, the target of ``x[i] = v``,
    the attention output of ``multi_head_attention_forward``)."""
    if out is None:
        return args[0]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _run(
    func: Callable[..., Any], handler: Any, case: Case, mode: str, xs: list[T]
) -> tuple[T, bd.Layout]:
    out, layout, _ = _pass(func, handler, case, mode, xs)
    return out, layout


def _pass(
    func: Callable[..., Any],
    handler: Any,
    case: Case,
    mode: str,
    xs: list[T],
    *,
    record: DecisionCache | None = None,
    recall: DecisionCache | None = None,
) -> tuple[T, bd.Layout, PassContext]:
    """The handler on a pass of ``xs``'s rows: with ``x0`` as row 0 (recording into
    ``record`` if given), or, with ``recall``, a pass of probes alone."""
    rows = xs[0].shape[0]
    codes = torch.full((ROWS - 1,), ALL_OFF, dtype=torch.long)
    ctx = PassContext(rows, mode, codes, record=record, recall=recall)  # type: ignore[arg-type]
    xs = [x.clone() for x in xs]
    for x in xs:
        ctx.track(x)
    args, kwargs = case.build(func, *xs)
    if _name(func) == "multi_head_attention_forward":
        ctx.track(args[0], None, bd.Layout(1))
    with torch.no_grad():
        out = _main(handler(ctx, func, args, kwargs), args)
    assert ctx.is_tracked(out)
    return out, bd.layout_of(ctx, out), ctx


def _plain(func: Callable[..., Any], case: Case, *xs: T) -> T:
    args, kwargs = case.build(func, *(x.clone() for x in xs))
    return _main(func(*args, **kwargs), args)


def _jvp_rows(func: Callable[..., Any], case: Case, xs: list[T]) -> tuple[T, list[T]]:
    """``f(x0)`` and ``J(x0) x_i`` for every probe ``i``, one sample at a time."""
    x0 = [x[:1] for x in xs]
    f0 = _plain(func, case, *x0)
    tangents = []
    for i in range(1, ROWS):  # on the math kernel: the CPU flash attention has no jvp
        with sdpa_kernel([SDPBackend.MATH]):
            _, t = torch.func.jvp(
                lambda *ts: _plain(func, case, *ts), tuple(x0), tuple(x[i : i + 1] for x in xs)
            )
        tangents.append(t)
    return f0, tangents


def _check_rows(out: T, layout: bd.Layout, f0: T, expected: list[T]) -> None:
    oc = bd.canon(out, layout, ROWS)
    ref0 = bd.canon(f0, layout, 1)
    scale = float(ref0.abs().max()) + 1e-30
    assert float((oc[:1] - ref0).abs().max()) < 1e-12 * max(scale, 1.0)  # row 0 is f(x0)
    for i, e in enumerate(expected, start=1):
        ec = bd.canon(e, layout, 1)
        err = float((oc[i : i + 1] - ec).abs().max())
        assert err < TOL * max(float(ec.abs().max()), 1.0), (i, err)


# freeze-mode definitions: (func, case, x0 inputs (1, ...), probe inputs (1, ...)) -> A(x0) x


def _ratio(func: Callable[..., Any], case: Case, x0: list[T], xi: list[T]) -> T:
    return xi[0] * (_plain(func, case, x0[0]) / x0[0])


def _freeze_norm(func: Callable[..., Any], case: Case, x0: list[T], xi: list[T]) -> T:
    """``x * weight / std(x0)`` over the norm's own statistics (the mean is a constant)."""
    name = _name(func)
    a, x = x0[0], xi[0]
    args, kwargs = case.build(func, a)
    if name == "batch_norm":
        dims, weight, eps = (2, 3), args[3].view(1, -1, 1, 1), 1e-5
    elif name == "instance_norm":
        dims, weight, eps = (2, 3), kwargs["weight"].view(1, -1, 1, 1), 1e-5
    elif name == "group_norm":
        g = args[1]
        a, x = a.reshape(1, g, -1), x.reshape(1, g, -1)
        dims, weight, eps = (2,), args[2].view(1, -1, 1, 1), 1e-5
    elif name == "layer_norm":
        dims, weight, eps = (-1,), args[2], 1e-5
    else:  # rms_norm: no centring at all
        r = (a.square().mean(-1, keepdim=True) + args[3]).rsqrt()
        return x * r * args[2]
    var = a.var(dims, unbiased=False, keepdim=True)
    return (x * (var + eps).rsqrt()).reshape(xi[0].shape) * weight


def _gate(which: str) -> Callable[..., T]:
    def define(func: Callable[..., Any], case: Case, x0: list[T], xi: list[T]) -> T:
        a0, b0 = x0
        a, b = xi
        freeze_a = which == "first" or (which == "smaller" and a0.numel() < b0.numel())
        return _plain(func, case, a0, b) if freeze_a else _plain(func, case, a, b0)

    return define


def _div(func: Callable[..., Any], case: Case, x0: list[T], xi: list[T]) -> T:
    return xi[0] / x0[1]


def _attention(func: Callable[..., Any], case: Case, x0: list[T], xi: list[T]) -> T:
    q0, k0, _ = x0
    p0 = torch.softmax(q0 @ k0.transpose(-2, -1) / q0.shape[-1] ** 0.5, -1)
    return p0 @ xi[2]


FREEZE: dict[str, Callable[..., T]] = {
    "ratio": _ratio,
    "norm_channels": _freeze_norm,
    "norm_groups": _freeze_norm,
    "norm_last": _freeze_norm,
    "rms_last": _freeze_norm,
    "gate_smaller": _gate("smaller"),
    "gate_second": _gate("second"),
    "frozen_second": _gate("second"),
    "frozen_first": _gate("first"),
    "div": _div,
    "l2_last": lambda func, case, x0, xi: xi[0] / x0[0].norm(2, -1, keepdim=True),
    "attention": _attention,
    "zero": lambda func, case, x0, xi: torch.zeros_like(_plain(func, case, *x0)),
    "identity": lambda func, case, x0, xi: xi[0],
}


def _ids(entries: list[tuple[Any, Any]]) -> list[str]:
    return [op_name(f) for f, _ in entries]


@pytest.mark.parametrize(("func", "handler"), ENTRIES, ids=_ids(ENTRIES))
@pytest.mark.parametrize("mode", ["taylor", "freeze"])
def test_rule_matches_its_definition(func: Callable[..., Any], handler: Any, mode: str) -> None:
    case = CASES[_name(func)]
    xs = _inputs(case, seed=zlib.crc32(op_name(func).encode()) % 1000)
    if case.refused:
        with pytest.raises(ConvscopeError):
            _run(func, handler, case, mode, xs)
        return
    if mode == "freeze" and case.freeze == "skip":
        pytest.skip("freeze definition checked by hand in test_linear_transformers.py")
    out, layout = _run(func, handler, case, mode, xs)
    f0, tangents = _jvp_rows(func, case, xs)
    if mode == "taylor" or case.freeze == "jvp":
        expected = tangents
    else:
        define = FREEZE[case.freeze]
        x0 = [x[:1] for x in xs]
        expected = [define(func, case, x0, [x[i : i + 1] for x in xs]) for i in range(1, ROWS)]
    _check_rows(out, layout, f0, expected)


@pytest.mark.parametrize(("func", "handler"), ENTRIES, ids=_ids(ENTRIES))
@pytest.mark.parametrize("mode", ["taylor", "freeze"])
def test_rule_gives_the_probes_the_same_from_the_decision_cache(
    func: Callable[..., Any], handler: Any, mode: str
) -> None:
    """A pass of the probes alone, with what the rule read from ``x0`` given back from
    the cache a pass with ``x0`` recorded, computes the same probe rows; every recorded
    value is used, and none comes from the probes (the probes differ from ``x0``)."""
    case = CASES[_name(func)]
    if case.refused:
        return
    xs = _inputs(case, seed=zlib.crc32(op_name(func).encode()) % 1000)
    cache = DecisionCache(1 << 30)
    full, layout, first = _pass(func, handler, case, mode, xs, record=cache)
    assert cache.usable
    cache.sources = tuple(first.sources)  # what the interpreter keeps of its first pass
    probes, layout_p, ctx = _pass(func, handler, case, mode, [x[1:] for x in xs], recall=cache)
    assert ctx.offset == 0 and layout_p == layout and ctx.sources == first.sources
    assert ctx._recall is not None and ctx._recall.next == len(cache.values)  # all used
    expected = bd.canon(full, layout, ROWS)[1:]
    got = bd.canon(probes, layout, ROWS - 1)
    assert got.shape == expected.shape
    err = float((got - expected).abs().max()) if got.numel() else 0.0
    assert err <= 1e-13 * max(1.0, float(expected.abs().max())), err
    # a second probes-only pass reads the cache from the start again
    again, _, _ = _pass(func, handler, case, mode, [x[1:] for x in xs], recall=cache)
    assert torch.equal(again, probes)


# -- by hand: what the generic harness cannot do ---------------------------------------------------


def test_train_mode_dropout_is_one_mask_for_every_row() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, 4, 5, generator=gen, dtype=torch.float64)
    ctx = PassContext(ROWS, "freeze", torch.full((ROWS - 1,), ALL_OFF))
    ctx.track(x)
    out = RULES[F.dropout](ctx, F.dropout, (x, 0.5, True), {})
    kept = out != 0
    assert torch.equal(kept, kept[:1].expand_as(kept))  # the same positions dropped
    torch.testing.assert_close(out[kept], (2 * x)[kept])


def test_train_mode_alpha_dropout_is_refused() -> None:
    x = torch.randn(ROWS, 4, dtype=torch.float64)
    ctx = PassContext(ROWS, "freeze", torch.full((ROWS - 1,), ALL_OFF))
    ctx.track(x)
    with pytest.raises(ConvscopeError, match="eval mode"):
        RULES[F.alpha_dropout](ctx, F.alpha_dropout, (x, 0.5, True), {})


def test_normalize_with_another_p_is_the_derivative() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(ROWS, 4, 5, generator=gen, dtype=torch.float64)
    case = Case(((4, 5),), _x(3.0, 1))
    out, layout = _run(F.normalize, RULES[F.normalize], case, "taylor", [x])
    f0, tangents = _jvp_rows(F.normalize, case, [x])
    _check_rows(out, layout, f0, tangents)
