"""EDSR at growing image sizes: the interpreter against DfV, and what DfV must store.

Seed 001's case against DfV (its reference [28]) is storage: DfV keeps every unit's
decision for ``x0``, and for EDSR on large images that no longer fits on the device (its
Table 1: 4,147 GB for EDSR), so the decisions spill to slower memory (its Table 2: CPU
DRAM at 50% of the GPU's speed, an SSD at 0.5%). The LinearScope stores nothing: ``x0``
rides in the batch and its decisions are recomputed in every pass.

This script takes the trained EDSR-baseline x2 of ``experiments/results/edsr/`` (luma, 16
residual blocks, 64 features) and, for each low-resolution input size ``S`` (a crop of the
astronaut photo), times in one process, round-robin, median of ``--repeats``:

- ``plain``: a plain forward pass of the ``B`` probes;
- ``columns_off`` / ``columns_on``: ``li.columns`` of ``B`` impulse probes with the
  decision cache off (``[x0, probes]`` in one batch) and on (the probes alone);
- ``dfv``: DfV's ``B`` columns (``_dfv.py``: decisions stored beside ``x0``);
- ``jvp_vmap``: ``torch.func.jvp`` under ``vmap`` over the same impulses;

and records what DfV stores (ReLU masks as bool, as ``_dfv.py`` keeps them), what seed
001's Table 1 counts (every ReLU activation as a float32), and the interpreter's cache.
Both grow as ``S**2``; the script fits bytes per input pixel and gives the side at which
each no longer fits in a given memory (``--memory-gib``), the point past which DfV would
have to spill and the LinearScope's ``cache="off"`` pass is what is left. Before timing it
checks that DfV's columns equal the interpreter's.

    python benchmarks/edsr_sizes.py --sizes 32 64 128 256 --probes 4 --repeats 3 \\
        --threads 1 --json benchmarks/results/edsr_sizes_cpu.json \\
        --plot benchmarks/results/edsr_sizes_cpu.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _dfv import DfV  # sibling modules: the scripts run from benchmarks/
from _machine import machine_record

from convscope.data import prepare_for_model, sample_photo
from convscope.io import write_json
from convscope.linear import LinearInterpreter
from convscope.models import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "experiments" / "results" / "edsr" / "edsr_x2.pt"
# H100 80 GB, H200 141 GB, this machine's 24 GiB
MEMORY_GIB = (24.0, 80.0, 141.0)


def lr_input(size: int) -> torch.Tensor:
    """(1, 1, size, size) luma crop of the astronaut photo, centred, in [0, 1]."""
    rgb = torch.from_numpy(sample_photo("astronaut")).permute(2, 0, 1)[None].float() / 255.0
    y = prepare_for_model(rgb, 1)
    h, w = y.shape[-2:]
    if size > min(h, w):
        raise SystemExit(f"--sizes: {size} is larger than the photo ({h}x{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return y[..., top : top + size, left : left + size].contiguous()


def relu_elements(model: torch.nn.Module, x0: torch.Tensor) -> int:
    """Elements entering a ReLU in one pass of ``x0`` (what Table 1 stores as floats)."""
    count = 0

    def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        nonlocal count
        count += args[0].numel()

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.ReLU)]  # fmt: skip
    try:
        with torch.no_grad():
            model(x0)
    finally:
        for h in handles:
            h.remove()
    return count


def measure(model: torch.nn.Module, size: int, probes: int, repeats: int, warmup: int) -> dict:
    x0 = lr_input(size)
    off = LinearInterpreter(model, x0, cache="off")
    on = LinearInterpreter(model, x0, cache="on", cache_budget=2**40)
    dfv = DfV(model, x0)
    ref = off.columns(range(probes), batch_size=probes)
    err = float((dfv.columns(probes) - ref).abs().max() / ref.abs().max())
    err_on = float((on.columns(range(probes), batch_size=probes) - ref).abs().max()
                   / ref.abs().max())  # fmt: skip
    if err > 1e-4 or err_on > 1e-4:
        raise SystemExit(f"S={size}: columns differ: DfV {err:.1e}, cache on {err_on:.1e}")
    basis = torch.zeros(probes, x0.numel())
    basis[torch.arange(probes), torch.arange(probes)] = 1
    basis = basis.view(probes, *x0.shape[1:])

    def plain() -> object:
        with torch.no_grad():
            return model(basis)

    def jvp_vmap() -> object:
        return torch.func.vmap(lambda v: torch.func.jvp(model, (x0,), (v[None],))[1])(basis)

    calls: dict[str, Callable[[], object]] = {
        "plain": plain,
        "columns_off": lambda: off.columns(range(probes), batch_size=probes),
        "columns_on": lambda: on.columns(range(probes), batch_size=probes),
        "dfv": lambda: dfv.columns(probes),
        "jvp_vmap": jvp_vmap,
    }
    rounds: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(warmup + repeats):  # round-robin: drift on a shared machine hits all alike
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                rounds[k].append(time.perf_counter() - t0)
    n_relu = relu_elements(model, x0)
    return {
        "size": size,
        "rounds": rounds,  # every timed round of every method
        "seconds": {k: statistics.median(v) for k, v in rounds.items()},
        "dfv_storage_bytes": dfv.nbytes,
        "float32_activation_bytes": 4 * n_relu,
        "cache_bytes": on.cache_bytes,
        "dfv_vs_interpreter_columns": err,
        "cache_on_vs_off_columns": err_on,
    }


def fit_side(points: list[dict], key: str, gib: float) -> tuple[float, int]:
    """Bytes per input pixel (from the largest size) and the side where ``gib`` is full."""
    last = max(points, key=lambda p: p["size"])
    per_pixel = last[key] / last["size"] ** 2
    return per_pixel, math.isqrt(int(gib * 2**30 / per_pixel))


def tables(record: dict) -> str:
    """The README block: the machine line, the timings and the storage, from a record."""
    b, m = record["probes"], record["machine"]
    lines = [
        f"EDSR-baseline x2 (trained, luma), B = {b} columns per query, {m['cpu']}, "
        f"torch {m['torch']}, {m['threads']} thread(s), median of {record['repeats']} rounds "
        f"after {record['warmup']}; load average {m['load_average_start'][0]:.1f} at the start, "
        f"{m['load_average_end'][0]:.1f} at the end.",
        "",
        "| LR side | plain ms | columns/s cache off | cache on | DfV | jvp+vmap "
        "| on / DfV | off / DfV | DfV stores MiB | float32 MiB (Table 1) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in record["points"]:
        s = p["seconds"]
        rate = {k: b / s[k] for k in ("columns_off", "columns_on", "dfv", "jvp_vmap")}
        lines.append(
            f"| {p['size']} | {1e3 * s['plain']:.0f} | {rate['columns_off']:.2f} "
            f"| {rate['columns_on']:.2f} | {rate['dfv']:.2f} | {rate['jvp_vmap']:.2f} "
            f"| {rate['columns_on'] / rate['dfv']:.2f} | {rate['columns_off'] / rate['dfv']:.2f} "
            f"| {p['dfv_storage_bytes'] / 2**20:.1f} "
            f"| {p['float32_activation_bytes'] / 2**20:.1f} |"
        )
    lines += ["", "| storage | bytes per LR pixel | " + " | ".join(
        f"side that fills {g:g} GiB" for g in record["memory_gib"]) + " |",
        "| --- | ---: |" + " ---: |" * len(record["memory_gib"])]  # fmt: skip
    for key, label in (("dfv_storage_bytes", "DfV, masks as bool"),
                       ("float32_activation_bytes", "ReLU activations as float32")):  # fmt: skip
        sides = [fit_side(record["points"], key, g) for g in record["memory_gib"]]
        lines.append(f"| {label} | {sides[0][0]:.0f} | " + " | ".join(
            f"{side} x {side}" for _, side in sides) + " |")  # fmt: skip
    return "\n".join(lines)


def plot(record: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from convscope.report.figures import save_figure

    b = record["probes"]
    sizes = [p["size"] for p in record["points"]]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, label in (("columns_off", "interpreter, cache off"),
                       ("columns_on", "interpreter, cache on"), ("dfv", "DfV"),
                       ("jvp_vmap", "jvp + vmap")):  # fmt: skip
        ax.plot(sizes, [b / p["seconds"][key] for p in record["points"]], "o-", label=label)
    ax.set(xscale="log", yscale="log", xlabel="LR side (px)", ylabel="columns / s",
           title="Column queries")  # fmt: skip
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    top = max(sizes[-1], fit_side(record["points"], "dfv_storage_bytes", 141.0)[1])
    xs = [2**k for k in range(int(math.log2(sizes[0])), int(math.log2(top)) + 2)]
    for key, label in (("dfv_storage_bytes", "DfV masks (bool)"),
                       ("float32_activation_bytes", "activations (float32)")):  # fmt: skip
        per_pixel = fit_side(record["points"], key, 1.0)[0]
        bx.plot(xs, [per_pixel * x * x / 2**30 for x in xs], "-", label=label)
        bx.plot(sizes, [p[key] / 2**30 for p in record["points"]], "ko", ms=3)
    for g in record["memory_gib"]:
        bx.axhline(g, color="grey", lw=0.8, ls="--")
        bx.text(xs[0], g, f"{g:g} GiB", fontsize=7, color="grey", va="bottom")
    bx.set(xscale="log", yscale="log", xlabel="LR side (px)", ylabel="GiB",
           title="What DfV stores (dots measured)")  # fmt: skip
    bx.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--probes", type=int, default=4, help="columns per query (B)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--memory-gib", type=float, nargs="+", default=list(MEMORY_GIB))
    p.add_argument("--json", help="write every measurement to this JSON file")
    p.add_argument("--plot", help="draw the figure to this PNG/SVG file")
    p.add_argument("--table", help="read a --json file and print its tables (no timing)")
    args = p.parse_args()
    if args.table:
        stored = json.loads(Path(args.table).read_text())
        print(tables(stored))
        if args.plot:
            plot(stored, Path(args.plot))
        return
    if any(s < 8 for s in args.sizes) or args.probes < 1:
        raise SystemExit("--sizes must be >= 8 and --probes >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(CHECKPOINT)
    model.eval()
    record: dict = {
        "benchmark": "edsr_sizes",
        "machine": machine_record(os.getloadavg(), torch.get_num_threads()),
        "probes": args.probes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "checkpoint": str(CHECKPOINT.relative_to(ROOT)),
        "memory_gib": args.memory_gib,
        "points": [],
    }
    for size in sorted(args.sizes):
        record["points"].append(measure(model, size, args.probes, args.repeats, args.warmup))
        print(f"S={size} done", file=sys.stderr, flush=True)
        record["machine"]["load_average_end"] = list(os.getloadavg())
        if args.json:  # after every size, so a cut-off run keeps what it measured
            write_json(Path(args.json), record)
    print(tables(record))
    if args.plot:
        plot(record, Path(args.plot))


if __name__ == "__main__":
    main()
