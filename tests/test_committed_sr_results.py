"""The committed super-resolution checkpoints score what their metrics files say.

``experiments/train_sr.py`` trains ESPCN and EDSR-baseline on the bundled photos and writes a
checkpoint beside ``metrics[_x<scale>].json``. Here the script's own scoring code re-scores each
committed checkpoint on the held-out photos and the figure's crop, so a retrained checkpoint
without its metrics (or metrics typed by hand) fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _scripts import experiment

from convscope.models import ESPCN, EDSRBaseline, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
CASES = [
    ("espcn", ESPCN, 4, "espcn_x4.pt", "metrics.json"),
    ("edsr", EDSRBaseline, 4, "edsr_x4.pt", "metrics_x4.json"),
    ("edsr", EDSRBaseline, 2, "edsr_x2.pt", "metrics_x2.json"),
]


@pytest.mark.parametrize(("key", "cls", "scale", "ckpt", "metrics"), CASES)
def test_committed_sr_checkpoint_scores_its_metrics(
    key: str, cls: type, scale: int, ckpt: str, metrics: str, tmp_path: Path
) -> None:
    script = experiment("train_sr")
    stored = json.loads((RESULTS / key / metrics).read_text())
    model, extra = load_checkpoint(RESULTS / key / ckpt)
    assert isinstance(model, cls) and model.scale == scale == stored["scale"]
    assert set(extra["test_photos"]) == set(script.TEST_PHOTOS) == set(stored["test_photos"])
    assert not set(script.TEST_PHOTOS) & set(stored["train_photos"])  # held out
    with torch.no_grad():
        scored = script.score(model.eval(), key)
        crop = script.figure(model, key, key.upper(), tmp_path / "crop.png")
    # rounded to 3 decimals by the script; a float-summation order may move the last one
    for name, row in stored["test_photos"].items():
        for field, value in row.items():
            assert scored["test_photos"][name][field] == pytest.approx(value, abs=2e-3), field
    for field in ("mean_bicubic_psnr", f"mean_{key}_psnr", "mean_gain_db"):
        assert scored[field] == pytest.approx(stored[field], abs=2e-3), field
    for field in ("bicubic_psnr", f"{key}_psnr"):
        assert crop[field] == pytest.approx(stored["crop"][field], abs=2e-3), field
    # the network is worth having: it beats bicubic on every held-out photo
    assert all(row["gain_db"] > 0 for row in scored["test_photos"].values())
    assert (tmp_path / "crop.png").stat().st_size > 0


def test_edsr_beats_espcn_on_the_held_out_photos() -> None:
    espcn = json.loads((RESULTS / "espcn" / "metrics.json").read_text())
    edsr = json.loads((RESULTS / "edsr" / "metrics_x4.json").read_text())
    assert espcn["mean_bicubic_psnr"] == edsr["mean_bicubic_psnr"]  # the same test set
    assert edsr["mean_edsr_psnr"] > espcn["mean_espcn_psnr"]


def test_the_sr_page_is_its_json() -> None:
    """``experiments/linear_sr.py`` writes ``sr.md`` from ``sr.json``: no hand edits, no stale."""
    summary = experiment("linear_sr").summary
    data = json.loads((RESULTS / "linear" / "sr.json").read_text())
    assert set(data) >= {"bicubic", "espcn", "edsr"}
    assert (RESULTS / "linear" / "sr.md").read_text() == summary(data, data["seconds"])
    # the reading follows the numbers: swap which network's columns move most
    e, d = data["espcn"]["columns"], data["edsr"]["columns"]
    most = (
        "ESPCN"
        if e["deviation_from_mean_column"]["mean"] > d["deviation_from_mean_column"]["mean"]
        else "EDSR"
    )
    assert f"{most}'s the most" in summary(data, 0.0)
    swapped = {
        **data,
        "espcn": {**data["espcn"], "columns": d},
        "edsr": {**data["edsr"], "columns": e},
    }
    other = "EDSR" if most == "ESPCN" else "ESPCN"
    assert f"{other}'s the most" in summary(swapped, 0.0)
