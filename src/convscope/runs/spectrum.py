"""``convscope spectrum``: transfer function and Maximum Gain of a model (seed 004).

The numbers come from :mod:`convscope.spectral`, the picture from
:func:`convscope.report.figures.plot_transfer_function`. Without ``--image`` the
operating point is the impulse image (Hann window); with an image, its data derivative
is taken as it is (no window).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from typing_extensions import Unpack

from convscope import spectral as sp
from convscope.errors import ConvscopeError
from convscope.runs.inputs import ImageSource
from convscope.runs.options import NO_IMAGE, Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["OWNED", "run"]

OWNED = ("spectrum.json", "transfer_function.png")


def _parse_shape(shape: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """``--shape C,H,W`` checked before any work."""
    if not shape:
        return None
    try:
        vals = tuple(int(v) for v in (shape.split(",") if isinstance(shape, str) else shape))
    except ValueError:
        vals = ()
    if len(vals) != 3 or min(vals) < 1:
        raise ConvscopeError(f"--shape must look like 1,28,28 (C,H,W); got {shape!r}")
    return vals  # type: ignore[return-value]


def _impulse_shape(s: Started, shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if shape:
        return shape
    info = s.model.info
    c = info.get("in_channels")
    hw = s.size or info.get("input_size")
    prep = info.get("preprocess") or {}
    if hw is None and prep.get("crop"):
        crop = prep["crop"]
        hw = (int(crop), int(crop)) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
    if hw is None and info.get("normalization") == "imagenet":
        hw = (224, 224)  # torchvision classifiers, behind their ImageNet normalisation
    if c is not None and hw is not None:
        return int(c), int(hw[0]), int(hw[1])
    return sp.model_input_shape(s.model.module)


def run(
    model: ModelLike,
    out: str | os.PathLike[str],
    *,
    image: str | os.PathLike[str] | None = None,
    target: int | None = None,
    on: str = "softmax",
    shape: str | Sequence[int] | None = None,
    **options: Unpack[Options],
) -> RunResult:
    """Transfer function and Maximum Gain of a model at an operating point (seed 004).

    Writes ``spectrum.json`` and ``transfer_function.png``.

    Args:
        model: A model spec, an ``nn.Module`` or a loaded model.
        out: The folder to write into.
        image: Operating point(s): a file, ``sample:NAME``, folder or glob (default: the
            impulse image).
        target: Class (default: the winner).
        on: ``"softmax"`` (projection p = 1/score) or ``"logit"``.
        shape: Impulse image shape (C, H, W) or ``"C,H,W"`` when the model does not say.
        **options: The shared :class:`~convscope.runs.Options`.

    Returns:
        The :class:`~convscope.runs.RunResult` (``result``: the spectrum in dB,
        ``(C, H, W)``). Its metrics hold ``operating_point``, ``window``,
        ``projection``, ``class``, ``class_name`` and ``maximum_gain_db`` (one per input
        channel).
    """
    if on not in ("softmax", "logit"):
        raise ConvscopeError(f"--on must be softmax or logit, got {on!r}")
    impulse = _parse_shape(shape)
    check = None if image is not None else lambda s: _impulse_shape(s, impulse)
    s = start("spectrum", model, image, out, OWNED, options, check=check)
    return s.plan.run(
        lambda src, o: _one(s, src, o, target, on, impulse),
        progress=s.progress,
        row=lambda r: [", ".join(f"{g:.2f} dB" for g in r.metrics["maximum_gain_db"])],
        headers=["Maximum Gain"],
        title=f"{s.model.name}: Maximum Gain",
    )


def _one(
    s: Started,
    src: ImageSource,
    o: Outputs,
    target: int | None,
    on: str,
    shape: tuple[int, int, int] | None,
) -> RunResult:
    from convscope.report.figures import plot_transfer_function

    net = s.model.module
    if src is NO_IMAGE:
        x = sp.impulse_image(_impulse_shape(s, shape), device=s.model.device)
        window: sp.Window = "hann"
        notes = {"image": "impulse image", "shape": list(x.shape[1:])}
    else:
        x, notes = s.read(src)
        window = None
    with torch.no_grad():
        logits = net(x)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ConvscopeError(
            f"spectrum needs a classifier's scores (N, classes); {s.model.name} returns "
            f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
        )
    if target is not None and not 0 <= target < logits.shape[1]:
        raise ConvscopeError(f"--target {target} is out of range for {logits.shape[1]} classes")
    d = sp.data_derivative(net, x, target, on=on)[0].detach().cpu()  # type: ignore[arg-type]
    spec = sp.spectrum_db(d, window)
    gains = [float(v) for v in spec.flatten(1).amax(1)]
    c = int(logits[0].argmax()) if target is None else target
    m = s.head(notes)
    m.update(
        operating_point=notes["image"],
        window=window,
        projection=on,
        **{"class": c},
        class_name=s.model.class_name(c),
        maximum_gain_db=gains,
    )
    title = f"{os.path.basename(s.model.name)} at {os.path.basename(str(notes['image']))}"
    o.figure("transfer_function.png", plot_transfer_function(d.numpy(), spec.numpy(), gains, title))
    o.json("spectrum.json", m)
    return RunResult(o.folder, list(o.written), m, result=spec)
