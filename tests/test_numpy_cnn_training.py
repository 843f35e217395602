"""NumPy CNN training: optimizers, Sequential.fit, fixed filters, batch-norm calibration."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convscope import kernels as kb
from convscope import numpy_cnn as ncnn
from convscope.data import load_mnist_subset
from convscope.errors import ConvscopeError
from convscope.numpy_cnn.networks import mnist_cnn

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "convscope" / "numpy_cnn"


def test_importing_numpy_cnn_does_not_import_torch() -> None:
    code = (
        "import sys, convscope, convscope.numpy_cnn, convscope.numpy_cnn.networks; "
        "import convscope.numpy_cnn.walkthrough, convscope.numpy_cnn.plots; "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "assert convscope.numpy_cnn.Conv2D is not None"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_source_file_in_numpy_cnn_mentions_a_torch_import() -> None:
    pattern = re.compile(r"^\s*(import torch|from torch)", re.MULTILINE)
    offenders = [p.name for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_numpy_cnn_is_a_lazy_submodule() -> None:
    import convscope

    assert "numpy_cnn" in convscope.__all__
    assert convscope.numpy_cnn.Sequential is ncnn.Sequential


def test_all_is_sorted_and_complete() -> None:
    assert ncnn.__all__ == sorted(ncnn.__all__)
    assert all(hasattr(ncnn, name) for name in ncnn.__all__)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ncnn.SGD(0.05),
        lambda: ncnn.Momentum(0.02, 0.9),
        lambda: ncnn.Adagrad(0.5),
        lambda: ncnn.RMSprop(0.05),
        lambda: ncnn.Adam(0.1),
    ],
)
def test_optimizers_decrease_a_convex_quadratic(make: object) -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 6))
    a = q @ q.T + 0.5 * np.eye(6)  # symmetric positive definite
    b = rng.normal(size=6)
    optimum = np.linalg.solve(a, b)

    def f(p: np.ndarray) -> float:
        return float(0.5 * p @ a @ p - b @ p)

    p = np.zeros(6)
    g = np.zeros(6)
    opt = make()  # type: ignore[operator]
    start = f(p)
    for _ in range(500):
        g[:] = a @ p - b
        opt.step([(p, g)])
    assert f(p) < start
    assert f(p) - f(optimum) < 0.02 * (start - f(optimum))


def test_optimizer_refuses_a_different_parameter_list() -> None:
    opt = ncnn.Adam()
    opt.step([(np.zeros(2), np.ones(2))])
    with pytest.raises(ConvscopeError, match="reset"):
        opt.step([(np.zeros(2), np.ones(2)), (np.zeros(1), np.ones(1))])


@pytest.fixture(scope="module")
def tiny_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train, test = load_mnist_subset("train"), load_mnist_subset("test")

    # 14x14 (2x2 average) keeps the real digits and makes every step cheap
    def shrink(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 1, 14, 2, 14, 2).mean(axis=(3, 5))

    return (
        shrink(train.images[:400]),
        train.labels[:400],
        shrink(test.images[:200]),
        test.labels[:200],
    )


def test_fit_reduces_the_loss_on_real_digits(tiny_mnist: tuple[np.ndarray, ...]) -> None:
    x, y, xt, yt = tiny_mnist
    net = ncnn.Sequential(
        ncnn.Conv2D(1, 8, 3, padding="same", seed=0),
        ncnn.ReLU(),
        ncnn.MaxPool2D(2),
        ncnn.Flatten(),
        ncnn.Dense(8 * 7 * 7, 10, seed=1),
        ncnn.Softmax(),
    ).astype(np.float32)
    before = net.evaluate(xt, yt, loss="bce")
    hist = net.fit(
        x,
        y,
        epochs=3,
        batch_size=32,
        optimizer=ncnn.Adam(3e-3),
        loss="bce",
        validation_data=(xt, yt),
        progress=False,
    )
    assert set(hist) == {"loss", "accuracy", "time", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in hist.values())
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["val_loss"][-1] < before["loss"]
    assert hist["val_accuracy"][-1] > 0.6
    after = net.evaluate(xt, yt, loss="bce")
    assert after["loss"] == pytest.approx(hist["val_loss"][-1])
    classes = net.predict_classes(xt)
    assert classes.shape == (200,) and after["accuracy"] == pytest.approx(np.mean(classes == yt))
    assert net.predict(xt).shape == (200, 10)


def test_fixed_filters_never_change_during_fit(tiny_mnist: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = tiny_mnist
    fixed = ncnn.FixedConv2D.from_kernels(
        ["sobel_x", "sobel_y", "laplacian_4", "line_x2"], bias=0.1
    )
    frozen = ncnn.Conv2D(4, 4, 3, padding="same", trainable=False, seed=0)
    dense = ncnn.Dense(4 * 7 * 7, 10, seed=1)
    net = ncnn.Sequential(
        fixed,
        ncnn.ReLU(),
        frozen,
        ncnn.Tanh(),
        ncnn.MaxPool2D(2),
        ncnn.Flatten(),
        dense,
        ncnn.Softmax(),
    )
    snapshot = [p.copy() for layer in (fixed, frozen) for p in layer.params.values()]
    dense_before = dense.params["W"].copy()
    hist = net.fit(x, y, epochs=2, batch_size=50, optimizer="adam", loss="bce", progress=False)
    after = [p for layer in (fixed, frozen) for p in layer.params.values()]
    for a, b in zip(snapshot, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(dense.params["W"], dense_before)
    assert hist["loss"][-1] < hist["loss"][0]
    assert len(net.parameters()) == 2  # the dense layer's W and b only


def test_categorical_cross_entropy_on_logits_trains(tiny_mnist: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = tiny_mnist
    net = ncnn.Sequential(
        ncnn.Flatten(),
        ncnn.Dense(196, 32, seed=0),
        ncnn.ReLU(),
        ncnn.Dropout(0.2, seed=0),
        ncnn.Dense(32, 10, seed=1),
    )
    hist = net.fit(
        x, y, epochs=3, batch_size=40, optimizer=ncnn.Momentum(0.05), loss="cce", progress=False
    )
    assert hist["loss"][-1] < hist["loss"][0] and hist["accuracy"][-1] > 0.5


def test_calibrate_batchnorm_sets_exact_statistics() -> None:
    rng = np.random.default_rng(1)
    net = mnist_cnn(seed=0, width=4, hidden=6)
    x = rng.random((30, 1, 8, 8))
    assert net.calibrate_batchnorm(x, batch_size=7) == 1
    bn = net[9]
    h = x
    net.eval()
    for layer in net.layers[:9]:
        h = layer.forward(h)
    np.testing.assert_allclose(bn.running_mean, h.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(bn.running_var, h.var(axis=0, ddof=1), rtol=1e-8)


def test_mnist_cnn_shapes_and_fixed_variants() -> None:
    net = mnist_cnn(seed=0)
    assert net.forward(np.zeros((2, 1, 28, 28))).shape == (2, 10)
    first = mnist_cnn(seed=0, fixed="first")
    assert isinstance(first[0], ncnn.FixedConv2D) and first[0].out_channels == 32
    assert first[0].names is not None and first[0].names[0] == "prewitt_compass_e"
    assert type(first[3]) is ncnn.Conv2D and first[3].trainable
    assert first.num_parameters() == net.num_parameters() - 32 * 9 - 32
    every = mnist_cnn(seed=0, fixed="all")
    assert isinstance(every[0], ncnn.FixedConv2D) and isinstance(every[3], ncnn.FixedConv2D)
    assert every.forward(np.zeros((2, 1, 28, 28))).shape == (2, 10)
    # only the dense part learns: dense 32->32, batch norm 32, dense 32->10
    learners = [type(la) for la in every if la.parameters()]
    assert learners == [ncnn.Dense, ncnn.BatchNorm, ncnn.Dense]
    assert every.num_parameters() == (32 * 32 + 32) + 2 * 32 + (32 * 10 + 10)
    assert (
        every.num_parameters(trainable_only=False) == every.num_parameters() + 32 * 9 + 32 * 32 * 9
    )


def test_mnist_cnn_keeps_the_older_first_layer_spelling() -> None:
    old = mnist_cnn(seed=3, first_layer="fixed")
    new = mnist_cnn(seed=3, fixed="first")
    for a, b in zip(old, new, strict=True):
        assert type(a) is type(b)
        for k in a.params:
            np.testing.assert_array_equal(a.params[k], b.params[k])
    assert isinstance(mnist_cnn(first_layer="learned", fixed="none")[0], ncnn.Conv2D)
    with pytest.raises(ConvscopeError, match="first_layer"):
        mnist_cnn(first_layer="random")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="fixed must be one of"):
        mnist_cnn(fixed="second")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="disagree"):
        mnist_cnn(fixed="all", first_layer="fixed")


def test_fixed_variants_start_their_dense_part_from_the_same_weights() -> None:
    nets = {mode: mnist_cnn(seed=5, fixed=mode) for mode in ("none", "first", "all")}  # type: ignore[arg-type]
    for i in (7, 10):  # the two dense layers
        for mode in ("first", "all"):
            for k in ("W", "b"):
                np.testing.assert_array_equal(nets[mode][i].params[k], nets["none"][i].params[k])
    np.testing.assert_array_equal(nets["first"][3].params["W"], nets["none"][3].params["W"])
    assert nets["none"][9].eps == 1e-5 and nets["none"][9].momentum == 0.1


def test_second_fixed_layer_is_one_kernel_on_every_channel_summed() -> None:
    # section 11.4: filter r is a tensor over all input channels with one (here no) bias;
    # section 11.2.1 repeats the same component over the depth, so the layer correlates
    # the channel sum with kernel r
    net = mnist_cnn(seed=0, fixed="all", second_kernels=["sobel_x", "laplacian_4", "box_blur"])
    second = net[3]
    assert isinstance(second, ncnn.FixedConv2D)
    assert second.params["W"].shape == (3, 32, 3, 3) and not second.has_bias
    for r, name in enumerate(["sobel_x", "laplacian_4", "box_blur"]):
        for c in (0, 17, 31):
            np.testing.assert_array_equal(second.params["W"][r, c], kb.get(name).weight)
    x = np.random.default_rng(2).random((2, 32, 6, 6))
    out = second.forward(x)
    for n in range(2):
        for r, name in enumerate(second.names or []):
            ref = kb.correlate2d(x[n].sum(axis=0), kb.get(name).weight, padding=1)
            np.testing.assert_allclose(out[n, r], ref, rtol=1e-12, atol=1e-12)
    assert net[7].in_features == 3


def test_fixed_conv_has_nothing_to_learn_and_optimizers_cannot_move_it() -> None:
    layer = ncnn.FixedConv2D.from_kernels(kb.edge_subset(8), in_channels=2, bias=0.5)
    assert layer.parameters() == [] and layer.grads == {}
    before = {k: v.tobytes() for k, v in layer.params.items()}
    x = np.random.default_rng(0).random((3, 2, 7, 7))
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape and layer.grads == {}
    for make in (ncnn.SGD, ncnn.Momentum, ncnn.Adagrad, ncnn.RMSprop, ncnn.Adam):
        opt = make(0.1)
        opt.step(layer.parameters())  # nothing offered: nothing moves
        with pytest.raises(ValueError, match="read-only"):  # and nothing could
            make(0.1).step([(layer.params["W"], np.ones_like(layer.params["W"]))])
    assert {k: v.tobytes() for k, v in layer.params.items()} == before
    layer.astype(np.float32)
    assert layer.params["W"].dtype == np.float32 and not layer.params["W"].flags.writeable


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_all_fixed_network_learns_only_its_dense_part(
    tiny_mnist: tuple[np.ndarray, ...], optimizer: str
) -> None:
    x, y, xt, yt = tiny_mnist
    net = mnist_cnn(seed=1, fixed="all", fixed_kernels=kb.edge_subset(8), width=8, hidden=8)
    fixed = [la for la in net if isinstance(la, ncnn.FixedConv2D)]
    assert len(fixed) == 2
    frozen = [{k: v.tobytes() for k, v in la.params.items()} for la in fixed]
    learners = [la for la in net if la.parameters()]
    start = [{k: v.copy() for k, v in la.params.items()} for la in learners]

    # nothing below the first dense layer runs backward during training
    def refuse(*_: object) -> None:
        raise AssertionError("backward ran through a fixed layer")

    for i in range(7):
        for name in ("backward", "backward_params", "backward_input"):
            if hasattr(net[i], name):
                setattr(net[i], name, refuse)
    hist = net.fit(x, y, epochs=2, batch_size=50, optimizer=optimizer, loss="bce", progress=False)
    assert [{k: v.tobytes() for k, v in la.params.items()} for la in fixed] == frozen
    for la, before in zip(learners, start, strict=True):
        assert all(not np.array_equal(la.params[k], before[k]) for k in before)
    assert np.isfinite(hist["loss"]).all()


def test_backward_stops_at_the_lowest_trainable_layer_with_the_same_gradients() -> None:
    rng = np.random.default_rng(4)
    x = rng.random((5, 1, 8, 8))
    y = rng.integers(0, 10, 5)
    net = mnist_cnn(seed=2, fixed="first", fixed_kernels=kb.edge_subset(4), width=4, hidden=6)
    loss = ncnn.BinaryCrossEntropy()
    loss(net.forward(x), y)
    dx = net.backward(loss.backward(), input_grad=True)
    assert dx is not None and dx.shape == x.shape
    full = [g.copy() for _, g in net.parameters()]
    loss(net.forward(x), y)
    assert net.backward(loss.backward(), input_grad=False) is None
    for a, (_, b) in zip(full, net.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)
