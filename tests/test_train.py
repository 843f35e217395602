"""Tests for convscope.train: fit, evaluate, predict, callbacks, files, torchrun."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from convscope.cli import main as cli_main
from convscope.errors import ConvscopeError
from convscope.models import build_model, load_checkpoint, save_checkpoint
from convscope.train import (
    PRESETS,
    Callback,
    EarlyStopping,
    History,
    TrainConfig,
    as_dataset,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    parameter_digest,
    predict,
    resolve_device,
    seed_everything,
    toy_dataset,
)

FAST = TrainConfig(epochs=1, batch_size=32, lr=1e-3, device="cpu")


def main(args: list[str]) -> int:
    """``convscope train ARGS``, the one training command line: the exit status."""
    try:
        cli_main(["train", *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _gfnn(first_layer: str = "fixed", seed: int = 0, **kw: Any) -> nn.Module:
    """A GFNN for the 16x16, 4-class toy images, with repeatable initial weights."""
    seed_everything(seed)
    return build_model("gfnn", num_classes=4, input_size=16, first_layer=first_layer, **kw)


@pytest.fixture(scope="module")
def toy() -> TensorDataset:
    return toy_dataset(128, seed=0)


@pytest.fixture(scope="module")
def toy_test() -> TensorDataset:
    return toy_dataset(64, seed=1)


class Recorder(Callback):
    """Counts every hook and logs the epoch index into ``History.extra``."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: dict[str, int] = {}
        self.stop_after = stop_after

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def on_train_start(self, model: nn.Module, history: History) -> None:
        self._count("train_start")

    def on_epoch_start(self, model: nn.Module, epoch: int, history: History) -> None:
        assert model.training
        self._count("epoch_start")

    def on_batch_end(
        self, model: nn.Module, epoch: int, batch: int, loss: torch.Tensor, history: History
    ) -> None:
        assert loss.ndim == 0 and not loss.requires_grad
        self._count("batch_end")

    def on_epoch_end(self, model: nn.Module, epoch: int, history: History) -> None:
        assert not model.training
        assert history.epochs == epoch + 1  # this epoch is already recorded
        self._count("epoch_end")
        history.log("epoch_index", np.int64(epoch))
        if self.stop_after is not None and epoch >= self.stop_after:
            self.stop_training = True

    def on_train_end(self, model: nn.Module, history: History) -> None:
        self._count("train_end")


# --------------------------------------------------------------------------- config


def test_config_validation_and_round_trip() -> None:
    cfg = TrainConfig()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(lr=0.5).lr == 0.5 and cfg.lr == 1e-3
    for bad in (
        {"optimizer": "rmsprop"},
        {"schedule": "cosine"},
        {"epochs": 0},
        {"lr": -1.0},
        {"grad_clip": 0.0},
    ):
        with pytest.raises(ConvscopeError):
            TrainConfig(**bad)
    with pytest.raises(ConvscopeError, match="unknown"):
        cfg.replace(learning_rate=0.1)


def test_resnet_paper_preset_is_seed_000_schedule() -> None:
    cfg = PRESETS["resnet-paper"]
    assert (cfg.optimizer, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (
        "sgd",
        100,
        0.1,
        0.9,
        1e-4,
    )
    assert cfg.epochs == 90
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg)
    assert sched is not None
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # divided by 10 every 15 epochs
    for epoch in (0, 14, 15, 29, 30, 89):
        assert lrs[epoch] == pytest.approx(0.1 * 0.1 ** (epoch // 15))
    assert PRESETS["gfnn-mnist"].optimizer == "adam"


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConvscopeError):
        resolve_device("no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(ConvscopeError, match="CUDA"):
            resolve_device("cuda")


def test_as_dataset_accepts_common_forms(toy: TensorDataset) -> None:
    x, y = toy.tensors

    class ArrayLike:  # what convscope.data.ArrayDataset offers
        def to_torch(self) -> TensorDataset:
            return TensorDataset(x, y)

    assert len(as_dataset(ArrayLike())) == 128
    pair = as_dataset((x.numpy(), y.numpy().astype(np.int32)))
    assert pair[0][1].dtype == torch.int64
    assert len(as_dataset(x)) == 128
    with pytest.raises(ConvscopeError, match="images but"):
        as_dataset((x, y[:3]))
    with pytest.raises(ConvscopeError, match="cannot use"):
        as_dataset("mnist")


# --------------------------------------------------------------------------- fit


def test_fit_is_repeatable(toy: TensorDataset) -> None:
    digests = []
    for fit_seed in (0, 0, 1):
        model = _gfnn()  # dropout on: the seed must also pin the dropout masks
        fit(model, toy, config=FAST.replace(seed=fit_seed), progress=False)
        digests.append(parameter_digest(model))
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_fixed_layer_is_never_trained(toy: TensorDataset) -> None:
    model = _gfnn("fixed")
    before = model.first.weight.clone()
    opt_params = {id(p) for g in build_optimizer(model, FAST).param_groups for p in g["params"]}
    assert id(model.first.weight) not in opt_params
    assert all(p is not model.first.weight for p in model.parameters())
    fit(model, toy, config=FAST.replace(weight_decay=1e-2), progress=False)
    assert torch.equal(model.first.weight, before)

    model = _gfnn("init")
    before = model.first.weight.detach().clone()
    opt_params = {id(p) for g in build_optimizer(model, FAST).param_groups for p in g["params"]}
    assert id(model.first.weight) in opt_params
    fit(model, toy, config=FAST, progress=False)
    assert not torch.equal(model.first.weight.detach(), before)


def test_loss_decreases_on_real_digits() -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images[:, None] / 16.0, dtype=torch.float32)  # (1797, 1, 8, 8)
    y = torch.as_tensor(d.target, dtype=torch.int64)
    train, test = TensorDataset(x[:320], y[:320]), TensorDataset(x[1500:], y[1500:])
    seed_everything(0)
    model = build_model("gfnn", num_classes=10, input_size=8)
    loss0, _ = evaluate(model, test)
    h = fit(model, train, test, FAST.replace(epochs=3), progress=False)
    assert h.train_loss[-1] < h.train_loss[0]
    assert h.test_loss[-1] < loss0
    assert h.test_acc[-1] > 0.5  # chance is 0.1


def test_metrics_json_and_checkpoint(
    tmp_path: Path, toy: TensorDataset, toy_test: TensorDataset
) -> None:
    seen: list[dict[str, Any]] = []

    class ReadMetrics(Callback):
        def on_epoch_end(self, model: nn.Module, epoch: int, history: History) -> None:
            path = tmp_path / "metrics.json"
            seen.append(json.loads(path.read_text()) if path.exists() else {})

    model = _gfnn()
    cfg = FAST.replace(epochs=2)
    h = fit(model, toy, toy_test, cfg, callbacks=[ReadMetrics()], out_dir=tmp_path, progress=False)
    # metrics.json is rewritten after every epoch, before the next one starts
    assert seen[0] == {} and seen[1]["epochs_completed"] == 1 and not seen[1]["finished"]

    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["finished"] and not m["stopped_early"] and m["epochs_completed"] == 2
    assert TrainConfig.from_dict(m["config"]) == cfg
    assert m["history"] == h.to_dict()
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"):
        assert len(m["history"][key]) == 2
    assert all(0.0 <= a <= 1.0 for a in m["history"]["test_acc"])
    assert m["world_size"] == 1 and m["train_size"] == 128 and m["test_size"] == 64
    assert m["model"]["arch"] == "gfnn" and m["ranks_in_sync"]
    assert m["parameter_digests"] == [parameter_digest(model)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.json"]

    loaded, extra = load_checkpoint(tmp_path / "checkpoint.pt")
    assert parameter_digest(loaded) == parameter_digest(model)
    assert extra["history"]["test_acc"] == m["history"]["test_acc"]


def test_plain_model_gets_metrics_but_no_checkpoint(tmp_path: Path, toy: TensorDataset) -> None:
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 4))
    with pytest.warns(UserWarning, match="build_model"):
        h = fit(model, toy, config=FAST, out_dir=tmp_path, progress=False)
    assert (tmp_path / "metrics.json").is_file()
    assert not (tmp_path / "checkpoint.pt").exists()
    assert h.test_loss == [] and h.epochs == 1  # no test set: no test metrics


def test_corrupt_checkpoint_is_a_convscope_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConvscopeError, match="garbage.pt"):
        load_checkpoint(bad)
    seed_everything(0)
    good = save_checkpoint(tmp_path / "good.pt", build_model("gfnn", input_size=8))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConvscopeError):
        load_checkpoint(cut)
    with pytest.raises(ConvscopeError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_callbacks_once_per_epoch(toy: TensorDataset) -> None:
    rec = Recorder()
    h = fit(_gfnn(), toy, config=FAST.replace(epochs=3), callbacks=[rec], progress=False)
    assert rec.calls == {
        "train_start": 1,
        "epoch_start": 3,
        "epoch_end": 3,
        "batch_end": 3 * 4,  # 128 images, batch 32
        "train_end": 1,
    }
    assert h.extra == {"epoch_index": [0, 1, 2]}


def test_callback_stops_training(tmp_path: Path, toy: TensorDataset) -> None:
    rec = Recorder(stop_after=1)
    h = fit(
        _gfnn(),
        toy,
        config=FAST.replace(epochs=5),
        callbacks=[rec],
        out_dir=tmp_path,
        progress=False,
    )
    assert h.epochs == 2 and rec.calls["epoch_end"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped_early"]


def test_early_stopping(toy: TensorDataset) -> None:
    class Plateau(Callback):
        def on_epoch_end(self, model: nn.Module, epoch: int, history: History) -> None:
            history.log("score", [3.0, 2.0, 2.0, 2.0, 1.0, 0.0][epoch])

    stopper = EarlyStopping("score", patience=2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 4))
    h = fit(
        model, toy, config=FAST.replace(epochs=6), callbacks=[Plateau(), stopper], progress=False
    )
    assert h.epochs == 4 and stopper.best == 2.0 and stopper.best_epoch == 1
    with pytest.raises(ConvscopeError, match="test set"):
        fit(model, toy, config=FAST, callbacks=[EarlyStopping("test_acc")], progress=False)


def test_step_schedule_is_logged(toy: TensorDataset) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 4))
    cfg = FAST.replace(epochs=3, optimizer="sgd", lr=0.4, schedule="step", step_size=1, gamma=0.5)
    h = fit(model, toy, config=cfg, progress=False)
    assert h.lr == pytest.approx([0.4, 0.2, 0.1])


def test_resume_continues_like_an_uninterrupted_run(tmp_path: Path, toy: TensorDataset) -> None:
    cfg = FAST.replace(epochs=2, schedule="step", step_size=1, gamma=0.5)
    straight = _gfnn()
    h_straight = fit(straight, toy, config=cfg, progress=False)

    fit(
        _gfnn(), toy, config=cfg.replace(epochs=1), out_dir=tmp_path, progress=False, save_last=True
    )
    resumed = _gfnn(seed=123)  # different start: every weight must come from last.pt
    h = fit(resumed, toy, config=cfg, out_dir=tmp_path, progress=False, resume=True, save_last=True)
    assert parameter_digest(resumed) == parameter_digest(straight)
    assert h.train_loss == h_straight.train_loss and h.lr == h_straight.lr
    with pytest.raises(ConvscopeError, match="out_dir"):
        fit(_gfnn(), toy, config=cfg, resume=True)


def test_non_finite_loss_is_written_as_null(tmp_path: Path, toy: TensorDataset) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 4))
    with torch.no_grad():
        model[1].weight.fill_(math.nan)
    with pytest.warns(UserWarning):
        h = fit(model, toy, config=FAST, out_dir=tmp_path, progress=False)
    assert math.isnan(h.train_loss[0])
    assert json.loads((tmp_path / "metrics.json").read_text())["history"]["train_loss"] == [None]


# --------------------------------------------------------------------------- evaluate / predict


def test_evaluate_and_predict_agree(toy: TensorDataset) -> None:
    model = _gfnn()
    model.train()
    logits = predict(model, toy, batch_size=50)
    loss, acc = evaluate(model, toy, batch_size=50)
    assert model.training  # the caller's mode is restored
    x, y = toy.tensors
    assert logits.shape == (128, 4)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    torch.testing.assert_close(predict(model, x), logits)
    with pytest.raises(ConvscopeError, match="label"):
        evaluate(model, x)
    with pytest.raises(ConvscopeError, match="floating point"):
        predict(model, (x * 255).to(torch.uint8))


# --------------------------------------------------------------------------- torchrun


def test_torchrun_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    """Two CPU processes under torchrun == one process with the same global batch."""
    args = [
        "--dataset=toy",
        "--limit=128",
        "--epochs=1",
        "--batch-size=32",
        "--optimizer=sgd",
        "--lr=0.05",
        "--dropout=0",
        "--device=cpu",
        "--no-progress",
    ]
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "convscope", "train", *args, f"--out={ddp_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("wrote") == 1  # only rank 0 reports
    assert proc.stdout.count("test accuracy") == 1

    m = json.loads((ddp_dir / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["finished"] and m["train_size"] == 128
    # (a) both processes ended with bitwise identical weights ...
    d0, d1 = m["parameter_digests"]
    assert d0 == d1 and m["ranks_in_sync"]
    # ... which are the ones rank 0 saved
    ddp_model, _ = load_checkpoint(ddp_dir / "checkpoint.pt")
    assert parameter_digest(ddp_model) == d0
    # (b) rank 0 wrote the files, and nothing was left half-written
    assert sorted(p.name for p in ddp_dir.iterdir()) == ["checkpoint.pt", "metrics.json"]

    # (c) one process, same global batch: same data per step, same result up to rounding
    assert main([*args, f"--out={one_dir}"]) == 0
    one_model, _ = load_checkpoint(one_dir / "checkpoint.pt")
    for (name, p), q in zip(one_model.named_parameters(), ddp_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    m1 = json.loads((one_dir / "metrics.json").read_text())
    for key in ("train_loss", "test_loss", "test_acc"):
        assert m1["history"][key] == pytest.approx(m["history"][key], rel=1e-5)


def test_main_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # (--epochs 0 keeps the preset's value in `convscope train`; a negative one is refused)
    assert main(["--dataset=toy", "--epochs=-1", f"--out={tmp_path}"]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err
