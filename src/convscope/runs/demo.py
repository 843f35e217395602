"""``convscope demo``: GFNN and a regular CNN trained on the embedded MNIST subset, explained.

This run only orchestrates: training comes from :mod:`convscope.train`, numbers from
:mod:`convscope.attribution` and, for the linear interpreter's section (f(x0) = F x0 + r on
three digits, the residual share over the test split), from :mod:`convscope.linear` and
``linear contributions --data`` (one folder per model, ``linear_gfnn/`` ...), pictures from
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
from convscope.data import ArrayDataset, load_mnist_subset
from convscope.io import write_json
from convscope.models import build_model, save_checkpoint
from convscope.report import figures as figs
from convscope.report.html import Figure, Link, Section, Table, write_report
from convscope.runs.outputs import open_out
from convscope.runs.result import RunResult

__all__ = ["OWNED", "run"]

OWNED = (
    "metrics.json",
    "report.html",
    "report.json",
    "gfnn.pt",
    "regular_cnn.pt",
    "gfnn/metrics.json",
    "gfnn/checkpoint.pt",
    "regular_cnn/metrics.json",
    "regular_cnn/checkpoint.pt",
    "training_curves.png",
    "kernels.png",
    "class_filter_scores.png",
    "top_filters.png",
    "attribution_comparison.png",
    "max_gain.png",
    "transfer_function.png",
)
NUMPY_DIR = "numpy_cnn"
"""The NumPy CNN walkthrough's page and figures."""
LINEAR_DIRS = {"gfnn": "linear_gfnn", "regular_cnn": "linear_regular_cnn"}
"""Each model's ``linear contributions --data`` run, in a folder of its own."""

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
        callbacks=[tr.MaxGainCallback(shape=(1, 28, 28))],  # seed 004's diagnostic, per epoch
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
    from convscope import spectral as sp
    from convscope.errors import ConvscopeError

    try:
        found = sp.diagnose(history)
        diagnosis: dict[str, Any] = {"pattern": found.pattern, "advice": found.advice,
                                     "variability": found.variability,
                                     "late_slope": found.late_slope}  # fmt: skip
    except ConvscopeError as e:  # a --quick demo's two epochs are too few to judge
        diagnosis = {"pattern": "not enough epochs", "advice": str(e)}
    return model, {
        "max_gain_db": [float(v) for v in history.extra["max_gain"]],
        "diagnosis": diagnosis,
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


def run(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    log: Log = print,
    progress: bool = True,
    overwrite: bool = False,
) -> RunResult:
    """Train GFNN and the regular CNN on the embedded MNIST subset and explain them.

    Writes into ``out_dir``: both checkpoints, per-model ``metrics.json`` files, the
    PNG figures, a top-level ``metrics.json`` and ``report.html``.

    Args:
        quick: 2 epochs on half the training split (under a minute on 2 cores).
        epochs: override the preset's number of epochs.
        seed: seed of the training runs.
        overwrite: replace the results of an earlier demo in ``out_dir``.

    Returns:
        The :class:`~convscope.runs.RunResult`; its metrics are the top-level
        ``metrics.json``.
    """
    o = open_out(out_dir, OWNED, overwrite=overwrite)
    with o.interruptible():
        metrics = _demo(o.folder, quick, epochs, seed, log, progress, overwrite)
    return RunResult(o.folder, o.finished(), metrics)


def _demo(
    out: Path,
    quick: bool,
    epochs: int | None,
    seed: int,
    log: Log,
    progress: bool,
    overwrite: bool = False,
) -> dict[str, Any]:
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

    # -- the spectral response: Maximum Gain per epoch, the transfer function at the end --
    from convscope import spectral as sp

    figs.save_figure(
        figs.plot_max_gain_curves(
            {"GFNN": gfnn_info["max_gain_db"], "regular CNN": cnn_info["max_gain_db"]}
        ),
        out / "max_gain.png",
    )
    spec, deriv = sp.transfer_function(gfnn, sp.impulse_image((1, 28, 28)))
    figs.save_figure(
        figs.plot_transfer_function(
            _np(deriv)[None],
            _np(spec)[None],
            [float(spec.max())],
            "GFNN at the impulse image, after training",
        ),  # fmt: skip
        out / "transfer_function.png",
    )

    # -- the NumPy CNN's walkthrough (no torch), a page of its own -------------------
    from convscope.runs import numpy_cnn_walkthrough

    log("the NumPy CNN walkthrough ...")
    walk = numpy_cnn_walkthrough.run(out / NUMPY_DIR, overwrite=overwrite).metrics
    numpy_cnn = {
        "folder": NUMPY_DIR,
        "test_accuracy": {tag: {"learned": p["learned"]["test"]["accuracy"],
                                "hand_designed": p["hand_designed"]["test"]["accuracy"]}
                          for tag, p in walk["pairs"].items()},
    }  # fmt: skip

    # -- the linear interpreter over the test split ---------------------------------
    linear = _linear(out, test_set, 100 if quick else 300, overwrite, log)

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
        "linear": linear,
        "numpy_cnn": numpy_cnn,
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
                f"same schedule and seed on {len(train_set)} images of {train_set.name}; accuracy "
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
    sections.append(_spectral_section(gfnn_info, cnn_info))
    sections.append(_linear_section(linear, classes))
    sections.append(_numpy_section(numpy_cnn))
    write_report(out, "convscope demo: GFNN vs a regular CNN on MNIST", sections, {"seed": seed})
    return metrics


def _linear(
    out: Path, test_set: ArrayDataset, images: int, overwrite: bool, log: Log
) -> dict[str, Any]:
    """Each trained model as an exact linear system (seed 001): f(x0) = F x0 + r checked on
    three test digits, and the residual share over the first ``images`` test images."""
    from convscope.linear import LinearInterpreter
    from convscope.runs.linear_contributions import run_data
    from convscope.runs.sources import resolve_model

    result: dict[str, Any] = {}
    for name, folder in LINEAR_DIRS.items():
        ckpt = out / f"{name}.pt"
        model = resolve_model(str(ckpt), dtype=torch.float64, warn=False).module
        checks = []
        for i in range(3):
            x0 = torch.from_numpy(test_set.images[i : i + 1].copy()).double()
            li = LinearInterpreter(model, x0, mode="freeze")
            with torch.no_grad():
                f = model(x0)[0]
            c = int(f.argmax())
            fx0 = float(li.linear(x0)[0, c])
            r = float(li.residual[0, c])
            checks.append({"index": i, "class": c, "f_x0": float(f[c]), "F_x0": fx0, "r": r,
                           "error": abs(fx0 + r - float(f[c]))})  # fmt: skip
        log(f"{name}: linear contributions over {images} test images ...")
        res = run_data(str(ckpt), "mnist-subset", out / folder, split="test", limit=images,
                       batch_size=50, device="cpu", overwrite=overwrite)  # fmt: skip
        s = res.summary
        result[name] = {
            "folder": folder,
            "checks": checks,
            "images": s["images"],
            "residual_share": s["residual_share"],
            "groups": {g: v["mean"] for g, v in s["groups"].items()},
            "command": f"convscope linear contributions --model {ckpt.name} --data "
            f"mnist-subset --out {folder}",
        }
    return result


def _linear_section(linear: dict[str, Any], classes: list[str]) -> Section:
    rows = [
        [label, str(c["index"]), classes[c["class"]], f"{c['f_x0']:.6f}", f"{c['F_x0']:.6f}",
         f"{c['r']:+.6f}", f"{c['error']:.1e}"]
        for label, key in (("GFNN", "gfnn"), ("regular CNN", "regular_cnn"))
        for c in linear[key]["checks"]
    ]  # fmt: skip
    shares = [
        [label, str(v["images"]), f"{100 * v['residual_share']['mean']:.2f}%",
         f"{100 * (v['residual_share']['std'] or 0):.2f}%", f"{100 * v['groups']['input']:.2f}%"]
        for label, v in (("GFNN", linear["gfnn"]), ("regular CNN", linear["regular_cnn"]))
    ]  # fmt: skip
    g, c = linear["gfnn"], linear["regular_cnn"]
    return Section(
        "The linear interpreter: each network as F x0 + r (seed 001)",
        [
            "Frozen at a test digit x0 (every ReLU's and max-pool's decision kept), a network "
            "is the affine map F x + r; the first table checks f(x0) = F x0 + r on three "
            "digits, in float64, for the top-1 score. The second splits the top-1 score over "
            f"the first {g['images']} test digits into the input's part F x0 and the biases' "
            "part r (the residual share, seed 001 Table 3); per-layer shares and their "
            "histogram are in each model's folder.",
            f"Reproduce at full size: {g['command']} (and {c['command']}).",
        ],
        [
            Table(
                ["model", "test image", "class", "f(x0)", "F x0", "r", "|F x0 + r - f(x0)|"], rows
            ),  # fmt: skip
            Table(["model", "images", "residual share, mean", "std", "input share"], shares),
        ],
        [
            Figure(
                f"{g['folder']}/contributions.png", "GFNN: share of the top-1 score per source."
            ),
            Figure(
                f"{c['folder']}/contributions.png",
                "Regular CNN: share of the top-1 score per source.",
            ),  # fmt: skip
        ],
    )


def _spectral_section(gfnn_info: dict[str, Any], cnn_info: dict[str, Any]) -> Section:
    rows = [
        [label, f"{info['max_gain_db'][0]:.2f} dB", f"{info['max_gain_db'][-1]:.2f} dB",
         info["diagnosis"]["pattern"], info["diagnosis"]["advice"]]
        for label, info in (("GFNN", gfnn_info), ("regular CNN", cnn_info))
    ]  # fmt: skip
    return Section(
        "Spectral response: Maximum Gain during training (seed 004)",
        [
            "After every epoch, the derivative of the winning class's softmax output with "
            "respect to an impulse image, Hann-windowed, Fourier-transformed: its largest "
            "amplitude is the epoch's Maximum Gain. Its curve over the epochs is a training "
            "diagnostic (convscope.spectral.diagnose names the pattern: too high a rate, too "
            "low, converging, overfitting); the transfer function below is GFNN's at the end.",
            "Reproduce: convscope train --max-gain --out runs/gfnn, then convscope spectrum "
            "--model runs/gfnn/checkpoint.pt --out spec.",
        ],
        [Table(["model", "first epoch", "last epoch", "diagnosis", "what it suggests"], rows)],
        [
            Figure("max_gain.png", "Maximum Gain per epoch."),
            Figure("transfer_function.png", "GFNN's transfer function at the impulse image."),
        ],
    )


def _numpy_section(numpy_cnn: dict[str, Any]) -> Section:
    folder = numpy_cnn["folder"]
    rows = [[tag.replace("_vs_", " vs "), f"{100 * v['learned']:.1f}%",
             f"{100 * v['hand_designed']:.1f}%"]
            for tag, v in numpy_cnn["test_accuracy"].items()]  # fmt: skip
    return Section(
        "The NumPy CNN: the textbook's walkthrough",
        [
            "A CNN written in NumPy alone (convscope.numpy_cnn: convolution, pooling, "
            "backpropagation by hand) learns one kernel to tell two digits apart; the "
            "walkthrough then replaces it by hand-made kernels that do as well. Its page "
            "has every figure and the training curves.",
            "Reproduce: convscope numpy-cnn walkthrough --out walk.",
        ],
        [Table(["digits", "learned kernel", "hand-made kernels"], rows)],
        [Figure(f"{folder}/1_vs_0_kernels.png", "The learned kernel and the hand-made ones.")],
        [Link("The walkthrough page", f"{folder}/report.html")],
    )
