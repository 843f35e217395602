"""Ready-made networks from the textbook."""

from __future__ import annotations

from collections.abc import Sequence
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

__all__ = ["FIXED_MODES", "mnist_cnn"]

Fixed = Literal["none", "first", "all"]
FIXED_MODES: tuple[str, ...] = ("none", "first", "all")


def mnist_cnn(
    seed: np.random.Generator | int | None = 0,
    *,
    width: int = 32,
    hidden: int = 32,
    num_classes: int = 10,
    in_channels: int = 1,
    pooling: Literal["max", "avg"] = "max",
    fixed: Fixed | None = None,
    first_layer: Literal["learned", "fixed"] | None = None,
    fixed_kernels: Sequence[str] | None = None,
    second_kernels: Sequence[str] | None = None,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
) -> Sequential:
    """The MNIST CNN of the textbook's section 11.6.1, with learned or fixed filters.

    conv 3x3 (``width`` filters, padding 1) -> sigmoid -> 2x2 pool -> conv 3x3 (``width``
    filters, padding 1) -> sigmoid -> 2x2 pool -> global average pooling -> dense
    ``hidden`` -> sigmoid -> batch norm -> dense ``num_classes`` -> softmax. The chapter
    trains it with binary cross-entropy over one-hot classes.

    Fixed filters (section 11.4) replace convolutions by :class:`FixedConv2D` layers of
    kernels from :mod:`convscope.kernels` that training never changes:

    * ``fixed="first"``: the first convolution is a bank of 2-D kernels (default the 32
      compass edge kernels of the GFNN bank, indices 0-31);
    * ``fixed="all"``: the second convolution is fixed as well, so only the dense part
      (and batch norm) learns, as section 11.4 describes. The second layer sees one map
      per first-layer kernel; section 11.4 makes each fixed filter ``F_r`` a tensor over
      all those input channels with *one* bias for all depths combined, and section 11.2.1
      fills such a tensor "for simplicity" with the same component on every channel. So
      filter ``r`` of the second layer is kernel ``r`` of ``second_kernels`` (default the
      same 32 edge kernels) on every channel, summed over channels:
      ``Z_r = sum_c K_r (star) X_c = K_r (star) (sum_c X_c)``. No bias (it would be a
      constant offset before the sigmoid, and the chapter gives no value for it).

    With the same ``seed`` every variant draws the same random numbers in the same order
    (a fixed convolution draws the weights it replaces and drops them), so the dense
    layers start from identical weights in all three and the comparison is paired.

    Args:
        seed: seed or generator for the initial weights (He for convolutions, Glorot for
            the dense layers, which feed sigmoids).
        width: filters in each learned convolution (32 in the chapter).
        hidden: units of the hidden dense layer (32).
        num_classes: output classes (10).
        in_channels: image channels (1).
        pooling: ``"max"`` (default: the chapter's pooling layer with the kind it says
            works better) or ``"avg"``.
        fixed: ``"none"`` (default, every filter learned), ``"first"`` or ``"all"``.
        first_layer: the older spelling: ``"fixed"`` is ``fixed="first"``, ``"learned"``
            is ``fixed="none"``. Give one of ``fixed`` and ``first_layer``, not both.
        fixed_kernels: kernel names for the fixed first layer; default
            ``convscope.kernels.edge_subset(32)``. Their count replaces ``width`` there.
        second_kernels: kernel names for the fixed second layer (``fixed="all"``);
            default the same names as the first layer. Their count replaces ``width``.
        bn_eps: batch norm's ``eps`` (PyTorch's default 1e-5).
        bn_momentum: weight of the newest batch in batch norm's running statistics
            (PyTorch's default 0.1; Keras writes the same rule as ``momentum = 0.9``).

    Returns:
        An untrained :class:`Sequential` in float64.

    Raises:
        ConvscopeError: for an unknown ``fixed`` / ``first_layer`` or a conflicting pair.

    Shapes:
        (N, in_channels, H, W) -> (N, num_classes) probabilities; H and W at least 4.
    """
    mode = _fixed_mode(fixed, first_layer)
    rng = as_rng(seed)
    pool: type[Layer] = {"max": MaxPool2D, "avg": AvgPool2D}[pooling]
    from convscope import kernels as kb

    first_names = list(fixed_kernels) if fixed_kernels is not None else kb.edge_subset(32)
    first: Conv2D = Conv2D(in_channels, width, 3, padding="same", seed=rng)
    if mode != "none":
        first = FixedConv2D.from_kernels(first_names, in_channels=in_channels, padding="same")
    second: Conv2D = Conv2D(first.out_channels, width, 3, padding="same", seed=rng)
    if mode == "all":
        names = list(second_kernels) if second_kernels is not None else first_names
        second = FixedConv2D.from_kernels(names, in_channels=first.out_channels, padding="same")
    return Sequential(
        first,
        Sigmoid(),
        pool(2),  # type: ignore[call-arg]
        second,
        Sigmoid(),
        pool(2),  # type: ignore[call-arg]
        GlobalAvgPool(),
        Dense(second.out_channels, hidden, init="xavier", seed=rng),
        Sigmoid(),
        BatchNorm(hidden, eps=bn_eps, momentum=bn_momentum),
        Dense(hidden, num_classes, init="xavier", seed=rng),
        Softmax(),
    )


def _fixed_mode(fixed: str | None, first_layer: str | None) -> str:
    if first_layer is not None and first_layer not in ("learned", "fixed"):
        raise ConvscopeError(f'first_layer must be "learned" or "fixed", got {first_layer!r}')
    if fixed is not None and fixed not in FIXED_MODES:
        raise ConvscopeError(f"fixed must be one of {', '.join(FIXED_MODES)}; got {fixed!r}")
    old = None if first_layer is None else {"learned": "none", "fixed": "first"}[first_layer]
    if fixed is not None and old is not None and fixed != old:
        raise ConvscopeError(
            f"fixed={fixed!r} and first_layer={first_layer!r} disagree; give only fixed"
        )
    return fixed or old or "none"
