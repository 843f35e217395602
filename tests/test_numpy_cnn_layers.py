"""NumPy CNN layers: the loop reference, finite differences, the textbook's worked examples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy_cnn_reference import (
    conv2d_backward,
    conv2d_forward,
    numerical_gradient,
    pool2d_backward,
    pool2d_forward,
    relative_error,
)

from convscope import kernels as kb
from convscope import numpy_cnn as ncnn
from convscope.errors import ConvscopeError

RNG = np.random.default_rng(20240611)

# -- vectorized layers against the plain-loop reference ------------------------------------

CONV_CASES = [
    # (N, C, H, W, O, k, stride, padding)
    (2, 3, 7, 7, 4, 3, 1, 0),
    (2, 2, 8, 7, 3, 3, 1, 1),
    (1, 3, 9, 8, 2, 3, 2, 1),
    (2, 1, 10, 7, 3, 3, 3, 2),
    (1, 2, 6, 6, 2, 5, 1, 2),
    (2, 2, 5, 6, 3, 2, 2, 0),
    (1, 4, 7, 7, 1, 1, 2, 0),
]


@pytest.mark.parametrize("convention", ["correlation", "convolution"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_loop_reference(case: tuple[int, ...], convention: str) -> None:
    n, c, h, w, o, k, s, p = case
    conv = ncnn.Conv2D(c, o, k, stride=s, padding=p, convention=convention, seed=1)  # type: ignore[arg-type]
    conv.params["b"][:] = RNG.normal(size=o)
    x = RNG.normal(size=(n, c, h, w))
    y = conv.forward(x)
    ref = conv2d_forward(x, conv.params["W"], conv.params["b"], s, p, convention)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dy = RNG.normal(size=y.shape)
    dx = conv.backward(dy)
    dx_ref, dw_ref, db_ref = conv2d_backward(x, conv.params["W"], dy, s, p, convention)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["W"], dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["b"], db_ref, rtol=1e-12, atol=1e-12)


POOL_CASES = [(2, 8, 8, 2, 2), (1, 7, 9, 2, 2), (2, 7, 7, 3, 2), (1, 9, 6, 3, 3), (1, 6, 6, 2, 1)]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_matches_loop_reference(case: tuple[int, ...], mode: str) -> None:
    c, h, w, k, s = case
    layer = ncnn.MaxPool2D(k, s) if mode == "max" else ncnn.AvgPool2D(k, s)
    x = RNG.normal(size=(2, c, h, w))
    y = layer.forward(x)
    np.testing.assert_allclose(y, pool2d_forward(x, k, s, mode), rtol=1e-12, atol=1e-12)
    dy = RNG.normal(size=y.shape)
    np.testing.assert_allclose(
        layer.backward(dy), pool2d_backward(x, dy, k, s, mode), rtol=1e-12, atol=1e-12
    )


def test_convolution_is_correlation_with_rotated_kernel() -> None:
    # eq. 11.2.3: I * F = I (star) F_rot
    x = RNG.normal(size=(2, 3, 6, 6))
    conv = ncnn.Conv2D(3, 2, 3, padding=1, convention="convolution", seed=3)
    corr = ncnn.Conv2D(3, 2, 3, padding=1, convention="correlation", seed=0)
    corr.params["W"] = conv.params["W"][:, :, ::-1, ::-1].copy()
    corr.params["b"] = conv.params["b"].copy()
    np.testing.assert_allclose(conv.forward(x), corr.forward(x), rtol=1e-13, atol=1e-13)


# -- backward passes against central finite differences (float64) --------------------------


def _check_layer(
    layer: ncnn.Layer,
    x: np.ndarray,
    before_forward: Callable[[], None] | None = None,
    params: bool = True,
) -> None:
    """d/dx and d/dparams of sum(forward(x) * R) against central differences."""
    r = RNG.normal(size=layer.forward(x).shape)

    def f() -> float:
        if before_forward is not None:
            before_forward()
        return float(np.sum(layer.forward(x) * r))

    f()
    dx = layer.backward(r)
    analytic = {"x": dx} | ({k: v.copy() for k, v in layer.grads.items()} if params else {})
    numeric = {"x": numerical_gradient(f, x)}
    if params:
        for name, p in layer.params.items():
            numeric[name] = numerical_gradient(f, p)
    for name in numeric:
        err = relative_error(analytic[name], numeric[name])
        assert err < 1e-6, f"{type(layer).__name__} d/d{name}: relative error {err:.2e}"


@pytest.mark.parametrize("convention", ["correlation", "convolution"])
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (3, 2)])
def test_conv_gradcheck(convention: str, stride: int, padding: int) -> None:
    conv = ncnn.Conv2D(2, 3, 3, stride=stride, padding=padding, convention=convention, seed=4)  # type: ignore[arg-type]
    conv.params["b"][:] = RNG.normal(size=3)
    _check_layer(conv, RNG.normal(size=(2, 2, 7, 6)))


def test_pooling_and_reshaping_gradcheck() -> None:
    # distinct values, so a 1e-6 nudge never changes which cell is the maximum
    x = RNG.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) / 10.0
    for layer in (ncnn.MaxPool2D(2), ncnn.MaxPool2D(3, 2), ncnn.AvgPool2D(2), ncnn.AvgPool2D(3, 2)):
        _check_layer(layer, x.copy())
    _check_layer(ncnn.GlobalAvgPool(), RNG.normal(size=(2, 3, 4, 5)))
    _check_layer(ncnn.Flatten(), RNG.normal(size=(2, 3, 4, 5)))


def test_dense_gradcheck() -> None:
    dense = ncnn.Dense(5, 4, seed=0)
    dense.params["b"][:] = RNG.normal(size=4)
    _check_layer(dense, RNG.normal(size=(3, 5)))


def test_activation_gradcheck() -> None:
    x = RNG.normal(size=(3, 4, 2, 2))
    x[np.abs(x) < 0.05] += 0.1  # keep ReLU's kink out of the finite-difference stencil
    for layer in (ncnn.ReLU(), ncnn.Sigmoid(), ncnn.Tanh()):
        _check_layer(layer, x.copy())
    _check_layer(ncnn.Softmax(), RNG.normal(size=(4, 6)))
    _check_layer(ncnn.Softmax(), RNG.normal(size=(2, 3, 2, 2)))


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradcheck(shape: tuple[int, ...], training: bool) -> None:
    bn = ncnn.BatchNorm(4)
    bn.params["gamma"][:] = RNG.uniform(0.5, 1.5, size=4)
    bn.params["beta"][:] = RNG.normal(size=4)
    bn.running_mean = RNG.normal(size=4)
    bn.running_var = RNG.uniform(0.5, 2.0, size=4)
    bn.train(training)
    _check_layer(bn, RNG.normal(size=shape) * 2 + 1)


@pytest.mark.parametrize("method", ["bernoulli", "gaussian"])
def test_dropout_gradcheck_and_modes(method: str) -> None:
    drop = ncnn.Dropout(0.4, method=method, seed=0)  # type: ignore[arg-type]

    def same_noise() -> None:
        drop.rng = np.random.default_rng(7)

    x = RNG.normal(size=(4, 5))
    _check_layer(drop, x, before_forward=same_noise, params=False)
    drop.eval()
    assert np.array_equal(drop.forward(x), x)
    assert np.array_equal(drop.backward(x), x)


def test_dropout_keeps_the_mean() -> None:
    x = np.ones((400, 500))
    for method in ("bernoulli", "gaussian"):
        y = ncnn.Dropout(0.3, method=method, seed=1).forward(x)  # type: ignore[arg-type]
        assert y.mean() == pytest.approx(1.0, abs=0.01)
        # same variance for both masks: p / (1 - p)
        assert y.var() == pytest.approx(0.3 / 0.7, rel=0.03)


@pytest.mark.parametrize(
    "loss,pred,target",
    [
        (ncnn.BinaryCrossEntropy(), RNG.uniform(0.05, 0.95, size=(5, 3)), RNG.integers(0, 3, 5)),
        (ncnn.BinaryCrossEntropy(), RNG.uniform(0.05, 0.95, size=(5, 1)), RNG.integers(0, 2, 5)),
        (ncnn.CategoricalCrossEntropy(), RNG.normal(size=(5, 4)), RNG.integers(0, 4, 5)),
        (
            ncnn.CategoricalCrossEntropy(from_logits=False),
            RNG.dirichlet(np.ones(4), size=5),
            RNG.integers(0, 4, 5),
        ),
        (ncnn.MeanSquaredError(), RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))),
    ],
)
def test_loss_gradcheck(loss: ncnn.Loss, pred: np.ndarray, target: np.ndarray) -> None:
    loss(pred, target)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: loss(pred, target), pred)
    assert relative_error(analytic, numeric) < 1e-6


def test_whole_network_gradcheck() -> None:
    # every layer type chained: the gradient of the loss w.r.t. every parameter and the input
    net = ncnn.Sequential(
        # no bias before batch norm: its gradient is exactly zero, so no ratio can be checked
        ncnn.Conv2D(2, 3, 3, stride=2, padding=1, convention="convolution", bias=False, seed=1),
        ncnn.BatchNorm(3),
        ncnn.Tanh(),
        ncnn.AvgPool2D(2),
        ncnn.Conv2D(3, 4, 1, seed=2),
        ncnn.Sigmoid(),
        ncnn.Flatten(),
        ncnn.Dense(16, 5, seed=3),
        ncnn.ReLU(),
        ncnn.Dense(5, 3, seed=4),
        ncnn.Softmax(),
    )
    x = RNG.normal(size=(4, 2, 9, 8))
    y = np.array([0, 2, 1, 2])
    loss = ncnn.BinaryCrossEntropy()

    def f() -> float:
        return loss(net.forward(x), y)

    f()
    dx = net.backward(loss.backward())
    assert dx is not None
    assert relative_error(dx, numerical_gradient(f, x)) < 1e-6
    for i, layer in enumerate(net):
        grads = {k: v.copy() for k, v in layer.grads.items()}
        for name, p in layer.params.items():
            err = relative_error(grads[name], numerical_gradient(f, p))
            assert err < 1e-6, f"layer {i} ({layer!r}) d/d{name}: {err:.2e}"


# -- the textbook's worked examples, through the layer ---------------------------------------


def _one_conv(weight: np.ndarray, bias: float, convention: str) -> ncnn.Conv2D:
    w = np.asarray(weight, dtype=np.float64)
    w = w[None, None] if w.ndim == 2 else w[None]
    conv = ncnn.Conv2D(w.shape[1], 1, w.shape[-1], convention=convention, seed=0)  # type: ignore[arg-type]
    conv.params["W"] = w.copy()
    conv.params["b"] = np.array([bias])
    return conv


def test_worked_example_correlation_1017_convolution_357() -> None:
    # section 11.2.1
    image = np.array([[94, 50, 221], [98, 109, 50], [49, 213, 91]], dtype=np.float64)
    filt = np.array([[2, 2, 1], [1, 0, -2], [-2, 2, 2]])
    x = image[None, None]
    assert _one_conv(filt, 0.0, "correlation").forward(x).item() == 1017
    assert _one_conv(filt, 0.0, "convolution").forward(x).item() == 357


def test_worked_example_cross_detector() -> None:
    # section 11.2.1: the cross answers 1.2 to I1 and 4.1 to I2 under either convention
    i1 = np.array([[0.7, 0.2, 0.3], [0.2, 0.4, 0.1], [0.5, 0.3, 0.8]])
    i2 = np.array([[0.1, 0.9, 0.2], [0.7, 0.9, 0.8], [0.2, 0.8, 0.1]])
    x = np.stack([i1, i2])[:, None]
    for convention in ("correlation", "convolution"):
        out = _one_conv(kb.get("cross").weight, 0.0, convention).forward(x)
        np.testing.assert_allclose(out.ravel(), [1.2, 4.1], atol=1e-12)


def test_worked_example_rgb_patch_with_bias() -> None:
    # Fig. 11.2.2: the cross on each of R, G, B, bias -3: 2.9 + 2.4 + 1.9 - 3 = 4.2
    r = [[0.1, 0.1, 0.2], [0.7, 0.6, 0.7], [0.8, 0.8, 0.8]]
    g = [[0, 0.3, 0.9], [1, 0.3, 0.7], [0.2, 0.1, 0]]
    b = [[0.2, 0.2, 0.7], [0.3, 0.5, 0.4], [0.5, 0.5, 0.7]]
    x = np.array([r, g, b])[None]
    cross = np.stack([kb.get("cross").weight] * 3)
    assert _one_conv(cross, -3.0, "correlation").forward(x).item() == pytest.approx(4.2)
    fixed = ncnn.FixedConv2D.from_kernels(["cross"], in_channels=3, bias=-3.0, padding=0)
    assert fixed.forward(x).item() == pytest.approx(4.2)


def test_worked_example_output_sizes() -> None:
    # eq. 11.2.7 with the chapter's numbers: 224 x 224 x 3 with 64 3x3 filters, padding 1
    assert ncnn.Conv2D(3, 64, 3, padding=1).output_shape(224, 224) == (224, 224)
    # Fig. 11.2.4/11.2.5: a 5x5 image, stride 2 with padding 1, and padding 2 at stride 1
    x = np.array(
        [
            [0.4, 0.8, 0.1, 0.6, 0.6],
            [0.2, 1, 0.8, 0.1, 0.1],
            [0.3, 0.3, 0.4, 0.8, 0],
            [0.4, 0.5, 0.7, 0.9, 0.9],
            [0.6, 0.5, 0.6, 1, 0.1],
        ]
    )[None, None]
    cross = ncnn.FixedConv2D.from_kernels(["cross"], stride=2, padding=1)
    assert cross.forward(x).shape == (1, 1, 3, 3)
    wide = ncnn.FixedConv2D.from_kernels(["cross"], padding=2)
    out = wide.forward(x)
    assert out.shape == (1, 1, 7, 7)
    # the corner output sees only the image's corner pixel through the cross's bottom arm
    assert out[0, 0, 0, 1] == pytest.approx(x[0, 0, 0, 0])
    # eq. 11.3.1: 2x2 max pooling with stride 2 turns 4x4 into 2x2
    assert ncnn.MaxPool2D(2).forward(np.zeros((1, 1, 4, 4))).shape == (1, 1, 2, 2)


def test_worked_example_backprop_of_a_3x3_image() -> None:
    # section 11.5.3: a 3x3 image, 3x3 kernel, padding 1, stride 1, convolution convention.
    x = RNG.normal(size=(1, 1, 3, 3))
    conv = ncnn.Conv2D(1, 1, 3, padding=1, convention="convolution", seed=5)
    conv.forward(x)
    dz = RNG.normal(size=(1, 1, 3, 3))
    dx = conv.backward(dz)
    X, D, w = x[0, 0], dz[0, 0], conv.params["W"][0, 0]
    # dE/dw11 = dZ11 X22 + dZ12 X23 + dZ21 X32 + dZ22 X33 (1-based, as printed)
    expected_w11 = D[0, 0] * X[1, 1] + D[0, 1] * X[1, 2] + D[1, 0] * X[2, 1] + D[1, 1] * X[2, 2]
    assert conv.grads["W"][0, 0, 0, 0] == pytest.approx(expected_w11)
    # Fig. 11.5.9, the first image pixel: dZ11 w22 + dZ12 w23 + dZ21 w32 + dZ22 w33
    expected_x11 = D[0, 0] * w[1, 1] + D[0, 1] * w[1, 2] + D[1, 0] * w[2, 1] + D[1, 1] * w[2, 2]
    assert dx[0, 0, 0, 0] == pytest.approx(expected_x11)
    assert conv.grads["b"][0] == pytest.approx(D.sum())


# -- construction, shapes and errors ---------------------------------------------------------


def test_fixed_conv_from_kernels() -> None:
    layer = ncnn.FixedConv2D.from_kernels(["sobel_x", "line_x2"], in_channels=2)
    assert layer.params["W"].shape == (2, 2, 3, 3)
    assert layer.padding == 1 and not layer.trainable and not layer.has_bias
    np.testing.assert_array_equal(layer.params["W"][0, 1], kb.get("sobel_x").weight)
    assert layer.names == ["sobel_x", "line_x2"]
    assert layer.parameters() == []
    with pytest.raises(ValueError):
        layer.params["W"][0, 0, 0, 0] = 5.0  # read-only
    with pytest.raises(ConvscopeError, match="unknown kernel"):
        ncnn.FixedConv2D.from_kernels(["no_such_kernel"])


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ConvscopeError, match="convention"):
        ncnn.Conv2D(1, 1, 3, convention="flipped")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="odd kernel"):
        ncnn.Conv2D(1, 1, 2, padding="same")
    with pytest.raises(ConvscopeError, match=r"expects \(N, 3, H, W\)"):
        ncnn.Conv2D(3, 1, 3).forward(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ConvscopeError, match="does not fit"):
        ncnn.Conv2D(1, 1, 5).forward(np.zeros((1, 1, 3, 3)))
    with pytest.raises(ConvscopeError, match="before forward"):
        ncnn.Dense(2, 2).backward(np.zeros((1, 2)))
    with pytest.raises(ConvscopeError, match="Flatten"):
        ncnn.Dense(4, 2).forward(np.zeros((1, 2, 2, 1)))
    with pytest.raises(ConvscopeError, match="probabilities"):
        ncnn.BinaryCrossEntropy()(np.array([[2.0]]), np.array([1]))
    with pytest.raises(ConvscopeError, match="dropout probability"):
        ncnn.Dropout(1.0)


def test_float32_stays_float32() -> None:
    net = ncnn.Sequential(
        ncnn.Conv2D(1, 2, 3, padding="same", seed=0),
        ncnn.BatchNorm(2),
        ncnn.ReLU(),
        ncnn.MaxPool2D(2),
        ncnn.GlobalAvgPool(),
        ncnn.Dense(2, 3, seed=0),
        ncnn.Softmax(),
    ).astype(np.float32)
    out = net.forward(RNG.random((4, 1, 6, 6)).astype(np.float32))
    assert out.dtype == np.float32
    loss = ncnn.BinaryCrossEntropy()
    loss(out, np.array([0, 1, 2, 0]))
    dx = net.backward(loss.backward())
    assert dx is not None and dx.dtype == np.float32
    assert all(g.dtype == np.float32 for _, g in net.parameters())
