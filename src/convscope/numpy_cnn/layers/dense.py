"""Fully connected layers and the flattening that leads into them (section 11.3.2)."""

from __future__ import annotations

import numpy as np

from convscope.errors import ConvscopeError
from convscope.numpy_cnn.layers.base import Layer, as_rng

__all__ = ["Dense", "Flatten"]


class Flatten(Layer):
    """Flatten every example into one vector (the textbook's ``g_F``), in C, H, W order.

    Shapes:
        (N, d1, d2, ...) -> (N, d1 * d2 * ...).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Reshape to (N, -1)."""
        self._cache = {"shape": x.shape}
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Reshape the gradient back (``g_F`` is invertible)."""
        return dy.reshape(self._saved("shape"))


class Dense(Layer):
    """Affine layer ``y = x W^T + b``, with ``W`` shaped like ``torch.nn.Linear.weight``.

    Args:
        in_features: input width ``d_in``.
        out_features: output width ``d_out``.
        bias: learn a bias vector.
        init: ``"he"`` (``N(0, 2 / d_in)``, for ReLU), ``"xavier"`` (``N(0, 2 / (d_in +
            d_out))``, for sigmoid and tanh) or ``"zeros"``.
        seed: seed or generator for the initialisation.

    Attributes:
        params: ``"W"`` (d_out, d_in) and, with ``bias``, ``"b"`` (d_out,).

    Shapes:
        (N, d_in) -> (N, d_out).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        init: str = "he",
        seed: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConvscopeError(f"{name} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        shape = (self.out_features, self.in_features)
        if init == "he":
            w = as_rng(seed).normal(0.0, np.sqrt(2.0 / in_features), size=shape)
        elif init == "xavier":
            w = as_rng(seed).normal(0.0, np.sqrt(2.0 / (in_features + out_features)), size=shape)
        elif init == "zeros":
            w = np.zeros(shape)
        else:
            raise ConvscopeError(f'init must be "he", "xavier" or "zeros", got {init!r}')
        self.params["W"] = w
        if bias:
            self.params["b"] = np.zeros(self.out_features)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x W^T + b`` for a batch (N, d_in)."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ConvscopeError(
                f"Dense expects (N, {self.in_features}) input, got shape {x.shape}; "
                "put a Flatten or GlobalAvgPool before it"
            )
        self._cache = {"x": x}
        y = x @ self.params["W"].T
        if "b" in self.params:
            y += self.params["b"]
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dW = dy^T x, db = column sums of dy, dx = dy W."""
        x = self._saved("x")
        if self.trainable:
            np.copyto(self.grads["W"], dy.T @ x)
            if "b" in self.params:
                np.copyto(self.grads["b"], dy.sum(axis=0))
        return dy @ self.params["W"]

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={'b' in self.params}"
