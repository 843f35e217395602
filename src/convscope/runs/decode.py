"""``convscope decode``: decode one layer's filters into image space (seed 003).

The numbers come from :mod:`convscope.decoding`, the pictures from
:mod:`convscope.report.decoding_figures`; this module only chooses what to show.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from convscope.decoding import (
    UNPOOL_MODES,
    compare_responses,
    decode,
    decoded_activations,
    max_activation_matrix,
    reconstruction_error,
    threshold_filters,
    top_activating,
)
from convscope.errors import ConvscopeError
from convscope.report.decoding_figures import (
    plot_decoded_filters,
    plot_max_activation_matrix,
    plot_response_comparison,
    plot_top_images,
)
from convscope.report.html import Figure, Section, Table, write_report
from convscope.runs.outputs import Outputs, open_out
from convscope.runs.result import RunResult
from convscope.runs.sources import LoadedModel, ModelLike, resolve_model

__all__ = ["OWNED", "run"]

_MATRIX_MAX_FILTERS = 20  # Fig. 1's matrix stays readable up to about this many filters

OWNED = (
    "metrics.json",
    "decoded_filters.png",
    "top_images.png",
    "responses.png",
    "max_activation.png",
    "report.html",
    "report.json",
)


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
    weights: str | bool | None = None,
    state_dict: str | os.PathLike[str] | None = None,
    device: str | None = "cpu",
    overwrite: bool = False,
    formats: tuple[str, ...] | list[str] = ("png",),
    progress: bool = False,
) -> RunResult:
    """Decode ``layer`` and write the gallery, ``metrics.json`` and ``report.html``.

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
        weights, state_dict, device, overwrite, formats, progress: the shared options.

    Returns:
        The :class:`~convscope.runs.RunResult` (``result``: the decoded filters); its
        metrics are the contents of ``metrics.json``.

    Raises:
        ConvscopeError: a bad model, layer, mode, dataset or ``--out``, or images the
            model cannot take.
    """
    from convscope.data import load_dataset

    if n_images < 1 or max_filters < 1 or top < 1:
        raise ConvscopeError("--images, --max-filters and --top must be at least 1")
    o = open_out(out, OWNED, overwrite=overwrite, formats=formats)
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
    x = torch.from_numpy(test.images).to(loaded.device)
    with o.interruptible():
        return _write(loaded, dec, test, x, o, unpool, max_filters, top, progress)


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
    rows = min(k, 10)
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
    write_report(
        o.folder,
        f"Filter decoding: {dec.layer}",
        sections,
        {"model": loaded.name, "trained": loaded.trained, "unpool": unpool},
    )
    o.file("report.json")
    o.file("report.html")
    return RunResult(o.folder, list(o.written), metrics, result=dec)
