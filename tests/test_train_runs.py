"""convscope.runs.train: one training run from plain options, and what it refuses."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

import convscope.runs.train as runs_train
from convscope.cli import main as cli_main
from convscope.errors import ConvscopeError
from convscope.models import load_checkpoint
from convscope.runs.train import load_train_test
from convscope.runs.train import run as train
from convscope.train import parameter_digest

TOY = {"dataset": "toy", "limit": 64, "epochs": 1, "batch_size": 32, "device": "cpu"}


def _run(out: Path, **kw: Any) -> Any:
    return train(out=out, progress=False, **{**TOY, **kw})


def main(args: list[str]) -> int:
    """``convscope train ARGS`` (what ``python -m convscope.train ARGS`` runs): the status."""
    try:
        cli_main(["train", *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_signature_is_train_models_plus_overwrite_and_tensorboard() -> None:
    params = inspect.signature(train).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert params["overwrite"].default is False and params["resume"].default is False
    old = "out arch dataset data_dir preset epochs lr batch_size optimizer seed device " + (
        "first_layer n_edges dropout limit max_gain seed_weights seed_bank callbacks progress "
        "save_last resume"
    )
    assert set(params) == {*old.split(), "overwrite", "tensorboard", "tensorboard_figures"}


def test_load_train_test_toy() -> None:
    tr, te, classes, shape = load_train_test("toy", limit=40)
    assert (len(tr), len(te), classes, shape) == (40, 128, 4, (1, 16, 16))  # type: ignore[arg-type]


def test_refuses_a_finished_run_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    h = _run(out, seed=1, max_gain=True)
    assert len(h.extra["max_gain"]) == 1
    before = _snapshot(out)
    assert set(before) == {"checkpoint.pt", "metrics.json"}

    def no_work(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("refusal must come before loading any data")

    monkeypatch.setattr(runs_train, "load_train_test", no_work)
    with pytest.raises(ConvscopeError, match="--overwrite") as info:
        _run(out, seed=2)
    assert str(out / "checkpoint.pt") in str(info.value)
    assert _snapshot(out) == before  # nothing touched

    # metrics that say finished count too, even with the checkpoint gone
    (out / "checkpoint.pt").unlink()
    with pytest.raises(ConvscopeError) as info:
        _run(out, seed=2)
    assert str(out / "metrics.json") in str(info.value)
    monkeypatch.undo()

    # overwrite replaces the run (another seed: other weights), resume is let through
    _run(out, seed=2, overwrite=True)
    m = json.loads((out / "metrics.json").read_text())
    assert m["finished"] and m["config"]["seed"] == 2
    assert m["parameter_digests"] == [parameter_digest(load_checkpoint(out / "checkpoint.pt")[0])]
    assert _snapshot(out)["metrics.json"] != before["metrics.json"]
    _run(out, seed=2, resume=True)


def test_an_unfinished_run_is_not_protected(tmp_path: Path) -> None:
    # an interrupted run without last.pt cannot be resumed; starting again is allowed
    tmp_path.joinpath("metrics.json").write_text(json.dumps({"finished": False}))
    _run(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["finished"]
    # a metrics.json that is not ours (a list, garbage) does not count as a finished run
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text("[1, 2]")
    _run(other)


def test_command_refuses_then_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--dataset=toy", "--limit=64", "--epochs=1", "--batch-size=32", "--device=cpu",
            "--no-progress", f"--out={tmp_path}"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "checkpoint.pt" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0


# every flag the old argparse `python -m convscope.train` documented, and what it meant
OLD_FLAGS = ["--arch=gfnn", "--dataset=toy", "--preset=resnet-paper", "--out=OUT", "--epochs=2",
             "--batch-size=16", "--lr=0.01", "--optimizer=sgd", "--seed=3", "--device=cpu",
             "--first-layer=random", "--dropout=0.25", "--limit=32", "--save-last",
             "--resume", "--overwrite", "--no-progress"]  # fmt: skip


def test_every_old_flag_parses_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[dict[str, Any]] = []

    def record(**kwargs: Any) -> Any:
        seen.append(kwargs)
        raise ConvscopeError("recorded")

    monkeypatch.setattr(runs_train, "run", record)
    args = [a.replace("OUT", str(tmp_path)) for a in OLD_FLAGS]
    # python -m convscope.train is `convscope train` (the alias forwards to cli.main)
    assert main(args) == 2
    assert capsys.readouterr().err == "error: recorded\n"
    got = seen[0]
    expected = {"out": tmp_path, "arch": "gfnn", "dataset": "toy", "preset": "resnet-paper",
                "epochs": 2, "batch_size": 16, "lr": 0.01, "optimizer": "sgd", "seed": 3,
                "device": "cpu", "first_layer": "random", "dropout": 0.25, "limit": 32,
                "save_last": True, "resume": True, "overwrite": True, "progress": False,
                "seed_weights": True, "seed_bank": True}  # fmt: skip
    assert {k: got[k] for k in expected} == expected
    # defaults: nothing saved or resumed unless asked; --resume alone keeps writing last.pt
    assert main([f"--out={tmp_path}"]) == 2 and main([f"--out={tmp_path}", "--resume"]) == 2
    assert (seen[1]["save_last"], seen[1]["optimizer"], seen[1]["dropout"]) == (False, None, None)
    assert seen[2]["save_last"] and seen[2]["resume"]
    # -h as argparse had it; a bad optimizer is a usage error that names the choices
    assert main(["-h"]) == 0 and "--optimizer" in capsys.readouterr().out
    assert main(["--optimizer=rmsprop", f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "adam, sgd" in err and len(seen) == 3


def test_only_rank_0_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--dataset=toy", "--limit=32", "--epochs=1", "--batch-size=32", "--device=cpu",
            "--no-progress", "--max-gain"]  # fmt: skip
    assert main([*args, f"--out={tmp_path / 'a'}"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "Maximum Gain" in out and "wrote results to" in out

    monkeypatch.setenv("RANK", "1")  # what torchrun sets; here a lone process, WORLD_SIZE unset
    assert main([*args, f"--out={tmp_path / 'b'}"]) == 0
    assert capsys.readouterr() == ("", "")
    # errors and Ctrl-C: the same exit status, the line left to rank 0
    assert main([*args, f"--out={tmp_path / 'b'}"]) == 2  # finished run, no --overwrite
    assert capsys.readouterr() == ("", "")

    def ctrl_c(**kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_train, "run", ctrl_c)
    assert main([*args, f"--out={tmp_path / 'c'}"]) == 130
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    assert main([*args, f"--out={tmp_path / 'c'}"]) == 130
    assert capsys.readouterr().err == "interrupted before training started\n"
