"""TensorBoardCallback: what fit and MaxGainCallback write, read back from the event file."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import convscope.train.tensorboard as tb_module
from convscope.cli import main as cli_main
from convscope.errors import ConvscopeError
from convscope.kernels import gfnn_bank
from convscope.models import build_model
from convscope.spectral import maximum_gain
from convscope.train import (
    Callback,
    History,
    MaxGainCallback,
    TensorBoardCallback,
    TrainConfig,
    TrainingInterrupted,
    fit,
    toy_dataset,
)

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    IMAGES,
    SCALARS,
    EventAccumulator,
)

CFG = TrainConfig(epochs=2, batch_size=16, lr=1e-2, device="cpu")


def _tiny(channels: int = 1, size: int = 16, classes: int = 4) -> nn.Module:
    """A two-layer CNN that says its input shape (so the impulse image needs no shape)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, classes),
    )
    model.input_shape = (channels, size, size)  # type: ignore[assignment]
    return model


def _events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0, IMAGES: 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def _as_float32(values: list[float]) -> list[float]:
    """Event files keep scalars as float32."""
    return [float(np.float32(v)) for v in values]


def _png_size(acc: EventAccumulator, tag: str) -> list[tuple[int, int]]:
    sizes = []
    for event in acc.Images(tag):
        img = Image.open(io.BytesIO(event.encoded_image_string))
        img.load()  # decodes the whole PNG
        assert (img.width, img.height) == (event.width, event.height)
        sizes.append((img.width, img.height))
    return sizes


@pytest.mark.filterwarnings("ignore:Sequential was not built")
def test_scalars_are_the_history_one_per_epoch(tmp_path: Path) -> None:
    board = TensorBoardCallback(tmp_path / "tb")
    history = fit(
        _tiny(),
        toy_dataset(48),
        toy_dataset(16, seed=1),
        CFG,
        callbacks=[board],
        out_dir=tmp_path / "run",
        progress=False,
    )
    acc = _events(tmp_path / "tb")
    expected = {
        "loss/train": history.train_loss,
        "loss/validation": history.test_loss,
        "accuracy/train": history.train_acc,
        "accuracy/validation": history.test_acc,
        "learning_rate": history.lr,
        "epoch_seconds": history.seconds,
    }
    assert set(expected) <= set(acc.Tags()["scalars"])
    for tag, values in expected.items():
        steps, logged = _scalars(acc, tag)
        assert steps == [0, 1], tag
        assert logged == _as_float32(values), tag
    assert board._writer is None  # closed at the end
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["tensorboard"]["log_dir"] == str((tmp_path / "tb").resolve())
    assert metrics["history"]["train_loss"] == history.train_loss


def test_max_gain_scalars_whatever_the_callback_order(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    rgb = TensorDataset(torch.rand(32, 3, 8, 8, generator=g), torch.arange(32) % 2)
    gain = MaxGainCallback()
    model = _tiny(channels=3, size=8, classes=2)
    # the TensorBoard callback first: it still gets each epoch's Maximum Gain
    fit(model, rgb, None, CFG, callbacks=[TensorBoardCallback(tmp_path), gain], progress=False)
    acc = _events(tmp_path)
    final = maximum_gain(model)
    assert len(gain.gains) == 2 and gain.gains[-1] == pytest.approx(final)
    for c in range(3):
        steps, logged = _scalars(acc, f"max_gain/channel_{c}")
        assert steps == [0, 1]
        assert logged == _as_float32([epoch[c] for epoch in gain.gains])
        assert logged[-1] == pytest.approx(final[c], rel=1e-6)
    _, mean = _scalars(acc, "max_gain")
    assert mean == _as_float32([sum(epoch) / 3 for epoch in gain.gains])
    assert "loss/validation" not in acc.Tags()["scalars"]  # no test set, no validation curve


def test_figures_for_a_model_with_a_kernel_bank(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kernels = [k.name for k in gfnn_bank(n_edges=4)]
    model = build_model("gfnn", in_channels=1, input_size=16, num_classes=4, kernels=kernels)
    image = toy_dataset(1, seed=2)[0][0]
    board = TensorBoardCallback(tmp_path, figures=True, every=2, image=image)
    fit(model, toy_dataset(32), None, CFG.replace(epochs=3), callbacks=[board], progress=False)
    acc = _events(tmp_path)
    images = set(acc.Tags()["images"])
    assert images == {"spectrum/channel_0", "filter_scores/pixel_map", "filter_scores/image"}
    # every 2 epochs (epoch index 1) and after the last (index 2); 16 px drawn 8x
    assert [e.step for e in acc.Images("spectrum/channel_0")] == [1, 2]
    assert [e.step for e in acc.Images("filter_scores/pixel_map")] == [1, 2]
    assert _png_size(acc, "spectrum/channel_0") == [(128, 128)] * 2
    assert _png_size(acc, "filter_scores/pixel_map") == [(128, 128)] * 2
    assert _png_size(acc, "filter_scores/image") == [(128, 128)]


def test_figures_without_a_kernel_bank_are_the_spectrum_only(tmp_path: Path) -> None:
    image = toy_dataset(1, seed=2)[0][0]
    board = TensorBoardCallback(tmp_path, figures=True, image=image)
    fit(_tiny(), toy_dataset(16), None, CFG.replace(epochs=1), callbacks=[board], progress=False)
    acc = _events(tmp_path)
    assert set(acc.Tags()["images"]) == {"spectrum/channel_0"}
    assert _png_size(acc, "spectrum/channel_0") == [(128, 128)]


class _FailAt(Callback):
    def __init__(self, epoch: int, error: BaseException) -> None:
        self.epoch, self.error = epoch, error

    def on_epoch_end(self, model: nn.Module, epoch: int, history: History) -> None:
        if epoch == self.epoch:
            raise self.error


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_the_writer_is_closed_on_an_error(tmp_path: Path, error: BaseException) -> None:
    board = TensorBoardCallback(tmp_path)
    expected = TrainingInterrupted if isinstance(error, KeyboardInterrupt) else RuntimeError
    with pytest.raises(expected):
        fit(_tiny(), toy_dataset(16), None, CFG, callbacks=[board, _FailAt(1, error)],
            progress=False)  # fmt: skip
    assert board._writer is None
    steps, _ = _scalars(_events(tmp_path), "loss/train")
    assert steps == [0, 1]  # the failing epoch's scalars were written before its error


def test_only_rank_0_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tb_module, "_is_rank0", lambda: False)
    board = TensorBoardCallback(tmp_path / "tb", figures=True)
    fit(_tiny(), toy_dataset(16), None, CFG.replace(epochs=1), callbacks=[board], progress=False)
    assert not (tmp_path / "tb").exists()


def _cli(args: list[str]) -> int:
    try:
        cli_main(["train", *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


TRAIN = ["--dataset", "toy", "--limit", "32", "--epochs", "1", "--batch-size", "32"]
TRAIN += ["--device", "cpu", "--n-edges", "4", "--no-progress"]


def test_cli_writes_events_under_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    board, out = tmp_path / "tb", tmp_path / "run"
    args = [*TRAIN, "--tensorboard", str(board), "--tensorboard-figures", "--out", str(out)]
    assert _cli(args) == 0
    assert f"tensorboard --logdir {board}" in capsys.readouterr().out
    acc = _events(board)
    metrics = json.loads((out / "metrics.json").read_text())
    assert _scalars(acc, "loss/train")[1] == _as_float32(metrics["history"]["train_loss"])
    assert {"spectrum/channel_0", "filter_scores/pixel_map"} <= set(acc.Tags()["images"])
    assert metrics["tensorboard"] == {"log_dir": str(board.resolve()), "figures": True, "every": 1}


@pytest.mark.parametrize("bad", ["file", "figures-alone"])
def test_cli_refuses_bad_input_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    out = tmp_path / "run"
    if bad == "file":
        (tmp_path / "taken").write_text("not a folder")
        extra = ["--tensorboard", str(tmp_path / "taken")]
    else:
        extra = ["--tensorboard-figures"]
    assert _cli([*TRAIN, *extra, "--out", str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --tensorboard"), lines
    assert not out.exists()  # refused before any work


def _no_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "tensorboard" or name.startswith(("tensorboard.", "torch.utils.tensorboard")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # type: ignore[arg-type]


def test_without_tensorboard_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_tensorboard(monkeypatch)
    with pytest.raises(ConvscopeError) as info:
        TensorBoardCallback(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "pip install" in message and "tensorboard" in message
    assert _cli([*TRAIN, "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConvscopeError, match="every"):
        TensorBoardCallback(tmp_path, every=0)
    with pytest.raises(ConvscopeError, match="one"):
        TensorBoardCallback(tmp_path, image=torch.zeros(2, 1, 4, 4))
