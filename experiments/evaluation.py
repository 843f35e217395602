"""Whose explanations are faithful on the three MNIST models and a colour one (issue 12).

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
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from convscope.io import atomic_write_bytes, write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evaluation"
LENET = HERE / "results" / "decoding" / "lenet_mnist.pt"
MODELS = ("lenet", "gfnn", "regular_cnn", "gfnn_photos")
# the colour photos skimage ships: the classes of the photo-patch task
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field",
                 "immunohistochemistry", "retina", "rocket")  # fmt: skip
PATCH = 32


def photo_patches(split: str, per_class: int, seed: int) -> tuple[Any, Any]:
    """Colour patches of the sample photos, labelled with the photo they come from.

    Train patches are cut from the left 70 % of each photo, test patches from the right
    30 % (no pixel in both); each is a random square of a tenth to a third of the photo's
    height, resized to 32 x 32.
    """
    import numpy as np
    import torch

    from convscope.data import sample_photo

    gen = np.random.default_rng(seed + (0 if split == "train" else 1))
    xs, ys = [], []
    for label, name in enumerate(COLOUR_PHOTOS):
        a = torch.from_numpy(sample_photo(name)).permute(2, 0, 1).float()[None] / 255
        h, w = a.shape[-2:]
        lo, hi = (0, int(0.7 * w)) if split == "train" else (int(0.7 * w), w)
        for _ in range(per_class):
            side = int(gen.integers(max(PATCH, h // 10), max(PATCH + 1, min(h // 3, hi - lo))))
            i = int(gen.integers(0, h - side + 1))
            j = int(gen.integers(lo, hi - side + 1))
            crop = a[..., i : i + side, j : j + side]
            xs.append(torch.nn.functional.interpolate(crop, size=(PATCH, PATCH),
                                                      mode="bilinear", antialias=True))  # fmt: skip
            ys.append(label)
    return torch.cat(xs).clamp(0, 1), torch.tensor(ys)


def _photo_folder(work: Path, x: Any, y: Any, per_class: int) -> Path:
    """The first ``per_class`` held-out patches of each photo as PNG files, one folder per
    photo (``imagefolder:`` data; a folder is read class by class, so every photo gets its
    share of a run of ``8 * per_class`` images)."""
    from convscope.io import save_png

    root = work / f"photos_{per_class}"
    seen: dict[int, int] = {}
    for k, (img, label) in enumerate(zip(x, y, strict=True)):
        seen[int(label)] = seen.get(int(label), 0) + 1
        if seen[int(label)] > per_class:
            continue
        dst = root / "test" / COLOUR_PHOTOS[int(label)] / f"{k:04d}.png"
        if not dst.exists():
            save_png(dst, (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    return root


def _train_photos(work: Path, seed: int, images: int) -> tuple[Path, dict[str, Any]]:
    from torch.utils.data import TensorDataset

    from convscope import train as tr
    from convscope.models import build_model, save_checkpoint

    path = work / "gfnn_photos.pt"
    xt, yt = photo_patches("test", 64, seed)
    root = _photo_folder(work, xt, yt, min(64, -(-images // len(COLOUR_PHOTOS))))
    if not path.is_file():
        xs, ys = photo_patches("train", 400, seed)
        model = build_model("gfnn", in_channels=3, input_size=PATCH,
                            num_classes=len(COLOUR_PHOTOS), seed=seed)  # fmt: skip
        config = tr.PRESETS["gfnn-mnist"].replace(seed=seed, epochs=6)
        history = tr.fit(model, TensorDataset(xs, ys), TensorDataset(xt, yt), config,
                         progress=False)  # fmt: skip
        acc = float(history.to_dict()["test_acc"][-1])
        print(f"trained gfnn_photos: held-out patch accuracy {100 * acc:.2f}%")
        save_checkpoint(
            path,
            model.eval(),
            extra={"test_acc": acc, "class_names": list(COLOUR_PHOTOS), "dataset": "photo patches"},
        )
    return path, {
        "data": f"imagefolder:{root}",
        "task": "which colour photo a 32x32 "
        "patch comes from (train: left 70 %, test: right 30 % of each photo)",
    }


def checkpoint(name: str, work: Path, seed: int, images: int = 512) -> tuple[Path, dict[str, Any]]:
    """The model's checkpoint: LeNet's committed one, or GFNN / the regular CNN trained."""
    from convscope import train as tr
    from convscope.data.datasets import load_dataset
    from convscope.models import build_model, save_checkpoint
    from convscope.train.common import parameter_digest

    if name == "lenet":
        return LENET, {"source": str(LENET.relative_to(HERE.parent))}
    if name == "gfnn_photos":
        return _train_photos(work, seed, images)
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


def summary(rows: dict[str, Any]) -> str:
    """One table per model (best of each metric and where convscope's methods rank)."""
    lines = [
        "# Whose explanations are faithful: three MNIST models and a colour one",
        "",
        "Written by `experiments/evaluation.py`: the first held-out test images "
        "(the embedded MNIST subset's test split; for gfnn_photos, patches from the right 30 % "
        "of eight colour photos), targets = the predicted classes, seed 0. Per model: the best "
        "method of each metric, and the rank (1 = best) of each of convscope's methods among "
        "all methods compared. Full tables with 95 % intervals: `<model>/evaluation.md`.",
        "",
    ]
    for model, ev in rows.items():
        fams = ev["families"]
        ours = [m for m in ev["methods"] if fams[m] == "convscope"]
        lines += [f"## {model} ({ev['images']} images)", "",
                  "| metric | best | " + " | ".join(ours) + " |",
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


def write_summary(out: Path, work: Path, seed: int, facts: dict[str, Any]) -> None:
    """summary.md and summary.json over every model with an evaluation.json in ``out``."""
    rows = {m: json.loads((out / m / "evaluation.json").read_text())
            for m in MODELS if (out / m / "evaluation.json").is_file()}  # fmt: skip
    for m in rows:
        if m not in facts:  # the checkpoint is there already: nothing is trained again
            facts[m] = checkpoint(m, work, seed, rows[m]["images"])[1]
        facts[m]["images"] = rows[m]["images"]
    write_json(out / "summary.json", {"models": {m: facts[m] for m in rows}})
    atomic_write_bytes(out / "summary.md", summary(rows).encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path, default=Path("/tmp/convscope-evaluation"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="rebuild summary.md/json from the evaluation.json files in --out",
    )
    args = p.parse_args(argv)
    if args.summary_only:
        write_summary(args.out, args.work, args.seed, {})
        return 0
    from convscope.runs.evaluate import run

    args.work.mkdir(parents=True, exist_ok=True)
    blob = args.out / "summary.json"
    facts: dict[str, Any] = json.loads(blob.read_text())["models"] if blob.is_file() else {}
    for name in args.models.split(","):
        path, facts[name] = checkpoint(name, args.work, args.seed, args.images)
        t0 = time.perf_counter()
        data = facts[name].get("data", "mnist-subset")
        res = run(str(path), args.out / name, data=data, split="test",
                  limit=args.images, batch_size=args.batch_size, seed=args.seed,
                  overwrite=True, progress=True)  # fmt: skip
        facts[name]["seconds"] = round(time.perf_counter() - t0, 1)
        facts[name]["images"] = res.summary["images"]
        print(f"{name}: {res.summary['images']} images in {facts[name]['seconds']} s", flush=True)
        write_summary(args.out, args.work, args.seed, facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
