"""Train CycleGAN's generator on an image-to-image task from the photos: x4 SR refinement.

Seed 001 analyses pretrained CycleGAN generators (photo to Van Gogh, to Ukiyo-e, to facade
labels); we have neither their unpaired photo sets nor a GAN budget, so this is our substitute,
chosen to be comparable with bicubic and ESPCN: **x4 super-resolution refinement of luma**. The
low-resolution image (the antialiased bicubic x4 reduction of ``experiments/train_sr.py``) is
first upscaled by the bicubic upscaler; the generator (``CycleGANGenerator(1, 1, ngf=16,
n_blocks=6)``: instance norm, reflection padding, tanh, as the original but narrower, 16 instead
of 64 filters and the original's 6-block variant, to fit a CPU thread) reads that upscaled image
mapped to [-1, 1] (``2 y - 1``) and its tanh output, in luma units, is added to it::

    sr = bicubic(lr) + G(2 bicubic(lr) - 1)

The skip is needed, not a convenience: the first instance norm removes the per-channel mean of
the first convolution's output, so ``G(x + c) = G(x)`` for any constant brightness ``c`` and
``G`` alone cannot return the input's brightness; it can return the detail bicubic misses.
Trained like ESPCN (``experiments/train_sr.py``): the same training photos, random aligned
patches with flips and rotations, MSE loss, Adam with a cosine schedule, one CPU thread;
scored by PSNR on luma (4 border pixels shaved) on the same two held-out photos, beside
bicubic and the committed ESPCN x4.

Writes into ``experiments/results/cyclegan/``: ``cyclegan_x4.pt`` (the generator, a convscope
checkpoint; the wrapper is :class:`BicubicRefiner`), ``metrics.json`` and ``comparison.png``.

    python experiments/train_i2i.py             # 3,600 steps: about 25 minutes on 1 thread
    python experiments/train_i2i.py --report    # re-score the saved checkpoint only
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from train_sr import CROP, TRAIN_PHOTOS, fit, luma, pairs, score

from convscope.io import write_json
from convscope.models import BicubicUpscaler, build_model, load_checkpoint, save_checkpoint
from convscope.models.sr import downscale, psnr
from convscope.report.figures import save_figure

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "cyclegan"
CKPT = OUT / "cyclegan_x4.pt"
ESPCN_CKPT = RESULTS / "espcn" / "espcn_x4.pt"
SCALE = 4
KEY = "cyclegan"


class BicubicRefiner(nn.Module):
    """``lr -> bicubic(lr) + G(2 bicubic(lr) - 1)``: the generator as a x4 SR refiner.

    Args:
        generator: a :class:`convscope.models.CycleGANGenerator` with one channel in and out.

    Shape:
        (N, 1, H, W) in [0, 1] -> (N, 1, 4H, 4W); 4H and 4W are multiples of 4, as the
        generator needs, for every H, W.
    """

    scale = SCALE

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.up = BicubicUpscaler(SCALE, 1)
        self.generator = generator

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        base = self.up(lr)
        return base + self.generator(2.0 * base - 1.0)


def build(ngf: int = 16, n_blocks: int = 6) -> BicubicRefiner:
    """A fresh refiner (the generator built by name, so its checkpoint records how)."""
    gen = build_model("cyclegan_generator", in_channels=1, out_channels=1, ngf=ngf,
                      n_blocks=n_blocks, norm="instance")  # fmt: skip
    return BicubicRefiner(gen)


def load(path: Path = CKPT) -> tuple[BicubicRefiner, dict[str, Any]]:
    """The committed refiner in eval mode, and its checkpoint's metadata."""
    gen, extra = load_checkpoint(path)
    return BicubicRefiner(gen).eval(), extra


def train(
    steps: int, seed: int, batch: int, patch: int, lr: float, ngf: int, n_blocks: int
) -> tuple[BicubicRefiner, dict[str, Any]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_data = pairs(TRAIN_PHOTOS, SCALE)
    model = build(ngf, n_blocks)
    # train_sr.py's loop (MSE, Adam, cosine to lr / 100) on the generator's parameters
    info = fit(model, model.generator.parameters(), train_data, gen, SCALE, steps, seed, batch,
               patch, lr)  # fmt: skip
    return model, info


def scores(model: nn.Module, espcn: nn.Module) -> dict[str, Any]:
    """Held-out PSNR of bicubic, ESPCN and the refiner, per photo and on average."""
    ours, ref = score(model, KEY), score(espcn, "espcn")
    assert ours["test_photos"].keys() == ref["test_photos"].keys()
    per_photo = {
        n: {
            "bicubic_psnr": row["bicubic_psnr"],
            "espcn_psnr": ref["test_photos"][n]["espcn_psnr"],
            f"{KEY}_psnr": row[f"{KEY}_psnr"],
            "gain_over_bicubic_db": row["gain_db"],
            "gain_over_espcn_db": round(
                row[f"{KEY}_psnr"] - ref["test_photos"][n]["espcn_psnr"], 3
            ),
        }
        for n, row in ours["test_photos"].items()
    }
    return {
        "test_photos": per_photo,
        "mean_bicubic_psnr": ours["mean_bicubic_psnr"],
        "mean_espcn_psnr": ref["mean_espcn_psnr"],
        f"mean_{KEY}_psnr": ours[f"mean_{KEY}_psnr"],
        "mean_gain_over_bicubic_db": ours["mean_gain_db"],
        "mean_gain_over_espcn_db": round(ours[f"mean_{KEY}_psnr"] - ref["mean_espcn_psnr"], 3),
    }


@torch.no_grad()
def figure(model: nn.Module, espcn: nn.Module, path: Path) -> dict[str, Any]:
    """The held-out crop of train_sr.py: input, bicubic, ESPCN, the refiner, its detail, HR."""
    import matplotlib.pyplot as plt

    name, top, left, size = CROP
    hr = luma(name, SCALE)[..., top : top + size, left : left + size]
    lr = downscale(hr, SCALE)
    bic = BicubicUpscaler(SCALE, 1)(lr)
    outs = {"bicubic": bic, "espcn": espcn(lr), KEY: model(lr)}
    p = {k: psnr(v.clamp(0, 1), hr, shave=SCALE) for k, v in outs.items()}
    detail = (outs[KEY] - bic)[0, 0].numpy()
    panels = [
        (
            F.interpolate(lr, scale_factor=SCALE, mode="nearest")[0, 0].numpy(),
            f"input {size // SCALE}px",
        ),
        (outs["bicubic"].clamp(0, 1)[0, 0].numpy(), f"bicubic {p['bicubic']:.2f} dB"),
        (outs["espcn"].clamp(0, 1)[0, 0].numpy(), f"ESPCN {p['espcn']:.2f} dB"),
        (outs[KEY].clamp(0, 1)[0, 0].numpy(), f"CycleGAN G {p[KEY]:.2f} dB"),
        (hr[0, 0].numpy(), "ground truth"),
    ]
    fig, axes = plt.subplots(1, 6, figsize=(17, 3.3))
    for ax, (img, title) in zip(axes[:5], panels, strict=True):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    lim = float(np.abs(detail).max()) or 1.0
    axes[5].imshow(detail, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[5].set_title(f"G's detail (±{lim:.2f})", fontsize=10)
    axes[5].axis("off")
    fig.suptitle(f"x{SCALE} SR refinement of a held-out crop ({name}, luma)", fontsize=11)
    save_figure(fig, path)
    return {"photo": name, "top": top, "left": left, "size": size,
            **{f"{k}_psnr": round(v, 3) for k, v in p.items()}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=24, help="low-resolution patch side")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--n-blocks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", action="store_true", help="only re-score the saved checkpoint")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.out / CKPT.name
    if args.report:
        model, extra = load(ckpt)
        info = extra.get("training", {})
    else:
        model, info = train(args.steps, args.seed, args.batch, args.patch, args.lr, args.ngf,
                            args.n_blocks)  # fmt: skip
    espcn = load_checkpoint(ESPCN_CKPT)[0].eval()
    gen = model.generator
    metrics = {
        "task": "x4 SR refinement of luma: sr = bicubic(lr) + G(2 bicubic(lr) - 1)",
        "substitute_for": (
            "seed 001's pretrained CycleGANs (Van Gogh, Ukiyo-e, photo-to-label): "
            "no GAN, no unpaired data"
        ),
        "generator": {
            **getattr(gen, "convscope_kwargs", {}),
            "parameters": sum(p.numel() for p in gen.parameters()),
        },  # fmt: skip
        "scale": SCALE,
        "channels": "luma (ITU-R 601)",
        "degradation": f"antialiased bicubic x{SCALE} (F.interpolate, antialias=True), clamped",
        "psnr_shave": SCALE,
        "train_photos": list(TRAIN_PHOTOS),
        "espcn_checkpoint": str(ESPCN_CKPT.relative_to(RESULTS.parent.parent)),
        **scores(model, espcn),
        "crop": figure(model, espcn, args.out / "comparison.png"),
        "training": info,
    }
    if not args.report:
        extra = {k: v for k, v in metrics.items() if k != "crop"}
        save_checkpoint(ckpt, gen, extra=extra)
    write_json(args.out / "metrics.json", metrics)
    print(
        f"held-out PSNR: bicubic {metrics['mean_bicubic_psnr']:.2f} dB, ESPCN "
        f"{metrics['mean_espcn_psnr']:.2f} dB, CycleGAN G {metrics[f'mean_{KEY}_psnr']:.2f} dB; "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
