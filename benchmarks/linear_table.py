"""The README tables of ``benchmarks/linear.py`` runs, from the JSON they wrote.

Usage::

    python benchmarks/linear_table.py benchmarks/results/linear_cpu_64.json

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


def main() -> None:
    for path in sys.argv[1:]:
        print(tables(json.loads(Path(path).read_text())))
        print()


if __name__ == "__main__":
    main()
