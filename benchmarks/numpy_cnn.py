"""Time the NumPy CNN: vectorized vs plain loops, and NumPy vs PyTorch on the CPU.

1. One convolution layer, forward + backward (input, kernel and bias gradients): the
   vectorized ``convscope.numpy_cnn.Conv2D`` against the plain-loop reference kept in
   ``tests/numpy_cnn_reference.py`` (the one the tests check it with). Max pooling too.
2. One training step (forward, loss, backward, Adam update) of the textbook's MNIST CNN
   (section 11.6.1, float32, batches of 32 28x28 images) in NumPy against the same network
   with the same weights in PyTorch on the CPU (``tests/numpy_cnn_twin.py``).

Each figure is the median of ``--repeats`` timed rounds after one warm-up round; the
methods being compared run round-robin so drift on a shared machine hits both alike.
Threads are pinned to ``--threads`` for NumPy's BLAS (set before NumPy loads) and PyTorch.

``--json PATH`` writes the machine, the versions, the arguments, every round's time, the
medians and the ratios to ``PATH``; ``--table PATH`` prints the README table from such a
file without timing anything (the same function prints it after a run).

Usage::

    python benchmarks/numpy_cnn.py --threads 1 --repeats 7 \\
        --json benchmarks/results/numpy_cnn_cpu.json
    python benchmarks/numpy_cnn.py --table benchmarks/results/numpy_cnn_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import machine_record  # sibling module: the scripts run from benchmarks/

STEPS_PER_EPOCH = 125  # the 4,000-image subset in batches of 32


def _race(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of every timed call of each function, timed round-robin after one warm-up."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def tables(record: dict[str, Any]) -> str:
    """The README block of one run: the machine line, the table and the epoch estimate."""
    m, t, r = record["machine"], record["median_s"], record["ratios"]
    n, c, o, h = (record["layers"][k] for k in ("n", "c", "o", "h"))

    head = (
        f"| repeats | conv 3x3 {c}->{o}, {n}x{c}x{h}x{h}: loops / vectorized "
        f"| max-pool 2x2, {n}x{o}x28x28: loops / vectorized "
        f"| MNIST CNN step: NumPy / PyTorch | inference: NumPy / PyTorch |"
    )
    row = (
        f"| {record['args']['repeats']} "
        f"| {t['conv_loops'] * 1e3:.1f} / {t['conv_fast'] * 1e3:.2f} ms = {r['conv']:.0f}x "
        f"| {t['pool_loops'] * 1e3:.1f} / {t['pool_fast'] * 1e3:.2f} ms = {r['pool']:.0f}x "
        f"| {t['numpy_step'] * 1e3:.1f} / {t['torch_step'] * 1e3:.1f} ms = {r['step']:.2f} "
        f"| {t['numpy_infer'] * 1e3:.1f} / {t['torch_infer'] * 1e3:.1f} ms = {r['infer']:.2f} |"
    )
    epoch = record["epoch_s"]
    return "\n".join(
        [
            f"Machine: {m['cpu']}, numpy {m['numpy']}, torch {m['torch']} on the CPU, "
            f"{m['threads']} thread(s); load average {m['load_average_start'][0]:.1f} at the "
            f"start, {m['load_average_end'][0]:.1f} at the end. Layers: median of "
            f"{record['layer_rounds']} rounds; network: median of {record['args']['repeats']}.",
            "",
            head,
            "|" + " ---: |" * 5,
            row,
            "",
            f"One epoch of the 4,000-image subset ({STEPS_PER_EPOCH} steps of "
            f"{record['args']['batch']}) at this speed: NumPy {epoch['numpy']:.1f} s, "
            f"PyTorch {epoch['torch']:.1f} s.",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="BLAS / torch threads")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    p.add_argument("--batch", type=int, default=32, help="batch of the network step")
    p.add_argument("--json", type=Path, help="write every measurement to this JSON file")
    p.add_argument("--table", type=Path, help="print the table of this JSON file; time nothing")
    args = p.parse_args()
    if args.table is not None:
        print(tables(json.loads(args.table.read_text())))
        return
    load_start = os.getloadavg()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from numpy_cnn_reference import (
        conv2d_backward,
        conv2d_forward,
        pool2d_backward,
        pool2d_forward,
    )
    from numpy_cnn_twin import torch_twin

    from convscope import numpy_cnn as ncnn
    from convscope.io import to_jsonable, write_json

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    # 1. one layer, vectorized vs loops (float64, as the tests run them)
    n, c, o, h = 2, 4, 8, 14
    x = rng.normal(size=(n, c, h, h))
    conv = ncnn.Conv2D(c, o, 3, padding=1, seed=0)
    dy = rng.normal(size=(n, o, h, h))

    def conv_fast() -> None:
        conv.forward(x)
        conv.backward(dy)

    def conv_loops() -> None:
        conv2d_forward(x, conv.params["W"], conv.params["b"], 1, 1)
        conv2d_backward(x, conv.params["W"], dy, 1, 1)

    pool = ncnn.MaxPool2D(2)
    xp = rng.normal(size=(n, o, 28, 28))
    dyp = rng.normal(size=(n, o, 14, 14))

    def pool_fast() -> None:
        pool.forward(xp)
        pool.backward(dyp)

    def pool_loops() -> None:
        pool2d_forward(xp, 2, 2, "max")
        pool2d_backward(xp, dyp, 2, 2, "max")

    layer_rounds = max(3, args.repeats // 2)
    times = _race(
        {
            "conv_fast": conv_fast,
            "conv_loops": conv_loops,
            "pool_fast": pool_fast,
            "pool_loops": pool_loops,
        },
        layer_rounds,
    )

    # 2. the chapter's MNIST CNN, one training step, NumPy vs PyTorch (float32)
    net = ncnn.mnist_cnn(0).astype(np.float32)
    model = torch_twin(net)
    xb = rng.random((args.batch, 1, 28, 28)).astype(np.float32)
    yb = rng.integers(0, 10, args.batch)
    loss = ncnn.BinaryCrossEntropy()
    opt = ncnn.Adam(1e-3)
    topt = torch.optim.Adam(model.parameters(), lr=1e-3)
    txb = torch.as_tensor(xb)
    tyb = torch.as_tensor(ncnn.one_hot(yb, 10, np.float32))

    def numpy_step() -> None:
        net.train()
        loss(net.forward(xb), yb)
        net.backward(loss.backward(), input_grad=False)
        opt.step(net.parameters())

    def torch_step() -> None:
        model.train()
        topt.zero_grad()
        F.binary_cross_entropy(model(txb), tyb).backward()
        topt.step()

    def numpy_infer() -> None:
        net.eval()
        net.forward(xb)

    @torch.no_grad()
    def torch_infer() -> None:
        model.eval()
        model(txb)

    times |= _race(
        {
            "numpy_step": numpy_step,
            "torch_step": torch_step,
            "numpy_infer": numpy_infer,
            "torch_infer": torch_infer,
        },
        args.repeats,
    )
    t = {k: statistics.median(v) for k, v in times.items()}
    record = to_jsonable(
        {
            "benchmark": "numpy_cnn",
            "machine": machine_record(load_start, args.threads),
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "table")},
            "layers": {"n": n, "c": c, "o": o, "h": h, "dtype": "float64"},
            "network": {"model": "section 11.6.1 MNIST CNN", "dtype": "float32"},
            "layer_rounds": layer_rounds,
            "seconds": times,  # every timed round of every method
            "median_s": t,
            "ratios": {
                "conv": t["conv_loops"] / t["conv_fast"],
                "pool": t["pool_loops"] / t["pool_fast"],
                "step": t["numpy_step"] / t["torch_step"],
                "infer": t["numpy_infer"] / t["torch_infer"],
            },
            "epoch_s": {
                "numpy": STEPS_PER_EPOCH * t["numpy_step"],
                "torch": STEPS_PER_EPOCH * t["torch_step"],
            },
        }
    )
    print(tables(record))
    if args.json is not None:
        write_json(args.json, record)  # atomically, via a temporary file
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
