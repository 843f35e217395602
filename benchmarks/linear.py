"""Time the linear interpreter against a plain forward pass and against torch.func.

Three figures per model (untrained torchvision models, float32, eval mode):

- forward ratio: one interpreter pass on ``[x0, p_1 .. p_B]`` (``li(x1)`` with ``B``
  probes) over one plain forward pass of the same ``B + 1`` images. Target <= 1.3.
- memory ratio: the peak memory one such call needs on top of what is allocated
  before it. On CUDA this is ``torch.cuda.max_memory_allocated``; on the CPU each
  call runs in a fresh subprocess, once to warm up and once measured as the rise of
  the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``)
  above the resident size before the call, with malloc told to hand large blocks
  back at once (``MALLOC_MMAP_THRESHOLD_``). Target <= 1.3.
- columns per second: ``li.columns`` (``B`` impulse probes in one pass) against
  ``torch.func.jvp`` of the model under ``torch.func.vmap`` over the same impulses,
  which computes the columns of the Jacobian (the same thing for ReLU networks).

Methods run round-robin in one process; each time is the median over ``--repeats``
rounds after ``--warmup`` rounds, so drift on a shared machine hits all alike.

Usage::

    python benchmarks/linear.py --size 224 --probes 16 --repeats 3 --device cpu
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from _machine import cpu_name  # sibling module: the scripts run from benchmarks/
from torch import nn

from convscope.linear import LinearInterpreter

MODELS = ("resnet18", "resnet50", "densenet121", "efficientnet_b0")


def _setup(
    name: str, size: int, probes: int, device: torch.device
) -> tuple[nn.Module, torch.Tensor]:
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = getattr(tvm, name)().to(device).eval()
    x = torch.randn(probes + 1, 3, size, size, device=device)
    return model, x


def _calls(
    model: nn.Module, x: torch.Tensor, li: LinearInterpreter | None
) -> dict[str, Callable[[], object]]:
    x0, x1 = x[:1], x[1:]
    n = x1.shape[0]

    def plain() -> object:
        with torch.no_grad():
            return model(x)

    def interpreter() -> object:
        assert li is not None
        return li(x1, batch_size=n)

    def columns() -> object:
        assert li is not None
        return li.columns(range(n), batch_size=n)

    basis = torch.zeros(n, x0.numel(), device=x.device)
    basis[torch.arange(n), torch.arange(n)] = 1
    basis = basis.view(n, *x0.shape)

    def jvp_columns() -> object:
        def column(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(model, (x0,), (v,))[1]

        return torch.func.vmap(column)(basis)

    return {
        "plain": plain,
        "interpreter": interpreter,
        "columns": columns,
        "jvp_vmap": jvp_columns,
    }


def _time(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int, sync: Callable[[], None]
) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(warmup + repeats):
        for k, fn in calls.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _memory_child(name: str, which: str, size: int, probes: int) -> None:
    """Run one call in this fresh process and print its peak RSS increase in bytes.

    One warm-up call first (library set-up, thread pools, kernel caches), then the
    kernel's high-water mark is reset (``/proc/self/clear_refs``) and the call repeated.
    """
    device = torch.device("cpu")
    model, x = _setup(name, size, probes, device)
    li = LinearInterpreter(model, x[:1]) if which != "plain" else None
    fn = _calls(model, x, li)[which]

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} in /proc/self/status")

    fn()
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    print(json.dumps({"bytes": status("VmHWM") - before}))


def _memory_cpu(name: str, which: str, size: int, probes: int) -> float:
    cmd = [sys.executable, __file__, "--memory-child", name, which, str(size), str(probes)]
    cmd += ["--threads", str(torch.get_num_threads())]
    # large blocks straight from mmap and back to the system when freed, so the
    # resident size follows the live tensors instead of what malloc keeps cached
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"] / 2**20


def _memory_cuda(fn: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--size", type=int, default=224, help="image side")
    p.add_argument("--probes", type=int, default=16, help="probes per pass (B)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        if args.threads:
            torch.set_num_threads(args.threads)
        name, which, size, probes = args.memory_child
        _memory_child(name, which, int(size), int(probes))
        return

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"# {where}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"float32, {args.size}x{args.size}, B={args.probes} probes, median of {args.repeats}"
    )
    header = (
        "| model | plain | interpreter | ratio | peak MiB plain | interpreter | ratio "
        "| columns/s ours | jvp+vmap | ours / jvp |"
    )
    print(header)
    print("|" + " ---: |" * 10)
    for name in args.models:
        model, x = _setup(name, args.size, args.probes, device)
        li = LinearInterpreter(model, x[:1])
        t = _time(_calls(model, x, li), args.repeats, args.warmup, sync)
        if args.no_memory:
            mem_plain = mem_li = float("nan")
        elif device.type == "cuda":
            calls = _calls(model, x, li)
            mem_plain = _memory_cuda(calls["plain"], device)
            mem_li = _memory_cuda(calls["interpreter"], device)
        else:
            mem_plain = _memory_cpu(name, "plain", args.size, args.probes)
            mem_li = _memory_cpu(name, "interpreter", args.size, args.probes)
        cols, cols_jvp = args.probes / t["columns"], args.probes / t["jvp_vmap"]
        print(
            f"| {name} | {t['plain'] * 1e3:.0f} ms | {t['interpreter'] * 1e3:.0f} ms "
            f"| {t['interpreter'] / t['plain']:.2f} | {mem_plain:.0f} | {mem_li:.0f} "
            f"| {mem_li / mem_plain:.2f} | {cols:.1f} | {cols_jvp:.1f} | {cols / cols_jvp:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
