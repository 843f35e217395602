"""Property-based tests (Hypothesis) of the linear interpreter's rules (issue 17 item 2).

Each test draws an op's shapes and parameters (strides, paddings, dilations, groups,
random weights, biases, running statistics, eps ...) and a seed for the data, wraps the
op in a small float64 model, and checks ``LinearInterpreter`` against an outside
reference:

- taylor mode: ``li.linear(dx)`` is ``torch.func.jvp`` and ``li.transpose(dy)`` is
  ``torch.func.vjp`` at ``x0`` (to 1e-10);
- freeze mode: ``li.output == f(x0)``, exactness ``F x0 + r == f(x0)``, ``li(x) ==
  F x + r``, the adjoint identity ``<F dx, dy> == <dx, F^T dy>``, and the rule's own
  definition computed by hand (a ReLU's mask, a max-pool's argmax routing, a smooth
  unit's ratio ``h(x0) / x0``, a norm's frozen statistics, attention's ``P0 v``);
- an affine op (convolution, linear, eval batch norm, average pools, interpolation,
  pixel shuffle) is its own linear system: ``li(x) == f(x)`` for any ``x``, in both
  modes, and ``F x`` is the op with its biases removed;
- the signal does not vanish (the compared values are not all zero).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from convscope.linear import LinearInterpreter

pytestmark = pytest.mark.usefixtures("one_thread")

T = torch.Tensor
DT = torch.float64
TOL = 1e-10
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)
seeds = st.integers(0, 2**31 - 1)


class Fn(nn.Module):
    """``fn(x)`` as a module (holding ``params``, so they are the model's own)."""

    def __init__(self, fn: Callable[..., T], **params: T) -> None:
        super().__init__()
        for k, v in params.items():
            self.register_buffer(k, v)
        self.fn = fn

    def forward(self, x: T) -> T:
        return self.fn(self, x)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> T:
    return scale * torch.randn(*shape, generator=g, dtype=DT)


def _close(a: T, b: T, tol: float = TOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(float(b.abs().max()), 1.0) if b.numel() else 1.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= tol * scale, err


def _nonzero(t: T) -> None:
    assert float(t.detach().abs().max()) > 1e-6, "the signal vanished"


def _probes(g: torch.Generator, x0: T, n: int = 2) -> T:
    return _randn(g, n, *x0.shape[1:])


def check_taylor(model: nn.Module, x0: T, g: torch.Generator) -> LinearInterpreter:
    """li.output, li.linear against jvp, li.transpose against vjp, rows = columns^T."""
    model.eval()
    li = LinearInterpreter(model, x0, mode="taylor", cache="off")
    with torch.no_grad():
        f0 = model(x0)
    _close(li.output, f0)
    dx = _probes(g, x0)
    dy = _randn(g, 2, *f0.shape[1:])
    base = x0.expand_as(dx).clone()
    with sdpa_kernel([SDPBackend.MATH]):
        jv = torch.func.jvp(model, (base,), (dx,))[1]
        pullback = torch.func.vjp(model, base)[1]
        vj = pullback(dy)[0]
    got = li.linear(dx)
    _nonzero(jv)
    _close(got, jv.detach())
    _close(li.transpose(dy), vj.detach())
    _close(li(dx), li.residual + got)
    return li


def check_freeze(
    model: nn.Module, x0: T, g: torch.Generator, *, allow_zero: bool = False
) -> tuple[LinearInterpreter, T, T]:
    """Exactness, affine consistency and the adjoint identity; returns li, dx, F dx."""
    model.eval()
    li = LinearInterpreter(model, x0, mode="freeze", cache="off")
    with torch.no_grad():
        f0 = model(x0)
    _close(li.output, f0)
    _close(li.linear(x0) + li.residual, f0)  # F x0 + r == f(x0)
    dx = _probes(g, x0)
    fdx = li.linear(dx)
    if not allow_zero:
        _nonzero(fdx)
    _close(li(dx), fdx + li.residual)
    dy = _randn(g, 2, *f0.shape[1:])
    ftdy = li.transpose(dy)
    lhs = (fdx * dy).flatten(1).sum(1)
    rhs = (dx * ftdy).flatten(1).sum(1)
    _close(lhs, rhs)
    return li, dx, fdx


def check_affine(model: nn.Module, x0: T, g: torch.Generator, linear_part: nn.Module) -> None:
    """An affine op: F x + r is f(x) for every x, in both modes, and F is ``linear_part``."""
    model.eval()
    for mode in ("freeze", "taylor"):
        li = LinearInterpreter(model, x0, mode=mode, cache="off")  # type: ignore[arg-type]
        x1 = _probes(g, x0, 3)
        with torch.no_grad():
            f1 = model(x1)
            lin = linear_part(x1)
        _nonzero(f1)
        _nonzero(lin)
        _close(li(x1), f1)
        _close(li.linear(x1), lin)
        with torch.no_grad():
            _close(li.residual, model(torch.zeros_like(x0)))
    check_taylor(model, x0, g)
    check_freeze(model, x0, g)


# -- convolutions and linear layers ---------------------------------------------------------------


@st.composite
def conv_nd(draw: st.DrawFn, nd: int) -> dict[str, Any]:
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    # at most the window's extent - 1, so the first window reads the input
    pad = tuple(min(draw(st.integers(0, 2)), dil[i] * (k[i] - 1)) for i in range(nd))
    # every output has at least one position, and the first window has a tap on the input:
    # its taps sit at -pad, -pad + dil, ..., so the first one at or past 0 is (-pad) mod dil
    # (with size 1, dilation 2 and padding 1 both taps would read padding)
    size = tuple(
        draw(st.integers(max(1, dil[i] * (k[i] - 1) + 1 - 2 * pad[i], -pad[i] % dil[i] + 1), 7))
        for i in range(nd)
    )
    mode = draw(st.sampled_from(["zeros", "reflect", "circular", "replicate"]))
    if mode == "reflect" and any(p >= s for p, s in zip(pad, size, strict=True)):
        mode = "zeros"
    if mode == "circular" and any(p > s for p, s in zip(pad, size, strict=True)):
        mode = "zeros"
    return {
        "cin": cin, "cout": cout, "k": k, "stride": stride, "dil": dil, "pad": pad,
        "groups": groups, "size": size, "mode": mode, "seed": draw(seeds),
    }  # fmt: skip


def _conv_module(p: dict[str, Any], nd: int, g: torch.Generator) -> tuple[nn.Module, nn.Module]:
    cls = nn.Conv1d if nd == 1 else nn.Conv2d
    conv = cls(
        p["cin"], p["cout"], p["k"], stride=p["stride"], padding=p["pad"], dilation=p["dil"],
        groups=p["groups"], padding_mode=p["mode"], dtype=DT,
    )  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(_randn(g, *conv.weight.shape))
        assert conv.bias is not None
        conv.bias.copy_(_randn(g, *conv.bias.shape) + 0.5)
    nobias = cls(
        p["cin"], p["cout"], p["k"], stride=p["stride"], padding=p["pad"], dilation=p["dil"],
        groups=p["groups"], padding_mode=p["mode"], bias=False, dtype=DT,
    )  # fmt: skip
    with torch.no_grad():
        nobias.weight.copy_(conv.weight)
    return conv, nobias


@pytest.mark.parametrize("nd", [1, 2])
@SETTINGS
@given(data=st.data())
def test_conv_is_its_own_linear_system(nd: int, data: st.DataObject) -> None:
    p = data.draw(conv_nd(nd))
    g = _gen(p["seed"])
    conv, nobias = _conv_module(p, nd, g)
    check_affine(conv, _randn(g, 1, p["cin"], *p["size"]), g, nobias)


@SETTINGS
@given(
    st.integers(1, 2), st.integers(1, 2), st.integers(1, 2), st.integers(1, 3),
    st.integers(1, 3), st.integers(0, 1), st.integers(1, 2), st.integers(0, 2), seeds,
)  # fmt: skip
def test_conv_transpose2d_is_its_own_linear_system(
    groups: int, ci: int, co: int, k: int, stride: int, pad: int, dil: int, outpad: int, seed: int
) -> None:
    outpad = min(outpad, max(stride, dil) - 1)
    g = _gen(seed)
    cin, cout = groups * ci, groups * co
    w = _randn(g, cin, cout // groups, k, k)
    b = _randn(g, cout) + 0.5
    size = 3

    def tconv(m: Fn, x: T, bias: bool = True) -> T:
        return F.conv_transpose2d(
            x, w, b if bias else None, stride, pad, outpad, groups, dil
        )  # fmt: skip

    out = (size - 1) * stride - 2 * pad + dil * (k - 1) + outpad + 1
    if out < 1:
        pad = 0
    model = Fn(tconv, w=w, b=b)
    linear_part = Fn(lambda m, x: tconv(m, x, bias=False), w=w, b=b)
    check_affine(model, _randn(g, 1, cin, size, size + 1), g, linear_part)


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), seeds)
def test_linear_is_its_own_linear_system(din: int, dout: int, lead: int, seed: int) -> None:
    g = _gen(seed)
    fc = nn.Linear(din, dout, dtype=DT)
    with torch.no_grad():
        fc.weight.copy_(_randn(g, dout, din))
        fc.bias.copy_(_randn(g, dout) + 0.5)
    check_affine(fc, _randn(g, 1, lead, din), g, Fn(lambda m, x: x @ m.w.T, w=fc.weight.detach()))


# -- norms -------------------------------------------------------------------------------------


def _affine_params(g: torch.Generator, c: int) -> tuple[T, T]:
    """A weight away from 1 (and of both signs) and a bias away from 0."""
    w = _randn(g, c, scale=0.7) + 1.3 * torch.sign(_randn(g, c))
    return w, _randn(g, c) + 0.5


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.floats(1e-5, 0.5), seeds)
def test_eval_batch_norm_is_its_own_linear_system(c: int, h: int, eps: float, seed: int) -> None:
    g = _gen(seed)
    bn = nn.BatchNorm2d(c, eps=eps, dtype=DT)
    w, b = _affine_params(g, c)
    mean, var = _randn(g, c), torch.rand(c, generator=g, dtype=DT) * 2 + 0.1
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    scale = (w / (var + eps).sqrt()).view(1, c, 1, 1)
    check_affine(bn, _randn(g, 1, c, h, h + 1), g, Fn(lambda m, x: x * m.s, s=scale))
    li = LinearInterpreter(bn.eval(), _randn(g, 1, c, h, h + 1), mode="freeze")
    _close(li.residual.mean((0, 2, 3)), b - mean * scale.flatten())


@st.composite
def norm_case(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["layer", "group"]))
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 2))
    # at least 3 values normalised together (two always standardise to about +-1)
    h, w = draw(st.integers(1, 4)), draw(st.integers(3, 4))
    return {"kind": kind, "groups": groups, "c": c, "h": h, "w": w,
            "eps": draw(st.floats(1e-5, 0.5)), "seed": draw(seeds)}  # fmt: skip


@SETTINGS
@given(norm_case())
def test_layer_and_group_norm(p: dict[str, Any]) -> None:
    g = _gen(p["seed"])
    c, h, w, eps = p["c"], p["h"], p["w"], p["eps"]
    if p["kind"] == "layer":
        shape = (c, h, w)[draw_tail(p) :]
        weight, bias = (
            t.reshape(shape) for t in _affine_params(g, int(torch.tensor(shape).prod()))
        )
        model = Fn(lambda m, x: F.layer_norm(x, shape, m.w, m.b, eps), w=weight, b=bias)
        dims: tuple[int, ...] = tuple(range(-len(shape), 0))
    else:
        weight, bias = _affine_params(g, c)
        gr = p["groups"]
        model = Fn(lambda m, x: F.group_norm(x, gr, m.w, m.b, eps), w=weight, b=bias)
    x0 = _randn(g, 1, c, h, w, scale=2.0) + 0.7
    check_taylor(model, x0, g)
    li, dx, fdx = check_freeze(model, x0, g)
    # the definition: x * weight / sqrt(var(x0) + eps), the statistics of x0 frozen
    if p["kind"] == "layer":
        var = x0.var(dims, unbiased=False, keepdim=True)
        expected = dx * (var + eps).rsqrt() * weight
    else:
        gr = p["groups"]
        var = x0.reshape(1, gr, -1).var(2, unbiased=False, keepdim=True)
        expected = (dx.reshape(2, gr, -1) * (var + eps).rsqrt()).reshape(dx.shape)
        expected = expected * weight.view(1, c, 1, 1)
    _close(fdx, expected)


def draw_tail(p: dict[str, Any]) -> int:
    """How many leading dimensions layer norm leaves out (0, 1 or 2), from the seed."""
    return p["seed"] % 3


# -- elementwise units --------------------------------------------------------------------------

PIECEWISE = {
    "relu": (F.relu, lambda x0: (x0 > 0).to(DT)),
    "leaky_relu": (
        lambda x: F.leaky_relu(x, 0.13),
        lambda x0: torch.where(x0 > 0, torch.ones_like(x0), torch.full_like(x0, 0.13)),
    ),
}
SMOOTH: dict[str, Callable[[T], T]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


@SETTINGS
@given(st.sampled_from(sorted(PIECEWISE)), st.integers(1, 3), st.integers(1, 5), seeds)
def test_piecewise_units_freeze_their_mask(name: str, c: int, h: int, seed: int) -> None:
    g = _gen(seed)
    fn, slope = PIECEWISE[name]
    x0 = _randn(g, 1, c, h, 3)
    model = Fn(lambda m, x: fn(x))
    check_taylor(model, x0, g)
    li, dx, fdx = check_freeze(model, x0, g, allow_zero=bool((x0 <= 0).all()))
    _close(fdx, slope(x0) * dx)  # the mask of x0, computed by hand
    _close(li.residual, torch.zeros_like(x0))


@SETTINGS
@given(st.sampled_from(sorted(SMOOTH)), st.integers(1, 3), st.integers(1, 5), seeds)
def test_smooth_units_freeze_their_ratio(name: str, c: int, h: int, seed: int) -> None:
    g = _gen(seed)
    fn = SMOOTH[name]
    x0 = _randn(g, 1, c, h, 3, scale=2.0)
    model = Fn(lambda m, x: fn(x))
    check_taylor(model, x0, g)
    li, dx, fdx = check_freeze(model, x0, g)
    _close(fdx, fn(x0) / x0 * dx)  # h(x0) / x0, the ratio of x0
    _close(li.residual, torch.zeros_like(x0), tol=1e-9)


# -- pools and resampling -----------------------------------------------------------------------


@st.composite
def pool_case(draw: st.DrawFn) -> dict[str, Any]:
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k // 2))
    h = draw(st.integers(k, 7))
    w = draw(st.integers(k, 7))
    return {"k": k, "stride": stride, "pad": pad, "h": h, "w": w, "c": draw(st.integers(1, 3)),
            "ceil": draw(st.booleans()), "dil": draw(st.integers(1, 2)), "seed": draw(seeds),
            "count_include_pad": draw(st.booleans())}  # fmt: skip


@SETTINGS
@given(pool_case())
def test_max_pool_routes_by_the_argmax_of_x0(p: dict[str, Any]) -> None:
    g = _gen(p["seed"])
    k, s, pad, dil = p["k"], p["stride"], p["pad"], p["dil"]
    if (p["h"] + 2 * pad - dil * (k - 1) - 1) < 0 or (p["w"] + 2 * pad - dil * (k - 1) - 1) < 0:
        dil = 1

    def pool(x: T, **kw: Any) -> Any:
        return F.max_pool2d(x, k, s, pad, dil, ceil_mode=p["ceil"], **kw)

    x0 = _randn(g, 1, p["c"], p["h"], p["w"])
    model = Fn(lambda m, x: pool(x))
    check_taylor(model, x0, g)
    li, dx, fdx = check_freeze(model, x0, g)
    _, idx = pool(x0, return_indices=True)
    routed = dx.flatten(2).gather(2, idx.flatten(2).expand(2, -1, -1)).view(fdx.shape)
    _close(fdx, routed)
    _close(li.residual, torch.zeros_like(li.residual))


@SETTINGS
@given(pool_case())
def test_avg_pool_is_its_own_linear_system(p: dict[str, Any]) -> None:
    g = _gen(p["seed"])
    k, s, pad = p["k"], p["stride"], p["pad"]
    c, ceil, cip = p["c"], p["ceil"], p["count_include_pad"]
    bias = _randn(g, 1, c, 1, 1) + 0.5

    def pool(x: T) -> T:
        return F.avg_pool2d(x, k, s, pad, ceil_mode=ceil, count_include_pad=cip)

    model = Fn(lambda m, x: pool(x) + m.b, b=bias)
    check_affine(model, _randn(g, 1, c, p["h"], p["w"]), g, Fn(lambda m, x: pool(x)))


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7), st.integers(1, 4),
       st.integers(1, 4), seeds)  # fmt: skip
def test_adaptive_avg_pool_is_its_own_linear_system(
    c: int, h: int, w: int, oh: int, ow: int, seed: int
) -> None:
    g = _gen(seed)
    bias = _randn(g, 1, c, 1, 1) + 0.5
    model = Fn(lambda m, x: F.adaptive_avg_pool2d(x, (oh, ow)) + m.b, b=bias)
    lin = Fn(lambda m, x: F.adaptive_avg_pool2d(x, (oh, ow)))
    check_affine(model, _randn(g, 1, c, h, w), g, lin)


@SETTINGS
@given(
    st.sampled_from(["nearest", "bilinear", "bicubic", "nearest-exact", "area"]),
    st.booleans(), st.integers(1, 4), st.integers(2, 5), st.integers(1, 7), seeds,
)  # fmt: skip
def test_interpolate_is_its_own_linear_system(
    mode: str, align: bool, h: int, w: int, out: int, seed: int
) -> None:
    g = _gen(seed)
    kw: dict[str, Any] = {"align_corners": align} if mode in ("bilinear", "bicubic") else {}
    size = (out, out + 1)
    bias = _randn(g, 1, 2, 1, 1) + 0.5
    model = Fn(lambda m, x: F.interpolate(x, size=size, mode=mode, **kw) + m.b, b=bias)
    lin = Fn(lambda m, x: F.interpolate(x, size=size, mode=mode, **kw))
    check_affine(model, _randn(g, 1, 2, h, w), g, lin)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.booleans(), seeds)
def test_pixel_shuffle_and_upsample_are_their_own_linear_systems(
    r: int, c: int, h: int, bilinear: bool, seed: int
) -> None:
    g = _gen(seed)
    up = nn.Upsample(scale_factor=r, mode="bilinear" if bilinear else "nearest")
    model = nn.Sequential(nn.PixelShuffle(r), up)
    check_affine(model, _randn(g, 1, c * r * r, h, h + 1), g, model)


# -- two streams: residual add, products, softmax, attention -----------------------------------


def _conv(g: torch.Generator, cin: int, cout: int, k: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, dtype=DT)
    with torch.no_grad():
        conv.weight.copy_(_randn(g, *conv.weight.shape, scale=0.5))
        assert conv.bias is not None
        conv.bias.copy_(_randn(g, cout, scale=0.5))
    return conv


class Residual(nn.Module):
    def __init__(self, g: torch.Generator, c: int, unit: str) -> None:
        super().__init__()
        self.a, self.b = _conv(g, c, c, 3), _conv(g, c, c, 1)
        self.unit = unit

    def forward(self, x: T) -> T:
        y = self.a(x)
        y = F.relu(y) if self.unit == "relu" else F.silu(y)
        return x + self.b(y)


@SETTINGS
@given(st.integers(1, 3), st.integers(2, 5), st.sampled_from(["relu", "silu"]), seeds)
def test_residual_add(c: int, h: int, unit: str, seed: int) -> None:
    g = _gen(seed)
    model = Residual(g, c, unit)
    x0 = _randn(g, 1, c, h, h)
    check_taylor(model, x0, g)
    li, dx, fdx = check_freeze(model, x0, g)
    # freeze: x + b_lin(D a_lin(x)), D the mask (relu) or ratio (silu) of a(x0)
    with torch.no_grad():
        z0 = model.a(x0)
        d = (z0 > 0).to(DT) if unit == "relu" else F.silu(z0) / z0
        a_lin = F.conv2d(dx, model.a.weight, None, padding=1)
        expected = dx + F.conv2d(d * a_lin, model.b.weight, None)
    _close(fdx, expected)


class Product(nn.Module):
    """``a(x) * b(x)``, ``b`` of the same size or pooled to one value per channel (a gate)."""

    def __init__(self, g: torch.Generator, c: int, gate: bool) -> None:
        super().__init__()
        self.a, self.b = _conv(g, c, c, 3), _conv(g, c, c, 1)
        self.gate = gate

    def forward(self, x: T) -> T:
        b = self.b(x)
        if self.gate:
            b = torch.sigmoid(b.mean((2, 3), keepdim=True))
        return self.a(x) * b


@SETTINGS
@given(st.integers(1, 3), st.integers(2, 5), st.booleans(), seeds)
def test_product_of_two_streams(c: int, h: int, gate: bool, seed: int) -> None:
    g = _gen(seed)
    model = Product(g, c, gate)
    x0 = _randn(g, 1, c, h, h)
    check_taylor(model, x0, g)
    li, dx, fdx = check_freeze(model, x0, g)
    if gate:  # the smaller operand (the gate) is frozen at x0
        with torch.no_grad():
            gate0 = torch.sigmoid(model.b(x0).mean((2, 3), keepdim=True))
            expected = F.conv2d(dx, model.a.weight, None, padding=1) * gate0
        _close(fdx, expected)


class Attention(nn.Module):
    """Single-head self-attention over the tokens of ``(N, L, E)``, with projection biases."""

    def __init__(self, g: torch.Generator, e: int, d: int, use_sdpa: bool) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(e, d, dtype=DT) for _ in range(3))
        for lin in (self.q, self.k, self.v):
            with torch.no_grad():
                lin.weight.copy_(_randn(g, d, e, scale=0.6))
                lin.bias.copy_(_randn(g, d, scale=0.5))
        self.use_sdpa = use_sdpa

    def probs(self, x: T) -> T:
        q, k = self.q(x), self.k(x)
        return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1)

    def forward(self, x: T) -> T:
        if self.use_sdpa:
            return F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x))
        return self.probs(x) @ self.v(x)


@SETTINGS
@given(st.integers(2, 5), st.integers(2, 4), st.integers(1, 4), st.booleans(), seeds)
def test_attention_freezes_its_probabilities(
    length: int, e: int, d: int, use_sdpa: bool, seed: int
) -> None:
    g = _gen(seed)
    model = Attention(g, e, d, use_sdpa)
    x0 = _randn(g, 1, length, e)
    check_taylor(model, x0, g)
    li, dx, fdx = check_freeze(model, x0, g)
    with torch.no_grad():
        expected = model.probs(x0) @ (dx @ model.v.weight.T)  # P0 (x Wv), no bias
    _close(fdx, expected)


@SETTINGS
@given(st.integers(2, 5), st.integers(1, 3), seeds)
def test_softmax_is_a_constant_in_freeze_mode(k: int, h: int, seed: int) -> None:
    g = _gen(seed)
    model = Fn(lambda m, x: torch.softmax(x, 1))
    x0 = _randn(g, 1, k, h)
    check_taylor(model, x0, g)
    li, dx, fdx = check_freeze(model, x0, g, allow_zero=True)
    _close(fdx, torch.zeros_like(fdx))
    _close(li.residual, torch.softmax(x0, 1))
