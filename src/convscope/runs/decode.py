"""``convscope decode``: decode one layer's filters into image space (seed 003).

The numbers come from :mod:`convscope.decoding`, the pictures from
:mod:`convscope.report.decoding_figures`; this module only chooses what to show.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from convscope.cross_lens import CrossLens, cross_lens, locate_unit
from convscope.decoding import (
    UNPOOL_MODES,
    compare_responses,
    decode,
    decoded_activations,
    kernel_composition,
    layer_response,
    max_activation_matrix,
    reconstruction_error,
    threshold_filters,
    top_activating,
)
from convscope.errors import ConvscopeError
from convscope.report.decoding_figures import (
    plot_cross_lens,
    plot_decoded_filters,
    plot_kernel_composition,
    plot_max_activation_matrix,
    plot_response_comparison,
    plot_top_images,
)
from convscope.report.html import Figure, Section, Table, write_report
from convscope.runs.outputs import Outputs, open_out
from convscope.runs.result import RunResult
from convscope.runs.sources import LoadedModel, ModelLike, resolve_model

__all__ = ["OWNED", "Unit", "parse_unit", "run"]

_MATRIX_MAX_FILTERS = 20  # Fig. 1's matrix stays readable up to about this many filters
_COMPOSITION_FILTERS = 6  # filters drawn over the kernel bank (the first ones)
_COMPOSITION_TOP = 5  # kernels listed per filter

OWNED = (
    "metrics.json",
    "decoded_filters.png",
    "top_images.png",
    "responses.png",
    "max_activation.png",
    "kernel_composition.png",
    "report.html",
    "report.json",
)


_UNIT = re.compile(r"^(?P<layer>[^:@\s]+):(?P<channel>-?\d+)(?:@(?P<y>-?\d+),(?P<x>-?\d+))?$")


@dataclass(frozen=True)
class Unit:
    """A unit named on the command line: ``LAYER:CHANNEL`` or ``LAYER:CHANNEL@Y,X``.

    Attributes:
        layer: dotted module name.
        channel: the channel (filter) of that layer.
        position: ``(y, x)`` on the layer's output grid; ``None``: the channel's strongest
            unit on the image.
    """

    layer: str
    channel: int
    position: tuple[int, int] | None = None

    def __str__(self) -> str:
        at = "" if self.position is None else f"@{self.position[0]},{self.position[1]}"
        return f"{self.layer}:{self.channel}{at}"

    @property
    def figure(self) -> str:
        """The unit's figure, e.g. ``cross_lens_features.conv2_5_at_2_3.png``."""
        at = "" if self.position is None else f"_at_{self.position[0]}_{self.position[1]}"
        return f"cross_lens_{self.layer}_{self.channel}{at}.png"


def parse_unit(text: str | Unit) -> Unit:
    """``"features.conv2:5@2,3"`` -> :class:`Unit`; a :class:`Unit` is returned as it is.

    Raises:
        ConvscopeError: anything else (one line saying the form).
    """
    if isinstance(text, Unit):
        return text
    m = _UNIT.match(str(text).replace(" ", ""))
    if m is None:
        raise ConvscopeError(
            f"--unit must look like features.conv4:3 or features.conv2:5@2,3 "
            f"(LAYER:CHANNEL or LAYER:CHANNEL@Y,X); got {text!r}"
        )
    pos = None if m["y"] is None else (int(m["y"]), int(m["x"]))
    return Unit(m["layer"], int(m["channel"]), pos)


def _check_units(net: torch.nn.Module, units: Sequence[Unit], first: torch.Tensor) -> None:
    """Every unit's layer, channel and position, on the first image: one forward pass each."""
    for u in units:
        try:
            locate_unit(net, u.layer, first, u.channel, u.position)
        except ConvscopeError as e:
            raise ConvscopeError(f"--unit {u}: {e}") from None


def run(
    model: ModelLike,
    layer: str,
    out: str | os.PathLike[str],
    *,
    unpool: str = "nearest",
    dataset: str = "mnist-subset",
    data_dir: str | os.PathLike[str] | None = None,
    n_images: int = 1000,
    max_filters: int = 50,
    top: int = 4,
    units: Sequence[str | Unit] = (),
    unit_image: int | None = None,
    unit_mode: str = "freeze",
    weights: str | bool | None = None,
    state_dict: str | os.PathLike[str] | None = None,
    device: str | None = "cpu",
    overwrite: bool = False,
    formats: tuple[str, ...] | list[str] = ("png",),
    progress: bool = False,
) -> RunResult:
    """Decode ``layer`` and write the gallery, ``metrics.json`` and ``report.html``.

    On a model with a kernel bank (GFNN) the first filters are also written over the
    bank's named kernels (:func:`~convscope.decoding.kernel_composition`):
    ``kernel_composition.png``, a table in the report and ``metrics["kernel_composition"]``.

    Args:
        model: A model spec (e.g. a checkpoint from ``convscope train``), an
            ``nn.Module`` or a loaded model.
        layer: dotted module name of a ``Conv2d`` (see ``model.named_modules()``).
        out: the folder to write into.
        unpool: mode for the gallery; the error table covers every mode.
        dataset, data_dir: test images (see :func:`convscope.data.load_dataset`).
        n_images: at most this many test images (the first ones).
        max_filters: decoded filters drawn in the gallery (the first ones).
        top: top-activating images per filter.
        units: units to read three ways (:func:`parse_unit`: ``"LAYER:CHANNEL"`` or
            ``"LAYER:CHANNEL@Y,X"``, or :class:`Unit`): each one's decoded filter,
            deconvnet reconstruction and linear interpreter's row side by side
            (:func:`convscope.cross_lens.cross_lens`), one figure per unit
            (``cross_lens_*.png``), a report section and ``metrics["units"]``.
        unit_image: the test image (an index into the first ``n_images``) the units are
            read on; ``None``: for each unit the image it answers most (at its position,
            or anywhere when it has none).
        unit_mode: the row's mode: ``"freeze"`` (the image's decisions frozen, seed 001)
            or ``"taylor"`` (the Jacobian, the unit's gradient).
        weights, state_dict, device, overwrite, formats, progress: the shared options.

    Returns:
        The :class:`~convscope.runs.RunResult` (``result``: the decoded filters); its
        metrics are the contents of ``metrics.json``.

    Raises:
        ConvscopeError: a bad model, layer, mode, dataset, unit, ``unit_image``, ``unit_mode`` or
            ``--out``, or images the model cannot take; all before the long work.
    """
    from convscope.data import load_dataset

    if n_images < 1 or max_filters < 1 or top < 1:
        raise ConvscopeError("--images, --max-filters and --top must be at least 1")
    if unit_mode not in ("freeze", "taylor"):
        raise ConvscopeError(f"--unit-mode must be freeze or taylor; got {unit_mode!r}")
    named = list(dict.fromkeys(parse_unit(u) for u in units))
    owned = (*OWNED, *(u.figure for u in named))
    o = open_out(out, owned, overwrite=overwrite, formats=formats)
    loaded = resolve_model(model, weights=weights, state_dict=state_dict, device=device)
    net = loaded.module
    dec = decode(net, layer, unpool)  # fails early on a bad layer or mode
    test = load_dataset(dataset, "test", data_dir)
    test = test.subset(range(min(n_images, len(test))))
    if test.image_shape[0] != dec.filters.shape[1]:
        raise ConvscopeError(
            f"{layer} decodes to {dec.filters.shape[1]}-channel filters but {test.name} has "
            f"{test.image_shape[0]}-channel images"
        )
    if unit_image is not None and not 0 <= unit_image < len(test):
        raise ConvscopeError(
            f"--unit-image {unit_image} is out of range: the run reads test images "
            f"0..{len(test) - 1}"
        )
    x = torch.from_numpy(test.images).to(loaded.device)
    _check_units(net, named, x[:1])
    with o.interruptible():
        return _write(
            loaded,
            dec,
            test,
            x,
            o,
            unpool,
            max_filters,
            top,
            progress,
            named,
            unit_image,
            unit_mode,
        )


def _write(
    loaded: LoadedModel,
    dec: Any,
    test: Any,
    x: torch.Tensor,
    o: Outputs,
    unpool: str,
    max_filters: int,
    top: int,
    progress: bool,
    units: Sequence[Unit] = (),
    unit_image: int | None = None,
    unit_mode: str = "freeze",
) -> RunResult:
    from tqdm.auto import tqdm

    model = loaded.module
    steps = [(m, offset) for offset in (True, False) for m in UNPOOL_MODES]
    errors: dict[str, Any] = {}
    literal: dict[str, Any] = {}
    for m, offset in tqdm(steps, desc="reconstruction error", unit="mode", disable=not progress):
        (errors if offset else literal)[m] = reconstruction_error(
            model, dec.layer, x, m, offset=offset
        )
    k = dec.filters.shape[0]
    metrics: dict[str, Any] = {
        "model": loaded.metadata(),
        "layer": dec.layer,
        "unpool": dec.unpool,
        "filters_shape": list(dec.filters.shape),
        "stride": list(dec.stride),
        "padding": list(dec.padding),
        "chain": dec.chain,
        "test_set": test.name,
        "n_images": len(test),
        "reconstruction_error": {m: e.to_dict() for m, e in errors.items()},
        "reconstruction_error_biases_as_error": {m: e.to_dict() for m, e in literal.items()},
    }

    shown = min(k, max_filters)
    f = dec.filters[:shown].cpu()
    o.figure(
        "decoded_filters.png",
        plot_decoded_filters(
            f.numpy(),
            threshold_filters(f).numpy(),
            title=f"{dec.layer}: decoded filters ({unpool} unpooling), thresholded below",
        ),
    )
    scores = decoded_activations(dec, x).cpu()  # (N, K)
    rows = min(shown, 10)  # top_images draws from the gallery's filters
    idx = top_activating(scores[:, :rows], top)
    o.figure(
        "top_images.png",
        plot_top_images(
            f[:rows].numpy(),
            test.images[idx.numpy()],
            torch.gather(scores[:, :rows].T, 1, idx).numpy(),
            [f"df {i}" for i in range(rows)],
        ),
    )
    r, e = compare_responses(model, dec.layer, x[:1], decoded=dec)
    r, e = r.cpu(), e.cpu()
    maps = r.shape[-2] * r.shape[-1]
    ch = list(range(min(8, k))) if maps > 1 else r[0].flatten(1).amax(1).topk(min(8, k)).indices
    ch = [int(c) for c in ch]
    o.figure(
        "responses.png",
        plot_response_comparison(
            test.images[0], r[0, ch].numpy(), e[0, ch].numpy(), [str(c) for c in ch]
        ),
    )
    figures = {
        "decoded": Figure("decoded_filters.png", f"The first {shown} of {k} decoded filters."),
        "top": Figure("top_images.png", f"The {top} test images each filter answers most."),
        "responses": Figure(
            "responses.png",
            "The layer's response to one test image (top) "
            "and the decoded estimate (bottom), both contrast-normalised.",
        ),
    }
    if k <= _MATRIX_MAX_FILTERS:
        best, matrix = max_activation_matrix(scores)
        o.figure(
            "max_activation.png",
            plot_max_activation_matrix(
                dec.filters.cpu().numpy(),
                threshold_filters(dec.filters.cpu()).numpy(),
                test.images[best.numpy()],
                matrix.numpy(),
                [f"df {i}" for i in range(k)],
                [f"{test.class_names[test.labels[i]]}" for i in best.tolist()],
            ),
        )
        figures["matrix"] = Figure(
            "max_activation.png",
            "Each decoded filter (rows) on the image that excites each filter most (columns).",
        )
        metrics["best_image_labels"] = [int(test.labels[i]) for i in best.tolist()]
    composition = _composition(model, dec, unpool, o, metrics)
    cross = _cross_lens(model, test, x, units, unit_image, unpool, o, metrics, unit_mode)
    o.json("metrics.json", metrics)

    table = Table(
        ["unpooling", "error (mean ± std)", "biases counted as error"],
        [
            [
                m,
                f"{errors[m].mean:.4f} ± {errors[m].std:.4f}",
                f"{literal[m].mean:.4f} ± {literal[m].std:.4f}",
            ]
            for m in UNPOOL_MODES
        ],
        caption=f"Seed 003 eq. 3 on {len(test)} images of {test.name}.",
    )
    sections = [
        Section(
            "Decoded filters",
            [
                f"Every filter of {dec.layer} rewritten as an image-space pattern by substituting "
                "the filters below it (seed 003); ReLUs skipped. Chain from the image: "
                + "; ".join(dec.chain)
                + f". Correlating an image with a decoded filter at stride "
                f"{dec.stride} and padding {dec.padding} estimates the layer's response."
            ],
            figures=[figures["decoded"]],
        ),
        Section(
            "Reconstruction error",
            [
                "Per image: the layer's response and the decoded estimate (plus the response to "
                "a black image, which carries the biases) are each min-max normalised over all "
                "filters and positions; the error is their mean squared difference "
                "(docs/decoding.md)."
            ],
            tables=[table],
            figures=[figures["responses"]],
        ),
        Section("Top-activating images", figures=[figures["top"]]),
    ]
    if "matrix" in figures:
        sections.append(
            Section("Max-activation matrix (seed 003 Fig. 1)", figures=[figures["matrix"]])
        )
    if composition is not None:
        sections.append(composition)
    if cross is not None:
        sections.append(cross)
    write_report(
        o.folder,
        f"Filter decoding: {dec.layer}",
        sections,
        {"model": loaded.name, "trained": loaded.trained, "unpool": unpool},
    )
    o.file("report.json")
    o.file("report.html")
    return RunResult(o.folder, list(o.written), metrics, result=dec)


def _has_bank(model: torch.nn.Module) -> bool:
    from convscope.models.gfnn import KernelBank2d

    return any(isinstance(m, KernelBank2d) for m in model.modules())


def _composition(
    model: torch.nn.Module, dec: Any, unpool: str, o: Outputs, metrics: dict[str, Any]
) -> Section | None:
    """A model with a kernel bank: its first filters written over the bank's named kernels.

    Adds ``metrics["kernel_composition"]`` and draws ``kernel_composition.png``; returns
    the report's section (``None``, and nothing added, for a model without a bank). A
    bank that cannot be composed (e.g. trained kernels, no longer the named ones) gets a
    section saying why.
    """
    if not _has_bank(model):
        return None
    k = dec.filters.shape[0]
    rows = list(range(min(k, _COMPOSITION_FILTERS)))
    try:
        comp = kernel_composition(model, dec.layer, unpool, filters=rows)
    except ConvscopeError as e:
        metrics["kernel_composition"] = {"error": str(e)}
        return Section("Kernel-bank composition", [f"Not decoded to the named kernels: {e}"])
    top = min(_COMPOSITION_TOP, len(comp.kernel_names))
    tables = [comp.table(i)[:top] for i in range(len(rows))]
    metrics["kernel_composition"] = {
        "bank": comp.bank,
        "unpool": comp.unpool,
        "kernel_names": comp.kernel_names,
        "filters": [
            {"filter": f, "top": t} for f, t in zip(comp.filter_index, tables, strict=True)
        ],
    }
    o.figure(
        "kernel_composition.png",
        plot_kernel_composition(
            comp.filters().cpu().numpy(),
            comp.kernel_names,
            comp.share.cpu().numpy(),
            comp.net.cpu().numpy(),
            [f"df {f}" for f in comp.filter_index],
            top=top,
            title=f"{dec.layer}: filters over the kernel bank ({comp.bank})",
        ),
    )
    table = Table(
        ["filter", *[f"kernel {j + 1} (share, net sign)" for j in range(top)]],
        [
            [f"df {f}"]
            + [f"{e['kernel']} ({e['share']:.1%}, {'+' if e['net'] > 0 else '-'})" for e in t]
            for f, t in zip(comp.filter_index, tables, strict=True)
        ],
        caption=f"The {top} kernels with the largest share of each filter's absolute weight.",
    )
    return Section(
        "Kernel-bank composition",
        [
            f"Each filter of {dec.layer} decoded down to the output of the fixed kernel bank "
            f"{comp.bank} ({unpool} unpooling above it): a coefficient map per input channel "
            "and named kernel, whose kernels substituted in add up exactly to the decoded "
            "filter. A kernel's share is its absolute weight (summed over channels and "
            "positions) over the filter's total; its net weight is the signed sum "
            "(docs/decoding.md)."
        ],
        tables=[table],
        figures=[
            Figure(
                "kernel_composition.png",
                f"The first {len(rows)} decoded filters beside their top {top} kernels.",
            )
        ],
    )


def _unit_image(
    model: torch.nn.Module, x: torch.Tensor, u: Unit, name: str, unit_image: int | None
) -> int:
    """The test image a unit is read on: the one given, else the one it answers most."""
    if unit_image is not None:
        return unit_image
    r = layer_response(model, name, x)[:, u.channel]  # (N, h, w)
    at = r[:, u.position[0], u.position[1]] if u.position is not None else r.flatten(1).amax(1)
    return int(at.argmax())


def _cross_lens(
    model: torch.nn.Module,
    test: Any,
    x: torch.Tensor,
    units: Sequence[Unit],
    unit_image: int | None,
    unpool: str,
    o: Outputs,
    metrics: dict[str, Any],
    mode: str = "freeze",
) -> Section | None:
    """``--unit``: each unit's three readings, a figure each and ``metrics["units"]``."""
    if not units:
        return None
    figures, rows = [], []
    metrics["units"] = []
    for u in units:
        name, _, _ = locate_unit(model, u.layer, x[:1], u.channel, u.position)
        i = _unit_image(model, x, u, name, unit_image)
        c: CrossLens = cross_lens(
            model, name, x[i : i + 1], u.channel, u.position, unpool=unpool, mode=mode
        )
        label = test.class_names[test.labels[i]]
        cos = c.cosine()
        y, xx = c.position
        where = f"{name} channel {c.channel} at ({y}, {xx})"
        chosen = "given" if unit_image is not None else "strongest"
        o.figure(
            u.figure,
            plot_cross_lens(
                test.images[i],
                [m.cpu().numpy() for m in c.cropped().values()],
                c.window,
                f"{where}, test image {i} ({label})",
                cos,
            ),
        )
        metrics["units"].append(
            {"unit": str(u), **c.to_dict(), "image": i, "image_label": label,
             "image_chosen": chosen, "figure": u.figure}
        )  # fmt: skip
        top, left, h, w = c.window
        figures.append(
            Figure(
                u.figure,
                f"{where} on test image {i} ({label}; "
                f"{'the image it answers most' if chosen == 'strongest' else 'as asked'}), "
                f"activation {c.activation:.4g}; its {h}x{w} receptive field starts at "
                f"({top}, {left}). Cosine on the receptive field: decoded/deconvnet "
                f"{cos['decoded_deconvnet']:.3f}, decoded/row {cos['decoded_row']:.3f}, "
                f"deconvnet/row {cos['deconvnet_row']:.3f}.",
            )
        )
        rows.append(
            [str(u), f"{i} ({label})", f"{y},{xx}", f"{c.activation:.4g}"]
            + [f"{cos[k]:.3f}" for k in ("decoded_deconvnet", "decoded_row", "deconvnet_row")]
        )
    table = Table(
        ["unit", "image", "position", "activation", "decoded / deconvnet", "decoded / row",
         "deconvnet / row"],
        rows,
        caption="Cosine similarity of the three maps on each unit's receptive field.",
    )  # fmt: skip
    return Section(
        "One unit, three readings",
        [
            "Each unit named with --unit, read three ways on one test image: its decoded "
            f"filter ({unpool} unpooling, ReLUs skipped; the same for every position of the "
            "channel), its Zeiler-Fergus deconvnet reconstruction (the image's max-pool "
            "switches, the backward signal rectified at every ReLU) and the linear "
            "interpreter's row for it (the network cut at the unit's layer; "
            + (
                "frozen at the image: its ReLU masks and max-pool selections"
                if mode == "freeze"
                else "mode taylor: the Jacobian, the unit's gradient at the image"
            )
            + "). The maps are cut to the unit's "
            "receptive field, each drawn on its own signed scale (docs/decoding.md)."
        ],
        tables=[table],
        figures=figures,
    )
