"""The committed linear-interpreter results are what their script makes of its raw data.

``experiments/linear_classification.py`` writes ``classification.json`` (every measured
number) and ``classification.md`` (the page, tables and reading). The page must be exactly
what the script's ``summary`` makes of the stored numbers, so a hand edit, a stale page or a
fixed sentence that no longer matches the numbers fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

from _scripts import experiment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "linear"


def _summary():  # type: ignore[no-untyped-def]
    return experiment("linear_classification").summary


def test_the_classification_page_is_its_json() -> None:
    data = json.loads((RESULTS / "classification.json").read_text())
    page = _summary()(data["models"], data["eps"], data["images"], data["seconds"])
    assert page == (RESULTS / "classification.md").read_text()


def test_the_votes_reading_follows_the_numbers() -> None:
    data = json.loads((RESULTS / "classification.json").read_text())
    models = data["models"]
    gfnn = dict(models["gfnn"])
    summary = _summary()
    page = summary(models, data["eps"], data["images"], data["seconds"])
    assert "GFNN: the share of pixels voting for the top-1 class rises" in page
    # flip the stored numbers: the sentence must follow them
    gfnn["vote_top1_adv"] = {**gfnn["vote_top1_adv"], "mean": 0.0}
    flipped = summary({**models, "gfnn": gfnn}, data["eps"], data["images"], data["seconds"])
    assert "GFNN: the share of pixels voting for the top-1 class falls" in flipped
