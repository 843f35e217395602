"""Plain-loop reference implementations for the NumPy CNN tests and benchmark.

Written straight from the textbook's formulas (seed 002, eqs. 11.2.1, 11.2.2, 11.5.7,
11.5.13 and the pooling rules of section 11.5.2), one output value at a time, with no
stride tricks. Slow on purpose: the vectorized layers in ``convscope.numpy_cnn`` must
match these. Not a test module itself (no ``test_`` prefix); ``benchmarks/numpy_cnn.py``
imports it too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _pad(x: np.ndarray, p: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: int = 1,
    padding: int = 0,
    convention: str = "correlation",
) -> np.ndarray:
    """Z[n, o, i, j] = sum_{c,u,v} X~[n, c, i s + u, j s + v] K[o, c, u, v] + b[o].

    For ``convention="convolution"`` the kernel index runs backwards (eq. 11.2.2):
    K[o, c, k-1-u, k-1-v].
    """
    n_img, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    xp = _pad(x, padding)
    ho = (h + 2 * padding - k) // stride + 1
    wo = (wd + 2 * padding - k) // stride + 1
    out = np.zeros((n_img, c_out, ho, wo))
    for n in range(n_img):
        for o in range(c_out):
            for i in range(ho):
                for j in range(wo):
                    total = 0.0 if b is None else float(b[o])
                    for c in range(c_in):
                        for u in range(k):
                            for v in range(k):
                                ku, kv = (
                                    (k - 1 - u, k - 1 - v)
                                    if convention == "convolution"
                                    else (u, v)
                                )
                                total += xp[n, c, i * stride + u, j * stride + v] * w[o, c, ku, kv]
                    out[n, o, i, j] = total
    return out


def conv2d_backward(
    x: np.ndarray,
    w: np.ndarray,
    dy: np.ndarray,
    stride: int = 1,
    padding: int = 0,
    convention: str = "correlation",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dX, dK, db): every output's gradient sent back along the products that made it."""
    n_img, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp, dtype=np.float64)
    dw = np.zeros_like(w, dtype=np.float64)
    db = np.zeros(c_out)
    _, _, ho, wo = dy.shape
    for n in range(n_img):
        for o in range(c_out):
            for i in range(ho):
                for j in range(wo):
                    g = dy[n, o, i, j]
                    db[o] += g
                    for c in range(c_in):
                        for u in range(k):
                            for v in range(k):
                                ku, kv = (
                                    (k - 1 - u, k - 1 - v)
                                    if convention == "convolution"
                                    else (u, v)
                                )
                                r, s = i * stride + u, j * stride + v
                                dw[o, c, ku, kv] += g * xp[n, c, r, s]
                                dxp[n, c, r, s] += g * w[o, c, ku, kv]
    dx = dxp[:, :, padding : padding + h, padding : padding + wd]
    return dx, dw, db


def pool2d_forward(x: np.ndarray, k: int, stride: int, mode: str) -> np.ndarray:
    """Max or mean over every k x k window (section 11.3.1)."""
    n_img, c_in, h, wd = x.shape
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n_img, c_in, ho, wo))
    for n in range(n_img):
        for c in range(c_in):
            for i in range(ho):
                for j in range(wo):
                    win = x[n, c, i * stride : i * stride + k, j * stride : j * stride + k]
                    out[n, c, i, j] = win.max() if mode == "max" else win.mean()
    return out


def pool2d_backward(x: np.ndarray, dy: np.ndarray, k: int, stride: int, mode: str) -> np.ndarray:
    """Max: the gradient goes to the (first) arg-max of the window; mean: 1/k^2 to each cell."""
    n_img, c_in, _, _ = x.shape
    _, _, ho, wo = dy.shape
    dx = np.zeros_like(x, dtype=np.float64)
    for n in range(n_img):
        for c in range(c_in):
            for i in range(ho):
                for j in range(wo):
                    r0, s0 = i * stride, j * stride
                    if mode == "max":
                        win = x[n, c, r0 : r0 + k, s0 : s0 + k]
                        u, v = np.unravel_index(int(np.argmax(win)), (k, k))
                        dx[n, c, r0 + u, s0 + v] += dy[n, c, i, j]
                    else:
                        for u in range(k):
                            for v in range(k):
                                dx[n, c, r0 + u, s0 + v] += dy[n, c, i, j] / (k * k)
    return dx


def numerical_gradient(f: Callable[[], float], a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to every entry of ``a``.

    ``a`` is perturbed in place (and restored), so ``f`` must read it.
    """
    grad = np.zeros(a.shape)
    flat = a.reshape(-1)
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / (||a|| + ||b||)``, 0 when both are zero."""
    den = float(np.linalg.norm(a) + np.linalg.norm(b))
    return 0.0 if den == 0 else float(np.linalg.norm(a - b)) / den
