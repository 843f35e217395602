"""The paper's filter decoding written loop by loop: the reference for convscope.decoding.

Seed 003, section 3: for one filter of layer ``L``, walk down the layers; at a
convolution, substitute every channel ``c`` of every lower filter ``j``, scaled by each
pixel of the current pattern's channel ``j``, at that pixel's position, and add the
overlaps; at a pooling layer, unpool every channel. Nothing here is vectorised
beyond placing one small filter at one position, and nothing calls the code under
test: unpooling is written out from PyTorch's documented sampling formulas.

Shared by tests/test_decoding.py and benchmarks/decoding.py (which adds tests/ to
``sys.path``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import nn


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))  # type: ignore[call-overload]


def substitute(df: np.ndarray, conv: nn.Conv2d) -> np.ndarray:
    """One substitution step: pattern ``(C_out, h, w)`` -> ``(C_in, h', w')``."""
    weight = conv.weight.detach().double().numpy()  # (C_out, C_in / groups, kh, kw)
    c_out, c_in_g, kh, kw = weight.shape
    (s_h, s_w), (d_h, d_w) = _pair(conv.stride), _pair(conv.dilation)
    groups = conv.groups
    _, h, w = df.shape
    out = np.zeros((c_in_g * groups, (h - 1) * s_h + d_h * (kh - 1) + 1,
                    (w - 1) * s_w + d_w * (kw - 1) + 1))  # fmt: skip
    for j in range(c_out):  # channel j of the pattern = filter j of this layer
        group = j // (c_out // groups)
        for c_local in range(c_in_g):
            c = group * c_in_g + c_local
            filt = weight[j, c_local]
            for y in range(h):
                for x in range(w):
                    value = df[j, y, x]
                    if value == 0.0:
                        continue
                    # the filter, scaled by the pixel, placed at the pixel's position
                    # on the finer grid; its taps dilation apart; overlaps add up
                    out[c, y * s_h : y * s_h + d_h * (kh - 1) + 1 : d_h,
                        x * s_w : x * s_w + d_w * (kw - 1) + 1 : d_w] += value * filt  # fmt: skip
    return out


def _nearest(src: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    c, h, w = src.shape
    out = np.zeros((c, *size))
    for ch in range(c):
        for y in range(size[0]):
            for x in range(size[1]):
                out[ch, y, x] = src[ch, y * h // size[0], x * w // size[1]]
    return out


def _linear_taps(i: int, n_in: int, n_out: int) -> list[tuple[int, float]]:
    # PyTorch, align_corners=False: src = (i + 0.5) * in / out - 0.5, clamped at 0
    s = max((n_in / n_out) * (i + 0.5) - 0.5, 0.0)
    i0 = int(s)
    i1 = i0 + 1 if i0 < n_in - 1 else i0
    frac = s - i0
    return [(i0, 1.0 - frac), (i1, frac)]


def _cubic_taps(i: int, n_in: int, n_out: int) -> list[tuple[int, float]]:
    # PyTorch's bicubic: Keys' cubic convolution with a = -0.75, no clamping of the
    # source coordinate, border pixels repeated
    a = -0.75
    s = (n_in / n_out) * (i + 0.5) - 0.5
    i0 = math.floor(s)
    t = s - i0

    def near(u: float) -> float:  # |u| <= 1
        return ((a + 2) * u - (a + 3)) * u * u + 1

    def far(u: float) -> float:  # 1 < |u| < 2
        return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a

    weights = [far(t + 1), near(t), near(1 - t), far(2 - t)]
    return [(min(max(i0 - 1 + k, 0), n_in - 1), weights[k]) for k in range(4)]


def _interpolate(src: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    taps = _linear_taps if mode == "bilinear" else _cubic_taps
    c, h, w = src.shape
    out = np.zeros((c, *size))
    for ch in range(c):
        for y in range(size[0]):
            for x in range(size[1]):
                total = 0.0
                for sy, wy in taps(y, h, size[0]):
                    for sx, wx in taps(x, w, size[1]):
                        total += wy * wx * src[ch, sy, sx]
                out[ch, y, x] = total
    return out


def unpool(df: np.ndarray, pool: nn.Module, mode: str) -> np.ndarray:
    """One unpooling step: pattern ``(C, h, w)`` on the pool's output grid -> input grid."""
    (kh, kw) = _pair(pool.kernel_size)
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    (s_h, s_w) = _pair(stride)
    (d_h, d_w) = _pair(getattr(pool, "dilation", 1))
    c, h, w = df.shape
    size = ((h - 1) * s_h + d_h * (kh - 1) + 1, (w - 1) * s_w + d_w * (kw - 1) + 1)
    if mode == "adjoint":
        out = np.zeros((c, *size))
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    for u in range(kh):
                        for v in range(kw):
                            out[ch, y * s_h + u * d_h, x * s_w + v * d_w] += df[ch, y, x] / (
                                kh * kw
                            )
        return out
    if mode == "nearest":
        return _nearest(df, size)
    return _interpolate(df, size, mode)


def literal_decode(layers: Sequence[nn.Module], k: int, mode: str = "nearest") -> np.ndarray:
    """Decode filter ``k`` of ``layers[-1]`` (a Conv2d) through ``layers`` (image first).

    Returns:
        ``(C_in, h, w)`` float64.
    """
    top = layers[-1]
    assert isinstance(top, nn.Conv2d)
    # the starting pattern: one pixel on filter k's map, substituted by the filter itself
    start = np.zeros((top.out_channels, 1, 1))
    start[k, 0, 0] = 1.0
    df = substitute(start, top)
    for layer in reversed(layers[:-1]):
        if isinstance(layer, nn.Conv2d):
            df = substitute(df, layer)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            df = unpool(df, layer, mode)
        elif isinstance(layer, nn.BatchNorm2d):
            assert layer.running_var is not None and layer.running_mean is not None
            scale = 1.0 / np.sqrt(layer.running_var.double().numpy() + layer.eps)
            if layer.weight is not None:
                scale = scale * layer.weight.detach().double().numpy()
            for j in range(df.shape[0]):
                df[j] = df[j] * scale[j]
        elif isinstance(layer, nn.ReLU):
            pass  # seed 003 skips ReLUs
        else:
            raise TypeError(f"the literal reference does not know {type(layer).__name__}")
    return df
