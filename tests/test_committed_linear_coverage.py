"""The committed interpreter coverage table is what its script makes and measures.

``experiments/linear_coverage.py`` checks every zoo model in both modes and writes
``coverage.json`` (every measured number) and ``coverage.md`` (the table). Here the page is
rebuilt from the stored rows with the script's own ``_table``, the table is checked to cover
exactly the models the zoo lists, and two cells are measured again with the script's own
``check_one`` (one thread) and compared with the stored row.

What can be compared exactly is: input shape, parameter count, number of sources, and
whether ``jvp_floor`` is zero. ``signal`` is a ratio of two outputs: it must agree to 1e-12
relative. The errors are rounding-level numbers (1e-16 to 1e-13) whose last digits depend on
summation order, so they are not bitwise reproducible across runs: a regenerated error must
lie within a factor of 10 of the stored one (plus 1e-16, for exact zeros), which still fails
on any error a real fault would make (1e-8 and above).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from _scripts import experiment

pytest.importorskip("torchvision")

coverage = experiment("linear_coverage")
JSON = coverage.RESULTS / "coverage.json"
PAGE = coverage.RESULTS / "coverage.md"
ERRORS = ("x0_error", "conservation_error", "jvp_error", "vjp_error")


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    return json.loads(JSON.read_text())


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``check_one`` sets torch's thread count from COVERAGE_THREADS: one, then restored."""
    monkeypatch.setenv("COVERAGE_THREADS", "1")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_page_is_its_json(stored: dict[str, Any]) -> None:
    assert coverage._table(stored["models"], stored["machine"]) == PAGE.read_text()


def test_the_table_covers_every_zoo_model_once(stored: dict[str, Any]) -> None:
    from convscope.linear.verify import zoo_models

    names = [r["model"] for r in stored["models"]]
    assert len(names) == len(set(names))
    zoo = {n for k, n in zoo_models()}
    if importlib.util.find_spec("timm") is None:  # the stored sweep had timm
        zoo |= {n for n in names if n.startswith("timm/")}
    assert set(names) == zoo
    for r in stored["models"]:
        # every model answered in both modes (no crash, no time-out, no refusal)
        assert "error" not in r, r["model"]
        for mode in ("taylor", "freeze"):
            assert r[mode]["mode"] == mode and "refused" not in r[mode], (r["model"], mode)
            assert all(r[mode][e] is None or r[mode][e] < 1e-11 for e in ERRORS), r["model"]
        # freeze does not measure jvp/vjp; taylor does
        assert r["freeze"]["jvp_error"] is None and r["freeze"]["vjp_error"] is None
        assert r["taylor"]["jvp_error"] is not None and r["taylor"]["vjp_error"] is not None


def _close(new: float | None, old: float | None) -> bool:
    if new is None or old is None:
        return new is old
    return old / 10 - 1e-16 <= new <= 10 * old + 1e-16


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("kind", "name"), [("classification", "resnet18"),
                                            ("classification", "squeezenet1_1")])  # fmt: skip
def test_a_stored_row_is_measured_again(stored: dict[str, Any], kind: str, name: str) -> None:
    old = next(r for r in stored["models"] if r["model"] == name)
    new = coverage.check_one(kind, name)
    assert (new["kind"], new["input"], new["parameters"]) == (
        old["kind"],
        old["input"],
        old["parameters"],
    )
    for mode in ("taylor", "freeze"):
        a, b = new[mode], old[mode]
        assert a["sources"] == b["sources"], mode
        assert a["signal"] == pytest.approx(b["signal"], rel=1e-12), mode
        assert (a["jvp_floor"] == 0.0) == (b["jvp_floor"] == 0.0), mode
        for e in (*ERRORS, "jvp_floor"):
            assert _close(a[e], b[e]), (mode, e, a[e], b[e])


def test_a_wrong_stored_number_would_fail(stored: dict[str, Any]) -> None:
    rows = json.loads(json.dumps(stored["models"]))
    rows[0]["taylor"]["jvp_error"] *= 1e3
    assert coverage._table(rows, stored["machine"]) != PAGE.read_text()
    assert not _close(1e-9, rows[0]["freeze"]["x0_error"])
    assert _close(0.0, 0.0) and not _close(None, 0.0)
