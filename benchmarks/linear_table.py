"""The README tables of ``benchmarks/linear.py`` runs, from the JSON they wrote.

Usage::

    python benchmarks/linear_table.py benchmarks/results/linear_cpu_64.json
    python benchmarks/linear_table.py A.json B.json --plot benchmarks/results/linear_cpu.png

prints the machine line and two markdown tables: the forward pass with the decision cache
off (against a plain pass of the ``B + 1`` images) and on (against a plain pass of the
``B`` probes), and columns and rows per second against DfV and ``torch.func``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def tables(record: dict) -> str:
    n = record["probes"]
    lines = [
        f"Machine: {record['machine']}, torch {record['torch']}, {record['threads']} thread(s); "
        f"float32, {record['size']}x{record['size']}, B = {n} probes, median of "
        f"{record['repeats']} rounds after {record['warmup']} warm-up.",
        "",
        "| model | plain (B+1) | cache off | ratio | plain (B) | cache on | ratio "
        "| peak ratio, cache off | peak MiB plain (B) | cache on | ratio | cache MiB |",
        "|" + " ---: |" * 12,
    ]
    for name, m in record["models"].items():
        t, mem = m["seconds"], m["peak_mib"]
        row = (
            f"| {name} | {t['plain'] * 1e3:.1f} ms | {t['interpreter'] * 1e3:.1f} ms "
            f"| {t['interpreter'] / t['plain']:.2f} | {t['plain_probes'] * 1e3:.1f} ms "
            f"| {t['interpreter_cached'] * 1e3:.1f} ms "
            f"| **{t['interpreter_cached'] / t['plain_probes']:.2f}** "
        )
        if mem:
            pp, pc = mem["plain_probes"], mem["interpreter_cached"]
            row += (
                f"| {mem['interpreter'] / mem['plain']:.2f} | {pp:.0f} | {pc:.0f} | {pc / pp:.2f} "
            )
        else:
            row += "| - | - | - | - "
        lines.append(row + f"| {m['cache_bytes'] / 2**20:.1f} |")
    lines += [
        "",
        "| model | columns/s cache off | cache on | DfV | on / DfV | jvp+vmap | on / jvp "
        "| rows/s cache on | vjp+vmap | on / vjp |",
        "|" + " ---: |" * 10,
    ]
    for name, m in record["models"].items():
        t = m["seconds"]
        off, on, jvp = n / t["columns"], n / t["columns_cached"], n / t["jvp_vmap"]
        dfv = n / t["dfv_device"] if "dfv_device" in t else float("nan")
        rows, vjp = n / t["rows_cached"], n / t["vjp_vmap"]
        lines.append(
            f"| {name} | {off:.1f} | {on:.1f} | {dfv:.1f} | **{on / dfv:.2f}** | {jvp:.1f} "
            f"| {on / jvp:.2f} | {rows:.1f} | {vjp:.1f} | {rows / vjp:.2f} |"
        )
    return "\n".join(lines)


def plot(records: list[dict], out: Path) -> None:
    """Bar charts of the ratios of each run: ``li(x1)`` to a plain pass (cache off and
    on) and columns per second to DfV's, one row of panels per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(records), 2, figsize=(9, 3 * len(records)), squeeze=False)
    for row, record in zip(axes, records, strict=True):
        names = list(record["models"])
        n, x = record["probes"], np.arange(len(names))
        secs = [record["models"][k]["seconds"] for k in names]
        off = [t["interpreter"] / t["plain"] for t in secs]
        on = [t["interpreter_cached"] / t["plain_probes"] for t in secs]
        row[0].bar(x - 0.2, off, 0.4, label="cache off / plain (B+1)", color="#bdbdbd")
        row[0].bar(x + 0.2, on, 0.4, label="cache on / plain (B)", color="#3b6ea8")
        row[0].axhline(1.15, color="#c0392b", lw=1, ls="--", label="target 1.15")
        row[0].set_ylabel("li(x1) time / plain pass")
        c_off = [(n / t["columns"]) / (n / t["dfv_device"]) for t in secs]
        c_on = [(n / t["columns_cached"]) / (n / t["dfv_device"]) for t in secs]
        row[1].bar(x - 0.2, c_off, 0.4, label="cache off", color="#bdbdbd")
        row[1].bar(x + 0.2, c_on, 0.4, label="cache on", color="#3b6ea8")
        row[1].axhline(1.0, color="#c0392b", lw=1, ls="--", label="DfV")
        row[1].set_ylabel("columns/s / DfV's")
        for ax in row:
            ax.set_xticks(x, names, fontsize=8)
            ax.set_title(f"{record['size']}x{record['size']}, B = {n}", fontsize=9)
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Linear interpreter on the CPU ({records[0]['machine']}, 1 thread)", fontsize=10)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)


def main() -> None:
    args = sys.argv[1:]
    figure = None
    if "--plot" in args:
        i = args.index("--plot")
        figure = Path(args[i + 1])
        args = args[:i] + args[i + 2 :]
    records = [json.loads(Path(path).read_text()) for path in args]
    for record in records:
        print(tables(record))
        print()
    if figure is not None:
        plot(records, figure)


if __name__ == "__main__":
    main()
