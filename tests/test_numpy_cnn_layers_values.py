"""NumPy CNN layers: initialisation, defaults, modes and every error, checked by value.

The gradient and torch-agreement tests (test_numpy_cnn_layers.py, the property tests)
judge the arithmetic; these check what they leave open: the initial weights' distribution
against its formula, seeds, default arguments, train/eval modes, the dropout masks against
a generator drawn the same way, and the exact text of each error.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from convscope import kernels as kb
from convscope.errors import ConvscopeError
from convscope.numpy_cnn.layers import (
    Conv2D,
    Dense,
    Dropout,
    FixedConv2D,
    Flatten,
    GlobalAvgPool,
    MaxPool2D,
)
from convscope.numpy_cnn.layers.base import Layer, as_rng


def _err(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_as_rng_and_seeded_initialisation() -> None:
    g = np.random.default_rng(5)
    assert as_rng(g) is g
    np.testing.assert_array_equal(as_rng(3).random(4), np.random.default_rng(3).random(4))
    # the same seed gives the same weights, another seed others; None draws fresh ones
    for make in (lambda s: Dense(6, 4, seed=s), lambda s: Conv2D(2, 3, 3, seed=s)):
        a, b, c = make(7), make(7), make(8)
        np.testing.assert_array_equal(a.params["W"], b.params["W"])
        assert not np.array_equal(a.params["W"], c.params["W"])
        assert not np.array_equal(make(None).params["W"], make(None).params["W"])


def test_dense_initialisation_follows_its_formula() -> None:
    d_in, d_out = 400, 300
    he = Dense(d_in, d_out, seed=0).params["W"]
    want = np.random.default_rng(0).normal(0.0, np.sqrt(2.0 / d_in), size=(d_out, d_in))
    np.testing.assert_array_equal(he, want)
    xa = Dense(d_in, d_out, init="xavier", seed=0).params["W"]
    want = np.random.default_rng(0).normal(0.0, np.sqrt(2.0 / (d_in + d_out)), (d_out, d_in))
    np.testing.assert_array_equal(xa, want)
    zeros = Dense(3, 2, init="zeros")
    np.testing.assert_array_equal(zeros.params["W"], np.zeros((2, 3)))
    assert zeros.params["W"].shape == (2, 3)
    d = Dense(3, 2, seed=1)
    assert set(d.params) == set(d.grads) == {"W", "b"} and d.params["b"].shape == (2,)
    assert not d.params["b"].any() and d.grads["W"].shape == (2, 3)
    assert set(Dense(3, 2, bias=False).params) == {"W"}
    assert repr(Dense(3, 2)) == "Dense(3, 2, bias=True)"
    assert repr(Dense(3, 2, bias=False)) == "Dense(3, 2, bias=False)"
    for name, args in (("in_features", (0, 2)), ("out_features", (3, 0))):
        v = args[0] if name == "in_features" else args[1]
        with pytest.raises(
            ConvscopeError, match=_err(f"{name} must be a positive integer, got {v!r}")
        ):
            Dense(*args)
    with pytest.raises(
        ConvscopeError, match=_err("in_features must be a positive integer, got 2.0")
    ):
        Dense(2.0, 3)  # type: ignore[arg-type]
    with pytest.raises(
        ConvscopeError, match=_err('init must be "he", "xavier" or "zeros", got \'lecun\'')
    ):
        Dense(3, 2, init="lecun")


def test_dense_and_flatten_forward_errors_and_shapes() -> None:
    d = Dense(3, 2, seed=0)
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(d(x), x @ d.params["W"].T)  # __call__ is forward; b = 0
    for bad in (np.zeros((2, 4)), np.zeros((2, 3, 1)), np.zeros(3)):
        with pytest.raises(ConvscopeError, match=_err(
                f"Dense expects (N, 3) input, got shape {bad.shape}; put a Flatten or "
                "GlobalAvgPool before it")):  # fmt: skip
            d.forward(bad)
    f = Flatten()
    y = f(np.arange(24.0).reshape(2, 3, 2, 2))
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(y[1], np.arange(12.0, 24.0))  # C, H, W order
    with pytest.raises(ConvscopeError, match=_err(
            "Flatten.backward called before forward; run forward first")):  # fmt: skip
        Flatten().backward(np.zeros((1, 2)))


def test_conv2d_initialisation_defaults_and_errors() -> None:
    c = Conv2D(3, 8, 5, seed=0)
    want = np.random.default_rng(0).normal(0.0, np.sqrt(2.0 / (3 * 25)), size=(8, 3, 5, 5))
    np.testing.assert_array_equal(c.params["W"], want)
    assert (c.stride, c.padding, c.convention, c.trainable, c.has_bias) == (
        1, 0, "correlation", True, True
    )  # fmt: skip
    assert Conv2D(1, 1, 5, padding="same").padding == 2
    assert Conv2D(1, 1, 3, padding="valid").padding == 0
    assert Conv2D(1, 1, 3, padding=np.int64(2)).padding == 2
    assert not Conv2D(1, 2, 3, bias=False).has_bias
    for name, args in (("in_channels", (0, 1, 3)), ("out_channels", (1, 0, 3)),
                       ("kernel_size", (1, 1, 0))):  # fmt: skip
        with pytest.raises(ConvscopeError, match=_err(f"{name} must be a positive integer, got 0")):
            Conv2D(*args)
    with pytest.raises(ConvscopeError, match=_err("stride must be a positive integer, got 0")):
        Conv2D(1, 1, 3, stride=0)
    with pytest.raises(ConvscopeError, match=_err(
            'convention must be "correlation" or "convolution", got \'flip\'')):  # fmt: skip
        Conv2D(1, 1, 3, convention="flip")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match=_err(
            'padding="same" needs an odd kernel size (eq. 11.2.6), got 4')):  # fmt: skip
        Conv2D(1, 1, 4, padding="same")
    for bad in (-1, "full", 1.5):
        with pytest.raises(ConvscopeError, match=_err(
                f'padding must be an integer >= 0, "same" or "valid", got {bad!r}')):  # fmt: skip
            Conv2D(1, 1, 3, padding=bad)  # type: ignore[arg-type]


def test_conv2d_backward_before_forward_and_input_shape() -> None:
    c = Conv2D(2, 1, 3, stride=2, padding=1, seed=0)
    with pytest.raises(ConvscopeError, match=_err(
            "Conv2D.backward called before forward; run forward first")):  # fmt: skip
        c.backward(np.zeros((1, 1, 2, 2)))
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 4))
    y = c(x)
    dx = c.backward(np.ones_like(y))
    assert dx.shape == x.shape  # the gradient comes back in the input's shape


def test_fixed_conv2d_from_kernels() -> None:
    layer = FixedConv2D.from_kernels(["sobel_x", np.eye(3)], in_channels=2, bias=0.5,
                                     stride=2, padding=0, convention="convolution")  # fmt: skip
    assert layer.names == ["sobel_x", "kernel_1"]
    w = layer.params["W"]
    assert w.shape == (2, 2, 3, 3) and w.dtype == np.float64
    np.testing.assert_array_equal(w[0, 1], kb.get("sobel_x").weight)
    np.testing.assert_array_equal(w[1, 0], np.eye(3))
    np.testing.assert_array_equal(layer.params["b"], [0.5, 0.5])
    assert (layer.stride, layer.padding, layer.convention) == (2, 0, "convolution")
    assert not layer.trainable and layer.parameters() == [] and layer.grads == {}
    assert not any(p.flags.writeable for p in layer.params.values())
    # the defaults: one channel, no bias, "same" padding, correlation
    d = FixedConv2D.from_kernels(["box_blur"])
    assert (d.in_channels, d.has_bias, d.padding, d.convention) == (1, False, 1, "correlation")
    # integer arrays are taken as float64
    assert FixedConv2D.from_kernels([np.ones((3, 3), dtype=int)]).params["W"].dtype == np.float64
    with pytest.raises(ConvscopeError, match=_err("from_kernels needs at least one kernel")):
        FixedConv2D.from_kernels([])
    with pytest.raises(ConvscopeError, match=_err(
            "kernels of different sizes cannot share a layer: [(3, 3), (5, 5)]")):  # fmt: skip
        FixedConv2D.from_kernels(["gaussian_5x5", "sobel_x"])
    plain = FixedConv2D(np.ones((2, 3, 3), dtype=int), bias=1)  # integers become float64
    assert plain.params["W"].dtype == plain.params["b"].dtype == np.float64
    assert (plain.padding, plain.stride, plain.convention) == (0, 1, "correlation")
    assert plain.trainable is False and plain.names is None
    bad = "fixed filters must be (O, C, k, k) or (O, k, k), got shape (1, 1, 3, 2)"
    with pytest.raises(ConvscopeError, match=_err(bad)):
        FixedConv2D(np.ones((1, 1, 3, 2)))
    f32 = FixedConv2D(np.ones((1, 3, 3))).astype(np.float32)
    assert f32.params["W"].dtype == np.float32 and not f32.params["W"].flags.writeable
    with pytest.raises(ConvscopeError, match=_err(
            "fixed filters must be (O, C, k, k) or (O, k, k), got shape (3, 3)")):  # fmt: skip
        FixedConv2D(np.ones((3, 3)))


def test_pooling_defaults_and_errors() -> None:
    p = MaxPool2D()
    assert (p.kernel_size, p.stride) == (2, 2) and repr(p) == "MaxPool2D(kernel_size=2, stride=2)"
    assert MaxPool2D(3).stride == 3 and MaxPool2D(3, 1).stride == 1
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    y = MaxPool2D(2, 1)(x)
    assert y.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(y, x[:, :, 1:, 1:])  # an increasing ramp: the bottom right
    for name, args in (("kernel_size", (0,)), ("stride", (2, 0))):
        with pytest.raises(ConvscopeError, match=_err(f"{name} must be a positive integer, got 0")):
            MaxPool2D(*args)
    with pytest.raises(ConvscopeError, match=_err(
            "MaxPool2D expects (N, C, H, W) input, got shape (3, 4, 5)")):  # fmt: skip
        MaxPool2D()(x[0])
    with pytest.raises(ConvscopeError, match=_err(
            "GlobalAvgPool expects (N, C, H, W) input, got shape (3, 4, 5)")):  # fmt: skip
        GlobalAvgPool()(x[0])
    for shape in ((1, 1, 4, 1), (1, 1, 1, 4)):  # a window wider or taller than the input
        with pytest.raises(ConvscopeError):
            MaxPool2D(2)(np.zeros(shape))


def test_dropout_masks_against_the_same_generator() -> None:
    d = Dropout(seed=3)
    assert (d.p, d.method, d.training) == (0.5, "bernoulli", True)
    assert repr(d) == "Dropout(p=0.5, method='bernoulli')"
    x = np.ones((4, 50))
    y = d(x)
    keep = np.random.default_rng(3).random(x.shape) >= 0.5
    np.testing.assert_array_equal(y, keep / 0.5)
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), keep / 0.5)  # the same mask
    assert Dropout(0.5, seed=0)(np.ones((2, 3), dtype=np.float32)).dtype == np.float32
    x32 = np.ones((3, 7), dtype=np.float32)
    g = Dropout(0.3, "gaussian", seed=4)
    noise = np.random.default_rng(4).normal(1.0, np.sqrt(0.3 / 0.7), size=x32.shape)
    out = g(x32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, noise.astype(np.float32), rtol=1e-7)
    # eval mode and p = 0 pass the input through, and so does the gradient
    d.eval()
    assert d.training is False and d(x) is x and d.backward(x) is x
    assert d.train() is d and d.training is True
    assert Dropout(0.0)(x) is x
    with pytest.raises(
        ConvscopeError, match=_err("dropout probability must be in [0, 1), got 1.0")
    ):
        Dropout(1.0)
    with pytest.raises(
        ConvscopeError, match=_err("dropout probability must be in [0, 1), got -0.1")
    ):
        Dropout(-0.1)
    with pytest.raises(ConvscopeError, match=_err(
            'method must be "bernoulli" or "gaussian", got \'uniform\'')):  # fmt: skip
        Dropout(0.2, "uniform")  # type: ignore[arg-type]


def test_layer_base_modes_and_repr() -> None:
    class Twice(Layer):
        def forward(self, x: np.ndarray) -> np.ndarray:
            return 2 * x

    t = Twice()
    assert t.training and t.eval() is t and t.training is False
    assert t.train(True).training is True and t.train(False).training is False
    t.train()
    assert t.training is True  # the default mode is True
    np.testing.assert_array_equal(t(np.ones(2)), [2.0, 2.0])
    assert repr(t) == "Twice()" and t.extra_repr() == ""
