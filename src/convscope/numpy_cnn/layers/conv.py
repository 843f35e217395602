"""Convolution layers: learned (:class:`Conv2D`) and fixed (:class:`FixedConv2D`).

A convolutional layer computes, for every output map ``o`` and position ``(i, j)``,

    Z[n, o, i, j] = sum over c, u, v of  X~[n, c, i*s + u, j*s + v] * K[o, c, u, v]  +  b[o]

where ``X~`` is the zero-padded input and ``s`` the stride. That sum is the textbook's
*cross-correlation* (Definition 11.2.1) and what :func:`torch.nn.functional.conv2d`
computes. With ``convention="convolution"`` the stored kernel is rotated by 180 degrees
before it slides (Definition 11.2.2, identity 11.2.3), so the layer computes the
*convolution* the chapter writes in eq. 11.5.1.

Both passes are matrix products over unfolded windows (im2col); the input gradient is the
textbook's eq. 11.5.14, a correlation of the zero-padded, stride-dilated output gradient
with the rotated kernel, evaluated the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from convscope.errors import ConvscopeError
from convscope.numpy_cnn._windows import dilate, im2col, out_size, pad2d
from convscope.numpy_cnn.layers.base import Layer, as_rng

__all__ = ["Conv2D", "FixedConv2D"]

Convention = Literal["correlation", "convolution"]
Padding = int | Literal["same", "valid"]


def _resolve_padding(padding: Padding, kernel_size: int) -> int:
    if padding == "valid":
        return 0
    if padding == "same":
        if kernel_size % 2 == 0:
            raise ConvscopeError(
                f'padding="same" needs an odd kernel size (eq. 11.2.6), got {kernel_size}'
            )
        return (kernel_size - 1) // 2
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ConvscopeError(f'padding must be an integer >= 0, "same" or "valid", got {padding!r}')
    return int(padding)


class Conv2D(Layer):
    """2-D convolutional layer on (N, C, H, W) arrays.

    Args:
        in_channels: input channels ``C`` (the textbook's volume depth ``n_v``).
        out_channels: number of filters ``O`` (``n_f``).
        kernel_size: side ``k`` of the square filters (``s_f``).
        stride: step of the window (``s_sr``).
        padding: zeros added on every side: an integer, ``"same"`` (``(k - 1) / 2``, keeps the
            size at stride 1) or ``"valid"`` (0).
        convention: ``"correlation"`` (PyTorch's, the default) or ``"convolution"`` (the
            kernel is rotated by 180 degrees before it slides).
        bias: learn one bias per filter.
        trainable: when ``False`` the kernel and bias never change (a fixed filter bank);
            the layer still passes gradients back to its input.
        seed: seed or generator for He initialisation, ``N(0, 2 / (C k^2))``.

    Attributes:
        params: ``"W"`` (O, C, k, k) and, with ``bias``, ``"b"`` (O,).
        grads: the same keys, filled by :meth:`backward` when ``trainable``.

    Shapes:
        input (N, C, H, W) -> output (N, O, H_out, W_out),
        ``H_out = floor((H + 2 p - k) / s) + 1`` (eq. 11.2.7).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: Padding = 0,
        convention: Convention = "correlation",
        *,
        bias: bool = True,
        trainable: bool = True,
        seed: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__()
        for name, v in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("kernel_size", kernel_size),
            ("stride", stride),
        ):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConvscopeError(f"{name} must be a positive integer, got {v!r}")
        if convention not in ("correlation", "convolution"):
            raise ConvscopeError(
                f'convention must be "correlation" or "convolution", got {convention!r}'
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.padding = _resolve_padding(padding, self.kernel_size)
        self.convention: Convention = convention
        self.trainable = trainable
        fan_in = self.in_channels * self.kernel_size**2
        shape = (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        self.params["W"] = as_rng(seed).normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        if bias:
            self.params["b"] = np.zeros(self.out_channels)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    @property
    def has_bias(self) -> bool:
        """Whether the layer adds a bias."""
        return "b" in self.params

    def _sliding_kernel(self) -> np.ndarray:
        """The kernel as it slides over the input: rotated by 180 degrees for convolution."""
        w = self.params["W"]
        return w[:, :, ::-1, ::-1] if self.convention == "convolution" else w

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        """(H_out, W_out) for an (H, W) input."""
        k, s, p = self.kernel_size, self.stride, self.padding
        return out_size(h, k, s, p), out_size(w, k, s, p)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Correlate (or convolve) ``x`` (N, C, H, W) with the filters; (N, O, H_out, W_out)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConvscopeError(
                f"Conv2D expects (N, {self.in_channels}, H, W) input, got shape {x.shape}"
            )
        n, _, h, w = x.shape
        ho, wo = self.output_shape(h, w)
        k = self.kernel_size
        xp = pad2d(x, self.padding)
        cols = im2col(xp, k, self.stride)  # (N*Ho*Wo, C*k*k)
        kernel = self._sliding_kernel().reshape(self.out_channels, -1)
        z = cols @ kernel.T  # (N*Ho*Wo, O)
        if self.has_bias:
            z += self.params["b"]
        self._cache = {"cols": cols, "padded_shape": xp.shape}
        return np.ascontiguousarray(z.reshape(n, ho, wo, self.out_channels).transpose(0, 3, 1, 2))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradients for W and b (when trainable) and dLoss/dInput (N, C, H, W)."""
        self.backward_params(dy)
        return self.backward_input(dy)

    def backward_params(self, dy: np.ndarray) -> None:
        """Fill :attr:`grads` from dLoss/dOutput (N, O, H_out, W_out); no-op when fixed.

        dL/dK[o, c, u, v] is the sum over positions of dZ[o] times the input window, the
        textbook's eq. 11.5.7: one matrix product with the unfolded windows of the forward
        pass.
        """
        cols = self._saved("cols")
        if not self.trainable:
            return
        o, c, k = self.out_channels, self.in_channels, self.kernel_size
        dy_rows = dy.transpose(1, 0, 2, 3).reshape(o, -1)  # (O, N*Ho*Wo)
        dk = (dy_rows @ cols).reshape(o, c, k, k)
        # For convolution the sliding kernel is the stored one rotated, so the gradient is
        # rotated back (Lemma 11.5.1).
        np.copyto(self.grads["W"], dk[:, :, ::-1, ::-1] if self.convention == "convolution" else dk)
        if self.has_bias:
            np.copyto(self.grads["b"], dy.sum(axis=(0, 2, 3)))

    def backward_input(self, dy: np.ndarray) -> np.ndarray:
        """dLoss/dInput (N, C, H, W) from dLoss/dOutput (N, O, H_out, W_out).

        The textbook's eq. 11.5.14: spread dZ onto the stride-1 grid (zeros between entries,
        eq. 11.5.8), pad it by ``k - 1``, correlate it with the 180-degree-rotated sliding
        kernel summed over filters, and cut the forward padding off again.
        """
        n, c, hp, wp = self._saved("padded_shape")
        o, k, s, p = self.out_channels, self.kernel_size, self.stride, self.padding
        d = dilate(dy, s)
        # Rows and columns the strided windows never reached get zero gradient.
        extra_h = hp - (d.shape[2] + k - 1)
        extra_w = wp - (d.shape[3] + k - 1)
        d = np.pad(d, ((0, 0), (0, 0), (k - 1, k - 1 + extra_h), (k - 1, k - 1 + extra_w)))
        rotated = self._sliding_kernel()[:, :, ::-1, ::-1]  # (O, C, k, k)
        back = rotated.transpose(1, 0, 2, 3).reshape(c, o * k * k)
        dxp = (im2col(d, k, 1) @ back.T).reshape(n, hp, wp, c).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(dxp[:, :, p : hp - p, p : wp - p])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, convention={self.convention!r}, "
            f"bias={self.has_bias}, trainable={self.trainable}"
        )


class FixedConv2D(Conv2D):
    """A convolution with given filters that training never changes (textbook section 11.4).

    The kernel (and bias) arrays sit in :attr:`params` for reading but are stored
    read-only, so an optimizer that tried to update them in place would fail loudly rather
    than silently learn. The layer offers an optimizer nothing (:meth:`parameters` is empty)
    and keeps no gradients (:attr:`grads` is empty); it still passes dLoss/dInput back, and
    :meth:`Sequential.backward` skips even that when no trainable layer lies below. Build
    one from the kernel bank with :meth:`from_kernels`.

    Args:
        weight: (O, C, k, k) filters, or (O, k, k) for one input channel.
        bias: (O,) fixed biases, a scalar used for every filter, or ``None`` for no bias.
        stride: step of the window.
        padding: integer, ``"same"`` or ``"valid"``.
        convention: ``"correlation"`` (default) or ``"convolution"``.

    Shapes:
        input (N, C, H, W) -> output (N, O, H_out, W_out).
    """

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | float | None = None,
        stride: int = 1,
        padding: Padding = 0,
        convention: Convention = "correlation",
        *,
        names: Sequence[str] | None = None,
    ) -> None:
        w = np.array(weight, dtype=np.float64)
        if w.ndim == 3:
            w = w[:, None]
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            raise ConvscopeError(
                f"fixed filters must be (O, C, k, k) or (O, k, k), got shape {np.shape(weight)}"
            )
        o, c, k, _ = w.shape
        super().__init__(
            c, o, k, stride, padding, convention, bias=bias is not None, trainable=False, seed=0
        )
        self.params["W"] = w
        if bias is not None:
            b = np.broadcast_to(np.asarray(bias, dtype=np.float64), (o,)).copy()
            self.params["b"] = b
        self.names = list(names) if names is not None else None
        self.grads = {}  # nothing here is ever learned, so no gradient is ever kept
        self._freeze()

    def _freeze(self) -> None:
        for p in self.params.values():
            p.flags.writeable = False

    def astype(self, dtype: np.dtype | type) -> FixedConv2D:  # type: ignore[type-arg]
        super().astype(dtype)
        self._freeze()
        return self

    @classmethod
    def from_kernels(
        cls,
        kernels: Sequence[str | np.ndarray],
        in_channels: int = 1,
        *,
        bias: np.ndarray | float | None = None,
        stride: int = 1,
        padding: Padding = "same",
        convention: Convention = "correlation",
    ) -> FixedConv2D:
        """Stack kernels from :mod:`convscope.kernels` (by name) or given arrays.

        With ``in_channels > 1`` each kernel is applied to every channel and the results are
        summed (the textbook's filter tensor with the same component on every channel), so
        the layer has one output map per kernel.

        Args:
            kernels: registry names (``"sobel_x"``, ``"line_x2"`` ...) or (k, k) arrays.
            in_channels: channels of the input.
            bias: fixed bias per kernel, a scalar, or ``None``.
            stride: step of the window.
            padding: integer, ``"same"`` (default) or ``"valid"``.
            convention: ``"correlation"`` (default, how the bank is defined) or
                ``"convolution"``.

        Returns:
            A layer with ``len(kernels)`` output maps.
        """
        from convscope import kernels as kb

        if not kernels:
            raise ConvscopeError("from_kernels needs at least one kernel")
        arrays = [kb.get(k).weight if isinstance(k, str) else np.asarray(k) for k in kernels]
        if len({a.shape for a in arrays}) != 1:
            sizes = sorted({a.shape for a in arrays})
            raise ConvscopeError(f"kernels of different sizes cannot share a layer: {sizes}")
        stack = np.stack(arrays).astype(np.float64)  # (O, k, k)
        weight = np.repeat(stack[:, None], in_channels, axis=1)
        names = [k if isinstance(k, str) else f"kernel_{i}" for i, k in enumerate(kernels)]
        return cls(weight, bias, stride, padding, convention, names=names)
