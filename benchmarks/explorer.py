"""Time the explorer page for the trained ESPCN x4, packed against one probe per filter.

The issue's target: a 128x128 input, rows and columns at step 2 (``max_pixels`` 4096,
a 64x64 grid), in under 60 s on the 2-core CPU. The script, in one process:

1. ``explore(model, x0, max_pixels=..., pack=True)`` as the command runs it (``k_svd``
   4, the window chosen automatically): the whole page's numbers, timed;
2. the same with ``k_svd=0`` and ``pack=True`` and ``pack=False``: the filters alone.
   Unpacked, the 128x128 page is 8,192 full-image probes (over 12 minutes here), so
   unless ``--full-baseline`` is given the unpacked time is the time of ``li.columns``
   and ``li.rows`` at ``--baseline-points`` grid pixels (one batch each) scaled to the
   grid, and those pixels' packed filters are checked against them first.

``--json PATH`` writes every timing, the probe counts and the machine.

Usage::

    python benchmarks/explorer.py --size 128 --max-pixels 4096 --threads 2 \\
        --json benchmarks/results/explorer_cpu.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_name

from convscope.io import write_json
from convscope.linear import LinearInterpreter
from convscope.linear.explorer import explore, explorer_image, trained_espcn_checkpoint
from convscope.models import load_checkpoint


def timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--max-pixels", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--baseline-points", type=int, default=64)
    ap.add_argument("--full-baseline", action="store_true")
    ap.add_argument("--image", default="sample:astronaut")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(trained_espcn_checkpoint())
    x0 = explorer_image(args.image, 1, (args.size, args.size))
    opts = {"max_pixels": args.max_pixels, "batch_size": args.batch_size}

    page, t_page = timed(lambda: explore(model, x0, k_svd=4, pack=True, **opts))
    packed, t_packed = timed(lambda: explore(model, x0, k_svd=0, pack=True, **opts))
    grid = packed.grid_count
    print(
        f"page (k_svd 4, packed {page.packed}): {t_page:.1f} s, {page.probes} probes; "
        f"filters alone: {t_packed:.1f} s",
        flush=True,
    )

    # the baseline: one probe per filter
    li = LinearInterpreter(model, x0, batch_size=args.batch_size)
    (_, h, w), (_, ho, wo) = li.in_shape, li.out_shape
    gw = len(packed.xs)
    picks = np.linspace(0, grid - 1, min(args.baseline_points, grid)).round().astype(int)
    pts = [(packed.ys[k // gw], packed.xs[k % gw]) for k in picks]
    tgs = [packed.targets[k] for k in picks]
    cols, t_cols = timed(lambda: li.columns([y * w + x for y, x in pts]))
    rows, t_rows = timed(lambda: li.rows([qy * wo + qx for qy, qx in tgs]))
    view = packed.filters["sum", "sum"]
    worst = 0.0
    for n, k in enumerate(picks):  # the packed numbers are the unpacked ones
        col, row = cols[n, 0].double().numpy(), rows[n, 0].double().numpy()
        (y, x), (qy, qx) = pts[n], tgs[n]
        for got, want in ((view.columns.peak[k], np.abs(col).max()),
                          (view.columns.at[k], col[qy, qx]), (view.columns.total[k], col.sum()),
                          (view.rows.peak[k], np.abs(row).max()), (view.rows.at[k], row[y, x]),
                          (view.rows.total[k], row.sum())):  # fmt: skip
            worst = max(worst, abs(float(got) - float(want)) / max(1.0, abs(float(want))))
    if worst > 1e-4:
        sys.exit(f"packed filters differ from li.columns / li.rows by {worst:.2e}")
    per_point = (t_cols + t_rows) / len(picks)
    if args.full_baseline:
        plain, t_plain = timed(lambda: explore(model, x0, k_svd=0, pack=False, **opts))
        how, plain_probes = "measured", plain.probes
    else:
        t_plain, how, plain_probes = per_point * grid, "scaled", 2 * grid
    print(
        f"filters unpacked ({how} from {len(picks)} pixels): {t_plain:.1f} s, "
        f"{plain_probes} probes; packed {t_packed:.1f} s, {packed.probes} probes: "
        f"{t_plain / t_packed:.1f}x faster (packed filters agree to {worst:.1e})"
    )
    record = {
        "machine": {
            "cpu": cpu_name(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "model": "ESPCN x4 (trained, experiments/results/espcn/espcn_x4.pt)",
        "image": args.image,
        "size": [h, w],
        "output": [ho, wo],
        "max_pixels": args.max_pixels,
        "stride": packed.stride,
        "grid": grid,
        "tile": page.tile,
        "batch_size": args.batch_size,
        "page": {
            "seconds": t_page,
            "probes": page.probes,
            "packed": list(page.packed),
            "k_svd": 4,
        },  # fmt: skip
        "filters_packed": {"seconds": t_packed, "probes": packed.probes},
        "filters_unpacked": {
            "seconds": t_plain,
            "probes": plain_probes,
            "how": how,
            "from_pixels": len(picks),
            "columns_s": t_cols,
            "rows_s": t_rows,
        },
        "speedup": t_plain / t_packed,
        "agreement": worst,
    }
    if args.json is not None:
        write_json(args.json, record)  # atomically, via a temporary file
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
