"""Seed 004 Fig. 2-4 (the toy CNN) and Fig. 6/7 (Maximum Gain vs error) on our models.

Toy CNN: a 7x7 Gaussian (sigma 1) convolution followed by ReLU, applied to the
mean-subtracted red channel of a real photo (scikit-image's ``chelsea``). Figures:
the forward pass (Fig. 2), the data derivative and its spectrum for a one-hot
projection at an active output pixel and for a projection of ones (Fig. 3), and the
impulse-image response (Fig. 4).

Model comparison: the impulse-image data derivative, spectrum and Maximum Gain of
every trained classifier we have a checkpoint of, against its test error.

    python experiments/spectral_toy.py [--demo-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convscope import spectral as sp
from convscope.data import load_mnist_subset, sample_photo
from convscope.io import write_json
from convscope.kernels import gaussian_kernel
from convscope.models import load_checkpoint
from convscope.report.figures import save_figure
from convscope.train import evaluate

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "spectral"


class ToyCNN(nn.Module):
    """conv (7x7 Gaussian, sigma 1, 'same' padding) -> ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.from_numpy(gaussian_kernel(7, 1.0))[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(F.conv2d(x, self.w.to(x.dtype), padding=3))


def _show(ax: plt.Axes, img: np.ndarray, title: str, cmap: str = "gray") -> None:
    lim = float(np.abs(img).max()) or 1.0
    kw = {"vmin": -lim, "vmax": lim} if cmap == "bwr" else {}  # white at zero for derivatives
    ax.imshow(img, cmap=cmap, **kw)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def toy_figures(out: Path) -> dict:
    red = sample_photo("chelsea")[..., 0].astype(np.float64)
    x = torch.from_numpy(red - red.mean())[None, None]
    toy = ToyCNN()
    conv = F.conv2d(x, toy.w, padding=3)[0, 0]
    z = torch.relu(conv)

    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    _show(axes[0], x[0, 0].numpy(), "(a) input: red channel, mean removed")
    _show(axes[1], conv.numpy(), "(b) after the Gaussian conv")
    _show(axes[2], z.numpy(), "(c) after ReLU: z")
    fig.tight_layout()
    save_figure(fig, out / "toy_fig2_forward.png")

    h, w = z.shape
    r, c = min(150, h - 10), min(100, w - 10)
    if (
        z[r, c] <= 0
    ):  # the paper's (150, 100) may be inactive on this photo: take the nearest active
        act = torch.nonzero(z > 0).double()
        k = int(((act - torch.tensor([r, c])) ** 2).sum(1).argmin())
        r, c = (int(v) for v in act[k])
    onehot = torch.zeros_like(z)[None]
    onehot[0, r, c] = 1.0
    spec_a, d_a = sp.transfer_function(toy, x[0], projection=onehot, window=None)
    spec_b, d_b = sp.transfer_function(toy, x[0], projection=torch.ones_like(z)[None], window=None)
    fig, axes = plt.subplots(2, 2, figsize=(8, 6.5))
    crop = (slice(r - 12, r + 13), slice(c - 12, c + 13))
    _show(axes[0, 0], d_a[crop].numpy(), f"(a) dz/dx, p = 1 at ({r}, {c}) (25x25 crop)", "bwr")
    _show(axes[0, 1], spec_a.numpy(), f"|H| (dB), peak {spec_a.max():.1f} dB", "viridis")
    _show(axes[1, 0], d_b.numpy(), "(b) dz/dx, p = 1 everywhere", "bwr")
    _show(axes[1, 1], spec_b.numpy(), f"|H| (dB), peak {spec_b.max():.1f} dB", "viridis")
    fig.tight_layout()
    save_figure(fig, out / "toy_fig3_derivatives.png")

    imp = sp.impulse_image((1, 65, 65), scale=1.0, dtype=torch.float64)
    zi = toy(imp)
    spec_i, d_i = sp.transfer_function(toy, imp[0], projection=torch.ones_like(zi[0]))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    _show(axes[0], imp[0, 0].numpy(), "(a) impulse image (255 at the centre)")
    _show(axes[1], d_i.numpy(), "(c) dz/dx, p = 1 everywhere", "bwr")
    _show(axes[2], spec_i.numpy(), f"(b) |H| (dB), Hann window, peak {spec_i.max():.1f}", "viridis")
    fig.tight_layout()
    save_figure(fig, out / "toy_fig4_impulse.png")
    return {
        "active_pixel": [r, c],
        "peak_db_onehot": float(spec_a.max()),
        "peak_db_ones": float(spec_b.max()),
        "peak_db_impulse": float(spec_i.max()),
        "dc_db_expected": float(20 * np.log10(float(toy.w.sum()))),
    }


def checkpoints(demo_dir: Path | None) -> dict[str, Path]:
    found = {"LeNet (decoding)": ROOT / "results" / "decoding" / "lenet_mnist.pt"}
    if demo_dir is not None:
        found["GFNN (demo)"] = demo_dir / "gfnn.pt"
        found["regular CNN (demo)"] = demo_dir / "regular_cnn.pt"
    return {k: v for k, v in found.items() if v.is_file()}


def compare_models(paths: dict[str, Path], out: Path) -> list[dict]:
    test = load_mnist_subset("test").to_torch()
    rows = []
    for name, path in paths.items():
        model, _ = load_checkpoint(path)
        x = sp.impulse_image((1, 28, 28))
        d = sp.data_derivative(model, x)[0]
        spec = sp.spectrum_db(d, "hann")
        _, acc = evaluate(model, test)
        rows.append({
            "model": name,
            "checkpoint": str(path.relative_to(ROOT.parent)) if path.is_relative_to(ROOT.parent)
            else path.name,
            "test_error": 1 - acc,
            "maximum_gain_db": float(spec.max()),
            "derivative": d[0].numpy(),
            "spectrum": spec[0].numpy(),
        })  # fmt: skip
    if not rows:
        return []
    fig, axes = plt.subplots(len(rows), 2, figsize=(6, 2.8 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        lim = float(np.abs(r["derivative"]).max()) or 1.0
        axes[i, 0].imshow(r["derivative"], cmap="bwr", vmin=-lim, vmax=lim)
        axes[i, 0].set_title(f"{r['model']}: dz/dx", fontsize=8)
        axes[i, 1].imshow(r["spectrum"], cmap="viridis", vmin=r["maximum_gain_db"] - 60)
        axes[i, 1].set_title(
            f"|H|, max {r['maximum_gain_db']:.1f} dB, error {100 * r['test_error']:.1f}%",
            fontsize=8,
        )
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out / "fig6_models.png")
    for r in rows:
        del r["derivative"], r["spectrum"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--demo-dir", type=Path, default=None, help="a `convscope demo` output folder")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    toy = toy_figures(args.out)
    models = compare_models(checkpoints(args.demo_dir), args.out)
    write_json(args.out / "toy_and_models.json", {"toy": toy, "models": models})
    print(toy)
    for r in models:
        err, mg = 100 * r["test_error"], r["maximum_gain_db"]
        print(f"{r['model']:22s} error {err:5.2f}%  MG {mg:.2f} dB")


if __name__ == "__main__":
    main()
