"""convscope.runs.train: one training run from plain options, and what it refuses."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

import convscope.runs.train as runs_train
from convscope.errors import ConvscopeError
from convscope.models import load_checkpoint
from convscope.runs.train import load_train_test
from convscope.runs.train import run as train
from convscope.train import main, parameter_digest

TOY = {"dataset": "toy", "limit": 64, "epochs": 1, "batch_size": 32, "device": "cpu"}


def _run(out: Path, **kw: Any) -> Any:
    return train(out=out, progress=False, **{**TOY, **kw})


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_signature_is_train_models_plus_overwrite() -> None:
    params = inspect.signature(train).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert params["overwrite"].default is False and params["resume"].default is False
    old = "out arch dataset data_dir preset epochs lr batch_size optimizer seed device " + (
        "first_layer n_edges dropout limit max_gain seed_weights seed_bank callbacks progress "
        "save_last resume"
    )
    assert set(params) == {*old.split(), "overwrite"}


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
