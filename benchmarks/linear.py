"""Time the linear interpreter against a plain forward pass, torch.func and DfV.

Per model (untrained torchvision models, float32, eval mode, random images):

- forward ratio: ``li(x1)`` with ``B`` probes over a plain forward pass. With the
  decision cache off (``cache="off"``) the pass runs on ``[x0, p_1 .. p_B]`` and is
  compared with a plain pass of the same ``B + 1`` images; with the cache on (the
  default on the CPU) the pass runs on the probes alone and is compared with a plain
  pass of the ``B`` probes, what the user would pay to run the model on them.
  On CUDA twice more: the interpreter replaying its pass from a CUDA graph
  (``cuda_graphs=True``, the default there) against the eager plain pass, and
  against the plain pass replayed from a CUDA graph too.
- memory ratio: the peak memory one such call needs on top of what is allocated
  before it. On CUDA this is ``torch.cuda.max_memory_allocated`` (for the graphed
  interpreter measured over its first call, capture and private pool included); on
  the CPU each call runs in a fresh subprocess, once to warm up and once measured as
  the rise of the peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) above the resident size before the call, with malloc told
  to hand large blocks back at once (``MALLOC_MMAP_THRESHOLD_``). Target <= 1.3.
- rows per second: ``li.rows`` (``B`` output impulses, one frozen pass and its
  backward) with the cache on, against ``torch.func.vjp`` under ``torch.func.vmap``
  over the same output impulses (the Jacobian's rows).
- columns per second: ``li.columns`` (``B`` impulse probes in one pass, cache on and
  off) against
  ``torch.func.jvp`` of the model under ``torch.func.vmap`` over the same impulses
  (the Jacobian's columns: the same thing for ReLU networks), and against the paper's
  DfV baseline (``_dfv.py``: store every unit's decision for ``x0``, then replay the
  probes alone), with the decisions on the device and in pinned CPU memory. The
  script checks that DfV's columns equal the interpreter's before timing.

Methods run round-robin in one process; each time is the median over ``--repeats``
rounds after ``--warmup`` rounds, so drift on a shared machine hits all alike.

``--json PATH`` writes every timing, memory figure and the machine to ``PATH``.

Usage::

    python benchmarks/linear.py --size 224 --probes 16 --repeats 3 --device cpu
    python benchmarks/linear.py --size 224 --probes 64 --repeats 5 --device cuda
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
from functools import partial

import torch
from _dfv import DfV  # sibling modules: the scripts run from benchmarks/
from _machine import cpu_name
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
    model: nn.Module,
    x: torch.Tensor,
    li: LinearInterpreter | None,
    *,
    li_graphs: LinearInterpreter | None = None,
    li_cached: LinearInterpreter | None = None,
    dfv: dict[str, DfV] | None = None,
) -> dict[str, Callable[[], object]]:
    x0, x1 = x[:1], x[1:]
    n = x1.shape[0]
    calls: dict[str, Callable[[], object]] = {}

    def plain() -> object:
        with torch.no_grad():
            return model(x)

    def plain_probes() -> object:
        with torch.no_grad():
            return model(x1)

    calls["plain"] = plain
    calls["plain_probes"] = plain_probes
    if x.is_cuda:
        calls["plain_graph"] = _graphed_plain(model, x)
    if li is not None:
        calls["interpreter"] = lambda: li(x1, batch_size=n)
    if li_cached is not None:
        calls["interpreter_cached"] = lambda: li_cached(x1, batch_size=n)
        calls["columns_cached"] = lambda: li_cached.columns(range(n), batch_size=n)
        calls["rows_cached"] = lambda: li_cached.rows(range(n), batch_size=n)
    if li_graphs is not None:
        calls["interpreter_graphs"] = lambda: li_graphs(x1, batch_size=n)
        calls["columns"] = lambda: li_graphs.columns(range(n), batch_size=n)
    elif li is not None:
        calls["columns"] = lambda: li.columns(range(n), batch_size=n)

    basis = torch.zeros(n, x0.numel(), device=x.device)
    basis[torch.arange(n), torch.arange(n)] = 1
    basis = basis.view(n, *x0.shape)

    def jvp_columns() -> object:
        def column(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(model, (x0,), (v,))[1]

        return torch.func.vmap(column)(basis)

    if li is not None:
        calls["jvp_vmap"] = jvp_columns
    if li_cached is not None:
        with torch.no_grad():
            n_out = model(x0).numel()
        out_basis = torch.zeros(n, n_out, device=x.device)
        out_basis[torch.arange(n), torch.arange(n) % n_out] = 1

        def vjp_rows() -> object:
            _, pullback = torch.func.vjp(model, x0)
            return torch.func.vmap(lambda u: pullback(u.view(1, n_out))[0])(out_basis)

        calls["vjp_vmap"] = vjp_rows
    for store, d in (dfv or {}).items():
        calls[f"dfv_{store}"] = lambda d=d: d.columns(n)  # type: ignore[misc]
    return calls


def _graphed_plain(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The plain forward pass of ``x`` captured once as a CUDA graph, then replayed."""
    static = x.clone()
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side), torch.no_grad():
        model(static)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = model(static)

    def run() -> object:
        static.copy_(x)
        graph.replay()
        return out

    return run


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
    li = LinearInterpreter(model, x[:1], cache="off") if which == "interpreter" else None
    cached = LinearInterpreter(model, x[:1], cache="on") if which == "interpreter_cached" else None
    fn = _calls(model, x, li, li_cached=cached)[which]

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
    p.add_argument("--no-dfv", action="store_true", help="skip the DfV baseline")
    p.add_argument(
        "--tf32",
        action="store_true",
        help="let CUDA convolutions and matmuls use TF32 (off: true float32, so the "
        "decisions DfV records for x0 alone match the interpreter's)",
    )
    p.add_argument("--json", help="write every measurement to this JSON file")
    p.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        if args.threads:
            torch.set_num_threads(args.threads)
        name, which, size, probes = args.memory_child
        _memory_child(name, which, int(size), int(probes))
        return

    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.threads:
        torch.set_num_threads(args.threads)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"# {where}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"float32{' (TF32 on)' if args.tf32 else ''}, {args.size}x{args.size}, "
        f"B={args.probes} probes, median of {args.repeats}"
    )
    cuda = device.type == "cuda"
    forward_rows, column_rows, cache_rows = [], [], []
    record: dict[str, object] = {
        "machine": where,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "probes": args.probes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "tf32": args.tf32,
        "models": {},
    }
    for name in args.models:
        model, x = _setup(name, args.size, args.probes, device)
        li = LinearInterpreter(model, x[:1], cuda_graphs=False, cache="off")
        li_cached = LinearInterpreter(model, x[:1], cuda_graphs=False, cache="on")
        cache_err = float((li_cached(x[1:5]) - li(x[1:5])).abs().max() / li(x[1:5]).abs().max())
        print(f"{name}: cache on vs off: F x1 + r {cache_err:.1e}", file=sys.stderr)
        li_graphs = LinearInterpreter(model, x[:1], cuda_graphs=True) if cuda else None
        dfv = {}
        if not args.no_dfv:
            dfv = {"device": DfV(model, x[:1])}
            if cuda:
                dfv["cpu"] = DfV(model, x[:1], store="cpu")
            # the whole affine map must agree (TF32 convolutions on CUDA: 1e-2); DfV's
            # columns, y(e_k) - r, lose digits to that subtraction, ours (biases off) don't
            ours = li(x[1:5])
            for store, d in dfv.items():
                err = float((d(x[1:5]) - ours).abs().max() / ours.abs().max())
                if err > (1e-2 if args.tf32 else 1e-4):
                    raise SystemExit(f"{name}: DfV ({store}) differs from F x1 + r by {err:.1e}")
                cols = li.columns(range(4))
                col_err = float((d.columns(4) - cols).abs().max() / cols.abs().max())
                print(
                    f"{name}: DfV ({store}) vs interpreter: F x1 + r {err:.1e}, "
                    f"columns {col_err:.1e}",
                    file=sys.stderr,
                )
        calls = _calls(model, x, li, li_graphs=li_graphs, li_cached=li_cached, dfv=dfv)
        t = _time(calls, args.repeats, args.warmup, sync)
        if args.no_memory:
            mem = {}
        elif cuda:
            mem = {
                k: _memory_cuda(calls[k], device)
                for k in ("plain", "plain_probes", "interpreter", "interpreter_cached")
            }
            fresh = LinearInterpreter(model, x[:1], cuda_graphs=True)
            mem["interpreter_graphs"] = _memory_cuda(partial(fresh, x[1:]), device)
        else:
            mem = {
                k: _memory_cpu(name, k, args.size, args.probes)
                for k in ("plain", "plain_probes", "interpreter", "interpreter_cached")
            }
        forward_rows.append(_forward_row(name, t, mem))
        column_rows.append(_column_row(name, t, args.probes, dfv))
        cache_rows.append(_cache_row(name, t, mem, args.probes, li_cached.cache_bytes))
        record["models"][name] = {  # type: ignore[index]
            "seconds": t,
            "peak_mib": mem,
            "cache_bytes": li_cached.cache_bytes,
            "cache_vs_no_cache_error": cache_err,
            "dfv_storage_bytes": {k: d.nbytes for k, d in dfv.items()},
        }
        print(f"{name} done", file=sys.stderr, flush=True)
    head = "| model | plain | interpreter | ratio | peak MiB plain | interpreter | ratio |"
    if cuda:
        head += (
            " plain (graph) | interpreter (graphs) | ratio to plain | to plain (graph) "
            "| peak MiB (graphs) | ratio |"
        )
    print(head)
    print("|" + " ---: |" * (head.count("|") - 1))
    for row in forward_rows:
        print(row)
    print()
    head = "| model | columns/s ours | jvp+vmap | ours / jvp |"
    if not args.no_dfv:
        head += " DfV (decisions beside x0) | ours / DfV |"
        if cuda:
            head += " DfV (store in CPU RAM) | ours / DfV |"
        head += " DfV storage MiB |"
    print(head)
    print("|" + " ---: |" * (head.count("|") - 1))
    for row in column_rows:
        print(row)
    print()
    head = (
        "| model | li(x1) cached | plain (B probes) | ratio | peak MiB plain (B) | cached "
        "| ratio | cache MiB | columns/s cached | / DfV | rows/s cached | vjp+vmap | ratio |"
    )
    print(head)
    print("|" + " ---: |" * (head.count("|") - 1))
    for row in cache_rows:
        print(row)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, args.json)


def _forward_row(name: str, t: dict[str, float], mem: dict[str, float]) -> str:
    nan = float("nan")
    m_plain, m_li = mem.get("plain", nan), mem.get("interpreter", nan)
    row = (
        f"| {name} | {t['plain'] * 1e3:.1f} ms | {t['interpreter'] * 1e3:.1f} ms "
        f"| {t['interpreter'] / t['plain']:.2f} | {m_plain:.0f} | {m_li:.0f} "
        f"| {m_li / m_plain:.2f} |"
    )
    if "interpreter_graphs" in t:
        g, pg, m_g = t["interpreter_graphs"], t["plain_graph"], mem.get("interpreter_graphs", nan)
        row += (
            f" {pg * 1e3:.1f} ms | {g * 1e3:.1f} ms | {g / t['plain']:.2f} | {g / pg:.2f} "
            f"| {m_g:.0f} | {m_g / m_plain:.2f} |"
        )
    return row


def _cache_row(
    name: str, t: dict[str, float], mem: dict[str, float], n: int, cache_bytes: int
) -> str:
    nan = float("nan")
    m_plain, m_li = mem.get("plain_probes", nan), mem.get("interpreter_cached", nan)
    cols = n / t["columns_cached"]
    dfv = n / t["dfv_device"] if "dfv_device" in t else nan
    rows, vjp = n / t["rows_cached"], n / t["vjp_vmap"]
    return (
        f"| {name} | {t['interpreter_cached'] * 1e3:.1f} ms | {t['plain_probes'] * 1e3:.1f} ms "
        f"| {t['interpreter_cached'] / t['plain_probes']:.2f} | {m_plain:.0f} | {m_li:.0f} "
        f"| {m_li / m_plain:.2f} | {cache_bytes / 2**20:.1f} | {cols:.1f} | {cols / dfv:.2f} "
        f"| {rows:.1f} | {vjp:.1f} | {rows / vjp:.2f} |"
    )


def _column_row(name: str, t: dict[str, float], n: int, dfv: dict[str, DfV]) -> str:
    ours, jvp = n / t["columns"], n / t["jvp_vmap"]
    row = f"| {name} | {ours:.1f} | {jvp:.1f} | {ours / jvp:.2f} |"
    for store in dfv:
        rate = n / t[f"dfv_{store}"]
        row += f" {rate:.1f} | {ours / rate:.2f} |"
    if dfv:
        row += f" {dfv['device'].nbytes / 2**20:.1f} |"
    return row


if __name__ == "__main__":
    main()
