"""Time decoding all 500 layer-5 filters of LeNet: batched (convscope) vs the paper's loops.

Layer 5 in seed 003's numbering is LeNet's third convolution, ``features.conv3``
(500 @ 4x4 over 50 channels); each decoded filter is 28x28. The fast version is
:func:`convscope.decoding.decode`, all filters at once as transposed convolutions; the
baseline is the literal loop-by-loop algorithm that the tests use as the reference
(``tests/_literal_decoding.py``: per filter, per channel pair, per pixel, place a
scaled lower filter). Both run in float64, and the script checks they agree.

The literal version takes minutes for all 500 filters; ``--literal-filters N`` times
the first N and scales by 500 / N (its cost is the same for every filter: the loops
do not depend on the values, except skipping exact zeros, which trained weights do
not have).

``--json PATH`` writes the machine, the versions, the arguments, every timed run of the fast
version and the literal time of every filter to ``PATH``; ``--table PATH`` prints the README
table from such a file without timing anything (the same function prints it after a run).

Usage::

    python benchmarks/decoding.py --repeats 20 --literal-filters 500 --threads 1 \\
        --json benchmarks/results/decoding_cpu.json
    python benchmarks/decoding.py --table benchmarks/results/decoding_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _machine import machine_record  # sibling module: the scripts run from benchmarks/

from convscope.decoding import decode
from convscope.io import to_jsonable, write_json
from convscope.models import LeNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _literal_decoding import literal_decode  # noqa: E402

LAYER = "features.conv3"


def tables(record: dict[str, Any]) -> str:
    """The README block of one run: the machine line and the table, from its record."""
    m, a, r = record["machine"], record["args"], record
    n = r["literal_filters"]
    how = "measured" if n == r["filters"] else f"{n} filters timed, x {r['filters'] / n:g}"
    return "\n".join(
        [
            f"Machine: {m['cpu']}, torch {m['torch']} on the CPU, {m['threads']} thread(s); "
            f"load average {m['load_average_start'][0]:.1f} at the start, "
            f"{m['load_average_end'][0]:.1f} at the end. LeNet {r['layer']}: {r['filters']} "
            f"filters -> {tuple(r['shape'])}, unpool={a['mode']}, {r['dtype']}.",
            "",
            f"| filters | fast (batched, median of {a['repeats']}) | literal loops | "
            "literal / fast | max abs difference |",
            "|" + " ---: |" * 5,
            f"| {r['filters']} | {r['fast_median_s'] * 1e3:.1f} ms | {r['literal_s']:.1f} s "
            f"({how}) | {r['ratio']:.0f}x | {r['max_abs_difference']:.1e} |",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="timed rounds of the fast version")
    p.add_argument("--literal-filters", type=int, default=500, help="filters the loops decode")
    p.add_argument("--mode", default="nearest", help="unpooling mode")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="write every measurement to this JSON file")
    p.add_argument("--table", type=Path, help="print the table of this JSON file; time nothing")
    args = p.parse_args()
    if args.table is not None:
        print(tables(json.loads(args.table.read_text())))
        return
    load_start = os.getloadavg()
    n_lit = max(1, min(500, args.literal_filters))

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LeNet().eval()
    layers = list(model.features)[:5]  # conv1, pool1, conv2, pool2, conv3

    for _ in range(3):  # warm-up
        decode(model, LAYER, args.mode, dtype=torch.float64)
    fast_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        dec = decode(model, LAYER, args.mode, dtype=torch.float64)
        fast_times.append(time.perf_counter() - t0)
    fast = statistics.median(fast_times)
    assert dec.filters.shape == (500, 1, 28, 28)

    worst, per_filter = 0.0, []
    for k in range(n_lit):
        t0 = time.perf_counter()
        ref = torch.from_numpy(literal_decode(layers, k, args.mode))
        per_filter.append(time.perf_counter() - t0)
        worst = max(worst, float((ref - dec.filters[k]).abs().max()))
    literal = sum(per_filter) * 500 / n_lit
    if worst > 1e-10:
        raise SystemExit(f"fast and literal disagree by {worst:.2e}")

    record = to_jsonable(
        {
            "benchmark": "decoding",
            "machine": machine_record(load_start, torch.get_num_threads()),
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "table")},
            "layer": LAYER,
            "filters": 500,
            "shape": dec.filters.shape,
            "dtype": "float64",
            "fast_seconds": fast_times,  # every timed run, after 3 warm-up runs
            "fast_median_s": fast,
            "literal_filters": n_lit,
            "literal_seconds_per_filter": per_filter,
            "literal_s": literal,  # measured over 500 filters, or scaled from n_lit
            "ratio": literal / fast,
            "max_abs_difference": worst,
        }
    )
    print(tables(record))
    if args.json is not None:
        write_json(args.json, record)  # atomically, via a temporary file
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
