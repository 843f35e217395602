"""``convscope spectrum``: transfer function and Maximum Gain of a model (seed 004).

The numbers come from :mod:`convscope.spectral`, the picture from
:func:`convscope.report.figures.plot_transfer_function`. Without ``--image`` the
operating point is the impulse image (Hann window); with an image, its data derivative
is taken as it is (no window).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from typing_extensions import Unpack

from convscope import spectral as sp
from convscope.errors import ConvscopeError
from convscope.runs.inputs import ImageSource
from convscope.runs.options import NO_IMAGE, Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["DATA_OWNED", "OWNED", "run", "run_data", "summarise_gains"]

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
        title=f"{s.model.short_name}: Maximum Gain",
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


# -- over a dataset: --data ------------------------------------------------------------------

DATA_OWNED = (
    "maximum_gain.png",
    "radial_profiles.png",
    "transfer_functions.png",
    "report.html",
    "report.json",
)
SPECTRUM_PIXELS = 64 * 64
"""Images up to this many pixels keep their whole spectrum in the table (an ImageNet
image's would be 600 kB a row); every image keeps its radial profile."""


def run_data(
    model: ModelLike,
    data: str,
    out: str | os.PathLike[str],
    *,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    target: int | None = None,
    on: str = "softmax",
    **options: Unpack[Options],
) -> Any:
    """Maximum Gain at every image of ``data``, per class (seed 004 at the data points).

    At each image the data derivative of its class (``target``, else the predicted one)
    is taken as it is (no window) and its spectrum's maximum is that image's Maximum
    Gain, per input channel. Writes ``per_image.parquet`` (index, label, path,
    predicted, class, Maximum Gain per channel ``max_gain_db/<channel>``),
    ``summary.json`` (Maximum Gain statistics and histogram, per class; the mean
    transfer function of each class, in dB), ``maximum_gain.png``,
    ``transfer_functions.png`` and ``report.html``. Resumes and shards like every
    dataset run (:mod:`convscope.runs.dataset_run`).
    """
    from convscope.runs.dataset_run import DatasetAnalysis, prepare, run_over

    if on not in ("softmax", "logit"):
        raise ConvscopeError(f"--on must be softmax or logit, got {on!r}")
    p = prepare(model, data, split=split, limit=limit, options=dict(options))
    try:
        names, device, net = p.class_names, p.process.device, p.model.module
        channels = _CHANNELS.get(p.data.shape[0]) or [
            f"channel {c}" for c in range(p.data.shape[0])
        ]

        def rows(indices: list[int], x: torch.Tensor, labels: torch.Tensor) -> list[dict[str, Any]]:
            return _gain_rows(net, x.to(device), target, on, channels)

        head = {"model": p.model.metadata(), "data": p.data.describe(), "projection": on,
                "window": None}  # fmt: skip
        analysis = DatasetAnalysis(
            command="spectrum",
            config={**p.config, "target": target, "on": on},
            rows=rows,
            summarise=lambda table: {**head, **summarise_gains(table, names, channels)},
            report=lambda o, summary: _data_report(o, summary, p.model.name, data, split),
            owned=DATA_OWNED,
            batch_dependent=True,  # one float32 backward pass per batch
        )
        return run_over(analysis, p.data, out, p.process, batch_size=batch_size,
                        workers=workers, overwrite=p.options["overwrite"],
                        formats=p.options["formats"], progress=p.options["progress"])  # fmt: skip
    finally:
        p.process.leave()


_CHANNELS = {1: ["grey"], 3: ["red", "green", "blue"]}


def _gain_rows(
    net: torch.nn.Module, x: torch.Tensor, target: int | None, on: str, channels: list[str]
) -> list[dict[str, Any]]:
    with torch.no_grad():
        logits = net(x)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ConvscopeError("spectrum needs a classifier's scores (N, classes)")
    if target is not None and not 0 <= target < logits.shape[1]:
        raise ConvscopeError(f"--target {target} is out of range for {logits.shape[1]} classes")
    pred = logits.argmax(1)
    z = torch.softmax(logits, 1) if on == "softmax" else logits
    cls = pred if target is None else torch.full_like(pred, target)
    d = sp.data_derivative(net, x, cls, on=on).detach().cpu()  # type: ignore[arg-type]
    spec = sp.spectrum_db(d, None)
    gains = spec.flatten(2).amax(2)
    radial, _ = sp.radial_profile(spec)
    out = []
    for i in range(len(x)):
        row: dict[str, Any] = {"predicted": int(pred[i]), "class": int(cls[i]),
                               "score": float(z[i, cls[i]])}  # fmt: skip
        for c, name in enumerate(channels):
            row[f"max_gain_db/{name}"] = float(gains[i, c])
        row["radial_db"] = [float(v) for v in radial[i].reshape(-1)]
        if spec.shape[-2] * spec.shape[-1] <= SPECTRUM_PIXELS:
            row["spectrum_db"] = spec[i].numpy().astype(np.float32).tobytes()
        out.append(row)
    return out


def summarise_gains(table: Any, names: list[str] | None, channels: list[str]) -> dict[str, Any]:
    """``summary.json`` of a dataset spectrum run from its per-image table."""
    from convscope.runs.summaries import column, histogram, per_class, stats

    gains = {c: column(table, f"max_gain_db/{c}") for c in channels}
    cls = column(table, "class").astype(np.int64)
    label = column(table, "label").astype(np.int64)
    predicted = column(table, "predicted").astype(np.int64)
    known = label >= 0
    radial = np.asarray(table.column("radial_db").to_pylist(), dtype=np.float64)
    spectra = None
    if "spectrum_db" in table.column_names:
        blobs = table.column("spectrum_db").to_pylist()
        spectra = np.stack([np.frombuffer(b, dtype=np.float32) for b in blobs]).astype(np.float64)
    mean_spectra, mean_radial = {}, {}
    for c in np.unique(cls):
        name = names[c] if names is not None and 0 <= c < len(names) else str(int(c))
        mean_radial[name] = radial[cls == c].mean(0).tolist()
        if spectra is not None:
            mean_spectra[name] = spectra[cls == c].mean(0).tolist()
    bins = radial.shape[1] // len(channels)
    return {
        "images": int(table.num_rows),
        "accuracy": float((predicted[known] == label[known]).mean()) if known.any() else None,
        "channels": channels,
        "maximum_gain_db": {c: stats(v) for c, v in gains.items()},
        "maximum_gain_histogram": {c: histogram(v) for c, v in gains.items()},
        "per_class": per_class(cls, {f"maximum_gain_db/{c}": v for c, v in gains.items()}, names),
        "radial_frequencies": ((np.arange(bins) + 0.5) * (0.5 / bins)).tolist(),
        "mean_radial_db": mean_radial,
        "mean_spectrum_db": mean_spectra or None,
    }


def _data_report(o: Outputs, s: dict[str, Any], model: str, data: str, split: str) -> None:
    from convscope.report.figures import (
        plot_class_gains,
        plot_mean_spectra,
        plot_radial_profiles,
    )
    from convscope.report.html import Figure, Section, Table, write_report

    name = os.path.basename(model)
    ch = s["channels"]
    classes = list(s["per_class"])
    mean = np.array([[s["per_class"][k][f"maximum_gain_db/{c}"]["mean"] for c in ch]
                     for k in classes])  # fmt: skip
    std = np.array([[s["per_class"][k][f"maximum_gain_db/{c}"]["std"] or 0.0 for c in ch]
                    for k in classes])  # fmt: skip
    o.figure("maximum_gain.png", plot_class_gains(classes, ch, mean, std,
             title=f"{name}: Maximum Gain at the images, per class"))  # fmt: skip
    fmt = "png" if "png" in o.formats else o.formats[0]
    freqs = np.asarray(s["radial_frequencies"])
    radial = {k: np.asarray(v).reshape(len(ch), len(freqs)) for k, v in s["mean_radial_db"].items()}
    o.figure("radial_profiles.png", plot_radial_profiles(freqs, radial, ch,
             title=f"{name}: mean transfer function per class, by frequency"))  # fmt: skip
    figures = [Figure(f"maximum_gain.{fmt}"), Figure(f"radial_profiles.{fmt}")]
    if s["mean_spectrum_db"]:
        shape = (len(ch), *s["data"]["shape"][1:])
        spectra = {k: np.asarray(v).reshape(shape) for k, v in s["mean_spectrum_db"].items()}
        o.figure("transfer_functions.png", plot_mean_spectra(spectra,
                 title=f"{name}: mean transfer function per class (dB)"))  # fmt: skip
        figures.append(Figure(f"transfer_functions.{fmt}"))
    headers = ["class", "images", *(f"Maximum Gain {c} (dB)" for c in ch)]
    rows = [[k, str(s["per_class"][k]["images"]),
             *(f"{mean[i, j]:.2f} ± {std[i, j]:.2f}" for j in range(len(ch)))]
            for i, k in enumerate(classes)]  # fmt: skip
    overall = ", ".join(f"{c} {s['maximum_gain_db'][c]['mean']:.2f} dB" for c in ch)
    sections = [
        Section("Maximum Gain at the data", [
            f"{s['images']} images of {data} ({split}). At each image, the derivative of its "
            f"class's {s['projection']} output with respect to the image, without a window; "
            f"its spectrum's largest value is the image's Maximum Gain. Mean: {overall}.",
            "One row per image is in per_image.parquet (its radial profile as radial_db and, "
            f"for images up to {SPECTRUM_PIXELS} pixels, its spectrum, float32 dB, as "
            "spectrum_db); summary.json holds every number on this page."],
            tables=[Table(headers, rows)], figures=figures),
    ]  # fmt: skip
    write_report(o.folder, f"convscope spectrum: {name} on {data}", sections)
    o.file("report.html")
    o.file("report.json")
