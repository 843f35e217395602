"""Whose explanations are faithful on the three MNIST models (issue 12, point 4).

LeNet (the committed checkpoint of seed 003's experiment), GFNN (fixed kernel bank) and the
regular CNN (the same network with a learned first layer), the latter two trained here
exactly as ``make demo`` trains them (the ``gfnn-mnist`` preset, seed 0, the embedded
MNIST subset's train split), each explained on the first ``--images`` held-out test images
by every method that applies and scored on every metric (``convscope evaluate``).

    python experiments/evaluation.py                    # 500 images per model
    python experiments/evaluation.py --images 64 --models lenet

Writes ``experiments/results/evaluation/<model>/`` (evaluation.json, evaluation.md,
scores/curves/examples figures, report.html) and ``summary.md``; the trained checkpoints go
to ``--work`` (not committed; their test accuracy and parameter digest are in summary.json).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from convscope.io import atomic_write_bytes, write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evaluation"
LENET = HERE / "results" / "decoding" / "lenet_mnist.pt"
MODELS = ("lenet", "gfnn", "regular_cnn")


def checkpoint(name: str, work: Path, seed: int) -> tuple[Path, dict[str, Any]]:
    """The model's checkpoint: LeNet's committed one, or GFNN / the regular CNN trained."""
    from convscope import train as tr
    from convscope.data.datasets import load_dataset
    from convscope.models import build_model, save_checkpoint
    from convscope.train.common import parameter_digest

    if name == "lenet":
        return LENET, {"source": str(LENET.relative_to(HERE.parent))}
    path = work / f"{name}.pt"
    first = "fixed" if name == "gfnn" else "learned"
    train, test = load_dataset("mnist-subset", "train"), load_dataset("mnist-subset", "test")
    model = build_model("gfnn", first_layer=first, seed=seed)
    if not path.is_file():
        config = tr.PRESETS["gfnn-mnist"].replace(seed=seed)
        t0 = time.perf_counter()
        history = tr.fit(model, train.to_torch(), test.to_torch(), config, progress=False)
        acc = float(history.to_dict()["test_acc"][-1])
        print(f"trained {name}: test accuracy {100 * acc:.2f}% in {time.perf_counter() - t0:.0f} s")
        save_checkpoint(path, model.eval(), extra={"test_acc": acc,
                        "class_names": test.class_names, "dataset": test.name})  # fmt: skip
    from convscope.models import load_model

    loaded = load_model(str(path))
    net = loaded[0] if isinstance(loaded, tuple) else loaded.model
    return path, {"first_layer": first, "preset": "gfnn-mnist", "seed": seed,
                  "parameter_digest": parameter_digest(net)}  # fmt: skip


def _fmt(c: dict[str, Any]) -> str:
    if not c["n"] or not math.isfinite(c["mean"]):
        return "-"
    return f"{c['mean']:.3f}"


def summary(rows: dict[str, Any], images: int) -> str:
    """One table per model (best of each metric and where convscope's methods rank)."""
    lines = [
        "# Whose explanations are faithful on the MNIST models",
        "",
        f"Written by `experiments/evaluation.py`: the first {images} test images of the "
        "embedded MNIST subset, targets = the predicted classes, seed 0. Per model: the best "
        "method of each metric, and the rank (1 = best) of each of convscope's methods among "
        "all methods compared. Full tables with 95 % intervals: `<model>/evaluation.md`.",
        "",
    ]
    for model, ev in rows.items():
        fams = ev["families"]
        ours = [m for m in ev["methods"] if fams[m] == "convscope"]
        lines += [f"## {model}", "", "| metric | best | " + " | ".join(ours) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in ours) + " |"]  # fmt: skip
        for k in ev["metrics"]:
            sign = 1.0 if ev["higher_is_better"][k] else -1.0
            means = {m: ev["table"][m][k]["mean"] for m in ev["methods"]}
            finite = {m: v for m, v in means.items() if v is not None and math.isfinite(v)}
            order = sorted(finite, key=lambda m: -sign * finite[m])
            best = f"{order[0]} ({finite[order[0]]:.3f})" if order else "-"
            ranks = [f"{order.index(m) + 1} ({_fmt(ev['table'][m][k])})" if m in order else "-"
                     for m in ours]  # fmt: skip
            arrow = "↑" if ev["higher_is_better"][k] else "↓"
            lines.append(f"| {k} {arrow} | {best} | " + " | ".join(ranks) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path, default=Path("/tmp/convscope-evaluation"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args(argv)
    from convscope.runs.evaluate import run

    args.work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    for name in args.models.split(","):
        path, facts[name] = checkpoint(name, args.work, args.seed)
        t0 = time.perf_counter()
        res = run(str(path), args.out / name, data="mnist-subset", split="test",
                  limit=args.images, batch_size=args.batch_size, seed=args.seed,
                  overwrite=True, progress=True)  # fmt: skip
        facts[name]["seconds"] = round(time.perf_counter() - t0, 1)
        rows[name] = res.metrics
        print(f"{name}: {res.metrics['images']} images in {facts[name]['seconds']} s", flush=True)
        write_json(args.out / "summary.json", {"images": args.images, "models": facts})
        atomic_write_bytes(args.out / "summary.md", summary(rows, args.images).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
