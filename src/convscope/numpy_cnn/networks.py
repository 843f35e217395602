"""Ready-made networks from the textbook."""

from __future__ import annotations

from typing import Literal

import numpy as np

from convscope.errors import ConvscopeError
from convscope.numpy_cnn.activations import Sigmoid, Softmax
from convscope.numpy_cnn.layers import (
    AvgPool2D,
    Conv2D,
    Dense,
    FixedConv2D,
    GlobalAvgPool,
    Layer,
    MaxPool2D,
)
from convscope.numpy_cnn.layers.base import as_rng
from convscope.numpy_cnn.model import Sequential
from convscope.numpy_cnn.normalization import BatchNorm

__all__ = ["mnist_cnn"]


def mnist_cnn(
    seed: np.random.Generator | int | None = 0,
    *,
    width: int = 32,
    hidden: int = 32,
    num_classes: int = 10,
    in_channels: int = 1,
    pooling: Literal["max", "avg"] = "max",
    first_layer: Literal["learned", "fixed"] = "learned",
    fixed_kernels: list[str] | None = None,
) -> Sequential:
    """The MNIST CNN of the textbook's section 11.6.1.

    conv 3x3 (``width`` filters, padding 1) -> sigmoid -> 2x2 pool -> conv 3x3 (``width``
    filters, padding 1) -> sigmoid -> 2x2 pool -> global average pooling -> dense
    ``hidden`` -> sigmoid -> batch norm -> dense ``num_classes`` -> softmax. The chapter
    trains it with binary cross-entropy over one-hot classes.

    Args:
        seed: seed or generator for the initial weights (He for convolutions, Glorot for
            the dense layers, which feed sigmoids).
        width: filters in each convolution (32 in the chapter).
        hidden: units of the hidden dense layer (32).
        num_classes: output classes (10).
        in_channels: image channels (1).
        pooling: ``"max"`` (default: the chapter's pooling layer with the kind it says
            works better) or ``"avg"``.
        first_layer: ``"learned"``, or ``"fixed"`` to use a :class:`FixedConv2D` of kernels
            from :mod:`convscope.kernels` that never changes (section 11.4).
        fixed_kernels: kernel names for the fixed first layer; default the 32 compass edge
            kernels of the GFNN bank (indices 0-31). Their count replaces ``width`` there.

    Returns:
        An untrained :class:`Sequential` in float64.

    Shapes:
        (N, in_channels, H, W) -> (N, num_classes) probabilities; H and W at least 4.
    """
    rng = as_rng(seed)
    pool: type[Layer] = {"max": MaxPool2D, "avg": AvgPool2D}[pooling]
    first: Conv2D
    if first_layer == "learned":
        first = Conv2D(in_channels, width, 3, padding="same", seed=rng)
    elif first_layer == "fixed":
        from convscope import kernels as kb

        names = fixed_kernels or kb.edge_subset(32)
        first = FixedConv2D.from_kernels(names, in_channels=in_channels, padding="same")
    else:
        raise ConvscopeError(f'first_layer must be "learned" or "fixed", got {first_layer!r}')
    return Sequential(
        first,
        Sigmoid(),
        pool(2),  # type: ignore[call-arg]
        Conv2D(first.out_channels, width, 3, padding="same", seed=rng),
        Sigmoid(),
        pool(2),  # type: ignore[call-arg]
        GlobalAvgPool(),
        Dense(width, hidden, init="xavier", seed=rng),
        Sigmoid(),
        BatchNorm(hidden),
        Dense(hidden, num_classes, init="xavier", seed=rng),
        Softmax(),
    )
