"""Train a super-resolution network on scikit-image photos: ESPCN x4 or EDSR-baseline x2/x4.

``--model espcn`` is seed 001's "4-layer PixelShuffle" network; ``--model edsr_baseline`` is
EDSR's baseline (16 residual blocks of width 64), the model for which seed 001 quotes the
storage cost of the store-the-decisions baseline. Luma (ITU-R 601) patches of the bundled
photographs; the low-resolution input is the antialiased bicubic reduction
(:func:`convscope.models.sr.downscale`); MSE loss, Adam with a cosine schedule, a fixed number
of steps on one CPU thread. Two photos are held out and scored
against the bicubic upscaler (PSNR on luma, ``scale`` border pixels shaved).

Writes into ``experiments/results/<model>/`` (``espcn`` or ``edsr``): ``<model>_x<scale>.pt``
(a convscope checkpoint), ``metrics[_x<scale>].json`` and ``comparison[_x<scale>].png``
(bicubic vs the network on a held-out crop); ESPCN x4 keeps the plain names.

    python experiments/train_sr.py                  # ESPCN x4, 3,000 steps: 3-6 minutes, 1 thread
    python experiments/train_sr.py --report         # re-score the saved checkpoint only
    python experiments/train_sr.py --device cuda --steps 30000 --batch 64   # the committed ESPCN
    python experiments/train_sr.py --model edsr_baseline --scale 4 --steps 3000 --batch 8 \
        --lr 5e-4                                   # the committed EDSR x4 (CPU, about an hour)
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from convscope.data import prepare_for_model, sample_photo
from convscope.io import write_json
from convscope.models import BicubicUpscaler, build_model, load_checkpoint, save_checkpoint
from convscope.models.sr import downscale, psnr
from convscope.report.figures import save_figure

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"espcn": ("espcn", "ESPCN"), "edsr_baseline": ("edsr", "EDSR")}
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


def luma(name: str, scale: int) -> torch.Tensor:
    """A sample photo as luma (1, 1, H, W) float32 in [0, 1], cropped to multiples of scale."""
    rgb = torch.from_numpy(sample_photo(name)).permute(2, 0, 1)[None].float() / 255.0
    y = prepare_for_model(rgb, 1)
    h, w = (s - s % scale for s in y.shape[-2:])
    return y[..., :h, :w].contiguous()


def pairs(names: tuple[str, ...], scale: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(low-res, high-res) luma pairs of whole photos."""
    out = []
    for n in names:
        hr = luma(n, scale)
        out.append((downscale(hr, scale), hr))
    return out


def sample_batch(
    data: list[tuple[torch.Tensor, torch.Tensor]], batch: int, patch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    scale = data[0][1].shape[-1] // data[0][0].shape[-1]
    """Random aligned (LR patch, HR patch) pairs, photos drawn by area, flips and rot90."""
    areas = torch.tensor([float(lr.numel()) for lr, _ in data])
    which = torch.multinomial(areas, batch, replacement=True, generator=gen)
    xs, ys = [], []
    for k in which.tolist():
        lr, hr = data[k]
        i = int(torch.randint(lr.shape[-2] - patch + 1, (1,), generator=gen))
        j = int(torch.randint(lr.shape[-1] - patch + 1, (1,), generator=gen))
        x = lr[0, :, i : i + patch, j : j + patch]
        y = hr[0, :, scale * i : scale * (i + patch), scale * j : scale * (j + patch)]
        aug = int(torch.randint(8, (1,), generator=gen))
        if aug & 4:
            x, y = x.flip(-1), y.flip(-1)
        x, y = torch.rot90(x, aug & 3, (-2, -1)), torch.rot90(y, aug & 3, (-2, -1))
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """PSNR (dB) of ``model`` on each whole photo, ``scale`` border pixels shaved."""
    model.eval()
    return [psnr(model(lr), hr, shave=model.scale) for lr, hr in data]


def train(
    arch: str,
    scale: int,
    steps: int,
    seed: int,
    batch: int,
    patch: int,
    lr: float,
    device: str = "cpu",
) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_data = pairs(TRAIN_PHOTOS, scale)
    model = build_model(arch, scale=scale, channels=1).to(device)
    info = fit(model, model.parameters(), train_data, gen, scale, steps, seed, batch, patch, lr,
               device)  # fmt: skip
    model.cpu()
    return model, info


def fit(
    model: torch.nn.Module,
    params: Any,
    train_data: list[tuple[torch.Tensor, torch.Tensor]],
    gen: torch.Generator,
    scale: int,
    steps: int,
    seed: int,
    batch: int,
    patch: int,
    lr: float,
    device: str = "cpu",
) -> dict:
    """The training loop (MSE, Adam on ``params``, cosine schedule); returns its record.

    ``experiments/train_i2i.py`` trains CycleGAN's generator with it too.
    """
    opt = torch.optim.Adam(params, lr=lr)
    t0 = time.perf_counter()
    losses: list[Any] = []
    log = []
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
            print(f"step {step:5d}  {elapsed:6.1f}s  train mse {mean:.6f}", flush=True)
    model.eval()
    return {
        "steps": steps,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "train_seconds": round(time.perf_counter() - t0, 1),
        "batch": batch,
        "lr_patch": patch,
        "hr_patch": patch * scale,
        "peak_lr": lr,
        "seed": seed,
        "loss": "mse",
        "optimizer": "adam, cosine to lr/100",
        "torch_threads": torch.get_num_threads(),
        "log": log,
    }


def score(model: torch.nn.Module, key: str) -> dict:
    """Held-out PSNR of ``model`` and of bicubic, per photo and on average (``key``: its name)."""
    test_data = pairs(TEST_PHOTOS, model.scale)
    bicubic = BicubicUpscaler(model.scale, 1)
    ours = evaluate(model, test_data)
    ref = evaluate(bicubic, test_data)
    per_photo = {
        n: {"bicubic_psnr": round(b, 3), f"{key}_psnr": round(e, 3), "gain_db": round(e - b, 3)}
        for n, b, e in zip(TEST_PHOTOS, ref, ours, strict=True)
    }
    return {
        "test_photos": per_photo,
        "mean_bicubic_psnr": round(float(np.mean(ref)), 3),
        f"mean_{key}_psnr": round(float(np.mean(ours)), 3),
        "mean_gain_db": round(float(np.mean(ours) - np.mean(ref)), 3),
    }


@torch.no_grad()
def figure(model: torch.nn.Module, key: str, label: str, path: Path) -> dict:
    """HR crop, its LR input, bicubic and the network side by side, PSNR in the titles."""
    import matplotlib.pyplot as plt

    scale = model.scale
    name, top, left, size = CROP
    hr = luma(name, scale)[..., top : top + size, left : left + size]
    lr = downscale(hr, scale)
    bic = BicubicUpscaler(scale, 1)(lr).clamp(0, 1)
    sr = model(lr).clamp(0, 1)
    p_bic, p_sr = psnr(bic, hr, shave=scale), psnr(sr, hr, shave=scale)
    panels = [
        (F.interpolate(lr, scale_factor=scale, mode="nearest"), f"input {size // scale}px"),
        (bic, f"bicubic {p_bic:.2f} dB"),
        (sr, f"{label} {p_sr:.2f} dB"),
        (hr, "ground truth"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    for ax, (img, title) in zip(axes, panels, strict=True):
        ax.imshow(img[0, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"x{scale} super-resolution of a held-out crop ({name}, luma)", fontsize=11)
    save_figure(fig, path)
    return {
        "photo": name,
        "top": top,
        "left": left,
        "size": size,
        "bicubic_psnr": round(p_bic, 3),
        f"{key}_psnr": round(p_sr, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="espcn")
    ap.add_argument("--scale", type=int, choices=(2, 4), default=4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=24, help="low-resolution patch side")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    ap.add_argument("--device", default="cpu", help="where to train: cpu, cuda")
    ap.add_argument("--out", type=Path, default=None, help="default: experiments/results/<model>")
    ap.add_argument("--report", action="store_true", help="only re-score the saved checkpoint")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    key, label = MODELS[args.model]
    out = args.out or RESULTS / key
    # ESPCN x4, the first model trained here, keeps the plain file names.
    tag = "" if (key, args.scale) == ("espcn", 4) else f"_x{args.scale}"
    ckpt = out / f"{key}_x{args.scale}.pt"
    if args.report:
        model, extra = load_checkpoint(ckpt)
        info = extra.get("training", {})
    else:
        model, info = train(
            args.model,
            args.scale,
            args.steps,
            args.seed,
            args.batch,
            args.patch,
            args.lr,
            args.device,
        )
    metrics = {
        "model": args.model,
        "scale": args.scale,
        "channels": "luma (ITU-R 601)",
        "degradation": (
            f"antialiased bicubic x{args.scale} (F.interpolate, antialias=True), clamped"
        ),
        "psnr_shave": args.scale,
        "train_photos": list(TRAIN_PHOTOS),
        **score(model, key),
        "crop": figure(model, key, label, out / f"comparison{tag}.png"),
        "training": info,
    }
    if not args.report:
        extra = {k: v for k, v in metrics.items() if k not in ("crop",)}
        save_checkpoint(ckpt, model, extra=extra)
    write_json(out / f"metrics{tag}.json", metrics)
    print(
        f"held-out PSNR: bicubic {metrics['mean_bicubic_psnr']:.2f} dB, "
        f"{label} {metrics[f'mean_{key}_psnr']:.2f} dB ({metrics['mean_gain_db']:+.2f} dB); "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
