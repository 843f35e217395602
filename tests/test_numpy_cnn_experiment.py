"""The section 11.4 / 11.6.1 MNIST experiment: its committed results and its script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convscope.numpy_cnn import mnist_cnn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "numpy_cnn"
SCRIPT = ROOT / "experiments" / "numpy_cnn_mnist.py"
VARIANTS = {"learned": "none", "fixed_first": "first", "fixed_all": "all"}


def _table() -> dict[str, Any]:
    path = RESULTS / "mnist.json"
    if not path.is_file():
        pytest.skip("no committed mnist.json")
    return json.loads(path.read_text())


def _row(summary: dict[str, Any], fw: str, variant: str) -> dict[str, Any]:
    return summary["table"][f"{fw}/{variant}/30ep"]


def test_committed_table_has_three_seeds_per_run_and_honest_statistics() -> None:
    summary = _table()
    for variant, mode in VARIANTS.items():
        rows = [_row(summary, fw, variant) for fw in ("numpy", "torch")]
        assert rows[0]["seeds"] == rows[1]["seeds"] and len(rows[0]["seeds"]) >= 3
        expected = mnist_cnn(0, fixed=mode).num_parameters()  # type: ignore[arg-type]
        for row in rows:
            assert row["trainable_parameters"] == expected
            assert row["bn"] == {"eps": 1e-5, "momentum": 0.1}
            for key in ("test_accuracy", "test_accuracy_as_trained", "test_loss"):
                v = np.asarray(row[key]["values"])
                assert row[key]["mean"] == pytest.approx(v.mean())
                assert row[key]["std"] == pytest.approx(v.std(ddof=1))


def test_committed_runs_agree_with_their_own_histories() -> None:
    summary = _table()
    runs = sorted((RESULTS / "runs").glob("*_30ep.json"))
    assert len(runs) >= 18
    for path in runs:
        r = json.loads(path.read_text())
        h = r["history"]
        assert len(h["train_loss"]) == r["epochs"] == 30
        # the as-trained number is the last epoch's, and the replayed moving average with
        # the layer's own momentum is the layer's running statistics
        assert r["test_accuracy_as_trained"] == h["test_accuracy_as_trained"][-1]
        own = r["bn_momentum_replay"][f"{r['bn']['momentum']:g}"]
        assert abs(own - r["test_accuracy_as_trained"]) <= 0.002
        key = f"{r['framework']}_{r['variant']}_seed{r['seed']}_30ep"
        assert summary["runs"][key]["test_accuracy"] == r["test_accuracy"]


def test_committed_results_read_as_the_readme_says() -> None:
    summary = _table()
    acc = {
        (fw, v): _row(summary, fw, v)["test_accuracy"]["mean"]
        for fw in ("numpy", "torch")
        for v in VARIANTS
    }
    # the chapter's network reaches >= 90% in both frameworks, within 1 point of each other
    assert acc["numpy", "learned"] >= 0.90 and acc["torch", "learned"] >= 0.90
    assert abs(summary["numpy_minus_torch_pp"]["learned/30ep"]["mean"]) <= 1.0
    # fixing filters costs accuracy, and fixing both layers costs more than fixing one
    for fw in ("numpy", "torch"):
        assert acc[fw, "learned"] > acc[fw, "fixed_first"] > acc[fw, "fixed_all"]
    # with the running statistics the learned network stays far below its calibrated self
    for fw in ("numpy", "torch"):
        as_trained = _row(summary, fw, "learned")["test_accuracy_as_trained_last5"]["mean"]
        assert as_trained < acc[fw, "learned"] - 0.2


@pytest.mark.slow
def test_experiment_script_runs_every_variant_for_one_epoch(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--epochs", "1", "--seeds", "0", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary = json.loads((tmp_path / "mnist.json").read_text())
    assert (tmp_path / "mnist_curves.png").is_file()
    assert len(list((tmp_path / "runs").glob("*.json"))) == 6
    for variant in VARIANTS:
        rows = [summary["table"][f"{fw}/{variant}/1ep"] for fw in ("numpy", "torch")]
        assert rows[0]["trainable_parameters"] == rows[1]["trainable_parameters"]
        # same weights, same batches: one epoch lands within a point of each other
        assert abs(summary["numpy_minus_torch_pp"][f"{variant}/1ep"]["mean"]) <= 1.5
