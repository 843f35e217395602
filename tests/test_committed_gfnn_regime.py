"""The committed seed-000 runs under the paper's regime are what their script computes.

``experiments/gfnn_regime.py`` trains the regular CNN and the first layer initialised from
the kernel bank (and the fixed GFNN) with the paper's SGD regime over several seeds and
writes ``gfnn_regime.json`` and the page ``gfnn_regime.md``. Here the page is regenerated
from the JSON, the per-condition means and stds are recomputed from the per-run values, the
settings are checked against the paper's preset, and one short cell is trained again through
the same code path and compared with the value stored for exactly that cell.
"""

from __future__ import annotations

import json
import statistics

import pytest
from _scripts import experiment

from convscope import train as tr

regime = experiment("gfnn_regime")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(regime.PATH.read_text())


def test_page_is_the_summary_of_the_json(data: dict) -> None:
    assert regime.PAGE.read_text() == regime.summary(data)


def test_stats_are_recomputed_from_the_runs(data: dict) -> None:
    assert data["runs"], "no runs stored"
    again = json.loads(json.dumps(regime.condition_stats(data["runs"])))
    assert again == data["stats"]
    for cond, s in data["stats"].items():
        acc = [r["test_acc"] for r in data["runs"] if r["condition"] == cond]
        loss = [r["test_loss"] for r in data["runs"] if r["condition"] == cond]
        assert s["n"] == len(acc) == len(set(s["seeds"]))
        assert s["test_acc_mean"] == pytest.approx(statistics.fmean(acc), abs=1e-12)
        assert s["test_loss_mean"] == pytest.approx(statistics.fmean(loss), abs=1e-12)
        if len(acc) > 1:
            assert s["test_acc_std"] == pytest.approx(statistics.stdev(acc), abs=1e-12)
            assert s["test_loss_std"] == pytest.approx(statistics.stdev(loss), abs=1e-12)


def test_runs_use_the_papers_regime(data: dict) -> None:
    paper = tr.PRESETS["resnet-paper"]
    assert (paper.optimizer, paper.batch_size, paper.lr, paper.epochs) == ("sgd", 100, 0.1, 90)
    assert (paper.step_size, paper.gamma, paper.weight_decay, paper.momentum) == (
        15,
        0.1,
        1e-4,
        0.9,
    )
    assert data["regime"] == paper.replace(device="cpu").to_dict()
    assert set(regime.SOURCES) >= {"optimizer", "batch_size", "lr", "schedule", "epochs"}
    for r in data["runs"]:
        assert r["condition"] in regime.CONDITIONS
        assert (r["epochs"], r["n_train"], r["n_test"]) == (90, 4000, 1000)
        assert len(r["test_acc_curve"]) == len(r["test_loss_curve"]) == 90
        assert r["test_acc_curve"][-1] == r["test_acc"]
        assert r["test_loss_curve"][-1] == r["test_loss"]
    # seed-major: every seed of init has its regular run beside it
    seeds = {c: set(s["seeds"]) for c, s in data["stats"].items()}
    assert seeds.get("init", set()) <= seeds["regular"]


def test_smoke_cell_is_regenerated(data: dict) -> None:
    sm = data["smoke"]
    spec = {k: sm[k] for k in ("condition", "seed", "epochs", "n_train", "n_test")}
    assert spec == regime.SMOKE
    r = regime.run_cell(**spec)
    assert r["test_loss"] == pytest.approx(sm["test_loss"], rel=1e-4)
    assert abs(r["test_acc"] - sm["test_acc"]) <= 1 / sm["n_test"] + 1e-9


@pytest.mark.slow
def test_first_stored_run_is_regenerated(data: dict) -> None:
    """Minutes: seed 0 of the regular CNN, 90 epochs, again."""
    stored = next(r for r in data["runs"] if r["seed"] == 0 and r["condition"] == "regular")
    r = regime.run_cell("regular", 0)
    assert r["test_loss"] == pytest.approx(stored["test_loss"], rel=1e-3)
    assert abs(r["test_acc"] - stored["test_acc"]) <= 3 / stored["n_test"]
