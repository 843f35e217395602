"""The committed MNIST CNN runs and batch-norm diagnosis are what their script computes.

``experiments/numpy_cnn_mnist.py`` stores one file per training run (``runs/*.json``), the
summary over seeds (``mnist.json``, rebuilt by ``summarize`` from the runs), the batch-norm
diagnosis (``bn_diagnosis.json``) and the README's section on these runs (``page``, every
number and verdict computed from the two JSON files). Here the summary is rebuilt from the
stored runs with the script's own code, the README section is regenerated from it, and the
first epoch of stored runs, and of the diagnosis, is
trained again with the script's own functions: on one CPU thread the runs are bitwise
reproducible, so every number of that epoch must come back exactly (only the wall-clock
``epoch_seconds`` differ). The first epoch of a run is the first epoch of a longer run: the
batches of an epoch depend only on the seed and the epoch, and nothing in the schedule
depends on the number of epochs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from _scripts import experiment

from convscope.data import load_mnist_subset

mnist = experiment("numpy_cnn_mnist")
RUNS = sorted(mnist.RUNS_DIR.glob("*.json"))
CLOCK = "epoch_seconds"  # wall-clock: the one thing a rerun does not give back


def _stored(name: str) -> dict[str, Any]:
    return json.loads((mnist.RUNS_DIR / name).read_text())


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    train, test = load_mnist_subset("train"), load_mnist_subset("test")
    return {"xtr": train.images, "ytr": train.labels, "xte": test.images, "yte": test.labels}


@pytest.fixture
def one_thread() -> Any:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # run_torch sets one thread for the process


def test_every_run_file_holds_the_run_its_name_says() -> None:
    assert len(RUNS) == 2 * 3 * 3 + 2 * 3  # both frameworks: 3 variants + Keras BN, 3 seeds
    for path in RUNS:
        r = json.loads(path.read_text())
        base = next(v for v, fixed in mnist.VARIANTS.items() if fixed == r["fixed"])
        assert r["variant"] == mnist._variant_name(base, r["bn"])
        assert path.name == f"{r['framework']}_{r['variant']}_seed{r['seed']}_{r['epochs']}ep.json"
        assert (r["train_images"], r["test_images"], r["threads"]) == (4000, 1000, "1")
        h = r["history"]
        assert set(h) == set(mnist._history()) and {len(v) for v in h.values()} == {r["epochs"]}
        # training time counts the epochs and what is measured between them
        assert r["train_seconds"] >= sum(h[CLOCK])
        assert set(r["bn_momentum_replay"]) == {str(m) for m in mnist.MOMENTA}


def test_the_summary_is_rebuilt_from_the_stored_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = json.loads((mnist.RESULTS / "mnist.json").read_text())
    monkeypatch.setattr(mnist, "RESULTS", tmp_path)  # the runs are read from their folder
    monkeypatch.setattr(mnist, "_plot", lambda *a: None)
    mnist.summarize()
    assert json.loads((tmp_path / "mnist.json").read_text()) == stored


def _section() -> str:
    text = (mnist.RESULTS / "README.md").read_text()
    assert text.count(mnist.BEGIN) == 1 and text.count(mnist.END) == 1
    return text.split(mnist.BEGIN)[1].split(mnist.END)[0].strip("\n") + "\n"


def test_the_readme_section_is_made_from_the_stored_results() -> None:
    summary = json.loads((mnist.RESULTS / "mnist.json").read_text())
    assert mnist.page_ready(summary, _diagnosis())
    assert _section() == mnist.page(summary, _diagnosis())
    assert mnist.markdown_tables(summary).split("\n\n")[0] in _section()


def _words(text: str) -> str:
    return " ".join(text.split())  # the page is wrapped: a phrase may span two lines


def test_the_readme_verdicts_follow_the_numbers() -> None:
    summary = json.loads((mnist.RESULTS / "mnist.json").read_text())
    diagnosis = _diagnosis()
    text = _words(mnist.page(summary, diagnosis))
    assert "do not fix it" in text and "on every seed here" in text
    assert "No framework default, and no momentum," in text
    changed = json.loads(json.dumps(summary))
    table = changed["table"]
    keras = mnist._variant_name("learned", mnist.KERAS_BN)
    for fw in mnist.FRAMEWORKS:  # as trained as good as recomputed: the defaults fix it
        row = table[f"{fw}/{keras}/{mnist.EPOCHS}ep"]
        row["test_accuracy_as_trained_last5"]["mean"] = row["test_accuracy"]["mean"]
    table[f"torch/fixed_all/{mnist.EPOCHS}ep"]["test_accuracy"]["values"][0] += 0.001
    row = table[f"numpy/learned/{mnist.EPOCHS}ep"]
    row["bn_momentum_replay"]["0.9"]["mean"] = row["test_accuracy"]["mean"]
    text = _words(mnist.page(changed, diagnosis))
    assert "the framework defaults fix it" in text and "on 2 of 3 seeds" in text
    assert "Some momenta make the running statistics as good" in text
    diagnosis["eps0.001"]["last_epoch_median_mean_shift_per_step"] = 1.0
    assert "does not damp this" in _words(mnist.page(summary, diagnosis))


def _first_epoch(fw: str, variant: str, bn: dict[str, float], data: dict[str, Any]) -> None:
    runner = {"numpy": mnist.run_numpy, "torch": mnist.run_torch}[fw]
    name = mnist._variant_name(variant, bn)
    new = mnist.run_one(runner, fw, variant, name, 0, 1, bn, data)
    old = _stored(f"{fw}_{name}_seed0_30ep.json")
    for key in ("framework", "variant", "fixed", "bn", "seed", "trainable_parameters"):
        assert new[key] == old[key], key
    for key, values in new["history"].items():
        if key != CLOCK:
            assert values == old["history"][key][:1], key


@pytest.mark.usefixtures("one_thread")
def test_the_first_epoch_of_a_stored_run_comes_back_exactly(data: dict[str, Any]) -> None:
    _first_epoch("torch", "learned", mnist.DEFAULT_BN, data)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("fw", "variant", "bn"),
    [
        ("numpy", "learned", mnist.DEFAULT_BN),
        ("numpy", "fixed_first", mnist.DEFAULT_BN),
        ("numpy", "fixed_all", mnist.DEFAULT_BN),
        ("torch", "fixed_all", mnist.DEFAULT_BN),
        ("numpy", "learned", {"eps": 1e-3, "momentum": 0.01}),
        ("torch", "learned", {"eps": 1e-3, "momentum": 0.01}),
    ],
)
def test_the_first_epoch_of_every_kind_of_run_comes_back_exactly(
    fw: str, variant: str, bn: dict[str, float], data: dict[str, Any]
) -> None:
    _first_epoch(fw, variant, bn, data)


def _diagnosis() -> dict[str, Any]:
    return json.loads((mnist.RESULTS / "bn_diagnosis.json").read_text())


def test_the_diagnosis_holds_what_it_says() -> None:
    d = _diagnosis()
    assert (d["seed"], d["epochs"], d["network"]) == (0, 30, "learned")
    assert set(d) == {"seed", "epochs", "network", "eps1e-05", "eps0.001"}
    for eps in (1e-5, 1e-3):
        one = d[f"eps{eps:g}"]
        assert one["sqrt_eps"] == math.sqrt(eps)
        assert {len(v) for v in one["per_epoch"].values()} == {d["epochs"]}
        for key in ("last_epoch_median_mean_shift_per_step", "last_epoch_median_batch_mean_error"):
            assert 0 < one[key] < 10
        assert all(v > 0 for v in one["per_epoch"]["sd"] + one["per_epoch"]["running_mean_offset"])


def _diagnose_first_epoch(eps: float, data: dict[str, Any]) -> None:
    new = mnist._diagnose_one(eps, 0, 1, data, steps=False)
    old = _diagnosis()[f"eps{eps:g}"]
    assert new["sqrt_eps"] == old["sqrt_eps"]
    for key, values in new["per_epoch"].items():
        assert values == old["per_epoch"][key][:1], key


@pytest.mark.usefixtures("one_thread")
def test_the_diagnosis_after_one_epoch_comes_back_exactly(data: dict[str, Any]) -> None:
    _diagnose_first_epoch(1e-5, data)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_keras_eps_diagnosis_after_one_epoch_comes_back_exactly(
    data: dict[str, Any],
) -> None:
    _diagnose_first_epoch(1e-3, data)
