"""Spectral response of a CNN and its Maximum Gain (seed 004).

Linearise the network at an input ``x0`` with one backward pass: the data
derivative ``dz/dx = d<p, f(x)>/dx`` at ``x0`` is a linear system, and the
amplitude of its 2-D Fourier transform is the network's transfer function

    |H| = 20 log10 |FFT2(dz/dx)|    (dB, per input channel, DC in the centre).

For a classifier the projection ``p`` picks the winning class ``i``: ``p_i = 1/score_i``
on the softmax output (seed 004 eq. 6; it makes networks with different confidences
comparable) or ``p_i = 1`` on a logit. The *Maximum Gain* is the peak of ``|H|``; for
an impulse image (one bright pixel, 255 before preprocessing, in the centre of every
channel) a Hann window is applied to the derivative before the FFT.

Logged once per epoch, the Maximum Gain is a training diagnostic (seed 004 section
IV-C): :func:`diagnose` names the four patterns of its curve. The callbacks that log it
(:class:`convscope.train.MaxGainCallback`, :func:`convscope.train.lightning_callback`,
:func:`convscope.train.log_max_gain`) live in :mod:`convscope.train.max_gain`; this
module is analysis only and imports nothing from :mod:`convscope.train`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = [
    "MIN_EPOCHS",
    "Diagnosis",
    "data_derivative",
    "diagnose",
    "hann_window2d",
    "impulse_image",
    "maximum_gain",
    "model_input_shape",
    "radial_profile",
    "spectrum_db",
    "transfer_function",
    "variability",
]

On = Literal["softmax", "logit"]
Window = Literal["hann"] | None


def impulse_image(
    shape: Sequence[int],
    value: float = 255.0,
    *,
    scale: float = 1.0 / 255.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A 2-D Dirac impulse in the model's input space.

    The raw image is 0 everywhere except ``value`` (255) at the centre pixel
    ``(H // 2, W // 2)`` of every channel; it then goes through the preprocessing
    ``(raw * scale - mean) / std``. The default ``scale = 1/255`` matches convscope's
    models, which take images in [0, 1].

    Args:
        shape: ``(C, H, W)`` or ``(1, C, H, W)``.
        mean, std: per-channel normalisation (e.g. ImageNet's), if the model uses one.

    Returns:
        ``(1, C, H, W)``.
    """
    s = tuple(int(v) for v in shape)
    if len(s) == 4 and s[0] == 1:
        s = s[1:]
    if len(s) != 3 or min(s) < 1:
        raise ConvscopeError(f"impulse_image needs a shape (C, H, W), got {tuple(shape)}")
    c, h, w = s
    raw = torch.zeros(1, c, h, w, dtype=dtype, device=device)
    raw[:, :, h // 2, w // 2] = value
    x = raw * scale
    if mean is not None:
        x = x - torch.as_tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1)
    if std is not None:
        x = x / torch.as_tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1)
    return x


def hann_window2d(
    h: int, w: int, *, dtype: torch.dtype = torch.float64, device: Any = None
) -> torch.Tensor:
    """Separable 2-D Hann window ``(H, W)``, symmetric (zero at both ends)."""
    wh = torch.hann_window(h, periodic=False, dtype=dtype, device=device) if h > 1 else None
    ww = torch.hann_window(w, periodic=False, dtype=dtype, device=device) if w > 1 else None
    one = torch.ones(1, dtype=dtype, device=device)
    return torch.outer(wh if wh is not None else one, ww if ww is not None else one)


def spectrum_db(derivative: torch.Tensor, window: Window = "hann") -> torch.Tensor:
    """``20 log10 |FFT2|`` of ``(..., H, W)`` maps, fftshifted so DC is in the centre.

    Zero amplitudes are floored at the smallest positive float64 instead of -inf.
    """
    d = derivative.to(torch.float64)
    if window == "hann":
        d = d * hann_window2d(d.shape[-2], d.shape[-1], device=d.device)
    elif window is not None:
        raise ConvscopeError(f"window must be 'hann' or None, got {window!r}")
    amp = torch.fft.fftshift(torch.fft.fft2(d).abs(), dim=(-2, -1))
    return 20.0 * torch.log10(amp.clamp_min(torch.finfo(torch.float64).tiny))


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ConvscopeError(
            f"expected an image (C, H, W) or a batch (N, C, H, W), got {tuple(x.shape)}"
        )
    return x


def data_derivative(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    projection: torch.Tensor | None = None,
    on: On = "softmax",
) -> torch.Tensor:
    """``d<p, z>/dx`` for a batch, with one backward pass (seed 004 eq. 4).

    Args:
        model: maps ``(N, C, H, W)`` to ``(N, classes)`` logits (or any output when a
            ``projection`` is given). Used as it is: put it in eval mode first.
        x: ``(N, C, H, W)`` or ``(C, H, W)``.
        target: class per image (default: each image's winning class).
        projection: tensor shaped like the model's output (one image) or the batch
            output; replaces the class projection, applied to the raw output.
        on: ``"softmax"``: ``z = softmax(logits)`` with ``p_i = 1 / score_i``;
            ``"logit"``: ``z = logits`` with ``p_i = 1``.

    Returns:
        ``(N, C, H, W)`` data derivatives.
    """
    if on not in ("softmax", "logit"):
        raise ConvscopeError(f"on must be 'softmax' or 'logit', got {on!r}")
    xb = _as_batch(x).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xb)
        if projection is not None:
            p = projection.to(out.dtype).to(out.device)
            if p.shape == out.shape[1:]:
                p = p.expand_as(out)
            if p.shape != out.shape:
                raise ConvscopeError(
                    f"projection has shape {tuple(projection.shape)} but the output is "
                    f"{tuple(out.shape)}"
                )
            scalar = (p * out).sum()
        else:
            if out.ndim != 2:
                raise ConvscopeError(
                    f"the model returns {tuple(out.shape)}, not (N, classes): pass a projection"
                )
            z = torch.softmax(out, dim=1) if on == "softmax" else out
            if target is None:
                idx = z.argmax(1)
            else:
                idx = torch.as_tensor(target, device=out.device).long().reshape(-1)
                if idx.numel() == 1:
                    idx = idx.expand(out.shape[0])
                if idx.numel() != out.shape[0] or idx.min() < 0 or idx.max() >= out.shape[1]:
                    raise ConvscopeError(
                        f"target {target} does not fit {out.shape[0]} images and "
                        f"{out.shape[1]} classes"
                    )
            picked = z.gather(1, idx[:, None])[:, 0]
            # p_i = 1/score on the softmax: constant weights, detached from the graph
            weights = 1.0 / picked.detach() if on == "softmax" else torch.ones_like(picked)
            scalar = (weights * picked).sum()
        (grad,) = torch.autograd.grad(scalar, xb)
    return grad


def transfer_function(
    model: nn.Module,
    x: torch.Tensor,
    target: int | None = None,
    projection: torch.Tensor | None = None,
    channel: int = 0,
    window: Window = "hann",
    on: On = "softmax",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The transfer function of ``model`` at one image, for one input channel.

    Args:
        x: ``(C, H, W)`` or ``(1, C, H, W)``.
        window: ``"hann"`` (use it for impulse images) or ``None``.

    Returns:
        ``(spectrum_db (H, W), derivative (H, W))``; the spectrum is fftshifted.
    """
    xb = _as_batch(x)
    if xb.shape[0] != 1:
        raise ConvscopeError("transfer_function takes one image; use data_derivative for batches")
    if not 0 <= channel < xb.shape[1]:
        raise ConvscopeError(f"channel {channel} does not exist: the image has {xb.shape[1]}")
    d = data_derivative(model, xb, target, projection, on)[0, channel]
    return spectrum_db(d, window), d


def radial_profile(
    spectrum: torch.Tensor, bins: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A spectrum averaged over rings of equal frequency: ``(..., bins)`` and the centres.

    Args:
        spectrum: ``(..., H, W)`` with DC in the centre (as :func:`spectrum_db` returns),
            in any unit (dB values are averaged as they are).
        bins: Rings of equal width from 0 to 0.5 cycles per pixel (default ``min(H, W) //
            2``); frequencies beyond 0.5 (the corners) are left out.

    Returns:
        ``(profile, centres)``: the mean of each ring (NaN for an empty one) and the
        ring centres in cycles per pixel.
    """
    h, w = spectrum.shape[-2:]
    n = bins if bins is not None else max(1, min(h, w) // 2)
    if n < 1:
        raise ConvscopeError(f"bins must be at least 1; got {bins}")
    fy = torch.fft.fftshift(torch.fft.fftfreq(h, dtype=torch.float64))
    fx = torch.fft.fftshift(torch.fft.fftfreq(w, dtype=torch.float64))
    r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).reshape(-1)
    ring = torch.clamp((r / 0.5 * n).floor().long(), max=n - 1)
    ring = torch.where(r <= 0.5, ring, torch.full_like(ring, n))  # ring n: dropped
    flat = spectrum.to(torch.float64).reshape(*spectrum.shape[:-2], h * w)
    sums = torch.zeros(*flat.shape[:-1], n + 1, dtype=torch.float64, device=flat.device)
    sums.index_add_(-1, ring.to(flat.device), flat)
    counts = torch.bincount(ring, minlength=n + 1).to(flat)
    profile = sums[..., :n] / counts[:n]
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) * (0.5 / n)
    return profile, centres


def model_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` from a model's ``input_shape`` or ``in_channels``/``input_size``."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(int(v) for v in shape)  # type: ignore[return-value]
    c = getattr(model, "in_channels", None)
    s = getattr(model, "input_size", None)
    if c is None or s is None:
        raise ConvscopeError(
            f"cannot tell the input shape of {type(model).__name__}: "
            "pass shape=(C, H, W) (on the command line: --shape C,H,W)"
        )
    return int(c), int(s), int(s)


def maximum_gain(
    model: nn.Module,
    x: torch.Tensor | None = None,
    target: int | None = None,
    projection: torch.Tensor | None = None,
    window: Window = "hann",
    *,
    shape: Sequence[int] | None = None,
    on: On = "softmax",
) -> list[float]:
    """Maximum Gain in dB per input channel: the peak of the transfer function.

    Args:
        x: the operating point; ``None`` uses :func:`impulse_image` of ``shape``
            (default: the model's ``(in_channels, input_size, input_size)``).

    Returns:
        One value per input channel.
    """
    if x is None:
        p = next(iter(model.parameters()), None)
        dtype = p.dtype if p is not None else torch.float32
        device = p.device if p is not None else None
        x = impulse_image(shape or model_input_shape(model), dtype=dtype, device=device)
    xb = _as_batch(x)
    if xb.shape[0] != 1:
        raise ConvscopeError("maximum_gain takes one image")
    d = data_derivative(model, xb, target, projection, on)[0]
    spec = spectrum_db(d, window)  # (C, H, W)
    return [float(v) for v in spec.flatten(1).amax(1)]


# -- training diagnostics (the callbacks that log the curve: convscope.train.max_gain) --


def variability(curve: Sequence[float]) -> float:
    """Roughness of a Maximum-Gain curve in dB: a trimmed mean of |second differences|.

    Second differences ignore a steady rise or a plateau (both are smooth) and answer
    to epoch-to-epoch jumps. The largest eighth of them is dropped so the one knee
    where a curve leaves its starting value does not count as variability. A mean
    rather than a median: on a small data set the network fits its training images
    within a few epochs and the curve then freezes; a median would see only that
    frozen tail and miss the early jumps a too-high learning rate causes.
    """
    v = [float(c) for c in curve if c is not None and math.isfinite(c)]
    if len(v) < 3:
        return 0.0
    d2 = sorted(abs(v[i + 1] - 2 * v[i] + v[i - 1]) for i in range(1, len(v) - 1))
    kept = d2[: len(d2) - len(d2) // 8]
    return sum(kept) / len(kept)


@dataclass
class Diagnosis:
    """What a Maximum-Gain curve says about training (seed 004 section IV-C)."""

    pattern: Literal[
        "rate too high",
        "too low or keep training",
        "converging",
        "overfitting - stop",
        "not enough epochs",
    ]
    advice: str
    variability: float
    early_variability: float
    late_variability: float
    late_slope: float


ADVICE = {
    "rate too high": "high variability across all epochs: lower the learning rate",
    "too low or keep training": (
        "smooth rise up to the end: raise the learning rate or train longer"
    ),
    "converging": "rise then a smooth plateau: the model has begun to converge",
    "overfitting - stop": "smooth, then highly variable: strong overfitting, stop training",
}
# Each half of the curve needs a few second differences of its own before its variability
# means anything, and the slope a few epochs: shorter curves are not judged.
MIN_EPOCHS = 8


def diagnose(
    history: Mapping[str, Any] | Sequence[float] | Any,
    *,
    key: str = "max_gain",
    high: float = 1.0,
    slope: float = 0.05,
) -> Diagnosis:
    """Name the pattern of a Maximum-Gain curve (seed 004 section IV-C).

    Let ``v`` be :func:`variability` (dB) of the whole curve, of its first half and of
    its second half, and ``s`` the least-squares slope (dB/epoch) over its last third:

    * ``v_late > high`` and ``v_early <= high / 2``: **overfitting - stop** (smooth, then
      variable);
    * ``v > high``: **rate too high** (variable throughout);
    * ``s > slope``: **too low or keep training** (still rising);
    * otherwise **converging** (risen, now flat).

    A run whose training loss or gain stops being finite diverged: **rate too high**, whatever
    its length. Otherwise a curve of fewer than :data:`MIN_EPOCHS` (8) finite epochs is not
    judged: the pattern is **not enough epochs** (its variabilities and slope are computed
    all the same).

    ``high`` and ``slope`` are per architecture and data set, as the paper warns; the
    defaults are calibrated on the LeNet/MNIST learning-rate sweep in
    ``experiments/results/spectral/`` (and checked on other seeds and the paper's rate in
    ``spectral_seeds.md`` there).

    Args:
        history: a list of values, a ``History``, or a mapping holding ``key`` (top
            level or under ``"extra"``, as in ``metrics.json``).
    """
    raw = _curve(history, key)
    curve = [v for v in raw if math.isfinite(v)]
    half = len(curve) // 2
    v_all = variability(curve)
    v_early = variability(curve[:half])
    v_late = variability(curve[half:])
    tail = curve[-max(3, len(curve) // 3) :]
    n = len(tail)
    mx = (n - 1) / 2
    my = sum(tail) / n if n else 0.0
    den = sum((i - mx) ** 2 for i in range(n))
    s = sum((i - mx) * (y - my) for i, y in enumerate(tail)) / den if den else 0.0
    blown = _diverged_at(history, raw)
    if blown is not None:
        advice = (f"the training diverged at epoch {blown} (its loss or Maximum Gain is no longer "
                  "finite): lower the learning rate")  # fmt: skip
        return Diagnosis("rate too high", advice, v_all, v_early, v_late, s)
    if len(curve) < MIN_EPOCHS:
        advice = (f"{len(curve)} epochs of {key}: the curve needs at least {MIN_EPOCHS} before "
                  "its pattern can be read; train longer")  # fmt: skip
        return Diagnosis("not enough epochs", advice, v_all, v_early, v_late, s)
    if v_late > high and v_early <= high / 2:
        pattern = "overfitting - stop"
    elif v_all > high:
        pattern = "rate too high"
    elif s > slope:
        pattern = "too low or keep training"
    else:
        pattern = "converging"
    return Diagnosis(pattern, ADVICE[pattern], v_all, v_early, v_late, s)  # type: ignore[arg-type]


def _curve(history: Any, key: str) -> list[float]:
    if isinstance(history, Mapping):
        series = history.get(key)
        if series is None and isinstance(history.get("extra"), Mapping):
            series = history["extra"].get(key)
        if series is None and isinstance(history.get("history"), Mapping):
            return _curve(history["history"], key)
    elif hasattr(history, "extra"):
        series = history.extra.get(key)
    else:
        series = history
    if series is None:
        raise ConvscopeError(
            f"no {key!r} series in the history; train with convscope.train.MaxGainCallback"
        )
    return [float(v) for v in series if v is not None]


def _diverged_at(history: Any, curve: list[float]) -> int | None:
    """The first epoch (from 1) whose training loss or gain is not finite, if any.

    A gain of NaN or infinity means the weights blew up. In a history the training loss
    says the same: ``History.to_dict`` (and so ``metrics.json``) writes a NaN loss as
    ``None``. A ``None`` gain alone is not read as divergence: a logger's table has empty
    gain cells on the rows of other metrics.
    """
    bad = [i for i, v in enumerate(curve) if not math.isfinite(v)]
    h = history
    if isinstance(h, Mapping) and "train_loss" not in h and isinstance(h.get("history"), Mapping):
        h = h["history"]
    loss = h.get("train_loss") if isinstance(h, Mapping) else getattr(h, "train_loss", None)
    if isinstance(loss, Sequence) and not isinstance(loss, str):
        bad += [i for i, v in enumerate(loss) if v is None or not math.isfinite(float(v))]
    return min(bad) + 1 if bad else None
