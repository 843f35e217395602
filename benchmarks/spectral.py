"""Cost of the Maximum-Gain callback per epoch, as a share of the epoch's training time.

Trains LeNet (MatConvNet's MNIST net) on the embedded 4,000-image MNIST subset for a
few epochs, once with and once without ``MaxGainCallback``, in the same process, and
prints the callback's own time per epoch divided by the epoch's training time
(target: < 1%). The impulse-image measurement is one forward and one backward pass of
a single 28x28 image, against 40 mini-batches of 100 images per epoch.

``--json PATH`` writes the machine, the versions, the arguments, every epoch's time of both
runs, every call of the callback and the two runs' wall times to ``PATH``; ``--table PATH``
prints the README table from such a file without timing anything (the same function prints it
after a run).

    python benchmarks/spectral.py --epochs 5 --threads 1 --json benchmarks/results/spectral_cpu.json
    python benchmarks/spectral.py --table benchmarks/results/spectral_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _machine import machine_record  # sibling module: the scripts run from benchmarks/

from convscope.data import load_mnist_subset
from convscope.io import to_jsonable, write_json
from convscope.models import LeNet
from convscope.train import MaxGainCallback, TrainConfig, fit


def tables(record: dict[str, Any]) -> str:
    """The README block of one run: the machine line and the table, from its record."""
    m, n = record["machine"], record["args"]["epochs"]
    epoch, per_epoch = record["epoch_median_s"], record["callback_median_s"]
    return "\n".join(
        [
            f"Machine: {m['cpu']}, torch {m['torch']} on the CPU, {m['threads']} thread(s); "
            f"load average {m['load_average_start'][0]:.1f} at the start, "
            f"{m['load_average_end'][0]:.1f} at the end.",
            "",
            f"| epoch (median of {n}) | callback per epoch (median) | first call "
            "| callback / epoch | whole run with / without |",
            "|" + " ---: |" * 5,
            f"| {epoch:.3f} s | {1000 * per_epoch:.2f} ms | "
            f"{1000 * record['callback_seconds'][0]:.2f} ms | **{100 * per_epoch / epoch:.2f}%** "
            f"| {record['with_over_without']:.2f} |",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write every measurement to this JSON file")
    p.add_argument("--table", type=Path, help="print the table of this JSON file; time nothing")
    args = p.parse_args()
    if args.table is not None:
        print(tables(json.loads(args.table.read_text())))
        return
    load_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    train, test = load_mnist_subset("train").to_torch(), load_mnist_subset("test").to_torch()
    config = TrainConfig(epochs=args.epochs, batch_size=100, lr=0.02, optimizer="sgd")

    fit(LeNet(), train, test, config.replace(epochs=1), progress=False)  # warm-up
    t0 = time.perf_counter()
    plain = fit(LeNet(), train, test, config, progress=False)
    t_plain = time.perf_counter() - t0
    cb = MaxGainCallback(shape=(1, 28, 28))
    t0 = time.perf_counter()
    with_cb = fit(LeNet(), train, test, config, callbacks=[cb], progress=False)
    t_cb = time.perf_counter() - t0

    epoch = statistics.median(plain.seconds)
    record = to_jsonable(
        {
            "benchmark": "spectral",
            "machine": machine_record(load_start, torch.get_num_threads()),
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "table")},
            "train": {"model": "LeNet", "images": len(train), "batch_size": 100, "lr": 0.02},
            "epoch_seconds_without": plain.seconds,  # train + eval, every epoch
            "epoch_seconds_with": with_cb.seconds,
            "epoch_median_s": epoch,
            "callback_seconds": cb.times,  # every call, one per epoch
            "callback_median_s": statistics.median(cb.times),
            "callback_over_epoch": statistics.median(cb.times) / epoch,
            "run_without_s": t_plain,
            "run_with_s": t_cb,
            "with_over_without": t_cb / t_plain,
        }
    )
    print(tables(record))
    if args.json is not None:
        write_json(args.json, record)  # atomically, via a temporary file
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
