"""The committed GFNN ablation (seed 000 Fig. 3a/b) is what its script makes of its runs.

``experiments/gfnn_ablation.py`` stores every training run in ``gfnn_ablation.json`` and
writes ``gfnn_ablation.md`` from them (``page``: the table and a reading beside the paper
whose every number and verdict is computed). Here the page is regenerated from the stored
runs, its verdicts are checked to follow the numbers, and the script is checked to seed
before it builds, so that ``--seed`` fixes the starting weights.

The stored runs were made before that fix (they carry no ``weights_seeded``): their starting
weights came from whatever state torch's global generator was in, so no cell of them can be
trained again. The slow test retrains one cell and expects to match it only once the grid
has been rerun with the seeded script (about 45 minutes of one core).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from _scripts import experiment

from convscope import train as tr

ablation = experiment("gfnn_ablation")
JSON = ablation.RESULTS / "gfnn_ablation.json"
PAGE = ablation.RESULTS / "gfnn_ablation.md"


def _runs() -> list[dict[str, Any]]:
    return json.loads(JSON.read_text())["runs"]


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_page_is_its_json() -> None:
    assert ablation.page(_runs()) == PAGE.read_text()


def test_every_configuration_has_one_run_per_seed() -> None:
    runs = _runs()
    cells = [(r["mode"], r["n_edges"], r["seed"]) for r in runs]
    assert len(cells) == len(set(cells))
    assert sorted(cells) == sorted(
        (m, n, s) for s in range(5) for m, n in ablation.configurations()
    )
    n_test = ablation._sizes("mnist-subset")[1]
    for r in runs:
        assert (r["dataset"], r["epochs"]) == ("mnist-subset", 10)
        assert r["test_acc"] <= r["best_test_acc"] <= 1
        # an accuracy is a count of test images
        assert r["test_acc"] * n_test == pytest.approx(round(r["test_acc"] * n_test), abs=1e-6)


def test_the_reading_follows_the_numbers() -> None:
    runs = _runs()
    text = _words(ablation.page(runs))
    assert "GFNN beats or matches the regular CNN - reproduced" in text
    assert "random filters better than the regular CNN - reproduced" in text
    assert "The overall fall is reproduced; 8->4 as the largest step is reproduced" in text
    # a regular CNN far ahead, and 4 edge kernels best: every verdict turns
    changed = [{**r, "test_acc": 0.999 if r["mode"] == "learned" else r["test_acc"]} for r in runs]
    changed = [
        {**r, "test_acc": 0.9995} if (r["mode"], r["n_edges"]) == ("fixed", 4) else r
        for r in changed
    ]
    text = _words(ablation.page(changed))
    assert "GFNN beats or matches the regular CNN - not reproduced" in text
    assert "random filters better than the regular CNN - not reproduced" in text
    assert "worse than the regular CNN - reproduced" in text
    assert "The overall fall is not reproduced" in text
    # a stored number changed by one test image changes the page
    one = [dict(r) for r in runs]
    one[0]["test_acc"] = round(one[0]["test_acc"] - 0.001, 3)
    assert ablation.page(one) != PAGE.read_text()


def test_the_script_seeds_before_it_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    digests = []

    def fit(model: torch.nn.Module, *args: Any, **kwargs: Any) -> SimpleNamespace:
        digests.append(tr.parameter_digest(model))
        return SimpleNamespace(test_acc=[0.5])

    monkeypatch.setattr(ablation.tr, "fit", fit)
    for state in (1, 2):  # whatever the global generator held before
        torch.manual_seed(state)
        r = ablation.run_one("learned", 32, 0, "mnist-subset", 1)
        assert r["weights_seeded"] is True and r["seed"] == 0
    torch.manual_seed(1)
    ablation.run_one("learned", 32, 1, "mnist-subset", 1)
    assert digests[0] == digests[1] != digests[2]


_SEEDED = all(r.get("weights_seeded") for r in _runs())


@pytest.mark.slow
@pytest.mark.xfail(
    not _SEEDED,
    reason="the stored runs predate seeding before building: rerun the grid",
    strict=False,
)
def test_a_stored_cell_is_trained_again() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        new = ablation.run_one("fixed", 32, 0, "mnist-subset", None)
    finally:
        torch.set_num_threads(before)
    old = next(r for r in _runs() if (r["mode"], r["n_edges"], r["seed"]) == ("fixed", 32, 0))
    assert (new["test_acc"], new["best_test_acc"]) == (old["test_acc"], old["best_test_acc"])


def test_what_the_reproduction_page_says_of_the_kernel_counts_holds() -> None:
    """docs/reproduction.md's words around its markers: 32 -> 4 falls, the largest step
    is 8 -> 4, and 16 and 8 kernels score above 32."""
    runs = json.loads(JSON.read_text())["runs"]

    def mean(n: int) -> float:
        accs = [r["test_acc"] for r in runs if r["mode"] == "fixed" and r["n_edges"] == n]
        return sum(accs) / len(accs)

    counts = [32, 24, 16, 8, 4]
    drops = {(a, b): mean(a) - mean(b) for a, b in zip(counts[:-1], counts[1:], strict=True)}
    assert mean(32) > mean(4)
    assert max(drops, key=lambda k: drops[k]) == (8, 4)
    assert mean(16) > mean(32) and mean(8) > mean(32)
