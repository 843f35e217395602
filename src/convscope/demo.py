"""The runs behind ``convscope demo`` and ``convscope explain``.

These functions only orchestrate: training comes from :mod:`convscope.train`,
numbers from :mod:`convscope.attribution`, pictures from
:mod:`convscope.report.figures`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope import attribution as attr
from convscope import kernels as kb
from convscope.data import ArrayDataset, load_image, load_mnist_subset
from convscope.errors import ConvscopeError
from convscope.io import write_json
from convscope.models import build_model, find_kernel_bank, load_checkpoint, save_checkpoint
from convscope.report import figures as figs
from convscope.report.html import Figure, Section, Table, write_report

__all__ = ["explain_image", "run_demo"]

Log = Callable[[str], None]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _train_one(
    name: str,
    first_layer: str,
    train_set: ArrayDataset,
    test_set: ArrayDataset,
    epochs: int | None,
    seed: int,
    out: Path,
    log: Log,
    progress: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    from convscope import train as tr

    config = tr.PRESETS["gfnn-mnist"].replace(seed=seed, **({"epochs": epochs} if epochs else {}))
    model = build_model("gfnn", first_layer=first_layer, seed=seed)
    log(f"training {name} (first layer: {first_layer}) for {config.epochs} epochs ...")
    t0 = time.perf_counter()
    history = tr.fit(
        model,
        train_set.to_torch(),
        test_set.to_torch(),
        config,
        out_dir=out / name,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    model.eval()
    h = history.to_dict()
    acc = float(h["test_acc"][-1])
    log(f"{name}: test accuracy {100 * acc:.2f}% ({seconds:.0f} s)")
    save_checkpoint(
        out / f"{name}.pt",
        model,
        extra={"test_acc": acc, "class_names": test_set.class_names, "dataset": test_set.name},
    )
    return model, {
        "first_layer": first_layer,
        "test_acc": acc,
        "trainable_params": _count_trainable(model),
        "train_seconds": round(seconds, 1),
        "epochs": config.epochs,
        "history": h,
    }


def _examples_per_class(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> list[int]:
    """Index of the first correctly classified example of each class (else the first)."""
    out = []
    for c in range(num_classes):
        hits = np.flatnonzero((labels == c) & (preds == c))
        any_c = np.flatnonzero(labels == c)
        if len(hits) or len(any_c):
            out.append(int(hits[0] if len(hits) else any_c[0]))
    return out


def _category_summary(scores: np.ndarray, cats: list[str], class_names: list[str]) -> list[str]:
    """One line per class naming its two strongest Fig. 4 categories."""
    uniq = list(dict.fromkeys(cats))
    idx = np.array([uniq.index(c) for c in cats])
    lines = []
    for c, name in enumerate(class_names):
        per_cat = np.array([scores[c, idx == j].sum() for j in range(len(uniq))])
        top = np.argsort(-per_cat)[:2]
        parts = ", ".join(f"{uniq[j]} ({per_cat[j]:+.2f})" for j in top)
        lines.append(f"{name}: {parts}")
    return lines


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    log: Log = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train GFNN and the regular CNN on the embedded MNIST subset and explain them.

    Writes into ``out_dir``: both checkpoints, per-model ``metrics.json`` files, the
    PNG figures, a top-level ``metrics.json`` and ``report.html``.

    Args:
        quick: 2 epochs on half the training split (under a minute on 2 cores).
        epochs: override the preset's number of epochs.
        seed: seed of the training runs.

    Returns:
        The content of the top-level ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train_set = load_mnist_subset("train")
    test_set = load_mnist_subset("test")
    if quick:
        train_set = train_set.subset(np.arange(2000))
        epochs = epochs or 2
    log(f"data: {train_set.name} ({len(train_set)} train / {len(test_set)} test images)")

    gfnn, gfnn_info = _train_one(
        "gfnn", "fixed", train_set, test_set, epochs, seed, out, log, progress
    )
    cnn, cnn_info = _train_one(
        "regular_cnn", "learned", train_set, test_set, epochs, seed, out, log, progress
    )

    # -- analysis (no drawing) ------------------------------------------------
    x = torch.from_numpy(test_set.images)
    y = torch.from_numpy(test_set.labels)
    classes = test_set.class_names
    fs = attr.filter_scores(gfnn, x, target=y)
    class_avg = _np(attr.class_average_filter_scores(gfnn, (x, y), relative=True).scores)
    completeness = _np(fs.scores).sum(1) / _np(fs.logits)
    with torch.no_grad():
        preds = gfnn(x).argmax(1).numpy()
    ex = _examples_per_class(test_set.labels, preds, len(classes))
    fs_ex = attr.filter_scores(gfnn, x[ex])
    top_v, top_i = fs_ex.top_k(3)
    top_imgs = torch.stack([fs_ex.images[r, top_i[r]] for r in range(len(ex))])
    sal = attr.saliency(gfnn, x[ex], abs=False)
    gxi = attr.gradient_x_input(gfnn, x[ex])
    names = fs.kernel_names
    cats = [kb.get(n).category for n in names]

    # -- figures --------------------------------------------------------------
    figs.save_figure(
        figs.plot_training_curves(
            {"GFNN": gfnn_info["history"], "regular CNN": cnn_info["history"]}
        ),
        out / "training_curves.png",
    )
    figs.save_figure(figs.plot_kernel_bank(kb.bank_array(names), names), out / "kernels.png")
    figs.save_figure(
        figs.plot_class_filter_scores(class_avg, names, cats, classes),
        out / "class_filter_scores.png",
    )
    titles = [f"digit {classes[test_set.labels[i]]}" for i in ex]
    figs.save_figure(
        figs.plot_top_filter_images(
            test_set.images[ex],
            _np(top_imgs),
            [[names[j] for j in row] for row in top_i.tolist()],
            _np(top_v),
            titles,
        ),
        out / "top_filters.png",
    )
    figs.save_figure(
        figs.plot_attribution_comparison(
            test_set.images[ex],
            {
                "saliency": _np(sal).sum(1),
                "gradient x input": _np(gxi).sum(1),
                "filter-score pixel map": _np(fs_ex.pixel_map),
            },
            titles,
        ),
        out / "attribution_comparison.png",
    )

    # -- metrics and report -----------------------------------------------------
    metrics: dict[str, Any] = {
        "dataset": {"name": test_set.name, "train": len(train_set), "test": len(test_set)},
        "seed": seed,
        "quick": quick,
        "models": {"gfnn": gfnn_info, "regular_cnn": cnn_info},
        "filter_scores": {
            "kernel_names": names,
            "categories": cats,
            "class_average_share": class_avg.tolist(),
            "completeness_mean": float(completeness.mean()),
            "completeness_std": float(completeness.std()),
            "examples": [
                {
                    "index": int(i),
                    "label": int(test_set.labels[i]),
                    "top3": [names[j] for j in top_i[r].tolist()],
                    "top3_scores": _np(top_v[r]).tolist(),
                }
                for r, i in enumerate(ex)
            ],
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(out / "metrics.json", metrics)
    acc_rows = [
        [
            label,
            info["first_layer"],
            f"{info['trainable_params']:,}",
            f"{100 * info['test_acc']:.2f}%",
            str(info["epochs"]),
            f"{info['train_seconds']:.0f} s",
        ]
        for label, info in (("GFNN", gfnn_info), ("regular CNN", cnn_info))
    ]
    sections = [
        Section(
            "Accuracy",
            [
                f"Both networks share everything after the first layer and were trained with the "
                f"same schedule and seed on {len(train_set)} images of {test_set.name}; accuracy "
                f"is on the {len(test_set)} held-out images. GFNN's first layer is the fixed "
                "bank of 40 classic kernels (seed 000, Table 1); the regular CNN learns its own."
            ],
            [
                Table(
                    ["model", "first layer", "trainable parameters", "test accuracy", "epochs",
                     "training time"],
                    acc_rows,
                )
            ],
            [Figure("training_curves.png", "Training loss (solid), test loss (dashed), accuracy.")],
        ),
        Section(
            "The fixed kernels",
            ["Index order as in seed 000 Table 1: 8 compass directions x 4 edge families, then "
             "second derivative, sharpening, embossing, blurring. A direction names the darker "
             "side."],
            figures=[Figure("kernels.png", "The 40 kernels of the GFNN bank.")],
        ),
        Section(
            "Which kernels each digit uses (seed 000 Fig. 4)",
            [
                "Filter score of kernel k = sum over its maps of (d logit / d L) * L, where L is "
                "the fixed layer's output; here divided by the image's logit and averaged over the "
                "test images of each class. Strongest categories per digit: "
                + "; ".join(_category_summary(class_avg, cats, classes))
                + ".",
                f"The filter scores add up to {100 * completeness.mean():.1f}% of the logit on "
                f"average (std {100 * completeness.std():.1f}%); the rest is the share of the "
                "biases of later layers.",
            ],
            figures=[Figure("class_filter_scores.png", "Class-average filter scores.")],
        ),
        Section(
            "Top-3 kernels per digit (seed 000 Fig. 5)",
            ["One test image per digit, its three highest-scoring kernels and their filter score "
             "images (red: pushes the predicted class up, blue: down)."],
            figures=[Figure("top_filters.png", "Top filters per digit.")],
        ),
        Section(
            "Three pixel attributions (seed 000 Fig. 1, right)",
            ["Saliency (signed input gradient), gradient x input, and the filter-score pixel map "
             "(the filter score images summed over kernels) for the same images."],
            figures=[Figure("attribution_comparison.png", "Attribution methods side by side.")],
        ),
    ]  # fmt: skip
    write_report(out, "convscope demo: GFNN vs a regular CNN on MNIST", sections, {"seed": seed})
    return metrics


def explain_image(
    checkpoint: str | os.PathLike[str],
    image: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    target: int | None = None,
    channels: int | None = None,
    invert: bool = False,
    method: str = "auto",
    top: int = 3,
) -> dict[str, Any]:
    """Explain one image with a trained model: saliency, gradient x input, filter scores.

    Args:
        checkpoint: a checkpoint written by ``convscope train`` or the demo.
        image: PNG/JPEG file; resized to the model's input size.
        target: class to explain (``None``: the predicted class).
        channels: convert the image to this many channels first (1 = grey, 3 = RGB).
        invert: invert the image (dark digit on a light background -> MNIST style).
        method: ``"auto"`` (filter scores when the model has a fixed-kernel layer),
            ``"filter-scores"`` (required) or ``"gradients"`` (saliency and
            gradient x input only).

    Raises:
        ConvscopeError: bad checkpoint or image, channel mismatch, or filter scores
            asked of a model without a fixed-kernel layer.
    """
    if method not in ("auto", "filter-scores", "gradients"):
        raise ConvscopeError(f"method must be auto, filter-scores or gradients; got {method!r}")
    model, extra = load_checkpoint(checkpoint)
    in_ch = int(getattr(model, "in_channels", 1))
    side = int(getattr(model, "input_size", 0)) or None
    x = load_image(image, channels=channels, size=(side, side) if side else None, invert=invert)
    if x.shape[1] != in_ch:
        raise ConvscopeError(
            f"{image}: image has {x.shape[1]} channels but the model expects {in_ch}; "
            f"pass --channels {in_ch} to convert it"
        )
    has_bank = True
    try:
        find_kernel_bank(model)
    except ConvscopeError:
        if method == "filter-scores":
            raise
        has_bank = False
    use_fs = has_bank and method != "gradients"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        logits = model(x)[0]
    classes = list(extra.get("class_names") or [str(i) for i in range(len(logits))])
    probs = torch.softmax(logits, 0)
    t = int(logits.argmax()) if target is None else int(target)
    if not 0 <= t < len(classes):
        raise ConvscopeError(f"target {t} is out of range: the model has {len(classes)} classes")
    sal = attr.saliency(model, x, target=t, abs=False)
    gxi = attr.gradient_x_input(model, x, target=t)
    maps = {"saliency": _np(sal).sum(1), "gradient x input": _np(gxi).sum(1)}
    result: dict[str, Any] = {
        "image": str(image),
        "checkpoint": str(checkpoint),
        "target": t,
        "target_name": classes[t],
        "logit": float(logits[t]),
        "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
    }
    figures = []
    if use_fs:
        fs = attr.filter_scores(model, x, target=t)
        maps["filter-score pixel map"] = _np(fs.pixel_map)
        k = min(top, len(fs.kernel_names))
        v, i = fs.top_k(k)
        names = [fs.kernel_names[j] for j in i[0].tolist()]
        result["filter_scores"] = dict(
            zip(fs.kernel_names, _np(fs.scores[0]).tolist(), strict=True)
        )
        result["top_kernels"] = names
        if fs.color_scores is not None:
            result["color_scores"] = _np(fs.color_scores[0]).tolist()
        figs.save_figure(
            figs.plot_top_filter_images(
                _np(x), _np(fs.images[0, i[0]])[None], [names], _np(v), [classes[t]]
            ),
            out / "top_filters.png",
        )
        scores = _np(fs.normalized(relative=True))[0][None]
        try:
            cats = [kb.get(n).category for n in fs.kernel_names]
        except ConvscopeError:  # random kernels have no registry entry
            cats = ["kernel"] * len(fs.kernel_names)
        figs.save_figure(
            figs.plot_class_filter_scores(scores, fs.kernel_names, cats, [classes[t]]),
            out / "filter_scores.png",
        )
        figures += [
            Figure("filter_scores.png", "Filter scores as a share of the logit."),
            Figure("top_filters.png", f"Top {k} kernels and their filter score images."),
        ]
    figs.save_figure(
        figs.plot_attribution_comparison(_np(x), maps, [classes[t]]), out / "attributions.png"
    )
    figures.insert(0, Figure("attributions.png", "Pixel attributions for the explained class."))
    write_json(out / "metrics.json", result)
    top5 = torch.topk(probs, min(5, len(classes)))
    write_report(
        out,
        f"convscope explain: {Path(image).name}",
        [
            Section(
                "Prediction",
                [f"Explained class: {classes[t]} (logit {result['logit']:.3f})."],
                [
                    Table(
                        ["class", "probability"],
                        [
                            [classes[j], f"{p:.4f}"]
                            for p, j in zip(top5.values, top5.indices, strict=True)
                        ],
                    )
                ],
                figures,
            )
        ],
    )
    return result
