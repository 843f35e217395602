"""Dropout, standard (Bernoulli) and Gaussian."""

from __future__ import annotations

from typing import Literal

import numpy as np

from convscope.errors import ConvscopeError
from convscope.numpy_cnn.layers.base import Layer, as_rng

__all__ = ["Dropout"]


class Dropout(Layer):
    """Multiply activations by random noise while training; pass them through in eval mode.

    ``method="bernoulli"`` (the usual "inverted" dropout) zeroes each value with probability
    ``p`` and scales the survivors by ``1 / (1 - p)``, so the expected output equals the
    input and nothing changes at inference. ``method="gaussian"`` multiplies by noise drawn
    from ``N(1, p / (1 - p))``, the Gaussian dropout of Srivastava et al. (2014), which has
    the same mean and variance as the Bernoulli mask.

    Args:
        p: drop probability, ``0 <= p < 1``.
        method: ``"bernoulli"`` or ``"gaussian"``.
        seed: seed or generator for the noise.

    Shapes:
        any -> the same shape.
    """

    def __init__(
        self,
        p: float = 0.5,
        method: Literal["bernoulli", "gaussian"] = "bernoulli",
        *,
        seed: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConvscopeError(f"dropout probability must be in [0, 1), got {p}")
        if method not in ("bernoulli", "gaussian"):
            raise ConvscopeError(f'method must be "bernoulli" or "gaussian", got {method!r}')
        self.p = float(p)
        self.method = method
        self.rng = as_rng(seed)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x * noise`` when training, ``x`` otherwise."""
        if not self.training or self.p == 0.0:
            self._cache = {"mask": None}
            return x
        if self.method == "bernoulli":
            keep = self.rng.random(x.shape) >= self.p
            mask = keep.astype(x.dtype) / (1.0 - self.p)
        else:
            mask = self.rng.normal(1.0, np.sqrt(self.p / (1.0 - self.p)), size=x.shape)
            mask = mask.astype(x.dtype, copy=False)
        self._cache = {"mask": mask}
        return x * mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """The same noise multiplies the gradient."""
        mask = self._saved("mask")
        return dy if mask is None else dy * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, method={self.method!r}"
