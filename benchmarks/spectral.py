"""Cost of the Maximum-Gain callback per epoch, as a share of the epoch's training time.

Trains LeNet (MatConvNet's MNIST net) on the embedded 4,000-image MNIST subset for a
few epochs, once with and once without ``MaxGainCallback``, in the same process, and
prints the callback's own time per epoch divided by the epoch's training time
(target: < 1%). The impulse-image measurement is one forward and one backward pass of
a single 28x28 image, against 40 mini-batches of 100 images per epoch.

    python benchmarks/spectral.py --epochs 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _machine import cpu_name  # sibling module: the scripts run from benchmarks/

from convscope.data import load_mnist_subset
from convscope.models import LeNet
from convscope.train import MaxGainCallback, TrainConfig, fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_mnist_subset("train").to_torch(), load_mnist_subset("test").to_torch()
    config = TrainConfig(epochs=args.epochs, batch_size=100, lr=0.02, optimizer="sgd")

    fit(LeNet(), train, test, config.replace(epochs=1), progress=False)  # warm-up
    t0 = time.perf_counter()
    plain = fit(LeNet(), train, test, config, progress=False)
    t_plain = time.perf_counter() - t0
    cb = MaxGainCallback(shape=(1, 28, 28))
    t0 = time.perf_counter()
    fit(LeNet(), train, test, config, callbacks=[cb], progress=False)
    t_cb = time.perf_counter() - t0

    epoch = statistics.median(plain.seconds)
    per_epoch = statistics.median(cb.times)
    print(f"machine: {cpu_name()}, torch {torch.__version__}, "
          f"{args.threads} threads")  # fmt: skip
    print(f"epoch (train + eval), median of {args.epochs}: {epoch:.3f} s")
    print(f"Maximum-Gain callback per epoch, median:    {1000 * per_epoch:.2f} ms "
          f"(first call {1000 * cb.times[0]:.2f} ms)")  # fmt: skip
    print(f"callback / epoch:                           {100 * per_epoch / epoch:.3f} %")
    print(f"whole run with / without callback:          {t_cb / t_plain:.3f}")


if __name__ == "__main__":
    main()
