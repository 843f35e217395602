"""The section 11.6.3 walkthrough: line probes, the hand-made kernel, the report, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convscope import kernels as kb
from convscope.cli import main
from convscope.errors import ConvscopeError
from convscope.io import to_jsonable
from convscope.numpy_cnn import walkthrough as wt
from convscope.runs import RunResult
from convscope.runs import numpy_cnn_walkthrough as walkthrough_run


def test_probe_responses_reproduce_the_chapters_printed_numbers() -> None:
    f, b_f, printed_f = wt.CHAPTER_F
    np.testing.assert_allclose(wt.probe_responses(f, b_f, clip=True), printed_f, atol=1e-12)
    k, b_k, printed_k = wt.CHAPTER_K
    ours = wt.probe_responses(k, b_k, clip=True)
    # seven of eight agree to the book's rounding; its X8 (0.02) does not follow from its K
    np.testing.assert_allclose(ours[:7], printed_k[:7], atol=0.011)
    assert wt.probe_responses(k, b_k)[7] == pytest.approx(0.63 - 0.03 - 0.49 - 0.4)


def test_design_rule_recovers_a_kernel_of_its_own_form() -> None:
    target = kb.get("prewitt_vertical").weight + kb.get("line_x7").weight  # the chapter's F
    names, f, cos = wt.design_fixed_kernel(target * 0.5)
    assert cos == pytest.approx(1.0)
    np.testing.assert_array_equal(f, target)
    assert sum(kb.get(n).weight for n in names) == pytest.approx(target)


def test_fit_bias_finds_the_minimum_of_the_training_loss() -> None:
    x, y = wt.binary_task(1, 0, "train")
    x, y = x[:120], y[:120]
    net = wt.one_filter_network(0)
    net.fit(x, y, epochs=2, batch_size=32, optimizer="adam", loss="bce", progress=False)
    f = wt.CHAPTER_F[0]
    b = wt.fit_bias(net, f, x, y)

    def loss(bias: float) -> float:
        swapped = wt.one_filter_network(0, kernel=f, bias=bias)
        swapped[2].params["W"][:] = net[2].params["W"]
        swapped[2].params["b"][:] = net[2].params["b"]
        return swapped.evaluate(x, y)["loss"]

    assert loss(b) <= min(loss(b - 0.05), loss(b + 0.05))


def test_binary_task_labels_and_errors() -> None:
    x, y = wt.binary_task(7, 1, "test")
    assert x.shape[1:] == (1, 28, 28) and set(np.unique(y)) == {0, 1}
    with pytest.raises(ConvscopeError, match="two different digits"):
        wt.binary_task(3, 3)


def test_cli_walkthrough_writes_report_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # one run through the CLI covers convscope.runs.numpy_cnn_walkthrough.run too (figures
    # are the slow part)
    argv = ["numpy-cnn", "walkthrough", "--out", str(tmp_path), "--pairs", "1:0"]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--epochs", "1", "--seeds", "2"])
    assert done.value.code in (0, None)
    assert '"1" vs "0": learned kernel' in capsys.readouterr().out
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    p = on_disk["pairs"]["1_vs_0"]
    for key in ("learned", "hand_designed", "hand_designed_dense_retrained"):
        assert 0.5 < p[key]["test"]["accuracy"] <= 1.0
        assert p[key]["test"]["loss"] > 0
    assert len(p["learned"]["probe_responses"]) == 8 and len(p["seeds"]) == 2
    assert -1.0 <= p["seed_probe_cosine_mean"] <= 1.0
    html = (tmp_path / "report.html").read_text()
    assert "line probes" in html and "1_vs_0_kernels.png" in html
    for name in ("line_probes", "1_vs_0_kernels", "1_vs_0_maps", "1_vs_0_seeds"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    with pytest.raises(SystemExit) as bad:
        main(["numpy-cnn", "walkthrough", "--out", str(tmp_path), "--pairs", "7-1"])
    assert bad.value.code == 2
    # the same folder again is refused (one line, exit 2) before any training
    capsys.readouterr()
    with pytest.raises(SystemExit) as again:
        main([*argv, "--epochs", "1", "--seeds", "2"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert again.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "already holds metrics.json" in err[0]
    assert "--overwrite" in err[0]


def _untimed(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k != "time"}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def python_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return walkthrough_run.run(tmp_path_factory.mktemp("wt") / "py", [(1, 0)], epochs=1, seeds=1)


def test_run_from_python_agrees_with_the_cli(tmp_path: Path, python_run: RunResult) -> None:
    res = python_run
    names = {f.name for f in res.files}
    assert {"metrics.json", "report.html", "line_probes.png", "1_vs_0_kernels.png"} <= names
    on_disk = json.loads((res.out / "metrics.json").read_text())
    assert on_disk == to_jsonable(res.metrics)
    with pytest.raises(SystemExit):
        main(["numpy-cnn", "walkthrough", "--out", str(tmp_path), "--pairs", "1:0",
              "--epochs", "1", "--seeds", "1", "--no-progress"])  # fmt: skip
    # the same numbers, to the last digit, but for the training histories' wall-clock times
    assert _untimed(json.loads((tmp_path / "metrics.json").read_text())) == _untimed(on_disk)
    with pytest.raises(ConvscopeError, match="at least one pair"):
        walkthrough_run.run(tmp_path / "none", [])
    assert not (tmp_path / "none").exists()


def test_run_metrics_are_what_metrics_json_holds(python_run: RunResult) -> None:
    on_disk = json.loads((python_run.out / "metrics.json").read_text())
    assert python_run.metrics == on_disk
