"""``convscope demo``: GFNN and a regular CNN trained on the embedded MNIST subset, then a
tour of the five lenses on them.

This run only orchestrates: training comes from :mod:`convscope.train`, numbers from
:mod:`convscope.attribution` (filter scores), :mod:`convscope.linear` and
``linear contributions --data`` (f(x0) = F x0 + r on three digits, one digit's pixel votes
and top singular pair, the residual share over the test split; one folder per model,
``linear_gfnn/`` ...), :mod:`convscope.decoding` (the committed LeNet's layer 5),
:mod:`convscope.spectral` (Maximum Gain per epoch, the transfer function), ``convscope
evaluate`` (faithfulness of convscope's, Captum's and Zennit's maps, ``evaluate_gfnn/`` ...)
and the NumPy CNN's walkthrough (``numpy_cnn/``); pictures from :mod:`convscope.report`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope import attribution as attr
from convscope import kernels as kb
from convscope.data import ArrayDataset, load_mnist_subset
from convscope.errors import ConvscopeError
from convscope.io import write_json
from convscope.models import build_model, save_checkpoint
from convscope.report import demo_figures as df
from convscope.report import figures as figs
from convscope.report import linear_figures as lf
from convscope.report.html import Figure, Link, Section, Table, write_report
from convscope.runs.outputs import Outputs, open_out
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
    "linear_votes.png",
    "linear_svd.png",
    "decoded_filters.png",
)
NUMPY_DIR = "numpy_cnn"
"""The NumPy CNN walkthrough's page and figures."""
LINEAR_DIRS = {"gfnn": "linear_gfnn", "regular_cnn": "linear_regular_cnn"}
"""Each model's ``linear contributions --data`` run, in a folder of its own."""
VOTE_TOP = 10
"""Classes taking part in the pixel vote (as ``convscope linear votes``)."""
LENET = (
    Path(__file__).resolve().parents[3] / "experiments" / "results" / "decoding" / "lenet_mnist.pt"
)
"""The committed LeNet of seed 003's experiment (``experiments/train_lenet.py``)."""
DECODE_DIR = "decode_lenet"
"""The ``--out`` of the full-size ``convscope decode`` command the report gives."""
DECODE_LAYER = "features.conv3"
"""LeNet's 500 filters of seed 003's layer 5 (4x4 over 50 maps, 1x1 output)."""
DECODE_SHOWN = 20
"""Decoded filters drawn in the report."""
EVALUATE_DIRS = {"gfnn": "evaluate_gfnn", "regular_cnn": "evaluate_regular_cnn"}
"""Each model's ``convscope evaluate`` run."""
EVALUATE_METHODS = ("input_contribution", "filter_score_map", "saliency",
                    "integrated_gradients", "lrp_epsilon_plus")  # fmt: skip
"""convscope's two maps (the second needs the kernel bank), Captum's two, Zennit's LRP."""
EVALUATE_METRICS = ("deletion", "insertion", "faithfulness_correlation")
"""The faithfulness metrics of ``convscope evaluate`` (the cheap ones)."""
_LABELS = {"gfnn": "GFNN", "regular_cnn": "regular CNN"}

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

    found = sp.diagnose(history)  # a --quick demo's 2 epochs: "not enough epochs"
    diagnosis: dict[str, Any] = {"pattern": found.pattern, "advice": found.advice,
                                 "variability": found.variability,
                                 "late_slope": found.late_slope}  # fmt: skip
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
    formats: Sequence[str] = ("png",),
) -> RunResult:
    """Train GFNN and the regular CNN on the embedded MNIST subset and explain them.

    Writes into ``out_dir``: both checkpoints, per-model ``metrics.json`` files, the
    figures (in every one of ``formats``), a top-level ``metrics.json`` and
    ``report.html``; and the folders of the runs it calls (``linear_gfnn/``,
    ``evaluate_gfnn/``, ``numpy_cnn/`` ...), each with its own page and its figures in
    the same formats.

    Args:
        quick: 2 epochs on half the training split, and smaller samples of test digits
            for the analyses (50 for the residual share instead of 300, 100 for the
            decoding error instead of 1,000, 4 for faithfulness instead of 64); under a
            minute on 2 cores.
        epochs: override the preset's number of epochs.
        seed: seed of the training runs.
        overwrite: replace the results of an earlier demo in ``out_dir``.
        formats: figure formats, of ``png``, ``svg``, ``pdf`` (``--format png,svg``); the
            report shows each figure in the first of PNG, SVG, PDF written.

    Returns:
        The :class:`~convscope.runs.RunResult`; its metrics are the top-level
        ``metrics.json``.
    """
    o = _claim(out_dir, formats, overwrite)  # a bad --format is refused before any training
    with o.interruptible():
        metrics = _demo(o, quick, epochs, seed, log, progress, overwrite)
    return RunResult(o.folder, o.finished(), metrics)


def _claim(out_dir: str | os.PathLike[str], formats: Sequence[str], overwrite: bool) -> Outputs:
    """The demo's ``--out``, checked and claimed: every figure of :data:`OWNED` is written
    through :meth:`Outputs.figure` in each of ``formats``.

    Raises:
        ConvscopeError: an unknown format, a bad ``out``, or an earlier demo there without
            ``overwrite``.
    """
    return open_out(out_dir, OWNED, overwrite=overwrite, formats=formats)


def _demo(
    o: Outputs,
    quick: bool,
    epochs: int | None,
    seed: int,
    log: Log,
    progress: bool,
    overwrite: bool = False,
) -> dict[str, Any]:
    out, formats = o.folder, o.formats
    t_start = time.perf_counter()
    train_set = load_mnist_subset("train")
    test_set = load_mnist_subset("test")
    if quick:
        train_set = train_set.subset(np.arange(2000))
        epochs = epochs or 2
    log(f"data: {train_set.name} ({len(train_set)} train / {len(test_set)} test images)")

    phases: dict[str, float] = {}
    t_phase = time.perf_counter()
    gfnn, gfnn_info = _train_one(
        "gfnn", "fixed", train_set, test_set, epochs, seed, out, log, progress
    )
    cnn, cnn_info = _train_one(
        "regular_cnn", "learned", train_set, test_set, epochs, seed, out, log, progress
    )

    phases["training"] = round(time.perf_counter() - t_phase, 1)
    t_phase = time.perf_counter()

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
    o.figure(
        "training_curves.png",
        figs.plot_training_curves(
            {"GFNN": gfnn_info["history"], "regular CNN": cnn_info["history"]}
        ),
    )
    o.figure(
        "kernels.png",
        figs.plot_kernel_bank(kb.bank_array(names), names),
    )
    o.figure(
        "class_filter_scores.png",
        figs.plot_class_filter_scores(class_avg, names, cats, classes),
    )
    titles = [f"digit {classes[test_set.labels[i]]}" for i in ex]
    o.figure(
        "top_filters.png",
        figs.plot_top_filter_images(
            test_set.images[ex],
            _np(top_imgs),
            [[names[j] for j in row] for row in top_i.tolist()],
            _np(top_v),
            titles,
        ),
    )
    o.figure(
        "attribution_comparison.png",
        figs.plot_attribution_comparison(
            test_set.images[ex],
            {
                "saliency": _np(sal).sum(1),
                "gradient x input": _np(gxi).sum(1),
                "filter-score pixel map": _np(fs_ex.pixel_map),
            },
            titles,
        ),
    )

    # -- the spectral response: Maximum Gain per epoch, the transfer function at the end --
    from convscope import spectral as sp

    o.figure(
        "max_gain.png",
        figs.plot_max_gain_curves(
            {"GFNN": gfnn_info["max_gain_db"], "regular CNN": cnn_info["max_gain_db"]}
        ),
    )
    spec, deriv = sp.transfer_function(gfnn, sp.impulse_image((1, 28, 28)))
    o.figure(
        "transfer_function.png",
        figs.plot_transfer_function(
            _np(deriv)[None],
            _np(spec)[None],
            [float(spec.max())],
            "GFNN at the impulse image, after training",
        ),
    )

    # -- the NumPy CNN's walkthrough (no torch), a page of its own -------------------
    from convscope.runs import numpy_cnn_walkthrough

    phases["filter_scores_and_spectrum"] = round(time.perf_counter() - t_phase, 1)
    t_phase = time.perf_counter()
    log("the NumPy CNN walkthrough ...")
    walk = numpy_cnn_walkthrough.run(out / NUMPY_DIR, overwrite=overwrite, formats=formats).metrics
    numpy_cnn = {
        "folder": NUMPY_DIR,
        "test_accuracy": {tag: {"learned": p["learned"]["test"]["accuracy"],
                                "hand_designed": p["hand_designed"]["test"]["accuracy"]}
                          for tag, p in walk["pairs"].items()},
    }  # fmt: skip
    phases["numpy_cnn"] = round(time.perf_counter() - t_phase, 1)

    # -- the linear interpreter over the test split ---------------------------------
    t_phase = time.perf_counter()
    linear, digit = _linear(out, test_set, 50 if quick else 300, overwrite, formats, log)
    image0 = test_set.images[0, 0]
    o.figure(
        "linear_votes.png",
        lf.plot_pixel_votes(
            [image0, image0],
            [digit[k]["votes"] for k in LINEAR_DIRS],
            [linear[k]["digit"]["targets"][:2] for k in LINEAR_DIRS],
            classes,
            discussions=[digit[k]["discussion"] for k in LINEAR_DIRS],
            row_titles=[_LABELS[k] for k in LINEAR_DIRS],
        ),
    )
    o.figure(
        "linear_svd.png",
        df.plot_top_singular_pairs(
            image0,
            {
                _LABELS[k]: (
                    linear[k]["digit"]["s1"],
                    np.array(linear[k]["digit"]["u1"]),
                    digit[k]["v1"],
                )
                for k in LINEAR_DIRS
            },
            classes,
        ),
    )
    phases["linear"] = round(time.perf_counter() - t_phase, 1)

    # -- filter decoding (seed 003) on the committed LeNet ----------------------------
    t_phase = time.perf_counter()
    decoding = _decoding(o, LENET, quick, log)
    phases["decoding"] = round(time.perf_counter() - t_phase, 1)

    # -- faithfulness: convscope's maps beside Captum's and Zennit's ----------------------
    t_phase = time.perf_counter()
    faithfulness = _faithfulness(
        out, {"gfnn": gfnn, "regular_cnn": cnn}, quick, overwrite, formats, log
    )
    phases["faithfulness"] = round(time.perf_counter() - t_phase, 1)

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
        "decoding": decoding,
        "faithfulness": faithfulness,
        "numpy_cnn": numpy_cnn,
        "phase_seconds": phases,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(out / "metrics.json", metrics)
    _write_report(out, metrics, classes, train_set.name)
    return metrics


def _write_report(out: Path, metrics: dict[str, Any], classes: list[str], train_name: str) -> Path:
    """``report.html`` (and ``report.json``) from the demo's ``metrics.json`` and the figures
    already in ``out`` (each shown in the first of PNG, SVG, PDF written)."""
    models, data, fs = metrics["models"], metrics["dataset"], metrics["filter_scores"]
    class_avg, cats = np.asarray(fs["class_average_share"]), list(fs["categories"])
    acc_rows = [
        [
            label,
            info["first_layer"],
            f"{info['trainable_params']:,}",
            f"{100 * info['test_acc']:.2f}%",
            str(info["epochs"]),
            f"{info['train_seconds']:.0f} s",
        ]
        for label, info in (("GFNN", models["gfnn"]), ("regular CNN", models["regular_cnn"]))
    ]
    sections = [
        Section(
            "Accuracy",
            [
                f"Both networks share everything after the first layer and were trained with the "
                f"same schedule and seed on {data['train']} images of {train_name}; accuracy "
                f"is on the {data['test']} held-out images. GFNN's first layer is the fixed "
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
                f"The filter scores add up to {100 * fs['completeness_mean']:.1f}% of the logit on "
                f"average (std {100 * fs['completeness_std']:.1f}%); the rest is the share of the "
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
    sections.append(_linear_section(metrics["linear"], classes))
    sections.append(_decoding_section(metrics["decoding"]))
    sections.append(_spectral_section(models["gfnn"], models["regular_cnn"]))
    sections.append(_faithfulness_section(metrics["faithfulness"]))
    sections.append(_numpy_section(metrics["numpy_cnn"]))
    sections.insert(0, _contents_section(sections))
    return write_report(
        out, "convscope demo: GFNN vs a regular CNN on MNIST", sections, {"seed": metrics["seed"]}
    )


def _linear(
    out: Path,
    test_set: ArrayDataset,
    images: int,
    overwrite: bool,
    formats: Sequence[str],
    log: Log,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Each trained model as an exact linear system (seed 001): f(x0) = F x0 + r checked on
    three test digits; the first digit's pixel votes and the top singular pair of its ``F``;
    and the residual share over the first ``images`` test images.

    Returns:
        The numbers (for ``metrics.json``) and, per model, the first digit's arrays for the
        figures: ``votes`` (H, W), the top-1 class's ``discussion`` (H, W), ``v1`` (H, W).
    """
    from convscope.linear import LinearInterpreter
    from convscope.runs.linear_contributions import run_data
    from convscope.runs.sources import resolve_model

    result: dict[str, Any] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
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
        # one digit read two more ways: what each pixel votes for, and F's top singular pair
        x0 = torch.from_numpy(test_set.images[:1].copy()).double()
        li = LinearInterpreter(model, x0, mode="freeze")
        pv = li.votes(top=VOTE_TOP)
        s1, u1, v1 = li.svd(k=1, method="randomized")
        top1 = int(pv.targets[0])
        digit = {
            "index": 0,
            "label": int(test_set.labels[0]),
            "top1": top1,
            "targets": [int(t) for t in pv.targets],
            "vote_share": {str(c): v for c, v in pv.shares.items()},
            "most_voted": pv.most_voted,
            "abstained": pv.abstained,
            "s1": float(s1[0]),
            "u1": _np(u1[0]).tolist(),
        }
        arrays[name] = {"votes": pv.votes.cpu().numpy(), "discussion": _np(pv.discussions[0]),
                        "v1": _np(v1[0]).reshape(test_set.images.shape[-2:])}  # fmt: skip
        log(f"{name}: linear contributions over {images} test images ...")
        res = run_data(str(ckpt), "mnist-subset", out / folder, split="test", limit=images,
                       batch_size=50, device="cpu", overwrite=overwrite,
                       formats=formats)  # fmt: skip
        s = res.summary
        result[name] = {
            "folder": folder,
            "checks": checks,
            "digit": digit,
            "images": s["images"],
            "residual_share": s["residual_share"],
            "groups": {g: v["mean"] for g, v in s["groups"].items()},
            "command": f"convscope linear contributions --model {ckpt.name} --data "
            f"mnist-subset --out {folder}",
        }
    return result, arrays


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
    one = [
        [label, classes[d["top1"]], f"{100 * d['vote_share'][str(d['top1'])]:.1f}%",
         f"{100 * d['abstained']:.1f}%",
         classes[d["most_voted"]] if d["most_voted"] >= 0 else "none", f"{d['s1']:.4f}",
         classes[int(np.argmax(np.abs(d["u1"])))]]
        for label, d in (("GFNN", g["digit"]), ("regular CNN", c["digit"]))
    ]  # fmt: skip
    return Section(
        "The linear interpreter: each network as F x0 + r (seed 001)",
        [
            "Frozen at a test digit x0 (every ReLU's and max-pool's decision kept), a network "
            "is the affine map F x + r; the first table checks f(x0) = F x0 + r on three "
            "digits, in float64, for the top-1 score. The second splits the top-1 score over "
            f"the first {g['images']} test digits into the input's part F x0 and the biases' "
            "part r (the residual share, seed 001 Table 3); per-layer shares and their "
            "histogram are in each model's folder.",
            f"The first test digit read two more ways (third table): each pixel's share of "
            f"each of the {VOTE_TOP} top scores (its pixel discussion) and the class it "
            "votes for, the one it adds the most to (seed 001 Fig. 3); and the top singular "
            "pair of F (seed 001 Fig. 5): v1 is the input pattern F amplifies most, by s1, "
            "and u1 how that pattern moves each class score. How to read the votes: a pixel "
            "coloured like the top-1 class supports the decision; a network whose pixels "
            "vote for many classes is less sure where the digit is. A pixel where several "
            "classes tie for the largest discussion (often all 0, on the black background) "
            "has no say and abstains: it is drawn dark grey and counted apart (vote shares "
            "are of all pixels; they and the pixels with no say add up to 100%).",
            f"Reproduce at full size: {g['command']} (and {c['command']}); the votes of "
            "every test digit: convscope linear votes --model gfnn.pt --data mnist-subset "
            "--out votes; singular pairs of one image: convscope linear svd --model gfnn.pt "
            "--image DIGIT.png --method randomized --out svd.",
        ],
        [
            Table(
                ["model", "test image", "class", "f(x0)", "F x0", "r", "|F x0 + r - f(x0)|"], rows
            ),  # fmt: skip
            Table(["model", "images", "residual share, mean", "std", "input share"], shares),
            Table(
                [
                    "model",
                    "top-1",
                    "its vote share",
                    "pixels with no say",
                    "most voted",
                    "s1",
                    "class u1 moves most",
                ],
                one,
            ),  # fmt: skip
        ],
        [
            Figure(
                f"{g['folder']}/contributions.png", "GFNN: share of the top-1 score per source."
            ),
            Figure(
                f"{c['folder']}/contributions.png",
                "Regular CNN: share of the top-1 score per source.",
            ),  # fmt: skip
            Figure(
                "linear_votes.png",
                "The first test digit: the top-1 class's pixel "
                "discussion, what each pixel votes for (dark grey: no say), the pixels voting "
                "for the top two.",
            ),
            Figure("linear_svd.png", "The top singular pair of F at the same digit."),
        ],  # fmt: skip
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


def _decoding(o: Outputs, lenet: Path, quick: bool, log: Log) -> dict[str, Any]:
    """Seed 003's layer 5 of the committed LeNet decoded to image space, with its error.

    GFNN's own deeper filters cannot be decoded yet (decoding does not substitute through
    its fixed kernel bank), so the lens is shown on the network of its paper. Computed
    through :mod:`convscope.decoding` directly: the filters (nearest unpooling), the first
    :data:`DECODE_SHOWN` drawn into ``decoded_filters.png``, and the reconstruction error
    of every unpooling mode over the first test digits (``convscope decode`` adds the
    top-activating images and the response figures on a page of its own). Without the
    checkpoint (convscope installed without the repository) the section says so and how
    to make it, and nothing is computed.
    """
    from convscope.data import load_dataset
    from convscope.decoding import UNPOOL_MODES, decode, reconstruction_error, threshold_filters
    from convscope.report.decoding_figures import plot_decoded_filters
    from convscope.runs.sources import resolve_model

    command = (f"convscope decode --model experiments/results/decoding/{lenet.name} "
               f"--layer {DECODE_LAYER} --out {DECODE_DIR}")  # fmt: skip
    if not lenet.is_file():
        why = (f"{lenet} not found: the committed LeNet comes with a clone of the repository "
               "(or python experiments/train_lenet.py makes it, about a minute)")  # fmt: skip
        log(f"filter decoding skipped: {why}")
        return {"missing": why, "command": command}
    images = 100 if quick else 1000
    log(f"filter decoding: LeNet {DECODE_LAYER} over {images} test images ...")
    net = resolve_model(str(lenet), warn=False).module.eval()
    dec = decode(net, DECODE_LAYER, "nearest")
    x = torch.from_numpy(load_dataset("mnist-subset", "test").images[:images].copy())
    errors = {m: reconstruction_error(net, DECODE_LAYER, x, m) for m in UNPOOL_MODES}
    shown = dec.filters[:DECODE_SHOWN].detach().cpu()
    o.figure(
        "decoded_filters.png",
        plot_decoded_filters(
            shown.numpy(),
            threshold_filters(shown).numpy(),
            title=f"LeNet {DECODE_LAYER} (seed 003 layer 5): decoded filters, thresholded below",
        ),
    )
    return {
        "checkpoint": str(lenet),
        "layer": dec.layer,
        "paper_layer": 5,
        "filters_shape": list(dec.filters.shape),
        "chain": dec.chain,
        "n_images": len(x),
        "shown": len(shown),
        "reconstruction_error": {m: {"mean": e.mean, "std": e.std} for m, e in errors.items()},
        "command": command,
    }


def _decoding_section(d: dict[str, Any]) -> Section:
    title = "Filter decoding: deep filters as image patterns (seed 003)"
    why_lenet = (
        "GFNN's deeper filters are not decoded here: decoding cannot yet substitute through "
        "GFNN's fixed kernel bank, so this lens is shown on the committed LeNet of seed 003 "
        "(MatConvNet's MNIST network, 97.4% on the same test split)."
    )
    if "missing" in d:
        return Section(title, [why_lenet, f"Not shown: {d['missing']}.",
                               f"Reproduce: {d['command']}."])  # fmt: skip
    rows = [[mode, f"{v['mean']:.4f} ± {v['std']:.4f}"]
            for mode, v in d["reconstruction_error"].items()]  # fmt: skip
    k, _, h, w = d["filters_shape"]
    return Section(
        title,
        [
            why_lenet,
            f"Each of the {k} filters of {d['layer']} (the paper's layer 5) is a pattern "
            "over the maps of the layer below; substituting the lower filters into it, layer "
            f"by layer ({'; '.join(d['chain'])}), gives one {h}x{w} pattern over the "
            "image. How to read it: a tile is what that "
            "filter looks for (red: bright pixels there raise its response, blue: lower it); "
            "the error says how far correlating an image with the tile is from the filter's "
            "true response, both min-max normalised (0: exact). Seed 003 Table 1 reports "
            "0.012 ± 0.005 at this layer.",
            "Reproduce at full size (1,000 test images, with the images each filter answers "
            f"most and its responses on a page of its own): {d['command']}.",
        ],
        [
            Table(
                ["unpooling", "error (mean ± std)"],
                rows,
                caption=f"Reconstruction error over {d['n_images']} test images.",
            )
        ],
        [Figure("decoded_filters.png",
                f"The first {d['shown']} of the {k} decoded filters (nearest unpooling); "
                "below each, where it reaches half its peak.")],
    )  # fmt: skip


def _faithfulness(
    out: Path,
    models: dict[str, nn.Module],
    quick: bool,
    overwrite: bool,
    formats: Sequence[str],
    log: Log,
) -> dict[str, Any]:
    """``convscope evaluate`` on the first test digits for each model (one batch)."""
    from convscope.evaluate import get_method
    from convscope.runs import evaluate

    images = 4 if quick else 64
    result: dict[str, Any] = {}
    for name, folder in EVALUATE_DIRS.items():
        methods = [m for m in EVALUATE_METHODS if get_method(m).applies_to(models[name])]
        log(f"{name}: faithfulness of {len(methods)} methods on {images} test images ...")
        res = evaluate.run(str(out / f"{name}.pt"), out / folder, data="mnist-subset",
                           split="test", limit=images, methods=methods,
                           metrics=list(EVALUATE_METRICS), batch_size=images, seed=0,
                           examples=2, overwrite=overwrite, progress=False,
                           device="cpu", formats=formats)  # fmt: skip
        s = res.summary
        result[name] = {
            "folder": folder,
            "images": s["images"],
            "seed": s["seed"],
            "methods": s["methods"],
            "metrics": s["metrics"],
            "families": s["families"],
            "higher_is_better": s["higher_is_better"],
            "table": s["table"],
            "best": {k: res.result.best(k) for k in s["metrics"]},
            "command": f"convscope evaluate --model {name}.pt --data mnist-subset --out {folder}",
        }
    return result


def _cell(c: dict[str, Any]) -> str:
    if not c["n"]:
        return "-"
    if not np.isfinite(c["low"]):
        return f"{c['mean']:.3f}"
    return f"{c['mean']:.3f} ± {(c['high'] - c['low']) / 2:.3f}"


def _faithfulness_section(f: dict[str, Any]) -> Section:
    g = f["gfnn"]
    arrows = {k: "↑" if v else "↓" for k, v in g["higher_is_better"].items()}
    tables = [
        Table(
            ["method", "from", *(f"{k.replace('_', ' ')} {arrows[k]}" for k in v["metrics"])],
            [[m, v["families"][m], *(_cell(v["table"][m][k]) for k in v["metrics"])]
             for m in v["methods"]],
            caption=f"{_LABELS[key]}: mean ± half the 95 % interval over {v['images']} test "
            "digits; best: " + ", ".join(f"{k} {b}" for k, b in v["best"].items()) + ".",
        )
        for key, v in f.items()
    ]  # fmt: skip
    return Section(
        "Faithfulness: convscope's maps beside Captum's and Zennit's",
        [
            "Each method explains the predicted class of the same test digits; each metric "
            "asks whether the map points at the pixels the network really uses. Deletion: "
            "blank the pixels the map ranks highest first and measure how fast the class's "
            "probability falls (area under the curve, lower is better); insertion: the "
            "reverse, from a black image (higher is better); faithfulness correlation: do "
            "random pixel sets with more attribution cost more score when removed (higher is "
            "better). input_contribution is the linear interpreter's x * F^T e_t, "
            "filter_score_map GFNN's filter-score pixel map; saliency and integrated "
            "gradients are Captum's, lrp_epsilon_plus Zennit's. How to read it: compare a "
            "column's numbers, taking the intervals into account: with this few digits, "
            "overlapping intervals are a tie.",
            "Reproduce at full size (every method and metric over all 1,000 test digits, "
            f"which takes long on a CPU; --limit 64 for a sample): {g['command']} (and "
            f"{f['regular_cnn']['command']}).",
        ],
        tables,
        [Figure(f"{v['folder']}/examples.png",
                f"{_LABELS[key]}: every method's map on two test digits.")
         for key, v in f.items()],
        [Link(f"{_LABELS[key]}: the evaluation page (scores, deletion and insertion curves)",
              f"{v['folder']}/report.html") for key, v in f.items()],
    )  # fmt: skip


_TOUR = (
    ("The fixed kernels", "Fixed-kernel networks (seed 000): which classic kernel, and which "
     "pixel, GFNN's decisions used"),
    ("The linear interpreter", "The linear interpreter (seed 001): each network, frozen at one "
     "image, is exactly F x + r; votes, singular pairs, the biases' share"),
    ("Filter decoding", "Filter decoding (seed 003): a deep filter drawn as the image pattern it "
     "looks for"),
    ("Spectral response", "Spectral response (seed 004): Maximum Gain per epoch as a training "
     "diagnostic, and the transfer function"),
    ("Faithfulness", "Faithfulness: how convscope's maps score beside Captum's and Zennit's"),
    ("The NumPy CNN", "The NumPy CNN (seed 002): the textbook network written in NumPy alone, "
     "on a page of its own"),
)  # fmt: skip


def _contents_section(sections: list[Section]) -> Section:
    """The tour: one link per lens, to the first section of it (``sections`` follow this one)."""
    links = [Link("The two models: accuracy and training curves", "#s2")]
    for prefix, text in _TOUR:
        hits = [i for i, s in enumerate(sections) if s.title.startswith(prefix)]
        if not hits:
            raise ConvscopeError(f"demo report: no section for {prefix!r}")  # a bug, not a user's
        links.append(Link(text, f"#s{hits[0] + 2}"))  # this section is s1
    return Section(
        "A tour of five lenses",
        [
            "The demo trained GFNN (a first layer of 40 fixed classic kernels) and a regular "
            "CNN (the same network, first layer learned) on the embedded MNIST subset, then "
            "looked at them through each of convscope's five lenses. Each section below has "
            "its figure, its numbers (also in metrics.json), a sentence on how to read it and "
            "the command that reproduces it at full size."
        ],
        links=links,
    )
