"""Train seed 003's LeNet on MNIST and keep the checkpoint for the decoding experiments.

Writes ``experiments/results/decoding/lenet_mnist.pt`` (a convscope checkpoint) and
``lenet_mnist_metrics.json`` (config and per-epoch history, as ``convscope.train.fit``
writes it). The embedded 4,000/1,000 MNIST subset is the default; ``--mnist-dir``
trains on the full MNIST from its IDX files instead.

MatConvNet trains this net with SGD (rate 0.001, momentum 0.9, mini-batch 100,
weight decay 5e-4) for 20 epochs over 60,000 images, 12,000 steps. The subset
gives 40 steps per epoch, so we use Adam, which gets there in a few hundred steps;
the weights differ, the architecture does not.

Usage::

    python experiments/train_lenet.py            # about a minute on two CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from convscope.data import load_mnist_idx, load_mnist_subset
from convscope.models import build_model
from convscope.train import TrainConfig, fit, seed_everything

RESULTS = Path(__file__).resolve().parent / "results" / "decoding"

CONFIG = TrainConfig(
    epochs=12,
    batch_size=100,
    lr=1e-3,
    optimizer="adam",
    schedule="step",
    step_size=8,
    gamma=0.1,
    seed=0,
    device="cpu",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist-dir", type=Path, help="folder with the full MNIST IDX files")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the checkpoint")
    p.add_argument("--epochs", type=int, default=CONFIG.epochs)
    p.add_argument("--seed", type=int, default=CONFIG.seed)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.mnist_dir is not None:
        train_set = load_mnist_idx(args.mnist_dir, "train")
        test_set = load_mnist_idx(args.mnist_dir, "test")
    else:
        train_set, test_set = load_mnist_subset("train"), load_mnist_subset("test")
    config = CONFIG.replace(epochs=args.epochs, seed=args.seed)
    seed_everything(config.seed)  # the initial weights come from this seed too
    model = build_model("lenet", num_classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        history = fit(
            model, train_set.to_torch(), test_set.to_torch(), config, out_dir=tmp, progress=False
        )
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(tmp) / "checkpoint.pt", args.out / "lenet_mnist.pt")
        shutil.move(Path(tmp) / "metrics.json", args.out / "lenet_mnist_metrics.json")
    print(f"trained on {train_set.name} ({len(train_set)} images), tested on {test_set.name}")
    for e in range(history.epochs):
        print(
            f"epoch {e + 1:2d}  train loss {history.train_loss[e]:.4f}  "
            f"test acc {100 * history.test_acc[e]:.2f}%  ({history.seconds[e]:.1f} s)"
        )
    print(f"wrote {args.out / 'lenet_mnist.pt'}")


if __name__ == "__main__":
    main()
