"""Element-wise activations and softmax, as layers with forward and backward passes."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from convscope.numpy_cnn.layers.base import Layer

__all__ = ["ReLU", "Sigmoid", "Softmax", "Tanh"]


class ReLU(Layer):
    """``max(x, 0)``; the gradient passes where the input was positive.

    Shapes:
        any -> the same shape.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Zero the negative values."""
        positive = x > 0
        self._cache = {"positive": positive}
        return np.where(positive, x, 0.0).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy`` where the input was positive, else 0."""
        return np.where(self._saved("positive"), dy, 0.0).astype(dy.dtype, copy=False)


class Sigmoid(Layer):
    """Logistic function ``1 / (1 + exp(-x))``; its derivative is ``y (1 - y)``.

    Shapes:
        any -> the same shape.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Squash to (0, 1) without overflow for large negative inputs."""
        y = expit(x)
        self._cache = {"y": y}
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy * y * (1 - y)``."""
        y = self._saved("y")
        return dy * y * (1.0 - y)


class Tanh(Layer):
    """Hyperbolic tangent; its derivative is ``1 - y^2``.

    Shapes:
        any -> the same shape.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``tanh(x)``."""
        y = np.tanh(x)
        self._cache = {"y": y}
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy * (1 - y^2)``."""
        y = self._saved("y")
        return dy * (1.0 - y * y)


class Softmax(Layer):
    """Softmax over the class axis (axis 1): probabilities that sum to one per example.

    The Jacobian is ``diag(y) - y y^T``; applied to ``dy`` it is ``y * (dy - <dy, y>)``,
    so the backward pass never builds the matrix.

    Shapes:
        (N, K, ...) -> the same shape.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Exponentiate after subtracting the row maximum (no overflow), then normalise."""
        e = np.exp(x - x.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
        self._cache = {"y": y}
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``y * (dy - sum(dy * y))`` over the class axis."""
        y = self._saved("y")
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))
