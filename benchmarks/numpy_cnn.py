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

Usage::

    python benchmarks/numpy_cnn.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _machine import cpu_name  # sibling module: the scripts run from benchmarks/


def _race(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="BLAS / torch threads")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    p.add_argument("--batch", type=int, default=32, help="batch of the network step")
    args = p.parse_args()
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

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"CPU: {cpu_name()}; numpy {np.__version__}, torch {torch.__version__}; "
        f"{args.threads} thread(s); median of {args.repeats} rounds"
    )

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

    t = _race(
        {
            "conv_fast": conv_fast,
            "conv_loops": conv_loops,
            "pool_fast": pool_fast,
            "pool_loops": pool_loops,
        },
        max(3, args.repeats // 2),
    )
    print("\n1. vectorized vs plain loops, forward + backward, float64")
    print(
        f"   conv 3x3 {c}->{o}, {n}x{c}x{h}x{h}, pad 1: loops {1e3 * t['conv_loops']:.1f} ms, "
        f"vectorized {1e3 * t['conv_fast']:.2f} ms, ratio {t['conv_loops'] / t['conv_fast']:.0f}x"
    )
    print(
        f"   max-pool 2x2, {n}x{o}x28x28: loops {1e3 * t['pool_loops']:.1f} ms, "
        f"vectorized {1e3 * t['pool_fast']:.2f} ms, ratio {t['pool_loops'] / t['pool_fast']:.0f}x"
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

    t = _race(
        {
            "numpy_step": numpy_step,
            "torch_step": torch_step,
            "numpy_infer": numpy_infer,
            "torch_infer": torch_infer,
        },
        args.repeats,
    )
    print(f"\n2. section 11.6.1 MNIST CNN, batch {args.batch} x 1 x 28 x 28, float32")
    print(
        f"   training step: NumPy {1e3 * t['numpy_step']:.1f} ms, PyTorch "
        f"{1e3 * t['torch_step']:.1f} ms, NumPy / PyTorch = "
        f"{t['numpy_step'] / t['torch_step']:.2f}"
    )
    print(
        f"   inference:     NumPy {1e3 * t['numpy_infer']:.1f} ms, PyTorch "
        f"{1e3 * t['torch_infer']:.1f} ms, NumPy / PyTorch = "
        f"{t['numpy_infer'] / t['torch_infer']:.2f}"
    )
    print(
        f"   one epoch of the 4,000-image subset at this speed: NumPy "
        f"{125 * t['numpy_step']:.1f} s, PyTorch {125 * t['torch_step']:.1f} s"
    )


if __name__ == "__main__":
    main()
