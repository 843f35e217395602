"""``convscope decode``: decode one layer of a checkpoint and write its gallery and report.

A pipeline: the numbers come from :mod:`convscope.decoding`, the pictures from
:mod:`convscope.report.decoding_figures`; this module only chooses what to show.
"""

from __future__ import annotations

import os
from pathlib import Path
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
from convscope.io import write_json
from convscope.report.decoding_figures import (
    plot_decoded_filters,
    plot_max_activation_matrix,
    plot_response_comparison,
    plot_top_images,
)
from convscope.report.figures import save_figure
from convscope.report.html import Figure, Section, Table, write_report

__all__ = ["write_decoding_report"]

_MATRIX_MAX_FILTERS = 20  # Fig. 1's matrix stays readable up to about this many filters


def write_decoding_report(
    checkpoint: str | os.PathLike[str],
    layer: str,
    out_dir: str | os.PathLike[str],
    *,
    unpool: str = "nearest",
    dataset: str = "mnist-subset",
    data_dir: str | os.PathLike[str] | None = None,
    n_images: int = 1000,
    max_filters: int = 50,
    top: int = 4,
) -> dict[str, Any]:
    """Decode ``layer`` and write the gallery, ``metrics.json`` and ``report.html``.

    Args:
        checkpoint: written by ``convscope train`` (or :func:`convscope.models.save_checkpoint`).
        layer: dotted module name of a ``Conv2d`` (see ``model.named_modules()``).
        out_dir: created if needed.
        unpool: mode for the gallery; the error table covers every mode.
        dataset, data_dir: test images (see :func:`convscope.data.load_dataset`).
        n_images: at most this many test images (the first ones).
        max_filters: decoded filters drawn in the gallery (the first ones).
        top: top-activating images per filter.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        ConvscopeError: a bad checkpoint, layer, mode or dataset, or images the model
            cannot take.
    """
    from convscope.data import load_dataset
    from convscope.models import load_checkpoint

    if n_images < 1 or max_filters < 1 or top < 1:
        raise ConvscopeError("n_images, max_filters and top must be at least 1")
    out = Path(out_dir)
    model, _ = load_checkpoint(checkpoint)
    dec = decode(model, layer, unpool)  # fails early on a bad layer or mode
    test = load_dataset(dataset, "test", data_dir)
    test = test.subset(range(min(n_images, len(test))))
    if test.image_shape[0] != dec.filters.shape[1]:
        raise ConvscopeError(
            f"{layer} decodes to {dec.filters.shape[1]}-channel filters but {test.name} has "
            f"{test.image_shape[0]}-channel images"
        )
    x = torch.from_numpy(test.images)

    errors = {m: reconstruction_error(model, dec.layer, x, m) for m in UNPOOL_MODES}
    literal = {m: reconstruction_error(model, dec.layer, x, m, offset=False) for m in UNPOOL_MODES}
    k = dec.filters.shape[0]
    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint),
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
    save_figure(
        plot_decoded_filters(
            f.numpy(),
            threshold_filters(f).numpy(),
            title=f"{dec.layer}: decoded filters ({unpool} unpooling), thresholded below",
        ),
        out / "decoded_filters.png",
    )
    scores = decoded_activations(dec, x)  # (N, K)
    rows = min(k, 10)
    idx = top_activating(scores[:, :rows], top)
    save_figure(
        plot_top_images(
            f[:rows].numpy(),
            test.images[idx.numpy()],
            torch.gather(scores[:, :rows].T, 1, idx).numpy(),
            [f"df {i}" for i in range(rows)],
        ),
        out / "top_images.png",
    )
    r, e = compare_responses(model, dec.layer, x[:1], decoded=dec)
    maps = r.shape[-2] * r.shape[-1]
    ch = list(range(min(8, k))) if maps > 1 else r[0].flatten(1).amax(1).topk(min(8, k)).indices
    ch = [int(c) for c in ch]
    save_figure(
        plot_response_comparison(
            test.images[0], r[0, ch].numpy(), e[0, ch].numpy(), [str(c) for c in ch]
        ),
        out / "responses.png",
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
        save_figure(
            plot_max_activation_matrix(
                dec.filters.numpy(),
                threshold_filters(dec.filters).numpy(),
                test.images[best.numpy()],
                matrix.numpy(),
                [f"df {i}" for i in range(k)],
                [f"{test.class_names[test.labels[i]]}" for i in best.tolist()],
            ),
            out / "max_activation.png",
        )
        figures["matrix"] = Figure(
            "max_activation.png",
            "Each decoded filter (rows) on the image that excites each filter most (columns).",
        )
        metrics["best_image_labels"] = [int(test.labels[i]) for i in best.tolist()]
    write_json(out / "metrics.json", metrics)

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
        out,
        f"Filter decoding: {dec.layer}",
        sections,
        {"checkpoint": Path(checkpoint).name, "unpool": unpool},
    )
    return metrics
