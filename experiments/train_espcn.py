"""Train the 4-layer ESPCN x4 (seed 001's "4-layer PixelShuffle") on scikit-image photos.

Luma (ITU-R 601) patches of the bundled photographs; the low-resolution input is the
antialiased bicubic x4 reduction (:func:`convscope.models.sr.downscale`); MSE loss, Adam with
a cosine schedule, a fixed number of steps on one CPU thread. Two photos are held out and scored
against the bicubic upscaler (PSNR on luma, ``scale`` border pixels shaved).

Writes into ``experiments/results/espcn/``: ``espcn_x4.pt`` (a convscope checkpoint),
``metrics.json`` and ``comparison.png`` (bicubic vs ESPCN on a held-out crop).

    python experiments/train_espcn.py                  # 3,000 steps: 3-6 minutes on one thread
    python experiments/train_espcn.py --steps 1000     # quicker, worse
    python experiments/train_espcn.py --report         # re-score the saved checkpoint only
    python experiments/train_espcn.py --device cuda --steps 30000 --batch 64   # the committed run
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convscope.data import prepare_for_model, sample_photo
from convscope.io import write_json
from convscope.models import BicubicUpscaler, build_model, load_checkpoint, save_checkpoint
from convscope.models.sr import downscale, psnr
from convscope.report.figures import save_figure

OUT = Path(__file__).resolve().parent / "results" / "espcn"
SCALE = 4
# Held out: a face and a cat, the kind of content seed 001's SR figures look at.
TEST_PHOTOS = ("astronaut", "chelsea")
# Every other natural photo skimage ships (colorwheel is synthetic; hubble and retina are big
# and mostly dark, so they are left out to keep the patches varied).
TRAIN_PHOTOS = (
    "brick",
    "camera",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
)
# The figure's crop of the held-out astronaut (HR pixels): her face.
CROP = ("astronaut", 60, 170, 128)


def luma(name: str) -> torch.Tensor:
    """A sample photo as luma (1, 1, H, W) float32 in [0, 1], cropped to multiples of SCALE."""
    rgb = torch.from_numpy(sample_photo(name)).permute(2, 0, 1)[None].float() / 255.0
    y = prepare_for_model(rgb, 1)
    h, w = (s - s % SCALE for s in y.shape[-2:])
    return y[..., :h, :w].contiguous()


def pairs(names: tuple[str, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(low-res, high-res) luma pairs of whole photos."""
    out = []
    for n in names:
        hr = luma(n)
        out.append((downscale(hr, SCALE), hr))
    return out


def sample_batch(
    data: list[tuple[torch.Tensor, torch.Tensor]], batch: int, patch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned (LR patch, HR patch) pairs, photos drawn by area, flips and rot90."""
    areas = torch.tensor([float(lr.numel()) for lr, _ in data])
    which = torch.multinomial(areas, batch, replacement=True, generator=gen)
    xs, ys = [], []
    for k in which.tolist():
        lr, hr = data[k]
        i = int(torch.randint(lr.shape[-2] - patch + 1, (1,), generator=gen))
        j = int(torch.randint(lr.shape[-1] - patch + 1, (1,), generator=gen))
        x = lr[0, :, i : i + patch, j : j + patch]
        y = hr[0, :, SCALE * i : SCALE * (i + patch), SCALE * j : SCALE * (j + patch)]
        aug = int(torch.randint(8, (1,), generator=gen))
        if aug & 4:
            x, y = x.flip(-1), y.flip(-1)
        x, y = torch.rot90(x, aug & 3, (-2, -1)), torch.rot90(y, aug & 3, (-2, -1))
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """PSNR (dB) of ``model`` on each whole photo, ``SCALE`` border pixels shaved."""
    model.eval()
    return [psnr(model(lr), hr, shave=SCALE) for lr, hr in data]


def train(
    steps: int, seed: int, batch: int, patch: int, lr: float, device: str = "cpu"
) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_data = pairs(TRAIN_PHOTOS)
    model = build_model("espcn", scale=SCALE, channels=1).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    losses, log = [], []
    model.train()
    for step in range(1, steps + 1):
        # Cosine decay from lr to lr / 100: a high peak rate because the budget is small
        # (3e-3 fell faster than 1e-3 in trial runs), a low end so the last weights settle.
        frac = (step - 1) / steps
        for g in opt.param_groups:
            g["lr"] = lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * frac)))
        x, y = sample_batch(train_data, batch, patch, gen)
        loss = F.mse_loss(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if step % 100 == 0:
            losses[-100:] = [float(v) for v in losses[-100:]]
            elapsed = time.perf_counter() - t0
            mean = float(np.mean(losses[-100:]))
            log.append({"step": step, "seconds": round(elapsed, 1), "train_mse": mean})
            print(f"step {step:5d}  {elapsed:6.1f}s  train mse {mean:.5f}", flush=True)
    model.eval().cpu()
    info = {
        "steps": steps,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "train_seconds": round(time.perf_counter() - t0, 1),
        "batch": batch,
        "lr_patch": patch,
        "hr_patch": patch * SCALE,
        "peak_lr": lr,
        "seed": seed,
        "loss": "mse",
        "optimizer": "adam, cosine to lr/100",
        "torch_threads": torch.get_num_threads(),
        "log": log,
    }
    return model, info


def score(model: torch.nn.Module) -> dict:
    test_data = pairs(TEST_PHOTOS)
    bicubic = BicubicUpscaler(SCALE, 1)
    ours = evaluate(model, test_data)
    ref = evaluate(bicubic, test_data)
    per_photo = {
        n: {"bicubic_psnr": round(b, 3), "espcn_psnr": round(e, 3), "gain_db": round(e - b, 3)}
        for n, b, e in zip(TEST_PHOTOS, ref, ours, strict=True)
    }
    return {
        "test_photos": per_photo,
        "mean_bicubic_psnr": round(float(np.mean(ref)), 3),
        "mean_espcn_psnr": round(float(np.mean(ours)), 3),
        "mean_gain_db": round(float(np.mean(ours) - np.mean(ref)), 3),
    }


@torch.no_grad()
def figure(model: torch.nn.Module, path: Path) -> dict:
    """HR crop, its LR input, bicubic and ESPCN side by side, PSNR in the titles."""
    import matplotlib.pyplot as plt

    name, top, left, size = CROP
    hr = luma(name)[..., top : top + size, left : left + size]
    lr = downscale(hr, SCALE)
    bic = BicubicUpscaler(SCALE, 1)(lr).clamp(0, 1)
    sr = model(lr).clamp(0, 1)
    p_bic, p_sr = psnr(bic, hr, shave=SCALE), psnr(sr, hr, shave=SCALE)
    panels = [
        (F.interpolate(lr, scale_factor=SCALE, mode="nearest"), f"input {size // SCALE}px"),
        (bic, f"bicubic {p_bic:.2f} dB"),
        (sr, f"ESPCN {p_sr:.2f} dB"),
        (hr, "ground truth"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    for ax, (img, title) in zip(axes, panels, strict=True):
        ax.imshow(img[0, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"x{SCALE} super-resolution of a held-out crop ({name}, luma)", fontsize=11)
    save_figure(fig, path)
    return {
        "photo": name,
        "top": top,
        "left": left,
        "size": size,
        "bicubic_psnr": round(p_bic, 3),
        "espcn_psnr": round(p_sr, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=24, help="low-resolution patch side")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    ap.add_argument("--device", default="cpu", help="where to train: cpu, cuda")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", action="store_true", help="only re-score the saved checkpoint")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.out / f"espcn_x{SCALE}.pt"
    if args.report:
        model, extra = load_checkpoint(ckpt)
        info = extra.get("training", {})
    else:
        model, info = train(args.steps, args.seed, args.batch, args.patch, args.lr, args.device)
    metrics = {
        "model": "espcn",
        "scale": SCALE,
        "channels": "luma (ITU-R 601)",
        "degradation": "antialiased bicubic x4 (F.interpolate, antialias=True), clamped",
        "psnr_shave": SCALE,
        "train_photos": list(TRAIN_PHOTOS),
        **score(model),
        "crop": figure(model, args.out / "comparison.png"),
        "training": info,
    }
    if not args.report:
        extra = {k: v for k, v in metrics.items() if k not in ("crop",)}
        save_checkpoint(ckpt, model, extra=extra)
    write_json(args.out / "metrics.json", metrics)
    print(
        f"held-out PSNR: bicubic {metrics['mean_bicubic_psnr']:.2f} dB, "
        f"ESPCN {metrics['mean_espcn_psnr']:.2f} dB ({metrics['mean_gain_db']:+.2f} dB); "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
