"""How exact the linear interpreter is on every torchvision vision model (issue 11, point 6).

Every classification model ``torchvision.models.list_models(module=torchvision.models)``
returns, every segmentation model and, with timm installed, a few timm families (ViT,
DeiT, ConvNeXt, EfficientNet, RegNet), untrained, in float64, at the smallest input it
accepts, batch norm calibrated on real photos (:func:`convscope.linear.verify.
calibrate_batch_norm`), is checked by :func:`convscope.linear.verify.verify` in both modes:
taylor against ``torch.func.jvp`` / ``vjp`` (the frozen system must be the Jacobian), freeze
for reproducing ``f(x0)`` and conserving the contributions. Each model runs in its own
process with a time limit; a refusal is recorded with its one-line message (an op without a
rule is refused, never answered wrongly).

    python experiments/linear_coverage.py                         # every model
    python experiments/linear_coverage.py --models resnet18,vit_b_16 --timeout 300
    python experiments/linear_coverage.py --resume     # only the models not yet in the table

Writes ``experiments/results/linear/coverage.json`` and ``coverage.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from convscope.io import atomic_write_bytes, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "linear"


def check_one(kind: str, name: str) -> dict[str, Any]:
    """Build, calibrate and verify one model in both modes (runs in a child process)."""
    import torch

    from convscope.errors import ConvscopeError
    from convscope.linear.verify import build_zoo_model, verify

    torch.set_num_threads(int(os.environ.get("COVERAGE_THREADS", "2")))
    t0 = time.perf_counter()
    model, x, output = build_zoo_model(kind, name)
    row: dict[str, Any] = {
        "kind": kind,
        "model": name,
        "input": list(x.shape[1:]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    for mode in ("taylor", "freeze"):
        try:
            row[mode] = verify(model, x[:1], x[1:3], mode=mode, output=output).to_dict()
        except ConvscopeError as e:
            row[mode] = {"refused": str(e).splitlines()[0]}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names (default: every model)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--first", help="comma-separated names to run before the others")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows --out already holds and check only the other models",
    )
    p.add_argument("--child", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(check_one(*args.child)))
        return 0
    from convscope.linear.verify import zoo_models

    names = zoo_models()
    if args.models:
        wanted = set(args.models.split(","))
        names = [(k, n) for k, n in names if n in wanted]
    if args.first:
        first = args.first.split(",")
        names.sort(key=lambda kn: first.index(kn[1]) if kn[1] in first else len(first))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch threads " + os.environ.get(
        "COVERAGE_THREADS", "2"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.resume and (args.out / "coverage.json").is_file():
        rows = json.loads((args.out / "coverage.json").read_text())["models"]
        done = {r["model"] for r in rows if "error" not in r}
        rows = [r for r in rows if r["model"] in done]
        names = [(k, n) for k, n in names if n not in done]
    for kind, name in names:
        t0 = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--child", kind, name],
                capture_output=True, text=True, timeout=args.timeout,
            )  # fmt: skip
            if done.returncode == 0:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                last = (done.stderr.strip().splitlines() or ["?"])[-1]
                row = {"kind": kind, "model": name, "error": last[:300]}
        except subprocess.TimeoutExpired:
            row = {"kind": kind, "model": name, "error": f"over {args.timeout:.0f} s"}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(_line(row), flush=True)
        # written after every model: an interrupted sweep keeps what it finished
        blob = {"machine": machine, "models": rows}
        write_json(args.out / "coverage.json", blob)
        atomic_write_bytes(args.out / "coverage.md", _table(rows, machine).encode())
    return 0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


def _cell(r: dict[str, Any], mode: str) -> str:
    m = r.get(mode)
    if m is None:
        return r.get("error", "-")
    if "refused" in m:
        return "refused: " + m["refused"]
    if mode == "taylor":
        floor = m.get("jvp_floor")
        text = f"jvp {_fmt(m['jvp_error'])}, vjp {_fmt(m['vjp_error'])}, signal {m['signal']:.2g}"
        return text if floor is None else f"{text}, floor {_fmt(floor)}"
    return f"f(x0) {_fmt(m['x0_error'])}, sum {_fmt(m['conservation_error'])}"


def _line(r: dict[str, Any]) -> str:
    return f"{r['model']:28s} {r['seconds']:7.1f} s  {_cell(r, 'taylor')} | {_cell(r, 'freeze')}"


def _table(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [
        "# The linear interpreter on every torchvision model",
        "",
        "Written by `experiments/linear_coverage.py` (untrained models, float64, batch norm "
        "calibrated on 48 crops of the sample photos, not on the images checked; "
        f"{machine}). Relative errors: taylor against `torch.func.jvp` "
        "(`li.linear(x1 - x0)`) and `torch.func.vjp` (`li.transpose(y)`); freeze: `f(x0)` "
        "reproduced and the contributions summing to it. signal = max |J dx| / max |f(x0)|; "
        "floor = how far `jvp` itself moves when x0 moves by a relative 1e-15 (the precision "
        "the model's Jacobian allows).",
        "",
        "| model | input | taylor | freeze | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        shape = "x".join(str(v) for v in r.get("input", [])) or "-"
        lines.append(
            f"| {r['model']} | {shape} | {_cell(r, 'taylor')} | {_cell(r, 'freeze')} "
            f"| {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
