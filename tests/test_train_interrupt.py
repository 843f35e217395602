"""Ctrl-C in convscope.train.fit: whole, consistent files and a message saying what was kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import convscope.train.loop as loop
from convscope.cli import main as cli_main
from convscope.io import atomic_path
from convscope.models import build_model, load_checkpoint
from convscope.train import (
    Callback,
    History,
    TrainConfig,
    TrainingInterrupted,
    fit,
    parameter_digest,
    seed_everything,
    toy_dataset,
)

CFG = TrainConfig(epochs=2, batch_size=32, lr=1e-3, device="cpu")
FILES = {"metrics.json", "checkpoint.pt", "last.pt"}


def _gfnn(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return build_model("gfnn", num_classes=4, input_size=16)


@pytest.fixture(scope="module")
def toy() -> TensorDataset:
    return toy_dataset(64, seed=0)


def assert_consistent(out: Path) -> dict[str, Any] | None:
    """No half-written or temporary files; metrics that say finished sit beside their weights.

    Returns the metrics on disk (``None`` when there are none).
    """
    names = {p.name for p in out.iterdir()} if out.exists() else set()
    assert names <= FILES, f"stray files: {sorted(names - FILES)}"
    if "metrics.json" not in names:
        return None
    m: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    if m["finished"]:
        loaded, _ = load_checkpoint(out / "checkpoint.pt")
        assert parameter_digest(loaded) == m["parameter_digests"][0]
    return m


class InterruptAt(Callback):
    """Raises KeyboardInterrupt from one hook, as Ctrl-C there would."""

    def __init__(self, hook: str, epoch: int | None = None) -> None:
        self.hook, self.epoch = hook, epoch

    def _maybe(self, hook: str, epoch: int | None = None) -> None:
        if hook == self.hook and (self.epoch is None or epoch == self.epoch):
            raise KeyboardInterrupt

    def on_batch_end(
        self, model: nn.Module, epoch: int, batch: int, loss: torch.Tensor, history: History
    ) -> None:
        self._maybe("batch_end", epoch)

    def on_epoch_end(self, model: nn.Module, epoch: int, history: History) -> None:
        self._maybe("epoch_end", epoch)

    def on_train_end(self, model: nn.Module, history: History) -> None:
        self._maybe("train_end")


@pytest.mark.parametrize("where", ["checkpoint", "final_metrics"])
def test_interrupt_while_writing_the_final_files(
    tmp_path: Path, toy: TensorDataset, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # an earlier, finished run in the folder: its metrics say finished, its weights differ
    old = _gfnn(seed=5)
    fit(old, toy, config=CFG.replace(epochs=1), out_dir=tmp_path, progress=False)
    old_digest = parameter_digest(old)

    real_save, real_write_json = torch.save, loop.write_json

    def save_half(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if Path(f).name.startswith(".checkpoint.pt"):  # save_checkpoint's temporary file
            Path(f).write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt
        real_save(obj, f, *args, **kwargs)

    def write_half(path: Any, obj: Any) -> Path:
        if obj.get("finished"):
            with atomic_path(path) as tmp:
                tmp.write_text('{"finished": tr')
                raise KeyboardInterrupt
        return real_write_json(path, obj)

    if where == "checkpoint":
        monkeypatch.setattr(torch, "save", save_half)
    else:
        monkeypatch.setattr(loop, "write_json", write_half)
    model = _gfnn(seed=1)
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, toy, config=CFG, out_dir=tmp_path, progress=False)
    assert isinstance(info.value, KeyboardInterrupt)
    monkeypatch.undo()

    m = assert_consistent(tmp_path)
    assert m is not None and not m["finished"] and m["epochs_completed"] == 2
    checkpoint_digest = parameter_digest(load_checkpoint(tmp_path / "checkpoint.pt")[0])
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("interrupted after the last epoch (2 of 2), while writing the final")
    if where == "checkpoint":
        # the final weights never landed: the old checkpoint is intact, metrics not finished
        assert checkpoint_digest == old_digest
        assert f"kept metrics.json (epochs 1-2) in {tmp_path}" in msg
        assert "(checkpoint.pt there is from an earlier run)" in msg
        assert info.value.kept == ("metrics.json",)
    else:
        # the final checkpoint was written before the metrics that would call it finished
        assert checkpoint_digest == parameter_digest(model) != old_digest
        assert "kept checkpoint.pt (final weights) and metrics.json (epochs 1-2)" in msg
        assert info.value.kept == ("checkpoint.pt", "metrics.json")


def test_interrupt_after_the_last_evaluation_then_resume(
    tmp_path: Path, toy: TensorDataset
) -> None:
    cfg = CFG.replace(epochs=3)
    straight = _gfnn()
    fit(straight, toy, config=cfg, progress=False)

    # Ctrl-C once the last epoch is evaluated, before its files are written
    with pytest.raises(TrainingInterrupted) as info:
        fit(_gfnn(), toy, config=cfg, callbacks=[InterruptAt("epoch_end", 2)],
            out_dir=tmp_path, progress=False, save_last=True)  # fmt: skip
    e = info.value
    assert str(e) == (
        f"interrupted in epoch 3 of 3: kept metrics.json (epochs 1-2) and last.pt "
        f"(resume with --resume) in {tmp_path}"
    )
    assert (e.epoch, e.epochs, e.kept, e.out_dir) == (3, 3, ("metrics.json", "last.pt"), tmp_path)
    m = assert_consistent(tmp_path)
    assert m is not None and not m["finished"] and m["epochs_completed"] == 2
    assert not (tmp_path / "checkpoint.pt").exists()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2

    # what was kept is enough to finish as if never interrupted
    resumed = _gfnn(seed=9)
    fit(resumed, toy, config=cfg, out_dir=tmp_path, progress=False, resume=True, save_last=True)
    assert parameter_digest(resumed) == parameter_digest(straight)
    m = assert_consistent(tmp_path)
    assert m is not None and m["finished"] and m["epochs_completed"] == 3


@pytest.mark.parametrize(
    "hook,epoch,expected",
    [
        ("batch_end", 0, "interrupted in epoch 1 of 2: nothing written yet"),
        ("batch_end", 1, "interrupted in epoch 2 of 2: kept metrics.json (epoch 1) in {out}"),
        (
            "train_end",
            None,
            "interrupted after training finished: kept checkpoint.pt (final weights) and "
            "metrics.json (epochs 1-2, finished) in {out}",
        ),
    ],
)
def test_message_says_what_is_on_disk(
    tmp_path: Path, toy: TensorDataset, hook: str, epoch: int | None, expected: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        fit(_gfnn(), toy, config=CFG, callbacks=[InterruptAt(hook, epoch)], out_dir=out,
            progress=False)  # fmt: skip
    assert str(info.value) == expected.format(out=out)
    m = assert_consistent(out)
    on_disk = {p.name for p in out.iterdir()}
    assert on_disk == set(info.value.kept)
    if m is not None:
        assert m["epochs_completed"] == (1 if hook == "batch_end" else 2)


def test_interrupt_without_out_dir_and_before_any_epoch(
    tmp_path: Path, toy: TensorDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TrainingInterrupted, match=r"^interrupted in epoch 2 of 2: nothing written "
                       r"\(no out_dir\)$"):  # fmt: skip
        fit(_gfnn(), toy, config=CFG, callbacks=[InterruptAt("batch_end", 1)], progress=False)

    # an earlier finished run is left alone and said to be someone else's
    fit(_gfnn(), toy, config=CFG.replace(epochs=1), out_dir=tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def stuck(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "build_optimizer", stuck)
    with pytest.raises(TrainingInterrupted) as info:
        fit(_gfnn(), toy, config=CFG, out_dir=tmp_path, progress=False)
    assert str(info.value) == (
        "interrupted before epoch 1 of 2: nothing written yet "
        f"(checkpoint.pt and metrics.json in {tmp_path} are from an earlier run)"
    )
    assert info.value.kept == () and info.value.epoch is None
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --------------------------------------------------------------------------- the command line

TOY_ARGS = ["--dataset=toy", "--limit=64", "--batch-size=32", "--device=cpu", "--no-progress"]


def main(args: list[str]) -> int:
    """``convscope train ARGS`` (what ``python -m convscope.train ARGS`` runs): the status."""
    try:
        cli_main(["train", *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_command_prints_one_line_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_epoch = loop._train_epoch
    calls: list[int] = []

    def epoch_then_ctrl_c(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", epoch_then_ctrl_c)
    out = tmp_path / "run"
    assert main([*TOY_ARGS, "--epochs=3", "--save-last", f"--out={out}"]) == 130
    captured = capsys.readouterr()
    assert captured.err == (
        f"interrupted in epoch 2 of 3: kept metrics.json (epoch 1) and last.pt "
        f"(resume with --resume) in {out}\n"
    )
    assert "wrote" not in captured.out
    m = assert_consistent(out)
    assert m is not None and m["epochs_completed"] == 1

    # Ctrl-C before training started (here: while the data loads) is one line as well
    import convscope.runs.train as runs_train

    def stuck(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_train, "load_train_test", stuck)
    assert main([*TOY_ARGS, "--epochs=3", f"--out={tmp_path / 'other'}"]) == 130
    assert capsys.readouterr().err == "interrupted before training started\n"


def _as_from_a_terminal() -> None:
    """SIGINT as a shell leaves it for a child: default and unblocked. Earlier tests in this
    process (Lightning's trainer) may leave it ignored, which a child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("command", [["convscope", "train"], ["convscope.train"]])
def test_real_ctrl_c_on_python_m(tmp_path: Path, command: list[str]) -> None:
    """SIGINT to the process, as a terminal's Ctrl-C sends it: status 130, one line.

    Both ``python -m convscope train`` and its alias ``python -m convscope.train``.
    """
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", *command, *TOY_ARGS, "--epochs=100000", "--save-last",
         f"--out={out}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_as_from_a_terminal,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted in epoch "), stderr
    assert "kept metrics.json" in lines[0] and "last.pt" in lines[0] and "Traceback" not in stderr
    m = assert_consistent(out)
    assert m is not None and not m["finished"] and m["epochs_completed"] >= 1
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] >= m["epochs_completed"] - 1
