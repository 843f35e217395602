"""Pooling layers (textbook section 11.3): max, average and global average pooling.

A pooling window of size ``k`` moves with stride ``s`` (``s = k`` by default, the usual
non-overlapping 2x2 pooling); the output size is ``floor((H - k) / s) + 1`` (eq. 11.3.1).
"""

from __future__ import annotations

import numpy as np

from convscope.errors import ConvscopeError
from convscope.numpy_cnn._windows import out_size, scatter_windows, windows
from convscope.numpy_cnn.layers.base import Layer

__all__ = ["AvgPool2D", "GlobalAvgPool", "MaxPool2D"]


class _Pool2D(Layer):
    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        stride = kernel_size if stride is None else stride
        for name, v in (("kernel_size", kernel_size), ("stride", stride)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConvscopeError(f"{name} must be a positive integer, got {v!r}")
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)

    def _windows(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4:
            raise ConvscopeError(
                f"{type(self).__name__} expects (N, C, H, W) input, got shape {x.shape}"
            )
        k, s = self.kernel_size, self.stride
        out_size(x.shape[2], k, s), out_size(x.shape[3], k, s)  # size check only
        win = windows(x, k, s)
        return win.reshape(*win.shape[:4], k * k)  # (N, C, Ho, Wo, k*k), a copy

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class MaxPool2D(_Pool2D):
    """Max pooling: each output is the largest value in its window.

    The backward pass sends each output's gradient to the one input that was the maximum
    (the first in row-major order on ties, as PyTorch does); an input that wins several
    overlapping windows collects all their gradients.

    Args:
        kernel_size: window side ``k`` (the textbook's pool size ``s_q``).
        stride: step between windows; defaults to ``kernel_size``.

    Shapes:
        (N, C, H, W) -> (N, C, floor((H - k) / s) + 1, floor((W - k) / s) + 1).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Maximum over every window."""
        flat = self._windows(x)
        arg = flat.argmax(axis=-1)
        self._cache = {"arg": arg, "shape": x.shape}
        return np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Route each gradient to its window's maximum."""
        arg = self._saved("arg")
        return scatter_windows(dy, arg, self._cache["shape"], self.kernel_size, self.stride)


class AvgPool2D(_Pool2D):
    """Average pooling: each output is the mean of its window.

    The backward pass spreads each output's gradient evenly over its ``k * k`` inputs.

    Args:
        kernel_size: window side ``k``.
        stride: step between windows; defaults to ``kernel_size``.

    Shapes:
        (N, C, H, W) -> (N, C, floor((H - k) / s) + 1, floor((W - k) / s) + 1).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Mean over every window."""
        out = self._windows(x).mean(axis=-1)
        self._cache = {"shape": x.shape}
        return out

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Share each gradient equally among the window's cells."""
        shape = self._saved("shape")
        kk = self.kernel_size**2
        share = np.broadcast_to((dy / kk)[..., None], (*dy.shape, kk))
        cells = np.broadcast_to(np.arange(kk), share.shape)
        return scatter_windows(share, cells, shape, self.kernel_size, self.stride)


class GlobalAvgPool(Layer):
    """Global average pooling (the textbook's ``g_G``): one mean per channel.

    Shapes:
        (N, C, H, W) -> (N, C).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Mean of each map."""
        if x.ndim != 4:
            raise ConvscopeError(f"GlobalAvgPool expects (N, C, H, W) input, got shape {x.shape}")
        self._cache = {"shape": x.shape}
        return x.mean(axis=(2, 3))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Every cell of a map gets ``1 / (H W)`` of its mean's gradient."""
        n, c, h, w = self._saved("shape")
        return np.broadcast_to((dy / (h * w))[:, :, None, None], (n, c, h, w)).copy()
