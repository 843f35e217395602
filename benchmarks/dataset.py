"""Dataset runs: images per second of each ``--data`` analysis, and 1 -> 2 processes.

1. Each analysis's ``run_data`` over N/2 and N MNIST images (N held-out ones for the
   linear analyses, 10 N training ones for the fast float32 ones) (rows,
   shards, merge, summary, figures and page included): the difference is the cost per
   image, the rest the fixed cost of a run (start, merge, figures, page); the cost per
   image is set against the cheapest thing that looks at
   every image: one plain forward and backward pass of the target logit to the input (a
   saliency map), over the same images in the same batches, in the same dtype as the
   analysis (float64 image by image for the linear ones, which freeze one image at a time;
   float32 batches for explain and spectrum).
2. ``linear contributions --data`` from the command line, one process against
   ``torchrun --nproc_per_node=2`` (each process 1 thread) and against one process with 2
   threads, wall time including start-up.

Usage::

    python benchmarks/dataset.py [--images 400] [--process-images 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "experiments/results/decoding/lenet_mnist.pt"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _baseline(model: torch.nn.Module, x: torch.Tensor, batch: int) -> float:
    """Seconds for forward + backward of the top logit to the input over ``x``."""
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].clone().requires_grad_(True)
        out = model(xb)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    return time.perf_counter() - t0


def _analyses(n: int, batch: int) -> list[dict[str, Any]]:
    from convscope.data.mnist import load_mnist_subset
    from convscope.models import build_model
    from convscope.runs import explain, linear_contributions, linear_votes, spectrum
    from convscope.runs.sources import resolve_model

    x = torch.from_numpy(load_mnist_subset("test").images[:n].copy())
    lenet64 = resolve_model(str(LENET), dtype=torch.float64, warn=False).module.eval()
    gfnn = build_model("gfnn", seed=0).eval()
    big = torch.from_numpy(load_mnist_subset("train").images[: 10 * n].copy())
    cases = [
        ("linear contributions", LENET, linear_contributions.run_data, {}, lenet64, 1,
         x.double(), "test"),
        ("linear votes (top 3)", LENET, linear_votes.run_data, {"top": 3}, lenet64, 1,
         x.double(), "test"),
        ("explain (filter scores)", gfnn, explain.run_data, {}, gfnn, batch, big, "train"),
        ("spectrum (Maximum Gain)", gfnn, spectrum.run_data, {}, gfnn, batch, big, "train"),
    ]  # fmt: skip
    rows = []
    for name, model, fn, kw, base_model, base_batch, xb, split in cases:
        spec = model if isinstance(model, torch.nn.Module) else str(model)
        with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports, fonts, caches
            fn(spec, "mnist-subset", Path(tmp) / "w", split=split, limit=batch,
               batch_size=batch, device="cpu", **kw)  # fmt: skip
        base = min(_baseline(base_model, xb, base_batch) for _ in range(2))
        n = len(xb)
        took = {}
        for m in (n // 2, n):  # two sizes: the marginal cost per image and the fixed cost
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                fn(spec, "mnist-subset", Path(tmp) / "o", split=split, limit=m,
                   batch_size=batch, device="cpu", **kw)  # fmt: skip
                took[m] = time.perf_counter() - t0
        per_image = (took[n] - took[n // 2]) / (n - n // 2)
        fixed = took[n] - n * per_image
        rows.append({"analysis": name, "images": n, "seconds": took[n],
                     "seconds_per_image": per_image, "fixed_seconds": fixed,
                     "baseline_seconds": base, "ratio": per_image * n / base})  # fmt: skip
        r = rows[-1]
        print(f"{name:26s} {1 / per_image:8.1f} images/s (+{fixed:4.1f} s fixed)   plain "
              f"fwd+bwd {n / base:8.1f} images/s   ratio {r['ratio']:6.2f}",
              flush=True)  # fmt: skip
    return rows


def _processes(n: int, batch: int) -> dict[str, Any]:
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist}
    args = ["linear", "contributions", "--model", str(LENET), "--data", "mnist-subset",
            "--batch-size", str(batch), "--device", "cpu", "--no-progress"]  # fmt: skip
    runs = {
        "1 process, 1 thread": ([sys.executable, "-m", "convscope"], {"OMP_NUM_THREADS": "1"}),
        "1 process, 2 threads": ([sys.executable, "-m", "convscope"], {"OMP_NUM_THREADS": "2"}),
        "torchrun, 2 processes x 1 thread": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", "-m", "convscope"], {"OMP_NUM_THREADS": "1"}),
    }  # fmt: skip
    out: dict[str, Any] = {}
    small = max(1, n // 10)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (cmd, extra) in runs.items():
            took = {}
            for m in (small, n):  # the difference: the cost of the images, start-up aside
                dst = Path(tmp) / f"{k.replace(' ', '_')}_{m}"
                t0 = time.perf_counter()
                subprocess.run([*cmd, *args, "--limit", str(m), "--out", str(dst)], check=True,
                               capture_output=True, env={**env, **extra})  # fmt: skip
                took[m] = time.perf_counter() - t0
            marginal = took[n] - took[small]
            out[k] = {"seconds": took[n], "images_seconds": marginal,
                      "startup_seconds": took[small] - marginal * small / (n - small)}  # fmt: skip
    first = out["1 process, 1 thread"]["images_seconds"]
    for k, v in out.items():
        print(f"{k:34s} {v['seconds']:6.1f} s in all, {v['startup_seconds']:5.1f} s start-up, "
              f"{(n - small) / v['images_seconds']:6.1f} images/s: speed-up "
              f"{first / v['images_seconds']:5.2f}", flush=True)  # fmt: skip
    return {"images": n, "runs": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--process-images", type=int, default=1000, help="images of part 2")
    p.add_argument("--threads", type=int, default=2, help="torch threads of part 1")
    p.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from _machine import cpu_name

    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"machine: {machine}, {torch.get_num_threads()} thread(s) in part 1")
    rows = _analyses(args.images, args.batch_size)
    procs = _processes(args.process_images, args.batch_size)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "analyses": rows,
                                         "processes": procs}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
