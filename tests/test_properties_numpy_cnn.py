"""Property-based tests (Hypothesis) of the from-scratch NumPy CNN layers (issue 17 item 2).

Each test draws shapes, strides, paddings and parameters (random kernels, biases, batch
norm's gamma, beta, running statistics, eps and momentum) and compares a layer's forward
pass with torch's own op in float64 and its backward pass (dLoss/dInput and every
parameter gradient) with torch autograd; one directional finite difference checks the
convolution's input gradient without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from convscope import numpy_cnn as ncnn

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)
seeds = st.integers(0, 2**31 - 1)
TOL = 1e-10


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.array(a), dtype=torch.float64, requires_grad=grad)


def _close(a: np.ndarray, b: torch.Tensor | np.ndarray, tol: float = TOL) -> None:
    ref = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == ref.shape, (a.shape, ref.shape)
    assert np.abs(ref).max() > 1e-8, "the signal vanished"
    np.testing.assert_allclose(a, ref, rtol=0, atol=tol * max(1.0, float(np.abs(ref).max())))


def _backward(out: torch.Tensor, dy: np.ndarray, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, inputs, _t(dy)))


# -- convolution -------------------------------------------------------------------------------


@st.composite
def conv_case(draw: st.DrawFn) -> dict[str, Any]:
    k = draw(st.integers(1, 4))
    pad = min(draw(st.integers(0, 2)), k - 1)  # the first window reads the input
    lo = max(1, k - 2 * pad)
    return {
        "n": draw(st.integers(1, 3)), "c": draw(st.integers(1, 3)), "o": draw(st.integers(1, 3)),
        "k": k, "stride": draw(st.integers(1, 3)), "pad": pad,
        "h": draw(st.integers(lo, 8)), "w": draw(st.integers(lo, 8)),
        "convention": draw(st.sampled_from(["correlation", "convolution"])),
        "bias": draw(st.booleans()), "seed": draw(seeds),
    }  # fmt: skip


@SETTINGS
@given(conv_case())
def test_conv2d_matches_torch(p: dict[str, Any]) -> None:
    rng = np.random.default_rng(p["seed"])
    conv = ncnn.Conv2D(
        p["c"], p["o"], p["k"], p["stride"], p["pad"], p["convention"], bias=p["bias"], seed=rng
    )
    conv.params["W"][...] = rng.normal(size=conv.params["W"].shape)
    if p["bias"]:
        conv.params["b"][...] = rng.normal(size=p["o"]) + 0.5
    x = rng.normal(size=(p["n"], p["c"], p["h"], p["w"]))
    xt, wt = _t(x, True), _t(conv.params["W"], True)
    bt = _t(conv.params["b"], True) if p["bias"] else None
    # torch's conv2d correlates; convolution slides the 180-degree-rotated kernel
    slide = wt.flip(2, 3) if p["convention"] == "convolution" else wt
    ref = F.conv2d(xt, slide, bt, stride=p["stride"], padding=p["pad"])
    y = conv.forward(x)
    _close(y, ref)
    dy = rng.normal(size=y.shape)
    dx = conv.backward(dy)
    grads = _backward(ref, dy, xt, wt, *([bt] if bt is not None else []))
    if not np.abs(grads[0].numpy()).max() > 0:  # the strides never reach any input...
        assert np.abs(dx).max() == 0
    else:
        _close(dx, grads[0])
    _close(conv.grads["W"], grads[1])
    if bt is not None:
        _close(conv.grads["b"], grads[2])
    # dx against a directional finite difference (the layer is affine: exact up to rounding)
    v = rng.normal(size=x.shape)
    fd = ((conv.forward(x + v) - conv.forward(x - v)) * dy).sum() / 2
    assert abs(fd - float((dx * v).sum())) <= 1e-9 * max(1.0, abs(fd))


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.integers(0, 2), seeds)
def test_fixed_conv2d_matches_torch(o: int, c: int, k: int, pad: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(o, c, k, k)), rng.normal(size=o) + 0.5
    conv = ncnn.FixedConv2D(w, b, padding=pad)
    x = rng.normal(size=(2, c, k + 2, k + 3))
    xt = _t(x, True)
    ref = F.conv2d(xt, _t(w), _t(b), padding=pad)
    y = conv.forward(x)
    _close(y, ref)
    dy = rng.normal(size=y.shape)
    _close(conv.backward(dy), _backward(ref, dy, xt)[0])
    assert conv.grads == {} and conv.parameters() == []


# -- pooling, dense, flatten ---------------------------------------------------------------------


@st.composite
def pool_case(draw: st.DrawFn) -> dict[str, Any]:
    k = draw(st.integers(1, 4))
    return {
        "k": k, "stride": draw(st.one_of(st.none(), st.integers(1, 4))),
        "n": draw(st.integers(1, 2)), "c": draw(st.integers(1, 3)),
        "h": draw(st.integers(k, 9)), "w": draw(st.integers(k, 9)), "seed": draw(seeds),
    }  # fmt: skip


@SETTINGS
@given(pool_case(), st.sampled_from(["max", "avg"]))
def test_pooling_matches_torch(p: dict[str, Any], kind: str) -> None:
    rng = np.random.default_rng(p["seed"])
    k, s = p["k"], p["stride"]
    layer = (ncnn.MaxPool2D if kind == "max" else ncnn.AvgPool2D)(k, s)
    x = rng.normal(size=(p["n"], p["c"], p["h"], p["w"]))
    xt = _t(x, True)
    op = F.max_pool2d if kind == "max" else F.avg_pool2d
    ref = op(xt, k, k if s is None else s)
    y = layer.forward(x)
    _close(y, ref)
    dy = rng.normal(size=y.shape)
    _close(layer.backward(dy), _backward(ref, dy, xt)[0])


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), seeds)
def test_global_avg_pool_and_flatten_match_torch(n: int, c: int, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c, h, w))
    for layer, op in (
        (ncnn.GlobalAvgPool(), lambda t: t.mean((2, 3))),
        (ncnn.Flatten(), lambda t: t.flatten(1)),
    ):
        xt = _t(x, True)
        ref = op(xt)
        y = layer.forward(x)
        _close(y, ref)
        dy = rng.normal(size=y.shape)
        _close(layer.backward(dy), _backward(ref, dy, xt)[0])


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.booleans(), seeds)
def test_dense_matches_torch(n: int, din: int, dout: int, bias: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dense = ncnn.Dense(din, dout, bias=bias, seed=rng)
    dense.params["W"][...] = rng.normal(size=(dout, din))
    if bias:
        dense.params["b"][...] = rng.normal(size=dout) + 0.5
    x = rng.normal(size=(n, din))
    xt, wt = _t(x, True), _t(dense.params["W"], True)
    bt = _t(dense.params["b"], True) if bias else None
    ref = F.linear(xt, wt, bt)
    y = dense.forward(x)
    _close(y, ref)
    dy = rng.normal(size=y.shape)
    dx = dense.backward(dy)
    grads = _backward(ref, dy, xt, wt, *([bt] if bt is not None else []))
    _close(dx, grads[0])
    _close(dense.grads["W"], grads[1])
    if bt is not None:
        _close(dense.grads["b"], grads[2])


# -- activations, batch norm, dropout -------------------------------------------------------------

ACTIVATIONS = {
    "relu": (ncnn.ReLU, torch.relu),
    "sigmoid": (ncnn.Sigmoid, torch.sigmoid),
    "tanh": (ncnn.Tanh, torch.tanh),
    "softmax": (ncnn.Softmax, lambda t: torch.softmax(t, 1)),
}


@SETTINGS
@given(
    st.sampled_from(sorted(ACTIVATIONS)),
    st.lists(st.integers(1, 4), min_size=2, max_size=4),
    st.floats(0.1, 6.0),
    seeds,
)
def test_activations_match_torch(name: str, shape: list[int], scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cls, op = ACTIVATIONS[name]
    if name == "softmax" and shape[1] == 1:
        shape[1] = 3  # one class: softmax is constant 1 and its gradient vanishes
    layer = cls()
    x = scale * rng.normal(size=shape)
    xt = _t(x, True)
    ref = op(xt)
    y = layer.forward(x)
    dy = rng.normal(size=y.shape)
    if name == "relu" and not (x > 0).any():  # nothing passes: all zero both ways
        assert np.abs(y).max() == 0 and np.abs(layer.backward(dy)).max() == 0
        return
    _close(y, ref)
    _close(layer.backward(dy), _backward(ref, dy, xt)[0])


@SETTINGS
@given(
    st.booleans(), st.booleans(), st.integers(2, 4), st.integers(1, 3),
    st.floats(1e-5, 0.5), st.floats(0.01, 0.9), seeds,
)  # fmt: skip
def test_batch_norm_matches_torch(
    training: bool, maps: bool, n: int, c: int, eps: float, momentum: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    bn = ncnn.BatchNorm(c, eps=eps, momentum=momentum)
    gamma = rng.normal(size=c) * 0.5 + np.sign(rng.normal(size=c)) * 1.3
    beta = rng.normal(size=c) + 0.5
    mean, var = rng.normal(size=c), rng.uniform(0.1, 2.0, size=c)
    bn.params["gamma"][...], bn.params["beta"][...] = gamma, beta
    bn.running_mean, bn.running_var = mean.copy(), var.copy()
    bn.train(training)
    shape = (n, c, 3, 2) if maps else (n, c)
    x = 2.0 * rng.normal(size=shape) + 0.7
    xt, gt, bt = _t(x, True), _t(gamma, True), _t(beta, True)
    rm, rv = _t(mean), _t(var)
    ref = F.batch_norm(xt, rm, rv, gt, bt, training=training, momentum=momentum, eps=eps)
    y = bn.forward(x)
    _close(y, ref)
    _close(bn.running_mean, rm)  # updated the same way (or left alone in eval mode)
    _close(bn.running_var, rv)
    dy = rng.normal(size=y.shape)
    dx = bn.backward(dy)
    gx, gg, gb = _backward(ref, dy, xt, gt, bt)
    _close(dx, gx, tol=1e-9)
    _close(bn.grads["gamma"], gg)
    _close(bn.grads["beta"], gb)


@SETTINGS
@given(st.floats(0.0, 0.9), st.sampled_from(["bernoulli", "gaussian"]), seeds)
def test_dropout_backward_uses_the_forward_noise(p: float, method: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer = ncnn.Dropout(p, method, seed=seed)  # type: ignore[arg-type]
    x = rng.normal(size=(3, 4, 5))
    y = layer.forward(x)
    mask = np.divide(y, x)
    dy = rng.normal(size=x.shape)
    np.testing.assert_allclose(layer.backward(dy), dy * mask, rtol=1e-12, atol=1e-12)
    if method == "bernoulli" and p > 0:
        kept = mask != 0
        np.testing.assert_allclose(mask[kept], 1 / (1 - p), rtol=1e-12)
    layer.eval()
    assert np.array_equal(layer.forward(x), x)
    assert np.array_equal(layer.backward(dy), dy)
