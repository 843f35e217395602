"""The committed CycleGAN results are what the committed checkpoint and the scripts give.

``experiments/train_i2i.py`` trains CycleGAN's generator as a x4 SR refiner (our substitute for
seed 001's horse-to-zebra generator) and writes ``cyclegan_x4.pt`` beside ``metrics.json``;
``experiments/linear_i2i.py`` interprets it and writes ``linear/i2i.json`` and ``i2i.md``. Here
the scripts' own code reruns the cheap parts on the committed checkpoint: the page is its json,
the frozen system at the committed input gives the stored residual, contributions, tanh ratio and
rows, a small crop's ``F`` is exact and its singular values are the interpreter's, and (slow) the
held-out PSNRs are the checkpoint's. Retraining without rerunning, or numbers typed by hand, fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _scripts import experiment

from convscope.linear import LinearInterpreter
from convscope.models import CycleGANGenerator, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
I2I = RESULTS / "linear" / "i2i.json"
METRICS = RESULTS / "cyclegan" / "metrics.json"


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    return json.loads(I2I.read_text())


@pytest.fixture(scope="module")
def model() -> Any:
    """The committed refiner, float64, eval."""
    torch.manual_seed(0)
    m, extra = experiment("train_i2i").load()
    assert isinstance(m.generator, CycleGANGenerator)
    return m.double().eval()


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return a == pytest.approx(b, rel=rel, abs=1e-12)


def test_the_i2i_page_is_its_json(stored: dict[str, Any]) -> None:
    """``i2i.md`` is ``summary(i2i.json)``: no hand edits, no stale page."""
    script = experiment("linear_i2i")
    assert (RESULTS / "linear" / "i2i.md").read_text() == script.summary(stored)
    assert not stored["quick"] and stored["lr_size"] == [32, 32]
    # the page's PSNRs are metrics.json's
    metrics = json.loads(METRICS.read_text())
    assert stored["psnr"]["test_photos"] == metrics["test_photos"]
    assert stored["generator"] == metrics["generator"]
    for png in ("columns", "detail_columns", "rows", "svd", "residual"):
        assert (RESULTS / "linear" / f"i2i_{png}.png").stat().st_size > 0


def test_the_i2i_page_reads_the_numbers(stored: dict[str, Any]) -> None:
    """The comparisons follow the data: swap the column distances, the words swap."""
    summary = experiment("linear_i2i").summary
    d = stored["columns"]["distance_to_bicubic"]
    word = "closer to" if d["cyclegan"]["mean"] < d["espcn"]["mean"] else "farther from"
    assert f"frozen columns are {word} bicubic's" in summary(stored)
    swapped = {
        **stored,
        "columns": {
            **stored["columns"],
            "distance_to_bicubic": {**d, "cyclegan": d["espcn"], "espcn": d["cyclegan"]},
        },
    }
    other = "farther from" if word == "closer to" else "closer to"
    assert f"frozen columns are {other} bicubic's" in summary(swapped)
    # the win count is counted, not written
    p = stored["psnr"]
    wins = sum(r["cyclegan_psnr"] > r["espcn_psnr"] for r in p["test_photos"].values())
    assert f"ESPCN on {wins} of the {len(p['test_photos'])}" in summary(stored)
    losing = {n: {**r, "cyclegan_psnr": 0.0} for n, r in p["test_photos"].items()}
    assert "bicubic on 0 and ESPCN on 0" in summary(
        {**stored, "psnr": {**p, "test_photos": losing}}
    )


def test_the_stored_residual_and_rows_are_the_checkpoints(
    model: Any, stored: dict[str, Any]
) -> None:
    """At the committed input, recomputed here: f(x0) = F x0 + r, the residual, the rows."""
    x = experiment("linear_sr").lr_image()
    assert list(x.shape[-2:]) == stored["lr_size"]
    li = LinearInterpreter(model, x, batch_size=32)
    with torch.no_grad():
        f0 = model(x)
        detail = f0 - model.up(x)
    y, r = li.output, li.residual
    assert (li.linear(x) + r - f0).abs().max() < 1e-10
    res = stored["residual"]
    assert res["bias_sources"] == len(li.sources)
    assert _close(float(y.norm()), res["output_norm"])
    assert _close(float(r.norm()), res["residual_norm"])
    assert _close(float(r.abs().max()), res["residual_max_abs"])
    assert _close(float(detail.norm()), res["detail_norm"])
    assert _close(float(r.norm() / y.norm()), res["relative_residual"])
    rows = stored["rows"]
    w = 4 * x.shape[-1]
    mine = li.rows([yy * w + xx for yy, xx in rows["at_output"]]).flatten(1)
    for i, row in enumerate(mine):
        assert _close(float(row.sum()), rows["sum"]["cyclegan"][i])
        assert _close(float(row.abs().sum()), rows["l1"]["cyclegan"][i])
    # frozen, the instance norms no longer remove a uniform brightening: rows do not sum to 1
    assert (mine.sum(1) - 1).abs().max() > 1e-3


@pytest.mark.slow
def test_the_stored_decomposition_is_the_scripts(model: Any, stored: dict[str, Any]) -> None:
    """The script's own decomposition at the committed input gives every stored entry of it."""
    script = experiment("linear_i2i")
    x = experiment("linear_sr").lr_image()
    li, res, groups, gate = script.decompose(model, x)
    with torch.no_grad():
        f0 = model(x)
    assert (torch.stack(list(groups.values())).sum(0) - f0).abs().max() < 1e-10
    assert set(groups) == set(stored["contributions"]["norm"])
    for part in ("residual", "tanh"):
        for key, v in res[part].items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    assert _close(vv, stored[part][key][kk]), (part, key, kk)
            else:
                assert _close(v, stored[part][key]), (part, key)
    c, sc = res["contributions"], stored["contributions"]
    for g, v in c["norm"].items():
        assert _close(v, sc["norm"][g]), g
        assert _close(c["sum_over_output_norm"][g], sc["sum_over_output_norm"][g]), g
    assert c["sources_per_kind"] == sc["sources_per_kind"]
    assert c["largest_instance_norm"]["module"] == sc["largest_instance_norm"]["module"]
    # the tangent map's rows: G ignores a uniform brightening, so they sum to bicubic's 1
    rows = stored["rows"]
    w = 4 * x.shape[-1]
    idx = [yy * w + xx for yy, xx in rows["at_output"]]
    tangent = LinearInterpreter(model, x, mode="taylor").rows(idx).flatten(1)
    for i in range(len(idx)):
        assert _close(float(tangent[i].sum()), rows["taylor_sum"][i])
    assert torch.allclose(tangent.sum(1), torch.ones(len(idx), dtype=torch.float64), atol=1e-9)


def test_a_small_crop_is_exact_and_its_svd_is_the_interpreters(model: Any) -> None:
    """A 6 x 6 LR crop: F materialized from columns, F x0 + r == f(x0), SVD against svdvals."""
    x = experiment("linear_sr").lr_image()[..., 10:16, 12:18].contiguous()
    li = LinearInterpreter(model, x, batch_size=64)
    n = x[0].numel()
    F = li.columns(list(range(n))).reshape(n, -1).T  # (16 n, n)
    with torch.no_grad():
        f0 = model(x).flatten()
    assert (F @ x.flatten() + li.residual.flatten() - f0).abs().max() < 1e-10
    # F is linear in its input: F (2 x0) = 2 F x0 (the constants are all in r)
    assert (li.linear(2 * x).flatten() - 2 * F @ x.flatten()).abs().max() < 1e-10
    contrib = li.contributions()
    assert (torch.stack(list(contrib.values())).sum(0).flatten() - f0).abs().max() < 1e-10
    assert (contrib["input"].flatten() - F @ x.flatten()).abs().max() < 1e-10
    # a block as wide as the input makes the randomized method exact: the SVD is F's
    exact = torch.linalg.svdvals(F)
    k = 3
    svd = li.svd(k=k, method="randomized", power_iters=1, oversample=n - k)
    assert torch.allclose(svd.S, exact[:k], rtol=1e-10)
    for s, u, v in zip(svd.S, svd.U, svd.V, strict=True):
        assert (F @ v.flatten() - s * u.flatten()).abs().max() < 1e-10 * float(s)
    # the tangent map is another matrix: freezing the instance norms changes F
    tangent = LinearInterpreter(model, x, mode="taylor", batch_size=64)
    J = tangent.columns(list(range(n))).reshape(n, -1).T
    assert (J - F).norm() > 1e-2 * J.norm()
    assert torch.allclose(J.sum(1), torch.ones(16 * n, dtype=torch.float64), atol=1e-9)


def test_the_committed_checkpoint_scores_its_metrics(tmp_path: Path) -> None:
    """train_i2i.py's own scoring of the committed checkpoint gives metrics.json's PSNRs."""
    script = experiment("train_i2i")
    stored = json.loads(METRICS.read_text())
    model, extra = script.load()
    assert extra["test_photos"] == stored["test_photos"]  # the checkpoint's own record
    espcn = load_checkpoint(script.ESPCN_CKPT)[0].eval()
    train_sr = experiment("train_sr")
    assert not set(train_sr.TEST_PHOTOS) & set(stored["train_photos"])  # held out
    with torch.no_grad():
        scored = script.scores(model, espcn)
        crop = script.figure(model, espcn, tmp_path / "crop.png")
    # rounded to 3 decimals by the script; a float-summation order may move the last one
    for name, row in stored["test_photos"].items():
        for field, value in row.items():
            assert scored["test_photos"][name][field] == pytest.approx(value, abs=2e-3), field
    for field in ("mean_bicubic_psnr", "mean_espcn_psnr", "mean_cyclegan_psnr"):
        assert scored[field] == pytest.approx(stored[field], abs=2e-3), field
    for field in ("bicubic_psnr", "espcn_psnr", "cyclegan_psnr"):
        assert crop[field] == pytest.approx(stored["crop"][field], abs=2e-3), field
    # the generator is worth having: it beats bicubic on every held-out photo
    assert all(row["gain_over_bicubic_db"] > 0 for row in scored["test_photos"].values())


def test_the_docs_comparisons_hold() -> None:
    """The words of docs/linear.md's CycleGAN section that its result markers do not fill."""
    i2i = json.loads(I2I.read_text())
    sr = json.loads((RESULTS / "linear" / "sr.json").read_text())
    metrics = json.loads(METRICS.read_text())
    res, cols, l1 = i2i["residual"], i2i["columns"], i2i["rows"]["l1"]
    # the same input as sr.json's: "at the same input", "16,384 x 1,024"
    assert i2i["lr_size"] == [32, 32] and i2i["crop"] == list(experiment("linear_sr").CROP)
    # "a residual larger than G's detail", "G's part of F x0 and r largely cancel"
    assert res["residual_over_detail"] > 1 and res["g_input_norm"] / res["detail_norm"] > 1
    assert res["detail_norm"] < 0.5 * min(res["g_input_norm"], res["residual_norm"])
    # "residuals larger than in SR models: reproduces, narrowly against ESPCN"
    assert (
        res["relative_residual"]
        > sr["espcn"]["relative_residual"]
        > sr["edsr"]["relative_residual"]
    )
    # "freezing the instance norms costs little here", "the tangent map's rows sum to 1"
    assert max(i2i["rows"]["freeze_vs_taylor"]) < 0.05
    assert cols["freeze_distance_to_taylor"]["mean"] < 0.05
    assert all(abs(v - 1) < 1e-9 for v in i2i["rows"]["taylor_sum"])
    # "tanh barely bends"
    assert i2i["tanh"]["gate"]["min"] > 0.99
    # "columns nearer bicubic's than ESPCN's"; "scores above ESPCN with filters that move less
    # with the image, as EDSR does"
    d_bic = cols["distance_to_bicubic"]
    assert d_bic["cyclegan"]["mean"] < d_bic["espcn"]["mean"]
    dev = {n: cols[n]["deviation_from_mean_column"]["mean"] for n in ("espcn", "cyclegan")}
    assert metrics["mean_cyclegan_psnr"] > metrics["mean_espcn_psnr"]
    assert dev["cyclegan"] < dev["espcn"]
    assert sr["edsr"]["columns"]["deviation_from_mean_column"]["mean"] < dev["espcn"]
    # "less sparse than in SR: does not reproduce" (rows' L1 and columns' spread below ESPCN's)
    assert sum(l1["cyclegan"]) < sum(l1["espcn"])
    assert cols["cyclegan"]["spread_hr_px"]["mean"] < cols["espcn"]["spread_hr_px"]["mean"]
    # "a condition number near bicubic's where ESPCN's is" far larger
    cond = i2i["svd"]["condition_top_vs_last"]
    assert abs(cond["cyclegan"] - cond["bicubic"]) < 0.5 * (cond["espcn"] - cond["cyclegan"])
    text = (ROOT / "docs" / "linear.md").read_text()
    assert "## Image-to-image: CycleGAN's generator, trained" in text
    assert "does not reproduce: rows' L1" in text
