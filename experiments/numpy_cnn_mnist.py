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
    python experiments/numpy_cnn_mnist.py --summarize   # mnist.json, plot, README tables
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch twin lives beside the tests

from convscope import numpy_cnn as ncnn  # noqa: E402
from convscope.data import load_mnist_subset  # noqa: E402
from convscope.io import write_json  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "numpy_cnn"
RUNS_DIR = RESULTS / "runs"
VARIANTS = {"learned": "none", "fixed_first": "first", "fixed_all": "all"}
FRAMEWORKS = ("numpy", "torch")
MOMENTA = (0.01, 0.1, 0.5, 0.9, 1.0)
DEFAULT_BN = {"eps": 1e-5, "momentum": 0.1}
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


def markdown_tables(summary: dict[str, Any]) -> str:
    """The README's tables, from the summary (printed by ``--summarize``)."""
    table = summary["table"]

    def pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
        return f"{scale * stat['mean']:.{digits}f} +- {scale * stat['std']:.{digits}f}"

    lines = [
        "| run | NumPy | PyTorch | NumPy - PyTorch (pp) | running BN stats, NumPy / PyTorch "
        "| after 2 epochs, NumPy / PyTorch | trainable parameters | train time, NumPy / "
        "PyTorch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in VARIANTS:
        key = f"{variant}/30ep"
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
    lines += [
        "",
        "| learned network, BN eps | framework | calibrated | momentum 0.01 (Keras) "
        "| 0.1 (PyTorch) | 0.5 | 0.9 | 1.0 (last batch) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in table.values():
        if not row["variant"].startswith("learned") or row["epochs"] != 30:
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


def _diagnose_one(eps: float, seed: int, epochs: int, data: dict[str, Any]) -> dict[str, Any]:
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
        if not mod.training or state["epoch"] != epochs - 1:
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
    return {
        "per_epoch": rec,
        "last_epoch_median_mean_shift_per_step": float(np.median(step["mean_shift_per_step"])),
        "last_epoch_median_batch_mean_error": float(np.median(step["batch_mean_error"])),
        "sqrt_eps": float(np.sqrt(eps)),
    }


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
    p.add_argument("--epochs", type=int, default=30)
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
        print(markdown_tables(summarize()))
        print(f"wrote {RESULTS / 'mnist.json'}")
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
    summarize()
    print(f"wrote {RESULTS / 'mnist.json'}")


if __name__ == "__main__":
    main()
