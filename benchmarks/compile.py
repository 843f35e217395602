"""Does ``torch.compile`` pay for the linear interpreter's passes? (issue 14, item 2)

Per model (untrained torchvision, float32, eval, random images, ``B`` probes): a plain
forward pass of the ``B`` probes, ``li(x1)`` eager (decision cache on, the CPU default),
and ``torch.compile(lambda x: li(x))``, its first call (compile time) and its steady
state, each the median of ``--repeats`` calls after one warm-up; the compiled output is
checked against the eager one. Dynamo's graph-break count comes from
``torch._dynamo.explain``.

Usage::

    python benchmarks/compile.py --size 64 --probes 16 --threads 2 \\
        --json benchmarks/results/compile_cpu.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
import torchvision
from _machine import cpu_name

from convscope.io import write_json
from convscope.linear import LinearInterpreter


def median_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--models", default="resnet18,efficientnet_b0")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = 64
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        x0 = torch.rand(1, 3, args.size, args.size)
        x1 = torch.rand(args.probes, 3, args.size, args.size)
        li = LinearInterpreter(model, x0)
        with torch.no_grad():
            plain = median_time(lambda: model(x1), args.repeats)  # noqa: B023
        eager = median_time(lambda: li(x1), args.repeats)  # noqa: B023
        dynamo.reset()
        compiled = torch.compile(lambda x: li(x))  # noqa: B023
        t = time.perf_counter()
        out = compiled(x1)
        first = time.perf_counter() - t
        steady = median_time(lambda: compiled(x1), args.repeats)  # noqa: B023
        diff = float((out - li(x1)).abs().max())
        breaks = dynamo.explain(lambda x: li(x))(x1).graph_break_count  # noqa: B023
        row = {
            "model": name,
            "plain_s": plain,
            "eager_s": eager,
            "compile_first_s": first,
            "compiled_s": steady,
            "eager_over_plain": eager / plain,
            "compiled_over_plain": steady / plain,
            "compiled_over_eager": steady / eager,
            "graph_breaks": breaks,
            "max_abs_diff": diff,
        }
        rows.append(row)
        print(
            f"{name}: plain {plain * 1e3:.1f} ms, eager li {eager * 1e3:.1f} ms "
            f"({eager / plain:.2f}), compiled {steady * 1e3:.1f} ms ({steady / plain:.2f}; "
            f"{steady / eager:.2f}x eager; first call {first:.1f} s, {breaks} graph breaks, "
            f"max |diff| {diff:.1e})",
            flush=True,
        )
    if args.json is not None:
        record = {
            "machine": {
                "cpu": cpu_name(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": args.threads,
            },  # fmt: skip
            "size": args.size,
            "probes": args.probes,
            "repeats": args.repeats,
            "rows": rows,
        }
        write_json(args.json, record)  # atomically, via a temporary file
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
