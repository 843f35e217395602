"""Super-resolution models: a bicubic upscaler written as a network, ESPCN, EDSR-baseline.

The three are the upscalers seed 001 compares (section 8.B, Fig. 5, 6, 11, 12):

- :class:`BicubicUpscaler` is a fixed linear operator (no bias, no non-linearity), equal to
  ``F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)``. It is the
  reference for the linear interpreter: its filter matrix does not depend on the image, its
  residual is zero and away from the borders every column is the same kernel, shifted.
- :class:`ESPCN` is the "4-layer PixelShuffle" model of the PyTorch examples
  (``pytorch/examples/super_resolution``) that the seed analyses: a sub-pixel CNN after
  Shi et al. (2016) with ReLU and features (64, 64, 32). Shi et al.'s own 3-layer tanh
  network is ``ESPCN(features=(64, 32), activation="tanh")``.
- :class:`EDSRBaseline` is EDSR's baseline configuration (Lim et al., 2017): 16 residual
  blocks of 64 features without batch norm, a global skip and a PixelShuffle upsampler.

All three take and return float images (N, C, H, W) -> (N, C, s*H, s*W) in the same value
range ([0, 1] in convscope); none of them clamps its output, since clamping is a non-linearity
an analysis should see only if the user adds it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convscope.errors import ConvscopeError

__all__ = [
    "DIV2K_RGB_MEAN",
    "ESPCN",
    "SCALES",
    "BicubicUpscaler",
    "EDSRBaseline",
    "MeanShift",
    "bicubic_phase_weights",
    "downscale",
    "psnr",
]

SCALES: tuple[int, ...] = (2, 3, 4)
"""Upscaling factors the models in this module accept."""

DIV2K_RGB_MEAN: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)
"""Mean colour of the DIV2K training set in [0, 1], the constant EDSR subtracts."""

# Keys' cubic convolution parameter; -0.75 is what PyTorch (and OpenCV) use, not Keys' -0.5.
_CUBIC_A = -0.75


def _check_scale(scale: int, where: str) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SCALES:
        raise ConvscopeError(
            f"{where}: scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}"
        )
    return scale


def _check_positive(value: int, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConvscopeError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def _check_input(x: torch.Tensor, channels: int, where: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ConvscopeError(
            f"{where} expects images (N, {channels}, H, W), got shape {tuple(x.shape)}"
        )


def _cubic(d: float, a: float = _CUBIC_A) -> float:
    """Keys' cubic convolution kernel at distance ``d`` (the one PyTorch uses)."""
    d = abs(d)
    if d <= 1.0:
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    if d < 2.0:
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return 0.0


def bicubic_phase_weights(
    scale: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> tuple[torch.Tensor, int]:
    """1-D bicubic interpolation weights of each output phase, as PyTorch computes them.

    Output pixel ``o = scale * i + p`` of ``F.interpolate(..., mode="bicubic",
    align_corners=False)`` samples the input at ``(o + 0.5) / scale - 0.5`` and mixes the four
    input pixels around that point with Keys' cubic weights (a = -0.75). The taps are written
    here relative to ``i``, so one small kernel per phase ``p`` serves every position.

    Args:
        scale: Upscaling factor, one of :data:`SCALES`.
        dtype, device: Of the returned weights.

    Returns:
        ``(weights, pad)``: weights (scale, 2 * pad + 1), row ``p`` holding the weights of input
        offsets ``-pad .. pad`` for phase ``p``; each row sums to 1.
    """
    scale = _check_scale(scale, "bicubic_phase_weights")
    taps: list[dict[int, float]] = []
    for p in range(scale):
        # The same expression as PyTorch's area_pixel_compute_source_index with 1/scale, kept
        # in double so the weights agree with F.interpolate in float64.
        src = (p + 0.5) * (1.0 / scale) - 0.5
        base = math.floor(src)
        t = src - base
        ws = (_cubic(t + 1.0), _cubic(t), _cubic(1.0 - t), _cubic(2.0 - t))
        taps.append({base - 1 + k: w for k, w in enumerate(ws)})
    pad = max(abs(o) for row in taps for o in row)
    weights = torch.zeros(scale, 2 * pad + 1, dtype=torch.float64)
    for p, row in enumerate(taps):
        for o, w in row.items():
            weights[p, o + pad] += w
    return weights.to(dtype=dtype, device=device), pad


class BicubicUpscaler(nn.Module):
    """Bicubic upscaling as a fixed linear network: replicate pad, conv, PixelShuffle.

    Equal to ``F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)``
    (to rounding, 1e-15 in float64). Each output phase ``(py, px)`` is a separable
    (2 pad + 1)^2 kernel, the outer product of :func:`bicubic_phase_weights` rows; the
    ``scale**2`` phases of every channel are one grouped convolution, interleaved by
    PixelShuffle. Replicate padding reproduces PyTorch's clamping of indices at the borders.

    The kernel is a buffer, not a parameter: it is never trained, and the module has no bias,
    so the output for a zero input is exactly zero.

    Args:
        scale: Upscaling factor, one of :data:`SCALES`.
        channels: Number of image channels; each is upscaled on its own.

    Shape:
        input (N, channels, H, W) -> output (N, channels, scale*H, scale*W).
    """

    weight: torch.Tensor

    def __init__(self, scale: int = 4, channels: int = 1) -> None:
        super().__init__()
        self.scale = _check_scale(scale, "BicubicUpscaler")
        self.channels = _check_positive(channels, "channels", "BicubicUpscaler")
        w1, pad = bicubic_phase_weights(scale)
        # (scale, K) x (scale, K) -> (scale, scale, K, K): phase (py, px) = w1[py] outer w1[px]
        w2 = torch.einsum("ai,bj->abij", w1, w1).reshape(scale * scale, 1, 2 * pad + 1, -1)
        # PixelShuffle reads channel c * scale^2 + py * scale + px as (c, py, px): repeat the
        # phase kernels once per channel, in that order.
        # Kept in float64 whatever the default dtype: forward casts it to the input's dtype,
        # so float64 analyses get the exact bicubic weights (model.float() would round them).
        self.register_buffer("weight", w2.repeat(channels, 1, 1, 1))
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale ``x`` (N, C, H, W) to (N, C, scale*H, scale*W)."""
        _check_input(x, self.channels, "BicubicUpscaler")
        w = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        y = F.conv2d(F.pad(x, (self.pad,) * 4, mode="replicate"), w, groups=self.channels)
        return F.pixel_shuffle(y, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, channels={self.channels}"


def _check_activation(activation: str) -> str:
    if activation not in ("relu", "tanh"):
        raise ConvscopeError(f"ESPCN: activation must be 'relu' or 'tanh', got {activation!r}")
    return activation


class ESPCN(nn.Module):
    """Efficient sub-pixel CNN: convolutions at low resolution, then PixelShuffle.

    With the defaults this is the "4-layer PixelShuffle" model of seed 001 (Fig. 6, 11): the
    PyTorch examples' super-resolution network (conv 5x5 64, conv 3x3 64, conv 3x3 32, each
    followed by ReLU, then conv 3x3 to ``channels * scale**2`` and PixelShuffle), with its
    orthogonal initialisation. ``features=(64, 32), activation="tanh"`` gives the 3-layer
    network of Shi et al. (2016).

    Args:
        scale: Upscaling factor, one of :data:`SCALES`.
        channels: Image channels (1 for luma, as in both originals).
        features: Widths of the hidden convolutions; the first is 5x5, the others 3x3.
        activation: ``"relu"`` (PyTorch examples) or ``"tanh"`` (Shi et al.).

    Shape:
        input (N, channels, H, W) -> output (N, channels, scale*H, scale*W).
    """

    def __init__(
        self,
        scale: int = 4,
        channels: int = 1,
        features: Sequence[int] = (64, 64, 32),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.scale = _check_scale(scale, "ESPCN")
        self.channels = _check_positive(channels, "channels", "ESPCN")
        feats = [_check_positive(int(f), "features", "ESPCN") for f in features]
        if not feats:
            raise ConvscopeError("ESPCN: features needs at least one hidden width")
        self.activation = _check_activation(activation)
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(feats):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), _make_act(activation)]
            c_in = c_out
        layers += [nn.Conv2d(c_in, channels * scale * scale, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.shuffle = nn.PixelShuffle(scale)
        self._init_weights()

    def _init_weights(self) -> None:
        # Orthogonal init with the activation's gain, as the PyTorch example does: it trains
        # in minutes where the default init needs noticeably longer to beat bicubic.
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        gain = nn.init.calculate_gain("relu" if self.activation == "relu" else "tanh")
        for i, conv in enumerate(convs):
            nn.init.orthogonal_(conv.weight, gain if i < len(convs) - 1 else 1.0)
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale ``x`` (N, C, H, W) to (N, C, scale*H, scale*W)."""
        _check_input(x, self.channels, "ESPCN")
        return self.shuffle(self.body(x))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, channels={self.channels}"


def _make_act(activation: str) -> nn.Module:
    return nn.ReLU() if activation == "relu" else nn.Tanh()


class MeanShift(nn.Conv2d):
    """Add ``sign * mean`` to each channel: EDSR's fixed 1x1 convolution.

    Written, as in EDSR's code, as a 1x1 convolution with identity weights and a frozen bias,
    so an analysis sees the constant as an ordinary convolution bias (a bias source of the
    linear interpreter) rather than as an anonymous tensor addition.

    Args:
        mean: One value per channel.
        sign: ``-1`` subtracts the mean, ``+1`` adds it back.
    """

    def __init__(self, mean: Sequence[float], sign: float = -1.0) -> None:
        c = len(mean)
        super().__init__(c, c, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(c).view(c, c, 1, 1))
            assert self.bias is not None
            self.bias.copy_(sign * torch.tensor([float(m) for m in mean]))
        self.requires_grad_(False)


class _ResBlock(nn.Module):
    """conv 3x3 -> ReLU -> conv 3x3, scaled by ``res_scale`` and added to the input."""

    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        if self.res_scale != 1.0:
            res = res * self.res_scale
        return res + x


def _upsampler(scale: int, n_feats: int) -> nn.Sequential:
    # EDSR upsamples by powers of two in x2 steps (x4 = two x2 steps) and x3 in one step.
    steps = [2, 2] if scale == 4 else [scale]
    layers: list[nn.Module] = []
    for s in steps:
        layers += [nn.Conv2d(n_feats, s * s * n_feats, 3, padding=1), nn.PixelShuffle(s)]
    return nn.Sequential(*layers)


class EDSRBaseline(nn.Module):
    """EDSR-baseline (Lim et al., 2017): residual blocks without batch norm, PixelShuffle.

    head conv 3x3 -> ``n_resblocks`` x (conv-ReLU-conv, scaled by ``res_scale``, + skip) ->
    body conv 3x3, plus the head's output (global skip) -> upsampler (conv 3x3 to
    ``s*s*n_feats`` + PixelShuffle(s); x4 as two x2 steps) -> tail conv 3x3 to ``channels``.
    Module names follow EDSR's code (``sub_mean``, ``head``, ``body``, ``tail``,
    ``add_mean``). The mean shift works in the [0, 1] range convscope uses (EDSR's own
    checkpoints expect [0, 255]).

    Args:
        scale: Upscaling factor, one of :data:`SCALES`.
        channels: Image channels.
        n_resblocks: Residual blocks (16 in the baseline, 32 in full EDSR).
        n_feats: Feature width (64 in the baseline, 256 in full EDSR).
        res_scale: Factor on each block's residual branch (1.0 baseline, 0.1 full EDSR).
        rgb_mean: Per-channel constant subtracted at the input and added at the output;
            ``None`` uses :data:`DIV2K_RGB_MEAN` for 3 channels and no shift otherwise; an
            empty sequence turns the shift off.

    Shape:
        input (N, channels, H, W) -> output (N, channels, scale*H, scale*W).
    """

    def __init__(
        self,
        scale: int = 4,
        channels: int = 3,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        rgb_mean: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        where = "EDSRBaseline"
        self.scale = _check_scale(scale, where)
        self.channels = _check_positive(channels, "channels", where)
        _check_positive(n_feats, "n_feats", where)
        if isinstance(n_resblocks, bool) or not isinstance(n_resblocks, int) or n_resblocks < 0:
            raise ConvscopeError(
                f"{where}: n_resblocks must be an integer >= 0, got {n_resblocks!r}"
            )
        if rgb_mean is None:
            rgb_mean = DIV2K_RGB_MEAN if channels == 3 else ()
        mean = [float(m) for m in rgb_mean]
        if mean and len(mean) != channels:
            raise ConvscopeError(
                f"{where}: rgb_mean has {len(mean)} values but channels={channels}"
            )
        self.sub_mean: nn.Module = MeanShift(mean, -1.0) if mean else nn.Identity()
        self.add_mean: nn.Module = MeanShift(mean, 1.0) if mean else nn.Identity()
        self.head = nn.Sequential(nn.Conv2d(channels, n_feats, 3, padding=1))
        self.body = nn.Sequential(
            *[_ResBlock(n_feats, float(res_scale)) for _ in range(n_resblocks)],
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.tail = nn.Sequential(
            _upsampler(scale, n_feats), nn.Conv2d(n_feats, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale ``x`` (N, C, H, W) to (N, C, scale*H, scale*W)."""
        _check_input(x, self.channels, "EDSRBaseline")
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, channels={self.channels}"


def downscale(hr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Make the low-resolution input of a super-resolution pair: antialiased bicubic.

    The usual degradation of SR benchmarks (MATLAB's ``imresize``): bicubic with the kernel
    widened by ``scale`` so it low-passes before subsampling, then clamped to [0, 1] like a
    stored image.

    Args:
        hr: High-resolution images (N, C, H, W) in [0, 1], H and W multiples of ``scale``.
        scale: Downscaling factor, one of :data:`SCALES`.

    Returns:
        (N, C, H / scale, W / scale), same dtype.

    Raises:
        ConvscopeError: If the shape is not (N, C, H, W) or H, W are not multiples of scale.
    """
    scale = _check_scale(scale, "downscale")
    if hr.dim() != 4 or hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise ConvscopeError(
            f"downscale: expected (N, C, H, W) with H and W multiples of {scale}, got "
            f"{tuple(hr.shape)}; crop the image first"
        )
    size = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    lr = F.interpolate(hr, size=size, mode="bicubic", align_corners=False, antialias=True)
    return lr.clamp(0.0, 1.0)


def psnr(pred: torch.Tensor, target: torch.Tensor, shave: int = 0, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, over all images and channels together.

    Args:
        pred, target: Images (..., H, W) of the same shape. ``pred`` is clamped to
            ``[0, peak]`` first, as an SR output is before it is stored.
        shave: Pixels dropped on every side before comparing; SR papers drop ``scale`` so the
            borders, where no method has full context, do not dominate.
        peak: The largest pixel value (1.0 for images in [0, 1]).

    Returns:
        ``10 log10(peak^2 / MSE)``; ``inf`` for identical images.
    """
    if pred.shape != target.shape:
        raise ConvscopeError(f"psnr: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    if shave:
        pred = pred[..., shave:-shave, shave:-shave]
        target = target[..., shave:-shave, shave:-shave]
    mse = float(((pred.clamp(0.0, peak) - target) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)
