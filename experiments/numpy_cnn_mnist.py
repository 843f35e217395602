"""Seed 002 section 11.6.1 on the data we have: the chapter's MNIST CNN in NumPy and PyTorch.

The network (``convscope.numpy_cnn.mnist_cnn``): conv 3x3 x32 (padding 1) -> sigmoid ->
2x2 max-pool -> conv 3x3 x32 -> sigmoid -> 2x2 max-pool -> global average pooling ->
dense 32 -> sigmoid -> batch norm -> dense 10 -> softmax, trained with binary
cross-entropy over one-hot classes, Adam (lr 1e-2), batches of 32, as in the chapter.

Schedule: the chapter runs 2 epochs over 60,000 images, i.e. 3,750 Adam steps. We have the
embedded 4,000-image training subset, so the default is 30 epochs (the same 3,750 steps);
the per-epoch curves also show where 2 epochs on our data would stop.

Three runs, one thread each:
  numpy          the NumPy network,
  torch          the same network in PyTorch on the CPU: same initial weights (copied from
                 the NumPy network), same batch order, same optimizer and loss,
  numpy_fixed    the NumPy network with its first convolution replaced by a fixed layer of
                 the 32 compass edge kernels of convscope.kernels (never updated).

Batch norm: the features entering it (sigmoid of a dense layer over 32 global averages)
vary little between images, less than their mean drifts while Adam moves the weights, so
the moving averages kept during training lag behind and eval mode suffers. We therefore
report test accuracy twice: with the running statistics as trained, and after
recomputing them exactly over the training images with the final weights
(``Sequential.calibrate_batchnorm``; the same computation on the torch side).

Results go to experiments/results/numpy_cnn/mnist.json (rewritten after every run) and
mnist_curves.png.

    OMP_NUM_THREADS=1 python experiments/numpy_cnn_mnist.py            # all three runs
    OMP_NUM_THREADS=1 python experiments/numpy_cnn_mnist.py --runs numpy --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch twin lives beside the tests

from convscope import numpy_cnn as ncnn  # noqa: E402
from convscope.data import load_mnist_subset  # noqa: E402
from convscope.io import write_json  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "numpy_cnn"
RUNS = ("numpy", "torch", "numpy_fixed")


def _save_bn(net: ncnn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (la.running_mean.copy(), la.running_var.copy())
        for la in net
        if isinstance(la, ncnn.BatchNorm)
    ]


def _restore_bn(net: ncnn.Sequential, saved: list[tuple[np.ndarray, np.ndarray]]) -> None:
    bns = [la for la in net if isinstance(la, ncnn.BatchNorm)]
    for la, (m, v) in zip(bns, saved, strict=True):
        la.running_mean, la.running_var = m, v


def run_numpy(args: argparse.Namespace, first_layer: str, data: dict[str, Any]) -> dict[str, Any]:
    net = ncnn.mnist_cnn(args.seed, first_layer=first_layer).astype(np.float32)  # type: ignore[arg-type]
    xtr, ytr, xte, yte = data["xtr"], data["ytr"], data["xte"], data["yte"]
    calibrated_acc: list[float] = []
    calibrated_loss: list[float] = []

    def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
        saved = _save_bn(net)
        net.calibrate_batchnorm(xtr)
        ev = net.evaluate(xte, yte, loss="bce")
        calibrated_acc.append(ev["accuracy"])
        calibrated_loss.append(ev["loss"])
        _restore_bn(net, saved)
        print(
            f"[{first_layer}] epoch {epoch + 1}: train loss {metrics['loss']:.4f} acc "
            f"{metrics['accuracy']:.4f} | test acc as trained {metrics['val_accuracy']:.4f}, "
            f"calibrated {ev['accuracy']:.4f} ({metrics['time']:.1f} s)",
            flush=True,
        )

    start = time.perf_counter()
    hist = net.fit(
        xtr,
        ytr,
        epochs=args.epochs,
        batch_size=32,
        optimizer=ncnn.Adam(1e-2),
        loss="bce",
        validation_data=(xte, yte),
        progress=False,
        seed=args.seed,
        on_epoch_end=after_epoch,
    )
    seconds = time.perf_counter() - start
    as_trained = net.evaluate(xte, yte, loss="bce")
    net.calibrate_batchnorm(xtr)
    calibrated = net.evaluate(xte, yte, loss="bce")
    return {
        "first_layer": first_layer,
        "trainable_parameters": net.num_parameters(),
        "test_accuracy_as_trained": as_trained["accuracy"],
        "test_loss_as_trained": as_trained["loss"],
        "test_accuracy": calibrated["accuracy"],
        "test_loss": calibrated["loss"],
        "train_seconds": seconds,
        "history": {
            "train_loss": hist["loss"],
            "train_accuracy": hist["accuracy"],
            "test_loss_as_trained": hist["val_loss"],
            "test_accuracy_as_trained": hist["val_accuracy"],
            "test_loss_calibrated": calibrated_loss,
            "test_accuracy_calibrated": calibrated_acc,
            "epoch_seconds": hist["time"],
        },
    }


def run_torch(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from numpy_cnn_twin import calibrate_torch_batchnorm, torch_twin

    torch.set_num_threads(1)
    model = torch_twin(ncnn.mnist_cnn(args.seed))  # the NumPy run's initial weights
    xtr = torch.as_tensor(data["xtr"])
    ytr_onehot = torch.as_tensor(ncnn.one_hot(data["ytr"], 10, np.float32))
    xte = torch.as_tensor(data["xte"])
    yte = data["yte"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(args.seed)  # the same batch order as Sequential.fit
    n = len(xtr)

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        was = model.training
        model.eval()
        out = model(xte)
        model.train(was)
        loss = F.binary_cross_entropy(out, torch.as_tensor(ncnn.one_hot(yte, 10, np.float32)))
        return float(loss), float((out.argmax(1).numpy() == yte).mean())

    keys = (
        "train_loss",
        "train_accuracy",
        "test_loss_as_trained",
        "test_accuracy_as_trained",
        "test_loss_calibrated",
        "test_accuracy_calibrated",
        "epoch_seconds",
    )
    hist: dict[str, list[float]] = {k: [] for k in keys}
    start = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        seen, loss_sum, correct = 0, 0.0, 0.0
        for i in range(0, n, 32):
            idx = torch.as_tensor(order[i : i + 32])
            out = model(xtr[idx])
            loss = F.binary_cross_entropy(out, ytr_onehot[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            m = len(idx)
            seen += m
            loss_sum += loss.item() * m
            correct += float((out.argmax(1) == ytr_onehot[idx].argmax(1)).float().sum())
        hist["epoch_seconds"].append(time.perf_counter() - t0)
        hist["train_loss"].append(loss_sum / seen)
        hist["train_accuracy"].append(correct / seen)
        loss_t, acc_t = evaluate()
        hist["test_loss_as_trained"].append(loss_t)
        hist["test_accuracy_as_trained"].append(acc_t)
        saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        calibrate_torch_batchnorm(model, xtr)
        loss_c, acc_c = evaluate()
        model.load_state_dict(saved, strict=False)
        hist["test_loss_calibrated"].append(loss_c)
        hist["test_accuracy_calibrated"].append(acc_c)
        print(
            f"[torch] epoch {epoch + 1}: train loss {hist['train_loss'][-1]:.4f} acc "
            f"{hist['train_accuracy'][-1]:.4f} | test acc as trained {acc_t:.4f}, "
            f"calibrated {acc_c:.4f} ({hist['epoch_seconds'][-1]:.1f} s)",
            flush=True,
        )
    seconds = time.perf_counter() - start
    loss_t, acc_t = evaluate()
    calibrate_torch_batchnorm(model, xtr)
    loss_c, acc_c = evaluate()
    return {
        "first_layer": "learned",
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "test_accuracy_as_trained": acc_t,
        "test_loss_as_trained": loss_t,
        "test_accuracy": acc_c,
        "test_loss": loss_c,
        "train_seconds": seconds,
        "torch_version": torch.__version__,
        "history": hist,
    }


def write_outputs(results: dict[str, Any]) -> None:
    from convscope.report.figures import plot_training_curves, save_figure

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "mnist.json", results)
    curves = {
        name: {
            "train_loss": r["history"]["train_loss"],
            "test_loss": r["history"]["test_loss_calibrated"],
            "test_acc": r["history"]["test_accuracy_calibrated"],
        }
        for name, r in results["runs"].items()
    }
    if curves:
        save_figure(plot_training_curves(curves), RESULTS / "mnist_curves.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated from {RUNS}")
    args = p.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = set(runs) - set(RUNS)
    if unknown:
        p.error(f"unknown runs {sorted(unknown)}")
    train, test = load_mnist_subset("train"), load_mnist_subset("test")
    data = {"xtr": train.images, "ytr": train.labels, "xte": test.images, "yte": test.labels}
    path = RESULTS / "mnist.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    results.update(
        {
            "description": "seed 002 section 11.6.1 MNIST CNN on the embedded subset",
            "train_images": len(train),
            "test_images": len(test),
            "epochs": args.epochs,
            "batch_size": 32,
            "optimizer": "Adam(lr=1e-2)",
            "loss": "binary cross-entropy over one-hot classes (softmax output)",
            "seed": args.seed,
            "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "machine": platform.processor() or platform.machine(),
            "note": "test_accuracy uses batch-norm statistics recomputed over the training "
            "images after training; test_accuracy_as_trained uses the moving averages",
        }
    )
    results.setdefault("runs", {})
    for run in runs:
        print(f"== {run}", flush=True)
        if run == "torch":
            results["runs"][run] = run_torch(args, data)
        else:
            first = "fixed" if run == "numpy_fixed" else "learned"
            results["runs"][run] = run_numpy(args, first, data)
        r = results["runs"][run]
        print(
            f"{run}: test accuracy {100 * r['test_accuracy']:.2f}% (as trained "
            f"{100 * r['test_accuracy_as_trained']:.2f}%), {r['train_seconds']:.0f} s",
            flush=True,
        )
        runs_done = results["runs"]
        if "numpy" in runs_done and "torch" in runs_done:
            results["numpy_minus_torch_pp"] = 100 * (
                runs_done["numpy"]["test_accuracy"] - runs_done["torch"]["test_accuracy"]
            )
        write_outputs(results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
