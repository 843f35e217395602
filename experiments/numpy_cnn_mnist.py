"""Seed 002 sections 11.4 and 11.6.1 on the data we have: the chapter's MNIST CNN with learned
and fixed filters, in NumPy and in PyTorch, over several seeds.

The network (``convscope.numpy_cnn.mnist_cnn``): conv 3x3 x32 (padding 1) -> sigmoid ->
2x2 max-pool -> conv 3x3 x32 -> sigmoid -> 2x2 max-pool -> global average pooling ->
dense 32 -> sigmoid -> batch norm -> dense 10 -> softmax, trained with binary
cross-entropy over one-hot classes, Adam (lr 1e-2), batches of 32, as in the chapter.

Schedule: the chapter runs 2 epochs over 60,000 images, i.e. 3,750 Adam steps. We have the
embedded 4,000-image training subset, so the default is 30 epochs (the same 3,750 steps).

Variants (``mnist_cnn(fixed=...)``):
  learned       every filter learned (section 11.6.1),
  fixed_first   the first convolution is a fixed layer of the 32 compass edge kernels of
                convscope.kernels, never updated,
  fixed_all     both convolutions fixed (section 11.4): only the dense part and batch norm
                learn. The second layer's filter r is edge kernel r on every channel,
                summed over channels (the chapter's filter tensor with one component
                repeated over the depth).
Frameworks: ``numpy`` (convscope.numpy_cnn, float32) and ``torch`` (the twin in
tests/numpy_cnn_twin.py on the CPU: the NumPy network's initial weights copied, the same
batches in the same order, the same optimizer and loss). One thread each.

Batch norm: test accuracy is reported twice - with the running statistics as trained, and
after recomputing them exactly over the training images with the final weights
(``Sequential.calibrate_batchnorm``; the same computation on the torch side). Running
statistics never influence training, so every run also replays the moving average for
several momenta over the batch statistics it saw and reports the test accuracy each would
have given at the end (``bn_momentum_replay``). ``--bn-eps`` / ``--bn-momentum`` train
with other batch-norm settings (e.g. Keras's defaults, eps 1e-3 and momentum 0.01 in
PyTorch's convention); such runs are stored under a tagged variant name.

``--diagnose-bn`` measures why the running statistics fail (bn_diagnosis.json): the
features' spread across images, how far one Adam step moves their mean, and how far the
running mean lags, for eps 1e-5 and 1e-3.

Each run is written to experiments/results/numpy_cnn/runs/<framework>_<variant>_seed<s>_
<epochs>ep.json; a run already stored is skipped, and one being run by another process (a
``.running`` marker beside it) too, so several processes can share the grid. The summary
(mean +- std over seeds) goes to mnist.json and mnist_curves.png.

    OMP_NUM_THREADS=1 python experiments/numpy_cnn_mnist.py --seeds 0,1,2       # the grid
    OMP_NUM_THREADS=1 python experiments/numpy_cnn_mnist.py --variants learned \
        --seeds 0,1,2 --bn-eps 1e-3 --bn-momentum 0.01                          # Keras BN
    OMP_NUM_THREADS=1 python experiments/numpy_cnn_mnist.py --diagnose-bn --seeds 0
    python experiments/numpy_cnn_mnist.py --summarize   # mnist.json, plot, README section
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch twin lives beside the tests

from convscope import numpy_cnn as ncnn  # noqa: E402
from convscope.data import load_mnist_subset  # noqa: E402
from convscope.io import atomic_write_bytes, write_json  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "numpy_cnn"
RUNS_DIR = RESULTS / "runs"
VARIANTS = {"learned": "none", "fixed_first": "first", "fixed_all": "all"}
FRAMEWORKS = ("numpy", "torch")
MOMENTA = (0.01, 0.1, 0.5, 0.9, 1.0)
DEFAULT_BN = {"eps": 1e-5, "momentum": 0.1}
KERAS_BN = {"eps": 1e-3, "momentum": 0.01}  # Keras's defaults, in PyTorch's convention
EPOCHS = 30  # the schedule the README reports (3,750 Adam steps)
LR, BATCH = 1e-2, 32
CURVE_CALIBRATION = 1000  # training images behind the per-epoch calibrated curve


def _variant_name(variant: str, bn: dict[str, float]) -> str:
    if bn == DEFAULT_BN:
        return variant
    return f"{variant}_bn-eps{bn['eps']:g}-mom{bn['momentum']:g}"


def _build(variant: str, seed: int, bn: dict[str, float]) -> ncnn.Sequential:
    return ncnn.mnist_cnn(
        seed,
        fixed=VARIANTS[variant],  # type: ignore[arg-type]
        bn_eps=bn["eps"],
        bn_momentum=bn["momentum"],
    )


class _Replay:
    """Moving averages of the batch statistics for several momenta at once."""

    def __init__(self, features: int) -> None:
        self.ema = {m: [np.zeros(features), np.ones(features)] for m in MOMENTA}

    def add(self, mean: np.ndarray, unbiased_var: np.ndarray) -> None:
        for m, (rm, rv) in self.ema.items():
            rm *= 1 - m
            rm += m * mean
            rv *= 1 - m
            rv += m * unbiased_var


def _batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x64 = np.asarray(x, dtype=np.float64)
    return x64.mean(axis=0), x64.var(axis=0, ddof=1)


def run_numpy(variant: str, seed: int, epochs: int, bn: dict[str, float], data: dict[str, Any]):  # type: ignore[no-untyped-def]
    net = _build(variant, seed, bn).astype(np.float32)
    norm = next(la for la in net if isinstance(la, ncnn.BatchNorm))
    replay = _Replay(norm.num_features)
    forward = norm.forward

    def recording_forward(x: np.ndarray) -> np.ndarray:
        if norm.training:
            replay.add(*_batch_stats(x))
        return forward(x)

    norm.forward = recording_forward  # type: ignore[method-assign]
    xtr, ytr, xte, yte = data["xtr"], data["ytr"], data["xte"], data["yte"]
    xcal = xtr[:CURVE_CALIBRATION]

    def evaluate() -> tuple[float, float]:
        ev = net.evaluate(xte, yte, loss="bce")
        return ev["loss"], ev["accuracy"]

    def with_stats(mean: np.ndarray, var: np.ndarray) -> tuple[float, float]:
        saved = norm.running_mean, norm.running_var
        norm.running_mean, norm.running_var = mean.astype(np.float32), var.astype(np.float32)
        out = evaluate()
        norm.running_mean, norm.running_var = saved
        return out

    def calibrated(x: np.ndarray = xtr) -> tuple[float, float]:
        saved = norm.running_mean, norm.running_var
        net.calibrate_batchnorm(x)
        out = evaluate()
        norm.running_mean, norm.running_var = saved
        return out

    hist = _history()

    def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
        _record(hist, metrics["loss"], metrics["accuracy"], evaluate(), calibrated(xcal))
        hist["epoch_seconds"].append(metrics["time"])
        _print("numpy", variant, seed, epoch, hist)

    start = time.perf_counter()
    net.fit(
        xtr,
        ytr,
        epochs=epochs,
        batch_size=BATCH,
        optimizer=ncnn.Adam(LR),
        loss="bce",
        progress=False,
        seed=seed,
        on_epoch_end=after_epoch,
    )
    seconds = time.perf_counter() - start
    # the replay of the network's own momentum must be the layer's running statistics
    own = replay.ema.get(bn["momentum"])
    if own is not None:
        np.testing.assert_allclose(own[0], norm.running_mean, rtol=1e-4, atol=1e-6)
    replayed = {str(m): with_stats(*ms)[1] for m, ms in replay.ema.items()}
    return _result(net.num_parameters(), evaluate(), calibrated(), replayed, seconds, hist)


def run_torch(variant: str, seed: int, epochs: int, bn: dict[str, float], data: dict[str, Any]):  # type: ignore[no-untyped-def]
    import torch
    import torch.nn.functional as F
    from numpy_cnn_twin import (
        calibrate_torch_batchnorm,
        fit_torch_twin,
        torch_twin,
        trainable_parameters,
    )

    torch.set_num_threads(1)
    model = torch_twin(_build(variant, seed, bn))  # the NumPy run's initial weights
    norm = next(m for m in model if isinstance(m, torch.nn.BatchNorm1d))
    replay = _Replay(norm.num_features)

    def hook(mod: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
        if mod.training:
            replay.add(*_batch_stats(inputs[0].detach().numpy()))

    norm.register_forward_hook(hook)
    xtr = torch.as_tensor(data["xtr"])
    xcal = xtr[:CURVE_CALIBRATION]
    xte = torch.as_tensor(data["xte"])
    yte = data["yte"]
    yte_onehot = torch.as_tensor(ncnn.one_hot(yte, 10, np.float32))

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        was = model.training
        model.eval()
        out = model(xte)
        model.train(was)
        loss = F.binary_cross_entropy(out, yte_onehot)
        return float(loss), float((out.argmax(1).numpy() == yte).mean())

    def with_stats(mean: np.ndarray, var: np.ndarray) -> tuple[float, float]:
        saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        with torch.no_grad():
            norm.running_mean.copy_(torch.as_tensor(mean))
            norm.running_var.copy_(torch.as_tensor(var))
        out = evaluate()
        model.load_state_dict(saved, strict=False)
        return out

    def calibrated(x: torch.Tensor = xtr) -> tuple[float, float]:
        saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        calibrate_torch_batchnorm(model, x)
        out = evaluate()
        model.load_state_dict(saved, strict=False)
        return out

    hist = _history()

    def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
        _record(hist, metrics["loss"], metrics["accuracy"], evaluate(), calibrated(xcal))
        hist["epoch_seconds"].append(metrics["time"])
        _print("torch", variant, seed, epoch, hist)

    start = time.perf_counter()
    fit_torch_twin(
        model,
        data["xtr"],
        data["ytr"],
        epochs=epochs,
        batch_size=BATCH,
        lr=LR,
        seed=seed,
        on_epoch_end=after_epoch,
    )
    seconds = time.perf_counter() - start
    own = replay.ema.get(bn["momentum"])
    if own is not None:
        np.testing.assert_allclose(own[0], norm.running_mean.numpy(), rtol=1e-4, atol=1e-6)
    replayed = {str(m): with_stats(*ms)[1] for m, ms in replay.ema.items()}
    n_params = sum(p.numel() for p in trainable_parameters(model))
    result = _result(n_params, evaluate(), calibrated(), replayed, seconds, hist)
    result["torch_version"] = torch.__version__
    return result


def _history() -> dict[str, list[float]]:
    keys = (
        "train_loss",
        "train_accuracy",
        "test_loss_as_trained",
        "test_accuracy_as_trained",
        "test_loss_calibrated",
        "test_accuracy_calibrated",
        "epoch_seconds",
    )
    return {k: [] for k in keys}


def _record(
    hist: dict[str, list[float]],
    loss: float,
    acc: float,
    as_trained: tuple[float, float],
    calibrated: tuple[float, float],
) -> None:
    hist["train_loss"].append(float(loss))
    hist["train_accuracy"].append(float(acc))
    hist["test_loss_as_trained"].append(as_trained[0])
    hist["test_accuracy_as_trained"].append(as_trained[1])
    hist["test_loss_calibrated"].append(calibrated[0])
    hist["test_accuracy_calibrated"].append(calibrated[1])


def _print(fw: str, variant: str, seed: int, epoch: int, hist: dict[str, list[float]]) -> None:
    print(
        f"[{fw} {variant} seed {seed}] epoch {epoch + 1}: train loss "
        f"{hist['train_loss'][-1]:.4f} acc {hist['train_accuracy'][-1]:.4f} | test acc as "
        f"trained {hist['test_accuracy_as_trained'][-1]:.4f}, calibrated "
        f"{hist['test_accuracy_calibrated'][-1]:.4f} ({hist['epoch_seconds'][-1]:.1f} s)",
        flush=True,
    )


def _result(
    n_params: int,
    as_trained: tuple[float, float],
    calibrated: tuple[float, float],
    replayed: dict[str, float],
    seconds: float,
    hist: dict[str, list[float]],
) -> dict[str, Any]:
    return {
        "trainable_parameters": int(n_params),
        "test_accuracy_as_trained": as_trained[1],
        "test_loss_as_trained": as_trained[0],
        "test_accuracy": calibrated[1],
        "test_loss": calibrated[0],
        "bn_momentum_replay": replayed,
        "train_seconds": seconds,
        "history": hist,
    }


# -- summary -------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "n": len(a),
        "values": [float(v) for v in a],
    }


def summarize() -> dict[str, Any]:
    """Aggregate every stored run into mnist.json and mnist_curves.png."""
    runs = [json.loads(p.read_text()) for p in sorted(RUNS_DIR.glob("*.json"))]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(f"{r['framework']}/{r['variant']}/{r['epochs']}ep", []).append(r)
    table: dict[str, Any] = {}
    for key, rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        table[key] = {
            "framework": rs[0]["framework"],
            "variant": rs[0]["variant"],
            "epochs": rs[0]["epochs"],
            "bn": rs[0]["bn"],
            "seeds": [r["seed"] for r in rs],
            "trainable_parameters": rs[0]["trainable_parameters"],
            "test_accuracy": _mean_std([r["test_accuracy"] for r in rs]),
            "test_loss": _mean_std([r["test_loss"] for r in rs]),
            "test_accuracy_as_trained": _mean_std([r["test_accuracy_as_trained"] for r in rs]),
            "test_accuracy_as_trained_last5": _mean_std(
                [float(np.mean(r["history"]["test_accuracy_as_trained"][-5:])) for r in rs]
            ),
            "test_accuracy_after_2_epochs": _mean_std(
                [r["history"]["test_accuracy_calibrated"][1] for r in rs if r["epochs"] >= 2]
                or [float("nan")]
            ),
            "bn_momentum_replay": {
                m: _mean_std([r["bn_momentum_replay"][m] for r in rs])
                for m in rs[0]["bn_momentum_replay"]
            },
            "train_seconds": _mean_std([r["train_seconds"] for r in rs]),
        }
    diffs: dict[str, Any] = {}
    for key, row in table.items():
        if row["framework"] != "numpy":
            continue
        twin = table.get("torch" + key[len("numpy") :])
        if twin is None:
            continue
        paired = {
            s: a
            for s, a in zip(row["seeds"], row["test_accuracy"]["values"], strict=True)
            if s in twin["seeds"]
        }
        d = [
            100 * (paired[s] - b)
            for s, b in zip(twin["seeds"], twin["test_accuracy"]["values"], strict=True)
            if s in paired
        ]
        if d:
            diffs[key[len("numpy/") :]] = _mean_std(d)
    first = runs[0] if runs else {}
    summary = {
        "description": "seed 002 sections 11.4 and 11.6.1: MNIST CNN with learned and fixed "
        "filters on the embedded subset, NumPy and PyTorch, several seeds",
        "train_images": first.get("train_images"),
        "test_images": first.get("test_images"),
        "batch_size": BATCH,
        "optimizer": f"Adam(lr={LR:g})",
        "loss": "binary cross-entropy over one-hot classes (softmax output)",
        "note": "test_accuracy uses batch-norm statistics recomputed over all training "
        "images after training (the per-epoch calibrated curves over the first "
        f"{CURVE_CALIBRATION}); test_accuracy_as_trained uses the running statistics; "
        "std is the sample standard deviation over seeds",
        "table": table,
        "numpy_minus_torch_pp": diffs,
        "runs": {
            f"{r['framework']}_{r['variant']}_seed{r['seed']}_{r['epochs']}ep": {
                k: v for k, v in r.items() if k != "history"
            }
            for r in runs
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "mnist.json", summary)
    if runs:
        _plot(groups, RESULTS / "mnist_curves.png")
    return summary


def _pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * stat['mean']:.{digits}f} +- {scale * stat['std']:.{digits}f}"


def markdown_tables(summary: dict[str, Any]) -> str:
    """The README's tables, from the summary (printed by ``--summarize``)."""
    return _accuracy_table(summary) + "\n\n" + _momentum_table(summary)


def _accuracy_table(summary: dict[str, Any]) -> str:
    table, pm = summary["table"], _pm
    lines = [
        "| run | NumPy | PyTorch | NumPy - PyTorch (pp) | running BN stats, NumPy / PyTorch "
        "| after 2 epochs, NumPy / PyTorch | trainable parameters | train time, NumPy / "
        "PyTorch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in VARIANTS:
        key = f"{variant}/{EPOCHS}ep"
        rows = [table.get(f"{fw}/{key}") for fw in FRAMEWORKS]
        if None in rows:
            continue
        a, b = rows[0], rows[1]
        assert a is not None and b is not None
        diff = summary["numpy_minus_torch_pp"].get(key)
        lines.append(
            f"| `{variant}` (seeds {','.join(map(str, a['seeds']))}) "
            f"| **{pm(a['test_accuracy'])}** | **{pm(b['test_accuracy'])}** "
            f"| {pm(diff, 1.0, 2) if diff else '-'} "
            f"| {pm(a['test_accuracy_as_trained'])} / {pm(b['test_accuracy_as_trained'])} "
            f"| {pm(a['test_accuracy_after_2_epochs'])} / "
            f"{pm(b['test_accuracy_after_2_epochs'])} "
            f"| {a['trainable_parameters']:,} "
            f"| {a['train_seconds']['mean']:.0f} s / {b['train_seconds']['mean']:.0f} s |"
        )
    return "\n".join(lines)


def _momentum_table(summary: dict[str, Any]) -> str:
    table, pm = summary["table"], _pm
    lines = [
        "| learned network, BN eps | framework | calibrated | momentum 0.01 (Keras) "
        "| 0.1 (PyTorch) | 0.5 | 0.9 | 1.0 (last batch) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in table.values():
        if not row["variant"].startswith("learned") or row["epochs"] != EPOCHS:
            continue
        trained_with = f"trained with momentum {row['bn']['momentum']:g}"
        replay = row["bn_momentum_replay"]
        lines.append(
            f"| {row['bn']['eps']:g} ({trained_with}) | {row['framework']} "
            f"| {pm(row['test_accuracy'])} | "
            + " | ".join(pm(replay[m]) for m in sorted(replay, key=float))
            + " |"
        )
    return "\n".join(lines)


# -- the README's section on these runs ----------------------------------------------------

README = RESULTS / "README.md"
BEGIN = (
    "<!-- made by `python experiments/numpy_cnn_mnist.py --summarize` from mnist.json and "
    "bn_diagnosis.json: edit the script, not this part -->"
)
END = "<!-- end of the part made by experiments/numpy_cnn_mnist.py -->"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _range(lo: float, hi: float, fmt: str) -> str:
    a, b = format(lo, fmt), format(hi, fmt)
    return a if a == b else f"{a}-{b}"


def page_ready(summary: dict[str, Any], diagnosis: dict[str, Any] | None) -> bool:
    """Whether the summary holds every run :func:`page` reads (and the diagnosis is there)."""
    keras = _variant_name("learned", KERAS_BN)
    need = [f"{fw}/{v}/{EPOCHS}ep" for fw in FRAMEWORKS for v in (*VARIANTS, keras)]
    return diagnosis is not None and all(k in summary["table"] for k in need)


def _fill(text: str, bullet: bool = False) -> str:
    """One paragraph (or list item) wrapped at 92 columns."""
    lead = ("* ", "  ") if bullet else ("", "")
    return textwrap.fill(
        " ".join(text.split()),
        92,
        initial_indent=lead[0],
        subsequent_indent=lead[1],
        break_on_hyphens=False,
        break_long_words=False,
    )


def _e(x: float) -> str:
    """1e-05 as 1e-5, 0.001 as 1e-3."""
    return f"{x:.0e}".replace("e-0", "e-")


def page(summary: dict[str, Any], diagnosis: dict[str, Any]) -> str:
    """The README's section on the MNIST runs: every number and every verdict in it is
    computed here from ``mnist.json`` and ``bn_diagnosis.json``."""
    table = summary["table"]
    keras = _variant_name("learned", KERAS_BN)
    fws = {"numpy": "NumPy", "torch": "PyTorch"}

    def row(fw: str, variant: str) -> dict[str, Any]:
        return table[f"{fw}/{variant}/{EPOCHS}ep"]

    def both(variant: str, key: str, fmt: str = ".1f", scale: float = 100.0) -> str:
        a, b = (format(scale * row(fw, variant)[key]["mean"], fmt) for fw in FRAMEWORKS)
        return f"{a}% / {b}%" if scale == 100 else f"{a} / {b}"

    def pm0(stat: dict[str, Any]) -> str:
        return f"{100 * stat['mean']:.0f}% +- {100 * stat['std']:.0f}%"

    def pm1(stat: dict[str, Any]) -> str:
        return f"{100 * stat['mean']:.1f}% +- {100 * stat['std']:.1f}%"

    n_train, n_test = summary["train_images"], summary["test_images"]
    seeds = sorted({s for r in table.values() for s in r["seeds"]})
    threads = sorted({r["threads"] for r in summary["runs"].values()})
    runs_threads = "one thread" if threads == ["1"] else f"threads {', '.join(threads)}"
    learned = {fw: row(fw, "learned") for fw in FRAMEWORKS}
    acc = {fw: 100 * learned[fw]["test_accuracy"]["mean"] for fw in FRAMEWORKS}
    reach = (
        f"{acc['numpy']:.1f}% in both frameworks"
        if f"{acc['numpy']:.1f}" == f"{acc['torch']:.1f}"
        else f"{acc['numpy']:.1f}% (NumPy) / {acc['torch']:.1f}% (PyTorch)"
    )
    diff = summary["numpy_minus_torch_pp"][f"learned/{EPOCHS}ep"]
    cost = [
        100
        * (learned[fw]["test_accuracy"]["mean"] - row(fw, "fixed_first")["test_accuracy"]["mean"])
        for fw in FRAMEWORKS
    ]
    cost_text = (
        f"costs {cost[0]:.1f} / {cost[1]:.1f} points"
        if min(cost) > 0
        else f"changes accuracy by {-cost[0]:+.1f} / {-cost[1]:+.1f} points"
    )
    fa = [row(fw, "fixed_all")["test_accuracy"] for fw in FRAMEWORKS]
    n_fa = len(fa[0]["values"])
    same = sum(a == b for a, b in zip(fa[0]["values"], fa[1]["values"], strict=True))
    same_text = (
        "on every seed here: with no convolution trained, the two float32 computations "
        "barely drift apart"
        if same == n_fa
        else f"on {same} of {n_fa} seeds"
    )
    bce = "; ".join(f"{both(v, 'test_loss', '.3f', 1.0)} ({v.replace('_', ' ')})" for v in VARIANTS)
    np_times = learned["numpy"]["train_seconds"]["values"]

    # batch norm: as trained against recomputed
    last5 = {fw: 100 * learned[fw]["test_accuracy_as_trained_last5"]["mean"] for fw in FRAMEWORKS}
    losses = [
        100 * (r["test_accuracy"]["mean"] - r["test_accuracy_as_trained_last5"]["mean"])
        for r in table.values()
        if r["epochs"] == EPOCHS
    ]
    kr = {fw: row(fw, keras) for fw in FRAMEWORKS}
    k_last5 = {fw: 100 * kr[fw]["test_accuracy_as_trained_last5"]["mean"] for fw in FRAMEWORKS}
    k_gap = [100 * kr[fw]["test_accuracy"]["mean"] - k_last5[fw] for fw in FRAMEWORKS]
    k_verdict = (
        "the framework defaults do not fix it"
        if max(k_gap) > 1
        else "the framework defaults fix it (within a point)"
    )
    k_worse = all(k_last5[fw] < last5[fw] for fw in FRAMEWORKS)
    km = KERAS_BN["momentum"]

    # the diagnosis
    d5, d3 = diagnosis[f"eps{DEFAULT_BN['eps']:g}"], diagnosis[f"eps{KERAS_BN['eps']:g}"]
    sd5, sd3 = d5["per_epoch"]["sd"], d3["per_epoch"]["sd"]
    scale = [float(np.sqrt(v**2 + DEFAULT_BN["eps"])) for v in (min(sd5), max(sd5))]
    shift5 = d5["last_epoch_median_mean_shift_per_step"]
    err5 = d5["last_epoch_median_batch_mean_error"]
    shift3 = d3["last_epoch_median_mean_shift_per_step"]
    off5 = float(np.median(d5["per_epoch"]["running_mean_offset"]))
    off3 = float(np.median(d3["per_epoch"]["running_mean_offset"]))
    outruns = (
        "A moving average over past batches therefore averages means of weights that no "
        "longer exist: with"
        if shift5 > err5
        else "With"
    )
    above = "above" if d3["sqrt_eps"] > max(sd3) else "not above"
    damps = "does damp this" if shift3 < shift5 and off3 < off5 else "does not damp this"
    window = [round(1 / m) for m in (km, DEFAULT_BN["momentum"])]
    k_net = (
        "loses more than the eps gains" if k_worse else "the eps gains more than the momentum loses"
    )

    # the momentum replay
    lrows = [
        r for r in table.values() if r["variant"].startswith("learned") and r["epochs"] == EPOCHS
    ]
    late = ("0.9", "1.0")
    replay = [(r, m, r["bn_momentum_replay"][m]) for r in lrows for m in late]
    means = [100 * st["mean"] for _, _, st in replay]
    per_seed = [100 * v for _, _, st in replay for v in st["values"]]
    below = [100 * r["test_accuracy"]["mean"] - 100 * st["mean"] for r, _, st in replay]
    helps = all(
        st["mean"] > r["bn_momentum_replay"][f"{r['bn']['momentum']:g}"]["mean"]
        for r, _, st in replay
    )
    under90: dict[str, list[str]] = {}
    for r, m, st in replay:
        for s, v in zip(r["seeds"], st["values"], strict=True):
            if v < 0.9:
                who = f"{fws[r['framework']]} seed {s} with eps {_e(r['bn']['eps'])}"
                under90.setdefault(who, []).append(f"{100 * v:.1f}% at momentum {float(m):g}")
    under = "; ".join(f"{k} ({', '.join(v)})" for k, v in under90.items()) or "none"
    ff = [
        100 * r["bn_momentum_replay"][m]
        for r in summary["runs"].values()
        if r["variant"] == "fixed_first" and r["epochs"] == EPOCHS
        for m in late
    ]
    matched = [
        f"{fws[r['framework']]} {r['variant']} at momentum {m}"
        for r in table.values()
        if r["epochs"] == EPOCHS
        for m, st in r["bn_momentum_replay"].items()
        if st["mean"] >= r["test_accuracy"]["mean"]
    ]
    if matched:
        verdict = (
            "Some momenta make the running statistics as good as recomputing them ("
            + "; ".join(matched)
            + "); the headline numbers still use recomputed statistics."
        )
    else:
        verdict = (
            "No framework default, and no momentum, makes the running statistics as good as "
            "recomputing them, so `mnist_cnn` keeps PyTorch's defaults (eps "
            f"{_e(DEFAULT_BN['eps'])}, momentum {DEFAULT_BN['momentum']:g}; `bn_eps` / "
            "`bn_momentum` change them), and the headline numbers use recomputed statistics "
            '("precise batch norm").'
        )
    hours = sum(r["train_seconds"] for r in summary["runs"].values()) / 3600
    keras_flags = f"--bn-eps {_e(KERAS_BN['eps'])} --bn-momentum {km:g}"
    script = "OMP_NUM_THREADS=1 python experiments/numpy_cnn_mnist.py"

    parts = [
        "## MNIST CNN of sections 11.6.1 and 11.4 (`experiments/numpy_cnn_mnist.py`)",
        _fill(
            "Network: conv 3x3 x32 (padding 1) -> sigmoid -> 2x2 max-pool -> conv 3x3 x32 -> "
            "sigmoid -> 2x2 max-pool -> global average pooling -> dense 32 -> sigmoid -> batch "
            "norm -> dense 10 -> softmax; binary cross-entropy over one-hot classes; Adam, lr "
            f"{_e(LR)}; batches of {BATCH}. Data: the embedded MNIST subset, {n_train:,} "
            f"training and {n_test:,} test images. {EPOCHS} epochs = "
            f"{EPOCHS * n_train // BATCH:,} Adam steps (the chapter's 2 epochs over 60,000 "
            f"images are {2 * 60000 // BATCH:,}). Seeds {_and([str(s) for s in seeds])}, the "
            f"full schedule for every seed; {runs_threads}; float32. Each PyTorch run starts "
            "from its NumPy run's initial weights and sees the same batches in the same order "
            "(`tests/numpy_cnn_twin.py`)."
        ),
        _fill(
            "Variants (`mnist_cnn(fixed=...)`): `learned` (section 11.6.1); `fixed_first`, the "
            "first convolution replaced by a fixed layer of the 32 compass edge kernels of "
            "`convscope.kernels` (GFNN indices 0-31); `fixed_all` (section 11.4), both "
            "convolutions fixed so only the dense part and batch norm learn - the second "
            "layer's filter `r` is edge kernel `r` on all 32 channels, summed (the chapter's "
            "filter tensor with the same component over the depth; see `docs/numpy_cnn.md`). "
            "For a given seed the three variants start their dense layers from the same "
            "weights."
        ),
        _fill(
            "Test accuracy in %, mean +- sample standard deviation over the seeds (per-seed "
            "values in `mnist.json`, per-run histories in `runs/`). The first two columns use "
            f"batch-norm statistics recomputed over the {n_train:,} training images with the "
            "final weights (`Sequential.calibrate_batchnorm`, the same computation on the "
            'torch side); "running BN stats" uses the moving averages kept during training, '
            'as trained. "After 2 epochs" is the per-epoch calibrated curve (statistics over '
            f"the first {CURVE_CALIBRATION:,} training images)."
        ),
        _accuracy_table(summary),
        "\n".join(
            [
                _fill(
                    f"The chapter's network reaches {reach}; NumPy minus PyTorch, paired by seed, "
                    f"is {diff['mean']:.2f} +- {diff['std']:.2f} percentage points. The chapter "
                    "reports about 94.5% on the full MNIST test set after training on all 60,000 "
                    "images.",
                    bullet=True,
                ),
                _fill(
                    f"Fixing the first layer to edge kernels {cost_text}, NumPy / PyTorch "
                    f"({both('fixed_first', 'test_accuracy')}).",
                    bullet=True,
                ),
                _fill(
                    f"Fixing every convolution (section 11.4) leaves {pm1(fa[0])} (NumPy) / "
                    f"{pm1(fa[1])} (PyTorch): the dense part sees only 32 global averages of edge "
                    "responses to the *sum* of the 32 first-layer maps. NumPy and PyTorch give the "
                    f"same calibrated accuracy {same_text}.",
                    bullet=True,
                ),
                _fill(f"Test BCE (calibrated), NumPy / PyTorch: {bce}.", bullet=True),
                _fill(
                    "Train times are wall-clock, measured while other jobs shared the machine (the "
                    f"same NumPy network took {min(np_times):.0f} s to {max(np_times):.0f} s over "
                    "its seeds), so only their order of magnitude means anything; see "
                    "`benchmarks/README.md` for a controlled NumPy/PyTorch ratio.",
                    bullet=True,
                ),
            ]
        ),
        "### Batch norm: why the running statistics fail, and what does not fix it",
        _fill(
            "With the moving averages kept during training the learned network gets "
            f"{pm0(learned['numpy']['test_accuracy_as_trained'])} (NumPy) / "
            f"{pm0(learned['torch']['test_accuracy_as_trained'])} (PyTorch) at the end, and "
            f"{last5['numpy']:.0f}% / {last5['torch']:.0f}% averaged over the last five "
            f"epochs, against {acc['numpy']:.1f}% / {acc['torch']:.1f}% with recomputed "
            "statistics; over every variant and both frameworks the running statistics cost "
            f"{_range(min(losses), max(losses), '.0f')} points (last five epochs; "
            "`mnist_curves.png`, right)."
        ),
        _fill(
            "*Framework defaults.* The chapter's Keras programme (section 11.6.2) uses Keras's "
            f"`BatchNormalization` defaults, momentum {1 - km:g} (PyTorch's {km:g}: each batch "
            f"weighs {100 * km:g}%) and epsilon {_e(KERAS_BN['eps'])}, where PyTorch uses "
            f"{DEFAULT_BN['momentum']:g} and {_e(DEFAULT_BN['eps'])} (the chapter's own NumPy "
            "batch-norm layer, Programme 10.4.1, is not in our copy of the chapter). The "
            f"learned network trained with Keras's defaults (`{keras_flags}`, "
            f"{len(kr['numpy']['seeds'])} seeds, both frameworks) gets "
            f"{pm0(kr['numpy']['test_accuracy_as_trained'])} (NumPy) / "
            f"{pm0(kr['torch']['test_accuracy_as_trained'])} (PyTorch) as trained at the end, "
            f"{k_last5['numpy']:.0f}% / {k_last5['torch']:.0f}% over the last five epochs, and "
            f"{both(keras, 'test_accuracy')} with recomputed statistics: {k_verdict}."
        ),
        _fill(
            f"*Cause* (`bn_diagnosis.json`, `--diagnose-bn`, PyTorch twin, seed "
            f"{diagnosis['seed']}). The 32 features entering batch norm are sigmoids of a dense "
            "layer over 32 global averages; across the training images each varies with a "
            f"standard deviation of only {sd5[0]:.3f} (after epoch 1) to {sd5[-1]:.3f} (epoch "
            f"{len(sd5)}) (median over features). With PyTorch's eps (sqrt(eps) = "
            f"{d5['sqrt_eps']:.3f}) batch norm divides by `sqrt(sd^2 + eps)` = {scale[0]:.3f} "
            f"to {scale[1]:.3f}, so it amplifies small shifts of the features' mean "
            f"{1 / scale[1]:.0f}- to {1 / scale[0]:.0f}-fold. Adam at lr {_e(LR)} moves each "
            f"weight by about {_e(LR)} per step whatever the gradient's size, and in the last "
            f"epoch one step moves the exact mean of the features by a median {shift5:.2f} "
            f"units of `sqrt(sd^2 + eps)`, {shift5 / err5:.1f} times the error with which a "
            f"batch of {BATCH} estimates it ({err5:.2f}). {outruns} momentum "
            f"{DEFAULT_BN['momentum']:g} the running mean sits a median {off5:.1f} units (over "
            f"the {len(sd5)} epochs) from the exact one, and at eval time a typical feature is "
            f"shifted by that much. Keras's eps (sqrt(eps) = {d3['sqrt_eps']:.3f}, {above} the "
            f"features' spread of {min(sd3):.3f}-{max(sd3):.3f}) {damps} - {shift3:.2f} units "
            f"per step, {off3:.1f} units off with momentum {DEFAULT_BN['momentum']:g} - but "
            f"Keras's momentum averages over about {window[0]} steps instead of {window[1]} and "
            f"{k_net}."
        ),
        _fill(
            "*Momentum.* The running statistics never influence training, so each run also "
            "replays the moving average over the batch statistics it saw for other momenta and "
            "reports the test accuracy each would have given at the end (exact: the replay of "
            "the momentum a run was trained with reproduces its running statistics):"
        ),
        _momentum_table(summary),
        _fill(
            f"Weighting the newest batch more {'helps' if helps else 'does not always help'}: "
            "with momentum 0.9 or 1 (the last batch alone) the learned network reaches "
            f"{_range(min(means), max(means), '.0f')}% on average ({min(per_seed):.1f}-"
            f"{max(per_seed):.1f}% per seed), {_range(min(below), max(below), '.0f')} points "
            f"below recomputed statistics; below 90%: {under}. The same momenta leave the "
            f"fixed-first variant at {min(ff):.0f}-{max(ff):.0f}% per seed (`mnist.json`, "
            f"`bn_momentum_replay`). {verdict}"
        ),
        _fill(
            f"Reproduce (the stored runs took {hours:.1f} hours of one core in all, on a busy "
            "machine; the diagnosis not counted):"
        ),
        "\n".join(
            [
                f"    {script} --seeds 0,1,2",
                f"    {script} --variants learned --seeds 0,1,2 {keras_flags}",
                f"    {script} --diagnose-bn --seeds 0",
                "    python experiments/numpy_cnn_mnist.py --summarize    "
                "# mnist.json, mnist_curves.png, this part",
            ]
        ),
    ]
    return "\n\n".join(parts) + "\n"


def write_page(summary: dict[str, Any], diagnosis: dict[str, Any], path: Path) -> None:
    """Put :func:`page` between the README's markers (a new README holds only it)."""
    section = f"{BEGIN}\n\n{page(summary, diagnosis)}\n{END}\n"
    if not path.is_file():
        write_text = "# numpy_cnn results\n\n" + section
    else:
        old = path.read_text()
        if old.count(BEGIN) != 1 or old.count(END) != 1:
            raise SystemExit(f"{path}: no single pair of markers to write between")
        head, rest = old.split(BEGIN)
        after = rest.split(END, 1)[1].lstrip("\n")
        write_text = head + section + ("\n" + after if after else "")
    atomic_write_bytes(path, write_text.encode())


def _plot(groups: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    panels = (
        ("test_accuracy_calibrated", "batch norm recomputed after each epoch"),
        ("test_accuracy_as_trained", "running batch-norm statistics"),
    )
    colors = {"learned": "C0", "fixed_first": "C1", "fixed_all": "C2"}
    for ax, (key, title) in zip(axes, panels, strict=True):
        for _, rs in sorted(groups.items()):
            fw, variant = rs[0]["framework"], rs[0]["variant"]
            if variant not in colors:
                continue
            curves = np.array([r["history"][key] for r in rs]) * 100
            ep = np.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(0), curves.std(0)
            style = "-" if fw == "numpy" else "--"
            ax.plot(ep, mean, style, color=colors[variant], label=f"{fw} {variant} (n={len(rs)})")
            ax.fill_between(ep, mean - std, mean + std, color=colors[variant], alpha=0.12)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch (125 Adam steps)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), mean +- std over seeds")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def diagnose_bn(seed: int, epochs: int, data: dict[str, Any]) -> dict[str, Any]:
    """Why the running statistics fail: measured on the torch twin of the learned network.

    For batch-norm eps 1e-5 (PyTorch) and 1e-3 (Keras) - the momentum does not change
    training - it records after every epoch the median over the 32 features of their
    standard deviation across the training images (``sd``) and of the distance between
    the running mean (momentum 0.1) and the exact mean in units of ``sqrt(sd^2 + eps)``,
    the scale batch norm divides by. During the last epoch it records, per Adam step, how
    far the exact mean (over 1,000 training images) moves, and how far a batch's own mean
    lies from it, in the same units.
    """
    out: dict[str, Any] = {"seed": seed, "epochs": epochs, "network": "learned"}
    for eps in (1e-5, 1e-3):
        out[f"eps{eps:g}"] = _diagnose_one(eps, seed, epochs, data)
        print(f"eps {eps:g}: {json.dumps(out[f'eps{eps:g}'])[:600]}", flush=True)
    return out


def _diagnose_one(
    eps: float, seed: int, epochs: int, data: dict[str, Any], *, steps: bool = True
) -> dict[str, Any]:
    """One eps of :func:`diagnose_bn`; ``steps=False`` leaves out the last epoch's per-step
    measurements (an exact mean over 1,000 images before every step: most of the time)."""
    import torch
    from numpy_cnn_twin import fit_torch_twin, torch_twin

    torch.set_num_threads(1)
    xtr = torch.as_tensor(data["xtr"])
    sub = xtr[:1000]
    model = torch_twin(_build("learned", seed, {"eps": eps, "momentum": 0.1}))
    norm = next(m for m in model if isinstance(m, torch.nn.BatchNorm1d))
    j = list(model).index(norm)
    rec: dict[str, list[float]] = {"sd": [], "running_mean_offset": []}
    step: dict[str, list[float]] = {"mean_shift_per_step": [], "batch_mean_error": []}
    state: dict[str, Any] = {"epoch": 0, "prev": None}

    @torch.no_grad()
    def exact(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        was = model.training
        model.eval()
        f = model[:j](x).double()
        model.train(was)
        return f.mean(0), f.std(0)

    def hook(mod: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _o: Any) -> None:
        if not steps or not mod.training or state["epoch"] != epochs - 1:
            return
        mu, sd = exact(sub)  # the weights this batch sees
        scale = torch.sqrt(sd**2 + eps)
        batch_mu = inputs[0].detach().double().mean(0)
        step["batch_mean_error"].append(float(((batch_mu - mu).abs() / scale).median()))
        if state["prev"] is not None:
            shift = ((mu - state["prev"]).abs() / scale).median()
            step["mean_shift_per_step"].append(float(shift))
        state["prev"] = mu

    norm.register_forward_hook(hook)

    def after_epoch(epoch: int, _m: dict[str, float]) -> None:
        mu, sd = exact(xtr)
        off = (norm.running_mean.double() - mu).abs() / torch.sqrt(sd**2 + eps)
        rec["sd"].append(float(sd.median()))
        rec["running_mean_offset"].append(float(off.median()))
        state["epoch"] = epoch + 1

    fit_torch_twin(
        model, data["xtr"], data["ytr"], epochs=epochs, lr=LR, seed=seed, on_epoch_end=after_epoch
    )
    out: dict[str, Any] = {"per_epoch": rec}
    if steps:
        shifts, errors = step["mean_shift_per_step"], step["batch_mean_error"]
        out["last_epoch_median_mean_shift_per_step"] = float(np.median(shifts))
        out["last_epoch_median_batch_mean_error"] = float(np.median(errors))
    out["sqrt_eps"] = float(np.sqrt(eps))
    return out


def run_one(
    runner: Callable[..., dict[str, Any]],
    fw: str,
    variant: str,
    name: str,
    seed: int,
    epochs: int,
    bn: dict[str, float],
    data: dict[str, Any],
) -> dict[str, Any]:
    """One training run and what it was run with."""
    r = runner(variant, seed, epochs, bn, data)
    return {
        "framework": fw,
        "variant": name,
        "fixed": VARIANTS[variant],
        "bn": bn,
        "seed": seed,
        "epochs": epochs,
        "train_images": len(data["xtr"]),
        "test_images": len(data["xte"]),
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "machine": platform.processor() or platform.machine(),
        **r,
    }


def main() -> None:
    global RESULTS, RUNS_DIR
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"from {list(VARIANTS)}")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"from {FRAMEWORKS}")
    p.add_argument("--bn-eps", type=float, default=DEFAULT_BN["eps"])
    p.add_argument("--bn-momentum", type=float, default=DEFAULT_BN["momentum"])
    p.add_argument("--force", action="store_true", help="redo runs already stored")
    p.add_argument("--summarize", action="store_true", help="only rebuild mnist.json and plot")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: ours)")
    p.add_argument(
        "--diagnose-bn", action="store_true", help="only the batch-norm diagnosis (torch)"
    )
    args = p.parse_args()
    if args.out is not None:
        RESULTS, RUNS_DIR = args.out, args.out / "runs"
    if args.summarize:
        _summarize_and_write_page()
        return
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if set(variants) - set(VARIANTS) or set(frameworks) - set(FRAMEWORKS):
        p.error(f"variants from {list(VARIANTS)}, frameworks from {FRAMEWORKS}")
    bn = {"eps": args.bn_eps, "momentum": args.bn_momentum}
    train, test = load_mnist_subset("train"), load_mnist_subset("test")
    data = {"xtr": train.images, "ytr": train.labels, "xte": test.images, "yte": test.labels}
    if args.diagnose_bn:
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_json(RESULTS / "bn_diagnosis.json", diagnose_bn(seeds[0], args.epochs, data))
        print(f"wrote {RESULTS / 'bn_diagnosis.json'}")
        return
    runners: dict[str, Callable[..., dict[str, Any]]] = {"numpy": run_numpy, "torch": run_torch}
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for variant in variants:
            for fw in frameworks:
                name = _variant_name(variant, bn)
                path = RUNS_DIR / f"{fw}_{name}_seed{seed}_{args.epochs}ep.json"
                if path.is_file() and not args.force:
                    print(f"== {path.name} exists, skipped", flush=True)
                    continue
                claim = path.with_name(f".{path.stem}.running")  # another process has it
                try:
                    claim.touch(exist_ok=False)
                except FileExistsError:
                    print(f"== {path.name} is being run elsewhere, skipped", flush=True)
                    continue
                print(f"== {fw} {name} seed {seed}", flush=True)
                try:
                    r = run_one(runners[fw], fw, variant, name, seed, args.epochs, bn, data)
                    write_json(path, r)
                finally:
                    claim.unlink(missing_ok=True)
                print(
                    f"{fw} {name} seed {seed}: test accuracy {100 * r['test_accuracy']:.2f}% "
                    f"(as trained {100 * r['test_accuracy_as_trained']:.2f}%), "
                    f"{r['train_seconds']:.0f} s",
                    flush=True,
                )
    _summarize_and_write_page()


def _summarize_and_write_page() -> None:
    summary = summarize()
    print(markdown_tables(summary))
    print(f"wrote {RESULTS / 'mnist.json'}")
    path = RESULTS / "bn_diagnosis.json"
    diagnosis = json.loads(path.read_text()) if path.is_file() else None
    if diagnosis is not None and page_ready(summary, diagnosis):
        write_page(summary, diagnosis, RESULTS / "README.md")
        print(f"wrote {RESULTS / 'README.md'} (its section on these runs)")
    else:
        print(
            "README.md not rewritten: it needs every variant, Keras's batch norm and the diagnosis"
        )


if __name__ == "__main__":
    main()
