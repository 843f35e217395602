"""Batch normalization for dense features (N, C) and convolutional maps (N, C, H, W)."""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.errors import ConvscopeError
from convscope.numpy_cnn.layers.base import Layer

__all__ = ["BatchNorm"]


class BatchNorm(Layer):
    """Normalize each feature (or each map) over the batch, then scale and shift.

    In training mode every channel ``c`` is standardised with the batch mean and the
    *biased* batch variance (over N for (N, C) inputs, over N, H and W for (N, C, H, W)),
    then ``y = gamma * x_hat + beta``. Running estimates are updated as
    ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* variance,
    and used instead of the batch statistics in eval mode: the same rules as
    ``torch.nn.BatchNorm1d`` / ``BatchNorm2d``, so the two agree number for number.

    Args:
        num_features: channels ``C``.
        eps: added to the variance before the square root.
        momentum: weight of the newest batch in the running statistics.

    Attributes:
        params: ``"gamma"`` (C,) starting at 1 and ``"beta"`` (C,) starting at 0.
        running_mean, running_var: (C,) estimates used in eval mode.

    Shapes:
        (N, C) -> (N, C) and (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ConvscopeError(f"num_features must be a positive integer, got {num_features!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.params = {"gamma": np.ones(num_features), "beta": np.zeros(num_features)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.running_mean = np.zeros(num_features)
        self.running_var = np.ones(num_features)

    def _axes(self, x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if x.ndim not in (2, 4) or x.shape[1] != self.num_features:
            raise ConvscopeError(
                f"BatchNorm({self.num_features}) expects (N, {self.num_features}) or "
                f"(N, {self.num_features}, H, W) input, got shape {x.shape}"
            )
        if x.ndim == 2:
            return (0,), (1, -1)
        return (0, 2, 3), (1, -1, 1, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Standardize per channel, then ``gamma * x_hat + beta``."""
        axes, shape = self._axes(x)
        gamma = self.params["gamma"].reshape(shape)
        beta = self.params["beta"].reshape(shape)
        if self.training:
            m = x.size // self.num_features
            if m < 2:
                raise ConvscopeError(
                    "BatchNorm in training mode needs more than one value per channel; "
                    "use a larger batch or eval()"
                )
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * mean
            unbiased = var * (m / (m - 1))
            self.running_var = (1 - self.momentum) * self.running_var + self.momentum * unbiased
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / np.sqrt(var + self.eps)
        x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        self._cache = {"x_hat": x_hat, "inv_std": inv_std, "training": self.training}
        return (gamma * x_hat + beta).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradients for gamma, beta and the input.

        In training mode the batch statistics depend on every input, which adds the two
        mean terms: ``dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat x_hat))``.
        """
        x_hat = self._saved("x_hat")
        inv_std = self._cache["inv_std"]
        axes, shape = self._axes(dy)
        if self.trainable:
            np.copyto(self.grads["gamma"], (dy * x_hat).sum(axis=axes))
            np.copyto(self.grads["beta"], dy.sum(axis=axes))
        dx_hat = dy * self.params["gamma"].reshape(shape)
        if not self._cache["training"]:
            return dx_hat * inv_std.reshape(shape)
        mean_d = dx_hat.mean(axis=axes, keepdims=True)
        mean_dx = (dx_hat * x_hat).mean(axis=axes, keepdims=True)
        return (dx_hat - mean_d - x_hat * mean_dx) * inv_std.reshape(shape)

    def astype(self, dtype: Any) -> BatchNorm:
        super().astype(dtype)
        self.running_mean = self.running_mean.astype(dtype)
        self.running_var = self.running_var.astype(dtype)
        return self

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
