"""Time ``filter_scores`` against one plain forward + backward pass of the same batch.

The baseline is the cheapest gradient attribution there is: one forward pass and
one backward pass of the target logits to the input (what a saliency map costs).
``filter_scores`` should cost about the same, since it only adds a forward hook,
one copy of the fixed layer's output and a multiply-sum. Captum's
``LayerGradientXActivation`` on the same layer is timed the same way for
comparison (its attribution alone, without reducing maps to scores).

Methods are run round-robin in one process and each time is the median over
``--repeats`` rounds after ``--warmup`` rounds, so drift on a shared machine hits
every method alike.

Usage::

    python benchmarks/filter_scores.py --batch 256 --repeats 20 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _machine import cpu_name  # sibling module: the scripts run from benchmarks/

from convscope.attribution import filter_scores
from convscope.models import GFNN


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="images per batch (28x28 grey)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GFNN().to(device).eval()
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def plain() -> None:
        xg = x.detach().requires_grad_(True)
        y = model(xg).gather(1, target[:, None]).sum()
        torch.autograd.grad(y, xg)

    def ours() -> None:
        filter_scores(model, x, target)

    methods: dict[str, Callable[[], None]] = {
        "plain forward+backward": plain,
        "filter_scores": ours,
    }
    try:
        from captum.attr import LayerGradientXActivation

        lgxa = LayerGradientXActivation(model, model.first)

        def captum() -> None:
            lgxa.attribute(x, target=target, attribute_to_layer_input=False)

        methods["captum LayerGradientXActivation"] = captum
    except ImportError:
        print("captum is not installed: skipping its row")

    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(args.warmup + args.repeats):
        for name, f in methods.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["plain forward+backward"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"GFNN (40 kernels), batch {args.batch} x 1 x 28 x 28, float32, {args.repeats} repeats "
        f"after {args.warmup} warm-up; {where}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, m in med.items():
        print(f"{name:34s} {m * 1e3:8.1f} ms   ratio {m / base:5.2f}")


if __name__ == "__main__":
    main()
