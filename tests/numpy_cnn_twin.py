"""A PyTorch twin of a ``convscope.numpy_cnn.Sequential``: same layers, same weights.

Used by the tests (layer-by-layer agreement), ``benchmarks/numpy_cnn.py`` (speed of the
same network in PyTorch) and ``experiments/numpy_cnn_mnist.py`` (the same network and
schedule trained in PyTorch). Lives outside the package because ``convscope.numpy_cnn``
must never import torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope import kernels as kb
from convscope import numpy_cnn as ncnn
from convscope.numpy_cnn.networks import mnist_cnn

__all__ = [
    "calibrate_torch_batchnorm",
    "chapter_network",
    "fit_torch_twin",
    "torch_twin",
    "trainable_parameters",
]


def chapter_network(
    seed: int = 0, width: int = 32, fixed: str = "none", **kw: Any
) -> ncnn.Sequential:
    """The section 11.6.1 network (``mnist_cnn``), float64; ``fixed`` none/first/all.

    With ``fixed`` other than ``"none"`` the fixed banks are the first ``width`` compass
    edge kernels, so the shapes stay ``width`` wide.
    """
    if fixed != "none" and "fixed_kernels" not in kw:
        kw["fixed_kernels"] = kb.edge_subset(32)[:width]
    return mnist_cnn(seed, width=width, hidden=width, fixed=fixed, **kw)  # type: ignore[arg-type]


class _Rotated(nn.Module):
    """conv2d with the kernel rotated by 180 degrees: the "convolution" convention."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return nn.functional.conv2d(x, c.weight.flip(-1, -2), c.bias, c.stride, c.padding)


def _copy(dst: torch.Tensor, src: np.ndarray) -> None:
    with torch.no_grad():
        dst.copy_(torch.as_tensor(np.array(src), dtype=dst.dtype))


def torch_twin(net: ncnn.Sequential, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """An ``nn.Sequential`` computing the same function, with the current weights copied.

    Layer ``i`` of the twin corresponds to layer ``i`` of ``net``; fixed convolutions get
    ``requires_grad=False`` weights. The weights are created in ``dtype`` before copying, so
    a float64 twin holds exactly the NumPy values.
    """
    mods: list[nn.Module] = []
    for layer in net:
        if isinstance(layer, ncnn.Conv2D):
            conv = nn.Conv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                bias=layer.has_bias,
                dtype=dtype,
            )
            _copy(conv.weight, layer.params["W"])
            if layer.has_bias:
                _copy(conv.bias, layer.params["b"])
            conv.requires_grad_(layer.trainable)
            mods.append(conv if layer.convention == "correlation" else _Rotated(conv))
        elif isinstance(layer, ncnn.Dense):
            lin = nn.Linear(
                layer.in_features, layer.out_features, bias="b" in layer.params, dtype=dtype
            )
            _copy(lin.weight, layer.params["W"])
            if "b" in layer.params:
                _copy(lin.bias, layer.params["b"])
            mods.append(lin)
        elif isinstance(layer, ncnn.BatchNorm):
            bn = nn.BatchNorm1d(
                layer.num_features, eps=layer.eps, momentum=layer.momentum, dtype=dtype
            )
            _copy(bn.weight, layer.params["gamma"])
            _copy(bn.bias, layer.params["beta"])
            _copy(bn.running_mean, layer.running_mean)
            _copy(bn.running_var, layer.running_var)
            mods.append(bn)
        elif isinstance(layer, ncnn.MaxPool2D):
            mods.append(nn.MaxPool2d(layer.kernel_size, layer.stride))
        elif isinstance(layer, ncnn.AvgPool2D):
            mods.append(nn.AvgPool2d(layer.kernel_size, layer.stride))
        elif isinstance(layer, ncnn.GlobalAvgPool):
            mods.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        elif isinstance(layer, ncnn.Flatten):
            mods.append(nn.Flatten())
        elif isinstance(layer, ncnn.Sigmoid):
            mods.append(nn.Sigmoid())
        elif isinstance(layer, ncnn.ReLU):
            mods.append(nn.ReLU())
        elif isinstance(layer, ncnn.Tanh):
            mods.append(nn.Tanh())
        elif isinstance(layer, ncnn.Softmax):
            mods.append(nn.Softmax(dim=1))
        elif isinstance(layer, ncnn.Dropout) and layer.method == "bernoulli":
            mods.append(nn.Dropout(layer.p))
        else:
            raise TypeError(f"no PyTorch twin for {layer!r}")
    return nn.Sequential(*mods)


@torch.no_grad()
def calibrate_torch_batchnorm(model: nn.Sequential, x: torch.Tensor, batch_size: int = 256) -> None:
    """The torch side of ``Sequential.calibrate_batchnorm``: exact statistics over ``x``."""
    was_training = model.training
    model.eval()
    for j, mod in enumerate(model):
        if not isinstance(mod, nn.modules.batchnorm._BatchNorm):
            continue
        feats = torch.cat([model[:j](x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        dims = [0] if feats.ndim == 2 else [0, 2, 3]
        f64 = feats.double()
        mod.running_mean.copy_(f64.mean(dim=dims))
        mod.running_var.copy_(f64.var(dim=dims, unbiased=True))
    model.train(was_training)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should see: those with ``requires_grad``."""
    return [p for p in model.parameters() if p.requires_grad]


def fit_torch_twin(
    model: nn.Sequential,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    num_classes: int = 10,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, list[float]]:
    """Train a twin as ``Sequential.fit`` trains the NumPy network.

    Adam (``lr``) on the trainable parameters, binary cross-entropy over one-hot classes,
    and the same batches in the same order: one ``numpy.random.default_rng(seed)``
    permutation per epoch, cut into consecutive batches of ``batch_size``.

    Returns:
        ``"loss"`` and ``"accuracy"`` (running means over each epoch's batches, in
        training mode) and ``"time"`` (seconds), one entry per epoch.
    """
    dtype = next(model.parameters()).dtype
    xt = torch.as_tensor(x, dtype=dtype)
    onehot = torch.as_tensor(ncnn.one_hot(np.asarray(y), num_classes), dtype=dtype)
    opt = torch.optim.Adam(trainable_parameters(model), lr=lr)
    rng = np.random.default_rng(seed)
    n = len(xt)
    hist: dict[str, list[float]] = {"loss": [], "accuracy": [], "time": []}
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        seen, loss_sum, correct = 0, 0.0, 0.0
        for i in range(0, n, batch_size):
            idx = torch.as_tensor(order[i : i + batch_size])
            out = model(xt[idx])
            loss = nn.functional.binary_cross_entropy(out, onehot[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            m = len(idx)
            seen += m
            loss_sum += loss.item() * m
            correct += float((out.argmax(1) == onehot[idx].argmax(1)).sum())
        metrics = {
            "loss": loss_sum / seen,
            "accuracy": correct / seen,
            "time": time.perf_counter() - start,
        }
        for k, v in metrics.items():
            hist[k].append(v)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return hist
