"""Seed 001 Tables 3/4 and Fig. 4, and seed 000 Fig. 4, over the whole held-out split.

Runs the dataset commands (``convscope linear contributions --data`` and ``convscope
explain --data``) on every image of the embedded MNIST subset's test split (1,000
images) for the committed LeNet and for GFNN and the regular CNN trained as
``experiments/evaluation.py`` trains them (same preset and seed; their parameter digests
are recorded, because float32 training rounds by the machine's thread count, so another
machine's weights can differ in the last bits and its numbers by a little). Writes,
under ``experiments/results/dataset/``:

* ``<model>_contributions/``: ``per_image.parquet``, ``summary.json``, figures and
  ``report.html`` of each model's contributions run;
* ``gfnn_filter_scores/``: the class-average filter scores of GFNN;
* ``residual_shares.md`` / ``.json``: the residual share of the top-1 score (mean,
  standard deviation, median, 5-95 % range) and each layer's mean share, per model,
  read from the summaries.

Usage::

    python experiments/dataset_scale.py [--models lenet,gfnn,regular_cnn] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "dataset"
MODELS = ("lenet", "gfnn", "regular_cnn")
sys.path.insert(0, str(HERE))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def table(rows: dict[str, Any]) -> str:
    """The residual-share table (seed 001 Table 3's layout) from the summaries."""
    lines = [
        "# Residual share over the held-out MNIST split",
        "",
        "Written by `experiments/dataset_scale.py` from `<model>_contributions/summary.json` "
        "(`convscope linear contributions --data mnist-subset`, freeze mode, float64). The "
        "residual share is the part of the top-1 score the biases carry, r_c / y_c (seed "
        "001 Table 3); each layer's share is its bias contribution over the score (Fig. 4).",
        "",
        "| model | images | accuracy | residual share mean ± std | median | 5-95 % | "
        "input share | largest bias source |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in rows.items():
        rs = s["residual_share"]
        groups = {k: v for k, v in s["groups"].items() if k != "input"}
        big = max(groups, key=lambda k: abs(groups[k]["mean"])) if groups else "-"
        big_text = f"{big} ({_pct(groups[big]['mean'])})" if groups else "-"
        lines.append(
            f"| {name} | {s['images']} | {_pct(s['accuracy'])} | {_pct(rs['mean'])} ± "
            f"{_pct(rs['std'])} | {_pct(rs['median'])} | {_pct(rs['q05'])} to "
            f"{_pct(rs['q95'])} | {_pct(s['input_share']['mean'])} | {big_text} |"
        )
    lines += ["", "Per layer (mean share of the top-1 score ± one standard deviation):", ""]
    for name, s in rows.items():
        parts = ", ".join(f"{k} {_pct(v['mean'])} ± {_pct(v['std'])}"
                          for k, v in s["groups"].items())  # fmt: skip
        lines.append(f"- {name}: {parts}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path, default=Path("/tmp/convscope-evaluation"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="the first N test images only")
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args(argv)

    from evaluation import checkpoint

    from convscope.runs.explain import run_data as explain_data
    from convscope.runs.linear_contributions import run_data as contributions_data

    args.work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    for name in args.models.split(","):
        path, facts[name] = checkpoint(name, args.work, args.seed)
        t0 = time.perf_counter()
        res = contributions_data(str(path), "mnist-subset", args.out / f"{name}_contributions",
                                 split="test", limit=args.limit, batch_size=args.batch_size,
                                 device="cpu", overwrite=True, progress=True)  # fmt: skip
        rows[name] = res.summary
        rs = res.summary["residual_share"]
        print(f"{name}: residual share {_pct(rs['mean'])} ± {_pct(rs['std'])} over "
              f"{res.summary['images']} images in {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip
        if name == "gfnn":
            t0 = time.perf_counter()
            explain_data(str(path), "mnist-subset", args.out / "gfnn_filter_scores",
                         split="test", limit=args.limit, batch_size=args.batch_size,
                         device="cpu", overwrite=True, progress=True)  # fmt: skip
            print(f"gfnn: class-average filter scores in {time.perf_counter() - t0:.0f} s")
    from convscope.io import atomic_write_bytes, write_json

    atomic_write_bytes(args.out / "residual_shares.md", table(rows).encode())
    write_json(args.out / "residual_shares.json", {
        "models": {k: {"checkpoint": facts[k], "images": v["images"],
                       "accuracy": v["accuracy"], "residual_share": v["residual_share"],
                       "input_share": v["input_share"],
                       "groups": {g: {"mean": s["mean"], "std": s["std"]}
                                  for g, s in v["groups"].items()}}
                   for k, v in rows.items()},
    })  # fmt: skip
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
