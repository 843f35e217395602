"""NumPy CNN against PyTorch: the same numbers to 1e-10 in float64, forward and backward.

PyTorch is imported here, in the tests only; ``convscope.numpy_cnn`` never imports it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from convscope import numpy_cnn as ncnn  # noqa: E402

RNG = np.random.default_rng(7)
TOL = {"rtol": 1e-10, "atol": 1e-10}


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _compare(
    layer: ncnn.Layer,
    torch_fn: Callable[..., torch.Tensor],
    x: np.ndarray,
    params: dict[str, np.ndarray] | None = None,
) -> None:
    """Forward values, input gradient and parameter gradients of layer vs torch_fn."""
    tx = _t(x, grad=True)
    tp = {k: _t(v, grad=True) for k, v in (params or {}).items()}
    ty = torch_fn(tx, **tp)
    y = layer.forward(x)
    np.testing.assert_allclose(y, _np(ty), **TOL)
    dy = RNG.normal(size=y.shape)
    ty.backward(_t(dy))
    np.testing.assert_allclose(layer.backward(dy), _np(tx.grad), **TOL)
    for k, t in tp.items():
        np.testing.assert_allclose(layer.grads[k], _np(t.grad), **TOL)


@pytest.mark.parametrize("convention", ["correlation", "convolution"])
@pytest.mark.parametrize(
    "c,o,k,stride,padding,size",
    [
        (1, 4, 3, 1, 1, (8, 8)),
        (3, 5, 3, 2, 0, (9, 10)),
        (2, 3, 5, 3, 2, (11, 8)),
        (4, 2, 2, 2, 1, (7, 7)),
        (3, 6, 1, 1, 0, (5, 6)),
    ],
)
def test_conv_matches_torch(
    convention: str, c: int, o: int, k: int, stride: int, padding: int, size: tuple[int, int]
) -> None:
    conv = ncnn.Conv2D(c, o, k, stride, padding, convention, seed=0)  # type: ignore[arg-type]
    conv.params["b"][:] = RNG.normal(size=o)

    def reference(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # convolution = correlation with the kernel rotated by 180 degrees (eq. 11.2.3)
        kernel = W.flip(-1, -2) if convention == "convolution" else W
        return F.conv2d(x, kernel, b, stride=stride, padding=padding)

    x = RNG.normal(size=(3, c, *size))
    _compare(conv, reference, x, {"W": conv.params["W"], "b": conv.params["b"]})


@pytest.mark.parametrize(
    "k,stride,size",
    [(2, 2, (8, 8)), (2, 2, (7, 9)), (3, 2, (9, 8)), (3, 1, (6, 6)), (3, 3, (10, 7))],
)
def test_pooling_matches_torch(k: int, stride: int, size: tuple[int, int]) -> None:
    x = RNG.normal(size=(2, 3, *size))
    _compare(ncnn.MaxPool2D(k, stride), lambda t: F.max_pool2d(t, k, stride), x)
    _compare(ncnn.AvgPool2D(k, stride), lambda t: F.avg_pool2d(t, k, stride), x)


def test_global_pool_flatten_dense_activations_match_torch() -> None:
    x4 = RNG.normal(size=(3, 4, 5, 6))
    _compare(ncnn.GlobalAvgPool(), lambda t: t.mean(dim=(2, 3)), x4)
    _compare(ncnn.Flatten(), lambda t: torch.flatten(t, 1), x4)
    _compare(ncnn.ReLU(), torch.relu, x4)
    _compare(ncnn.Sigmoid(), torch.sigmoid, x4 * 5)
    _compare(ncnn.Tanh(), torch.tanh, x4)
    _compare(ncnn.Softmax(), lambda t: torch.softmax(t, dim=1), RNG.normal(size=(4, 7)) * 3)
    _compare(ncnn.Softmax(), lambda t: torch.softmax(t, dim=1), x4)
    dense = ncnn.Dense(6, 4, seed=1)
    dense.params["b"][:] = RNG.normal(size=4)
    _compare(
        dense,
        lambda t, W, b: F.linear(t, W, b),
        RNG.normal(size=(5, 6)),
        {"W": dense.params["W"], "b": dense.params["b"]},
    )


@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 3, 2)])
def test_batchnorm_matches_torch_in_train_and_eval(shape: tuple[int, ...]) -> None:
    bn = ncnn.BatchNorm(5, eps=1e-5, momentum=0.1)
    tbn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(5).double()
    gamma, beta = RNG.uniform(0.5, 1.5, size=5), RNG.normal(size=5)
    bn.params["gamma"][:], bn.params["beta"][:] = gamma, beta
    with torch.no_grad():
        tbn.weight.copy_(_t(gamma))
        tbn.bias.copy_(_t(beta))
    for training in (True, True, False):  # two training batches move the running statistics
        bn.train(training)
        tbn.train(training)
        x = RNG.normal(size=shape) * 3 + 2
        tx = _t(x, grad=True)
        ty = tbn(tx)
        y = bn.forward(x)
        np.testing.assert_allclose(y, _np(ty), **TOL)
        dy = RNG.normal(size=shape)
        ty.backward(_t(dy))
        np.testing.assert_allclose(bn.backward(dy), _np(tx.grad), **TOL)
        np.testing.assert_allclose(bn.grads["gamma"], _np(tbn.weight.grad), **TOL)
        np.testing.assert_allclose(bn.grads["beta"], _np(tbn.bias.grad), **TOL)
        tbn.zero_grad()
        np.testing.assert_allclose(bn.running_mean, _np(tbn.running_mean), **TOL)
        np.testing.assert_allclose(bn.running_var, _np(tbn.running_var), **TOL)


def _loss_pair(
    loss: ncnn.Loss,
    torch_loss: Callable[..., torch.Tensor],
    pred: np.ndarray,
    target: np.ndarray,
    torch_target: torch.Tensor,
) -> None:
    tp = _t(pred, grad=True)
    tl = torch_loss(tp, torch_target)
    assert loss(pred, target) == pytest.approx(tl.item(), rel=1e-12, abs=1e-12)
    tl.backward()
    np.testing.assert_allclose(loss.backward(), _np(tp.grad), **TOL)


def test_losses_match_torch() -> None:
    labels = RNG.integers(0, 4, size=6)
    onehot = ncnn.one_hot(labels, 4)
    probs = RNG.dirichlet(np.ones(4), size=6)
    _loss_pair(ncnn.BinaryCrossEntropy(), F.binary_cross_entropy, probs, labels, _t(onehot))
    p1 = RNG.uniform(0.01, 0.99, size=(6, 1))
    y1 = RNG.integers(0, 2, size=6)
    _loss_pair(ncnn.BinaryCrossEntropy(), F.binary_cross_entropy, p1, y1, _t(y1[:, None] * 1.0))
    logits = RNG.normal(size=(6, 4)) * 2
    _loss_pair(
        ncnn.CategoricalCrossEntropy(), F.cross_entropy, logits, labels, torch.tensor(labels)
    )
    soft = RNG.dirichlet(np.ones(4), size=6)
    _loss_pair(ncnn.CategoricalCrossEntropy(), F.cross_entropy, logits, soft, _t(soft))
    pred, target = RNG.normal(size=(6, 3)), RNG.normal(size=(6, 3))
    _loss_pair(ncnn.MeanSquaredError(), F.mse_loss, pred, target, _t(target))


def test_softmax_then_bce_matches_torch() -> None:
    # the chapter's output: softmax probabilities scored by binary cross-entropy
    logits = RNG.normal(size=(5, 10))
    labels = RNG.integers(0, 10, size=5)
    soft, loss = ncnn.Softmax(), ncnn.BinaryCrossEntropy()
    value = loss(soft.forward(logits), labels)
    grad = soft.backward(loss.backward())
    tz = _t(logits, grad=True)
    tl = F.binary_cross_entropy(torch.softmax(tz, 1), _t(ncnn.one_hot(labels, 10)))
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(grad, _np(tz.grad), **TOL)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda: ncnn.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
        (lambda: ncnn.Momentum(0.1, 0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        (lambda: ncnn.Adagrad(0.1), lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-8)),
        (
            lambda: ncnn.RMSprop(0.01, rho=0.9),
            lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-8),
        ),
        (lambda: ncnn.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    ],
)
def test_optimizer_steps_match_torch(
    ours: Callable[[], ncnn.Optimizer],
    theirs: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
) -> None:
    params = [RNG.normal(size=(3, 2)), RNG.normal(size=4)]
    tparams = [_t(p.copy(), grad=True) for p in params]
    opt, topt = ours(), theirs(tparams)
    for _ in range(5):
        grads = [RNG.normal(size=p.shape) for p in params]
        opt.step(list(zip(params, grads, strict=True)))
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = _t(g)
        topt.step()
    for p, tp in zip(params, tparams, strict=True):
        np.testing.assert_allclose(p, _np(tp), **TOL)


def test_chapter_network_step_matches_torch() -> None:
    # one training step of the section 11.6.1 network, float64, same weights, same batch
    from numpy_cnn_twin import chapter_network, torch_twin

    net = chapter_network(seed=0, width=4)
    model = torch_twin(net, torch.float64)
    x = RNG.random((6, 1, 12, 12))
    y = RNG.integers(0, 10, 6)
    opt, topt = ncnn.Adam(1e-2), torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = ncnn.BinaryCrossEntropy()
    for _ in range(3):
        value = loss(net.forward(x), y)
        net.backward(loss.backward(), input_grad=False)
        opt.step(net.parameters())
        topt.zero_grad()
        tl = F.binary_cross_entropy(model(_t(x)), _t(ncnn.one_hot(y, 10)))
        tl.backward()
        topt.step()
        assert value == pytest.approx(tl.item(), rel=1e-10)
    net.eval()
    model.eval()
    np.testing.assert_allclose(net.forward(x), _np(model(_t(x))), **TOL)


@pytest.mark.parametrize("fixed", ["none", "first", "all"])
def test_chapter_network_forward_matches_torch_in_float64(fixed: str) -> None:
    # the full-size section 11.6.1 network, learned or with fixed filters (section 11.4)
    from numpy_cnn_twin import torch_twin

    net = ncnn.mnist_cnn(seed=1, fixed=fixed)  # type: ignore[arg-type]
    model = torch_twin(net, torch.float64)
    fixed_in_torch = [
        m for m in model if isinstance(m, torch.nn.Conv2d) and not m.weight.requires_grad
    ]
    assert len(fixed_in_torch) == {"none": 0, "first": 1, "all": 2}[fixed]
    n_torch = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_torch == net.num_parameters()
    x = RNG.random((3, 1, 28, 28))
    for train in (True, False):
        net.train(train)
        model.train(train)
        np.testing.assert_allclose(net.forward(x), _np(model(_t(x))), **TOL)


@pytest.mark.parametrize("fixed", ["none", "first", "all"])
def test_fit_and_the_torch_twin_train_the_same_weights(fixed: str) -> None:
    # same initial weights, same batches in the same order, same Adam: the same network
    from numpy_cnn_twin import chapter_network, fit_torch_twin, torch_twin

    net = chapter_network(seed=3, width=4, fixed=fixed)
    model = torch_twin(net, torch.float64)
    x = RNG.random((40, 1, 12, 12))
    y = RNG.integers(0, 10, 40)
    hist = net.fit(x, y, epochs=2, batch_size=16, optimizer=ncnn.Adam(1e-2), progress=False, seed=9)
    thist = fit_torch_twin(model, x, y, epochs=2, batch_size=16, lr=1e-2, seed=9)
    np.testing.assert_allclose(hist["loss"], thist["loss"], rtol=1e-10)
    assert hist["accuracy"] == thist["accuracy"]
    after = torch_twin(net, torch.float64)  # the NumPy weights after training, in torch form
    for (name, a), b in zip(after.state_dict().items(), model.state_dict().values(), strict=True):
        if "num_batches" in name:
            continue
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-8, atol=1e-10, err_msg=name)
    for i, layer in enumerate(net):
        if isinstance(layer, ncnn.FixedConv2D):  # never moved, on either side
            start = chapter_network(seed=3, width=4, fixed=fixed)[i]
            np.testing.assert_array_equal(layer.params["W"], start.params["W"])
            np.testing.assert_array_equal(_np(model[i].weight), start.params["W"])
