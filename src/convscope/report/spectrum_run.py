"""The run behind ``convscope spectrum``: transfer function and Maximum Gain (seed 004).

The numbers come from :mod:`convscope.spectral`, the picture from
:func:`convscope.report.figures.plot_transfer_function`; this module loads the
model, picks the operating point and writes ``transfer_function.png`` and
``metrics.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from convscope import spectral as sp
from convscope.errors import ConvscopeError
from convscope.io import write_json
from convscope.report.figures import plot_transfer_function, save_figure

__all__ = ["run_spectrum"]


def _impulse_shape(
    shape: str | Sequence[int] | None, model: torch.nn.Module, info: dict[str, Any]
) -> tuple[int, ...]:
    if shape:
        if not isinstance(shape, str):
            return tuple(int(v) for v in shape)
        try:
            return tuple(int(v) for v in shape.split(","))
        except ValueError:
            raise ConvscopeError(f"--shape must look like 1,28,28; got {shape!r}") from None
    if info.get("normalization") == "imagenet":
        return (3, 224, 224)  # torchvision classifiers, behind their ImageNet normalisation
    return sp.model_input_shape(model)


def run_spectrum(
    out: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    model: str | None = None,
    weights: bool = False,
    image: str | os.PathLike[str] | None = None,
    target: int | None = None,
    on: str = "softmax",
    channels: int | None = None,
    shape: str | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Transfer function and Maximum Gain of a model at an operating point (seed 004).

    Without an image the operating point is the impulse image (Hann window); with an
    image, its data derivative is taken as it is (no window).

    Args:
        out: Folder to write ``transfer_function.png`` and ``metrics.json`` into.
        checkpoint: A checkpoint from ``convscope train``.
        model: Instead of ``checkpoint``: a torchvision model name.
        weights: With ``model``: torchvision weights from the local cache.
        image: Operating point (default: the impulse image).
        target: Class (default: the winner).
        on: ``"softmax"`` (p = 1/score) or ``"logit"``.
        channels: Convert the image to this many channels.
        shape: Impulse image shape (C, H, W) or ``"C,H,W"`` when the model does not say.

    Returns:
        The metrics written: ``model``, ``source``, ``operating_point`` (the image's
        file name or ``"impulse image"``), ``window``, ``projection``, ``class`` and
        ``maximum_gain_db`` (one per input channel).

    Raises:
        ConvscopeError: On a bad ``on``, not exactly one of ``checkpoint`` and
            ``model``, a bad shape, a model or image that cannot be read, or an image
            whose channels the model does not take.
    """
    from convscope.data import load_image
    from convscope.models.zoo import load_model

    if on not in ("softmax", "logit"):
        raise ConvscopeError(f"--on must be softmax or logit, got {on!r}")
    if (checkpoint is None) == (model is None):
        raise ConvscopeError("give exactly one of --checkpoint and --model")
    spec_name = str(checkpoint) if checkpoint is not None else str(model)
    net, info = load_model(spec_name, weights)
    if image is None:
        x = sp.impulse_image(_impulse_shape(shape, net, info))
        window: sp.Window = "hann"
    else:
        side = getattr(net, "input_size", None)
        x = load_image(image, channels=channels, size=(side, side) if side else None)
        window = None
    in_ch = int(getattr(net, "in_channels", x.shape[1]))
    if x.shape[1] != in_ch:
        raise ConvscopeError(
            f"{image}: image has {x.shape[1]} channels but the model expects {in_ch}; "
            f"pass --channels {in_ch} to convert it"
        )
    d = sp.data_derivative(net, x, target, on=on)[0]  # type: ignore[arg-type]
    spec = sp.spectrum_db(d, window)
    gains = [float(v) for v in spec.flatten(1).amax(1)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = "impulse image" if image is None else Path(image).name
    save_figure(
        plot_transfer_function(d.numpy(), spec.numpy(), gains, f"{Path(spec_name).name} at {src}"),
        out / "transfer_function.png",
    )
    with torch.no_grad():
        logits = net(x)[0]
    metrics: dict[str, Any] = {
        "model": spec_name,
        "source": info["source"],
        "operating_point": src,
        "window": window,
        "projection": on,
        "class": int(logits.argmax()) if target is None else target,
        "maximum_gain_db": gains,
    }
    write_json(out / "metrics.json", metrics)
    return metrics
