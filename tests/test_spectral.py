"""Spectral response: the toy CNN of seed 004 section III-B, Maximum Gain, diagnose."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope import spectral as sp
from convscope.data import sample_photo
from convscope.errors import ConvscopeError
from convscope.kernels import gaussian_kernel
from convscope.train import MaxGainCallback, lightning_callback


class ToyCNN(nn.Module):
    """conv with a 7x7 Gaussian (sigma 1), then ReLU; 'same' padding."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.from_numpy(gaussian_kernel(7, 1.0))[None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(F.conv2d(x, self.w.to(x.dtype), padding=3))


@pytest.fixture(scope="module")
def red() -> torch.Tensor:
    """Mean-subtracted red channel of a real photo, (1, 1, 96, 128), float64."""
    r = sample_photo("chelsea")[100:196, 150:278, 0].astype(np.float64)
    return torch.from_numpy(r - r.mean())[None, None]


def _placed(kernel: torch.Tensor, shape: tuple[int, int], r: int, c: int) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float64)
    k = kernel.shape[-1] // 2
    out[r - k : r + k + 1, c - k : c + k + 1] = kernel
    return out


def test_active_pixel_derivative_is_the_kernel_and_spectrum_the_gaussian(red: torch.Tensor) -> None:
    toy = ToyCNN()
    z = toy(red)[0, 0]
    active = torch.nonzero(z[10:-10, 10:-10] > 0)[0] + 10
    r, c = int(active[0]), int(active[1])
    p = torch.zeros_like(z)[None]
    p[0, r, c] = 1.0
    spec, d = sp.transfer_function(toy, red[0], projection=p, window=None)
    kernel = toy.w[0, 0]
    # the Gaussian is symmetric, so the flipped impulse response is the kernel itself
    torch.testing.assert_close(d, _placed(kernel, tuple(z.shape), r, c), rtol=0, atol=1e-15)
    padded = torch.zeros_like(z)
    padded[:7, :7] = kernel
    expected = 20 * torch.log10(torch.fft.fftshift(torch.fft.fft2(padded).abs()))
    torch.testing.assert_close(spec, expected, rtol=0, atol=1e-9)
    # a low-pass filter: the gain is highest at DC (the centre after fftshift)
    h, w = spec.shape
    assert spec[h // 2, w // 2] == spec.max()
    assert spec[h // 2, w // 2].item() == pytest.approx(
        20 * math.log10(kernel.sum().item()), abs=1e-9
    )


def test_inactive_pixel_gives_zero_derivative(red: torch.Tensor) -> None:
    toy = ToyCNN()
    z = toy(red)[0, 0]
    off = torch.nonzero(z[10:-10, 10:-10] == 0)[0] + 10
    p = torch.zeros_like(z)[None]
    p[0, int(off[0]), int(off[1])] = 1.0
    spec, d = sp.transfer_function(toy, red[0], projection=p, window=None)
    assert torch.count_nonzero(d) == 0
    assert spec.max() < -300  # floored, not -inf or NaN


def test_projection_of_ones_superposes_the_active_kernels(red: torch.Tensor) -> None:
    toy = ToyCNN()
    z = toy(red)
    _, d = sp.transfer_function(toy, red[0], projection=torch.ones_like(z[0]), window=None)
    mask = (z > 0).to(torch.float64)
    expected = F.conv_transpose2d(mask, toy.w, padding=3)[0, 0]
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-12)


def test_impulse_image_through_the_toy_cnn() -> None:
    toy = ToyCNN()
    x = sp.impulse_image((1, 33, 33), dtype=torch.float64)
    assert x[0, 0, 16, 16] == 1.0 and x.sum() == 1.0  # 255 / 255
    raw = sp.impulse_image((1, 33, 33), scale=1.0, dtype=torch.float64)
    assert raw.max() == 255.0
    z = toy(raw)
    _, d = sp.transfer_function(toy, raw[0], projection=torch.ones_like(z[0]), window=None)
    # exactly the 7x7 outputs within the kernel's reach are active, so the derivative is
    # the kernel summed over those 49 placements (a 13x13 patch around the impulse)
    assert torch.equal((z[0, 0] > 0).nonzero().amin(0), torch.tensor([13, 13]))
    reach = F.conv2d(F.pad(torch.ones(1, 1, 7, 7, dtype=torch.float64), (6, 6, 6, 6)), toy.w)
    torch.testing.assert_close(d, _placed(reach[0, 0], (33, 33), 16, 16), rtol=1e-12, atol=1e-14)
    spec, _ = sp.transfer_function(toy, raw[0], projection=torch.ones_like(z[0]))  # Hann
    assert torch.isfinite(spec).all()


def test_impulse_image_preprocessing_and_errors() -> None:
    x = sp.impulse_image((3, 8, 8), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert x.shape == (1, 3, 8, 8)
    torch.testing.assert_close(x[0, :, 4, 4], torch.full((3,), 2.0))
    torch.testing.assert_close(x[0, :, 0, 0], torch.full((3,), -2.0))
    with pytest.raises(ConvscopeError, match="shape"):
        sp.impulse_image((8, 8))


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 5)
        )
        .double()
        .eval()
    )


def test_softmax_projection_is_one_over_score() -> None:
    model = _classifier()
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    d_soft = sp.data_derivative(model, x)
    logits = model(x)
    i = int(logits.argmax())
    xg = x.clone().requires_grad_(True)
    score = torch.softmax(model(xg), 1)[0, i]
    (g,) = torch.autograd.grad(score, xg)
    torch.testing.assert_close(d_soft, g / score.detach(), rtol=1e-12, atol=1e-15)
    d_logit = sp.data_derivative(model, x, on="logit")
    (gl,) = torch.autograd.grad(model(xg)[0, i], xg)
    torch.testing.assert_close(d_logit, gl)
    # batched equals one by one
    xs = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    batch = sp.data_derivative(model, xs)
    for k in range(3):
        torch.testing.assert_close(batch[k : k + 1], sp.data_derivative(model, xs[k : k + 1]))


def test_maximum_gain_is_the_peak_per_channel() -> None:
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)
        )
        .double()
        .eval()
    )
    gains = sp.maximum_gain(model, shape=(3, 16, 16))
    assert len(gains) == 3
    x = sp.impulse_image((3, 16, 16), dtype=torch.float64)
    for ch in range(3):
        spec, _ = sp.transfer_function(model, x, channel=ch)
        assert gains[ch] == pytest.approx(float(spec.max()))
    with pytest.raises(ConvscopeError, match="input shape"):
        sp.maximum_gain(model)
    with pytest.raises(ConvscopeError, match="channel 5"):
        sp.transfer_function(model, x, channel=5)


def test_spectral_imports_nothing_from_train() -> None:
    """spectral is analysis only; the callbacks that log it live in convscope.train."""
    import subprocess
    import sys

    code = (
        "import sys, convscope.spectral as sp; "
        "assert 'convscope.train' not in sys.modules, sorted(sys.modules); "
        "assert not hasattr(sp, 'MaxGainCallback') and not hasattr(sp, 'lightning_callback'); "
        "import convscope.train as tr; "
        "assert tr.MaxGainCallback.__module__ == 'convscope.train.max_gain'; "
        "assert 'convscope.runs' not in sys.modules, 'train must not import runs'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_max_gain_callback_logs_every_epoch(tmp_path: Path) -> None:
    from convscope.models import build_model
    from convscope.train import TrainConfig, fit, toy_dataset

    model = build_model("gfnn", input_size=16, num_classes=4)
    cb = MaxGainCallback()
    hist = fit(model, toy_dataset(64), toy_dataset(32, seed=1),
               TrainConfig(epochs=2, batch_size=32), callbacks=[cb], out_dir=tmp_path,
               progress=False)  # fmt: skip
    assert len(hist.extra["max_gain"]) == 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["history"]["extra"]["max_gain"] == hist.extra["max_gain"]
    assert cb.seconds > 0
    assert model.training is False  # fit leaves it in eval; the callback restored the mode


@pytest.mark.parametrize(
    "curve,pattern",
    [
        ([-30, -25, -21, -18, -16.5, -15.5, -15, -14.8, -14.7, -14.7, -14.6, -14.6], "converging"),
        ([-30, -29, -28, -27, -26, -25, -24, -23, -22, -21, -20, -19], "too low or keep training"),
        ([-30, -22, -27, -19, -26, -18, -25, -20, -27, -17, -24, -21], "rate too high"),
        (
            [-20, -19.8, -19.7, -19.6, -19.6, -19.5, -17, -21, -16.5, -22, -17, -21.5],
            "overfitting - stop",
        ),
    ],
)
def test_diagnose_names_the_four_patterns(curve: list[float], pattern: str) -> None:
    d = sp.diagnose(curve)
    assert d.pattern == pattern, d
    assert d.advice
    assert sp.diagnose({"extra": {"max_gain": curve}}).pattern == pattern


def test_diagnose_errors_and_short_curves() -> None:
    # a short rising curve is not judged (a 4-epoch climb used to read as "rate too high")
    for curve in ([1.0, 2.0], [-30.0, -20.0, -12.0, -9.0], [-30, -22, -27, -19, -26, -18, -25]):
        d = sp.diagnose(curve)
        assert d.pattern == "not enough epochs", d
        assert d.advice == (
            f"{len(curve)} epochs of max_gain: the curve needs at least 8 before its pattern "
            "can be read; train longer"
        )
        assert d.variability == sp.variability(curve)
    assert sp.MIN_EPOCHS == 8
    # 8 epochs of the same jumps are judged
    assert sp.diagnose([-30, -22, -27, -19, -26, -18, -25, -20]).pattern == "rate too high"
    assert sp.diagnose([]).pattern == "not enough epochs"
    with pytest.raises(ConvscopeError, match="MaxGainCallback"):
        sp.diagnose({"train_loss": [1, 2, 3, 4]})


def test_spectrum_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    from PIL import Image

    from convscope.models import build_model, load_checkpoint, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("gfnn", input_size=16))
    cli = [sys.executable, "-m", "convscope.cli", "spectrum"]
    run = [*cli, "--checkpoint", str(ckpt), "--device", "cpu"]
    proc = subprocess.run([*run, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "a" / "spectrum.json").read_text())
    model, _ = load_checkpoint(ckpt)
    assert m["maximum_gain_db"] == pytest.approx(sp.maximum_gain(model), abs=1e-4)
    assert m["model"]["spec"] == str(ckpt) and m["input"]["shape"] == [1, 16, 16]
    assert (tmp_path / "a" / "transfer_function.png").stat().st_size > 0
    # --checkpoint is an alias of --model: the same metrics
    alias = [*cli, "--model", str(ckpt), "--device", "cpu", "--out", str(tmp_path / "a2")]
    proc = subprocess.run(alias, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "a2" / "spectrum.json").read_text()) == m
    # an RGB operating point for a grey model is converted (luma), as the library does it
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(rgb)
    proc = subprocess.run(
        [*run, "--image", str(rgb), "--out", str(tmp_path / "b")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    mb = json.loads((tmp_path / "b" / "spectrum.json").read_text())
    assert mb["input"]["converted"] == "RGB -> grey (ITU-R 601-2 luma)"
    assert mb["input"]["original_shape"] == [3, 16, 16] and mb["input"]["shape"] == [1, 16, 16]
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    x = (torch.tensor([200, 10, 10]).view(1, 3, 1, 1) / 255 * luma).sum(1, keepdim=True)
    d = sp.data_derivative(model, x.expand(1, 1, 16, 16).contiguous())[0]
    assert mb["maximum_gain_db"] == pytest.approx([float(sp.spectrum_db(d, None).amax())], abs=1e-6)
    # a torchvision classifier by name: weights only from the local cache (empty here)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home")}
    tv = [*cli, "--model", "resnet18", "--device", "cpu", "--no-progress"]
    proc = subprocess.run([*tv, "--weights", "DEFAULT", "--out", str(tmp_path / "c")],
                          capture_output=True, text=True, env=env)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "not in the local cache" in lines[0]
    proc = subprocess.run([*tv, "--out", str(tmp_path / "d")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(warned) == 1 and warned[0].startswith("warning: resnet18 "), proc.stderr
    assert "untrained" in warned[0]
    md = json.loads((tmp_path / "d" / "spectrum.json").read_text())
    assert len(md["maximum_gain_db"]) == 3 and md["model"]["trained"] is False


def test_committed_sweep_reads_as_the_paper_says() -> None:
    # The LeNet learning-rate sweep of experiments/spectral_sweep.py (seed 004 Fig. 8, 9),
    # committed under experiments/results/spectral/: the variability of the Maximum-Gain
    # curve rises from x1 to x4 and diagnose() names the x4 run, not the x1 run.
    path = Path(__file__).resolve().parents[1] / "experiments/results/spectral/spectral_sweep.json"
    runs = json.loads(path.read_text())
    curve = {k: runs[k]["history"]["extra"]["max_gain"] for k in runs}
    assert all(len(c) == 20 for k, c in curve.items() if k.startswith("lr "))
    assert sp.variability(curve["lr x4"]) > 2 * sp.variability(curve["lr x1"])
    assert sp.diagnose(curve["lr x4"]).pattern == "rate too high"
    assert sp.diagnose(curve["lr x1"]).pattern != "rate too high"
    assert sp.diagnose(curve["lr x1/10"]).pattern == "too low or keep training"


def test_committed_sweep_fields_and_page_follow_the_code() -> None:
    from _scripts import experiment

    sweep = experiment("spectral_sweep")
    runs = json.loads((sweep.RESULTS / "spectral_sweep.json").read_text())
    for name, r in runs.items():  # the stored derived fields are what the code computes
        d = sp.diagnose(r["history"])
        assert (r["variability"], r["diagnosis"]) == (d.variability, d.pattern), name
    page = (sweep.RESULTS / "spectral_sweep.md").read_text()
    reading = sweep._reading(runs)
    assert reading and "\n".join(reading) in page  # regenerated, not typed
    for name, r in runs.items():
        assert f"| {name} | {r['lr']:.4g} |" in page and f"| {r['variability']:.3f} |" in page


@pytest.mark.parametrize("with_val", [True, False])
def test_lightning_callback_logs_max_gain_each_epoch(tmp_path: Path, with_val: bool) -> None:
    pytest.importorskip("lightning")
    import csv

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from convscope.models import build_model
    from convscope.train import toy_dataset

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model("gfnn", input_size=16, num_classes=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.1)

    modes: list[tuple[str, bool, bool]] = []

    class Spy(pl.Callback):  # runs after the Maximum-Gain callback: sees the restored mode
        def on_validation_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            if not trainer.sanity_checking:
                modes.append(("val", pl_module.training, pl_module.net.training))

        def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            modes.append(("train", pl_module.training, pl_module.net.training))

    torch.manual_seed(0)
    module = Module()
    cb = lightning_callback()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[cb, Spy()],
    )
    data = toy_dataset(n=64)
    train = DataLoader(data, batch_size=16, shuffle=True)
    val = DataLoader(toy_dataset(n=32, seed=1), batch_size=16) if with_val else None
    trainer.fit(module, train, val)

    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).read_text().splitlines()))
    gains = [float(r["max_gain"]) for r in rows if r.get("max_gain")]
    assert len(gains) == 2 and len(cb.times) == 2
    assert gains[-1] == pytest.approx(sp.maximum_gain(module.net.eval())[0], abs=1e-4)
    if with_val:
        assert any(r.get("val_loss") for r in rows)
        assert ("val", False, False) in modes
    assert ("train", True, True) in modes
    assert all(m[1] == m[2] == (m[0] == "train") for m in modes)


def test_lightning_callback_without_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)  # import raises ImportError
    with pytest.raises(ConvscopeError, match=r"convscope\[interop\]"):
        lightning_callback()


def test_hann_window_is_the_symmetric_one_by_hand() -> None:
    """Seed 004 windows the derivative with a Hann window zero at both ends: the symmetric
    form 0.5 - 0.5 cos(2 pi n / (N - 1)), as np.hanning has it (not torch's default
    periodic one, which is not zero at the last sample)."""
    w = sp.hann_window2d(5, 3)
    col = torch.tensor([0.0, 0.5, 1.0, 0.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(w, torch.outer(col, torch.tensor([0.0, 1.0, 0.0]).double()))
    torch.testing.assert_close(
        sp.hann_window2d(7, 10), torch.from_numpy(np.outer(np.hanning(7), np.hanning(10)))
    )
    np.testing.assert_allclose(sp.hann_window2d(1, 4)[0].numpy(), np.hanning(4), atol=1e-15)
    d = torch.randn(2, 6, 8, dtype=torch.float64)
    ref = 20 * np.log10(np.abs(np.fft.fftshift(np.fft.fft2(d.numpy() * np.outer(
        np.hanning(6), np.hanning(8))), axes=(-2, -1))))  # fmt: skip
    np.testing.assert_allclose(sp.spectrum_db(d, "hann").numpy(), ref, rtol=1e-12, atol=1e-9)


def test_committed_toy_and_models_are_what_the_script_measures(tmp_path: Path) -> None:
    from _scripts import experiment

    toy = experiment("spectral_toy")
    stored = json.loads((toy.OUT / "toy_and_models.json").read_text())
    paths = toy.checkpoints(None)
    assert [m["model"] for m in stored["models"]] == list(paths)  # committed checkpoints only
    again = toy.compare_models(paths, tmp_path)
    for a, b in zip(again, stored["models"], strict=True):
        assert a["test_error"] == pytest.approx(b["test_error"], abs=1e-12)
        assert a["maximum_gain_db"] == pytest.approx(b["maximum_gain_db"], abs=1e-4)
    assert (tmp_path / "fig6_models.png").is_file()
