"""Sliding windows over (N, C, H, W) arrays: the one place that knows about strides.

Everything here is vectorized: windows are strided *views* made by
:func:`numpy.lib.stride_tricks.sliding_window_view`, and scatter-adds back onto the
input grid go through a single :func:`numpy.bincount`. No Python loop runs over pixels,
channels or filters.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convscope.errors import ConvscopeError

__all__ = ["dilate", "im2col", "out_size", "pad2d", "scatter_windows", "windows"]


def out_size(n: int, k: int, stride: int, padding: int = 0) -> int:
    """Output length ``floor((n + 2p - k) / s) + 1`` (textbook eqs. 11.2.7 and 11.3.1)."""
    if n + 2 * padding < k:
        raise ConvscopeError(
            f"a window of size {k} does not fit an input of size {n} with padding {padding}"
        )
    return (n + 2 * padding - k) // stride + 1


def pad2d(x: np.ndarray, padding: int) -> np.ndarray:
    """Zero-pad the last two axes of ``x`` (N, C, H, W) by ``padding`` on every side."""
    if padding == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Every ``k x k`` window of ``x`` at the given stride, as a read-only view.

    Args:
        x: (N, C, H, W), already padded.
        k: window size.
        stride: step between windows.

    Returns:
        (N, C, H_out, W_out, k, k) view with ``H_out = floor((H - k) / stride) + 1``.
    """
    view = sliding_window_view(x, (k, k), axis=(2, 3))
    # sliding_window_view steps by one; slicing the position axes gives ceil((H-k+1)/s),
    # which equals floor((H-k)/s) + 1.
    return view[:, :, ::stride, ::stride]


def im2col(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Unfold windows into the rows of a matrix, so a convolution becomes one matmul.

    Args:
        x: (N, C, H, W), already padded.
        k: window size.
        stride: step between windows.

    Returns:
        (N * H_out * W_out, C * k * k) contiguous array; row ``(n, i, j)`` holds the window
        at output position ``(i, j)`` of image ``n``, ordered channel, row, column.
    """
    win = windows(x, k, stride)
    n, c, ho, wo = win.shape[:4]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * ho * wo, c * k * k)


def dilate(dy: np.ndarray, stride: int) -> np.ndarray:
    """Insert ``stride - 1`` zeros between neighbouring entries of the last two axes.

    This is the textbook's extension of eq. 11.5.8: the gradient of a strided layer,
    spread back onto the grid of a stride-1 layer.
    """
    if stride == 1:
        return dy
    n, c, h, w = dy.shape
    out = np.zeros((n, c, (h - 1) * stride + 1, (w - 1) * stride + 1), dtype=dy.dtype)
    out[:, :, ::stride, ::stride] = dy
    return out


def scatter_windows(
    values: np.ndarray, offsets: np.ndarray, shape: tuple[int, int, int, int], k: int, stride: int
) -> np.ndarray:
    """Add values that belong to window cells back onto the input grid.

    Args:
        values: (N, C, H_out, W_out) or (N, C, H_out, W_out, m) amounts to add.
        offsets: flat cell index ``u * k + v`` inside each window, same shape as ``values``
            (integers in ``0 .. k*k - 1``).
        shape: (N, C, H, W) of the input grid (already padded).
        k: window size.
        stride: step between windows.

    Returns:
        (N, C, H, W) array: the sum of every value at its cell; overlapping windows add up.
    """
    n, c, h, w = shape
    ho, wo = values.shape[2], values.shape[3]
    extra = (1,) * (values.ndim - 4)
    rows = (np.arange(ho) * stride).reshape(1, 1, ho, 1, *extra) + offsets // k
    cols = (np.arange(wo) * stride).reshape(1, 1, 1, wo, *extra) + offsets % k
    plane = (np.arange(n * c) * (h * w)).reshape(n, c, 1, 1, *extra)
    flat = plane + rows * w + cols
    summed = np.bincount(flat.ravel(), weights=values.ravel(), minlength=n * c * h * w)
    return summed.reshape(shape).astype(values.dtype, copy=False)
