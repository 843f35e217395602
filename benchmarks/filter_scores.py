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

``--json PATH`` writes the machine, the versions, the arguments, every round's time,
the medians and the ratios to ``PATH``; ``--table PATH`` prints the README table from
such a file without timing anything (the same function prints it after a run).

Usage::

    python benchmarks/filter_scores.py --batch 256 --repeats 20 --device cpu --threads 1 \\
        --json benchmarks/results/filter_scores_cpu.json
    python benchmarks/filter_scores.py --table benchmarks/results/filter_scores_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_name, machine_record  # sibling module: the scripts run from benchmarks/

from convscope.attribution import filter_scores
from convscope.io import to_jsonable, write_json
from convscope.models import GFNN

PLAIN, OURS, CAPTUM = "plain forward+backward", "filter_scores", "captum LayerGradientXActivation"


def tables(record: dict[str, Any]) -> str:
    """The README block of one run: the machine line and the table, from its record."""
    m, a, med = record["machine"], record["args"], record["median_s"]
    lines = [
        f"Machine: {m['cpu']}, torch {m['torch']} on {m['device']}, {m['threads']} thread(s); "
        f"load average {m['load_average_start'][0]:.1f} at the start, "
        f"{m['load_average_end'][0]:.1f} at the end.",
        "",
        "| batch | repeats | plain fwd+bwd | filter_scores | ratio "
        "| Captum LayerGradientXActivation | ratio |",
        "|" + " ---: |" * 7,
    ]
    base = med[PLAIN]
    row = f"| {a['batch']} | {a['repeats']} | {base * 1e3:.1f} ms "
    for name in (OURS, CAPTUM):
        t = med.get(name)
        row += "| - | - " if t is None else f"| {t * 1e3:.1f} ms | {t / base:.2f} "
    lines.append(row + "|")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="images per batch (28x28 grey)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--json", type=Path, help="write every measurement to this JSON file")
    p.add_argument("--table", type=Path, help="print the table of this JSON file; time nothing")
    args = p.parse_args()
    if args.table is not None:
        print(tables(json.loads(args.table.read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

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

    methods: dict[str, Callable[[], None]] = {PLAIN: plain, OURS: ours}
    captum_version = None
    try:
        import captum
        from captum.attr import LayerGradientXActivation

        captum_version = captum.__version__

        lgxa = LayerGradientXActivation(model, model.first)

        def captum() -> None:
            lgxa.attribute(x, target=target, attribute_to_layer_input=False)

        methods[CAPTUM] = captum
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
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    record = to_jsonable(
        {
            "benchmark": "filter_scores",
            "model": "GFNN (40 fixed kernels), float32, eval mode, random 28x28 grey images",
            "machine": machine_record(
                load_start,
                torch.get_num_threads(),
                device=where if device.type == "cuda" else "the CPU",
                captum=captum_version,
            ),
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "table")},
            "seconds": times,  # every timed round of every method
            "median_s": med,
            "ratio_to_plain": {name: m / med[PLAIN] for name, m in med.items()},
        }
    )
    print(tables(record))
    if args.json is not None:
        write_json(args.json, record)  # atomically, via a temporary file
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
