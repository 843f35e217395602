"""The convscope command: real files in, real files out, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.data import load_mnist_subset
from convscope.models import build_model, save_checkpoint


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convscope.cli", *args], capture_output=True, text=True, timeout=300
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = load_mnist_subset("test")
    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray((ds.images[0, 0] * 255).astype(np.uint8), mode="L").save(path)
    return path


@pytest.fixture(scope="module")
def rgb_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "rgb.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8), mode="RGB").save(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    names = [str(i) for i in range(10)]
    gfnn = save_checkpoint(d / "gfnn.pt", build_model("gfnn"), extra={"class_names": names})
    cnn = save_checkpoint(
        d / "cnn.pt", build_model("gfnn", first_layer="learned"), extra={"class_names": names}
    )
    four = save_checkpoint(d / "four.pt", build_model("gfnn", in_channels=4))
    corrupt = d / "corrupt.pt"
    corrupt.write_bytes(gfnn.read_bytes()[:1000])
    return {"gfnn": gfnn, "cnn": cnn, "four": four, "corrupt": corrupt}


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("demo", "train", "explain", "report", "kernels"):
        assert cmd in proc.stdout


def test_kernels_list() -> None:
    proc = run_cli("kernels", "list")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert "kirsch_ne" in proc.stdout and "line_x8" in proc.stdout
    row = next(ln for ln in lines if " sobel_w " in ln)
    assert row.split()[0] == "19" and row.rstrip().endswith("-1 0 1 -2 0 2 -1 0 1")


def test_kernels_apply_writes_pngs(tmp_path: Path, rgb_png: Path) -> None:
    out = tmp_path / "k"
    proc = run_cli(
        "kernels", "apply", "--image", str(rgb_png), "--out", str(out),
        "--kernels", "identity,sobel_e",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {
        "kernel_identity.png",
        "kernel_sobel_e.png",
        "contact_sheet.png",
    }
    # identity returns the photo unchanged (interior and borders: zero padding adds nothing)
    same = np.asarray(Image.open(out / "kernel_identity.png"))
    np.testing.assert_array_equal(same, np.asarray(Image.open(rgb_png)))


def test_kernels_apply_unknown_kernel(tmp_path: Path, rgb_png: Path) -> None:
    out = tmp_path / "k"
    proc = run_cli(
        "kernels", "apply", "--image", str(rgb_png), "--out", str(out), "--kernels", "sobel_e,nope"
    )  # fmt: skip
    assert_clean_error(proc, "unknown kernel 'nope'")
    assert not out.exists()  # nothing half-written


def test_explain_writes_report(tmp_path: Path, digit_png: Path, checkpoints: dict) -> None:
    out = tmp_path / "e"
    args = ["explain", "--image", str(digit_png), "--target", "7", "--device", "cpu"]
    proc = run_cli(*args, "--checkpoint", str(checkpoints["gfnn"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # a checkpoint counts as trained: no warning
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target"] == 7 and len(metrics["filter_scores"]) == 40
    assert len(metrics["top_kernels"]) == 3
    assert metrics["model"]["spec"] == str(checkpoints["gfnn"])
    assert metrics["model"]["source"] == "checkpoint" and metrics["model"]["device"] == "cpu"
    assert metrics["input"] == {
        "image": str(digit_png),
        "original_shape": [1, 28, 28],
        "converted": None,
        "inverted": False,
        "shape": [1, 28, 28],
    }
    for f in ("report.html", "attributions.png", "top_filters.png", "filter_scores.png"):
        assert (out / f).stat().st_size > 0
    # --checkpoint is an alias of --model: the same metrics
    proc = run_cli(*args, "--model", str(checkpoints["gfnn"]), "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "m" / "metrics.json").read_text()) == metrics
    # `convscope report` renders the same folder again
    (out / "report.html").unlink()
    assert run_cli("report", str(out)).returncode == 0
    assert "convscope explain" in (out / "report.html").read_text()
    # results already in --out are refused (one line, exit 2), kept, and replaced on request
    proc = run_cli(*args, "--model", str(checkpoints["gfnn"]), "--out", str(out))
    assert_clean_error(proc, "already holds metrics.json", "--overwrite")
    assert json.loads((out / "metrics.json").read_text()) == metrics
    proc = run_cli(*args, "--model", str(checkpoints["gfnn"]), "--out", str(out), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_explain_untrained_model_warns_once(tmp_path: Path, digit_png: Path) -> None:
    out = tmp_path / "u"
    proc = run_cli("explain", "--model", "gfnn", "--image", str(digit_png), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: gfnn "), proc.stderr
    assert "untrained" in lines[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["trained"] is False and metrics["model"]["source"] == "convscope"


def test_explain_corrupt_checkpoint(tmp_path: Path, digit_png: Path, checkpoints: dict) -> None:
    proc = run_cli(
        "explain", "--checkpoint", str(checkpoints["corrupt"]), "--image", str(digit_png),
        "--out", str(tmp_path),
    )  # fmt: skip
    assert_clean_error(proc, "cannot read checkpoint", "corrupt.pt")


def test_explain_converts_rgb_for_a_grey_model(
    tmp_path: Path, rgb_png: Path, checkpoints: dict
) -> None:
    args = ["explain", "--checkpoint", str(checkpoints["gfnn"]), "--image", str(rgb_png)]
    proc = run_cli(*args, "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    auto = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert auto["input"]["converted"] == "RGB -> grey (ITU-R 601-2 luma)"
    assert auto["input"]["original_shape"] == [3, 28, 28] and auto["input"]["shape"] == [1, 28, 28]
    # converting on request is the same conversion
    assert run_cli(*args, "--out", str(tmp_path / "b"), "--channels", "1").returncode == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text()) == auto
    # asking for the wrong channels, or a model no grey <-> RGB conversion fits, is an error
    proc = run_cli(*args, "--out", str(tmp_path / "c"), "--channels", "3")
    assert_clean_error(proc, "rgb.png", "--channels 3", "takes 1 channels", "--channels 1")
    four = ["explain", "--checkpoint", str(checkpoints["four"]), "--image", str(rgb_png)]
    proc = run_cli(*four, "--out", str(tmp_path / "d"))
    assert_clean_error(proc, "rgb.png", "3 channels", "the model takes 4")


def test_explain_model_without_bank(tmp_path: Path, digit_png: Path, checkpoints: dict) -> None:
    args = ["explain", "--checkpoint", str(checkpoints["cnn"]), "--image", str(digit_png)]
    proc = run_cli(*args, "--out", str(tmp_path / "a"), "--method", "filter-scores")
    assert_clean_error(proc, "no fixed-kernel layer")
    # the default falls back to the gradient methods
    proc = run_cli(*args, "--out", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert "filter_scores" not in json.loads((tmp_path / "b" / "metrics.json").read_text())


def test_explain_missing_and_non_image(tmp_path: Path, checkpoints: dict) -> None:
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    args = ["explain", "--checkpoint", str(checkpoints["gfnn"]), "--out", str(tmp_path / "o")]
    assert_clean_error(run_cli(*args, "--image", str(bogus)), "notes.png")
    assert_clean_error(run_cli(*args, "--image", str(tmp_path / "none.png")), "none.png")


def test_report_without_json(tmp_path: Path) -> None:
    assert_clean_error(run_cli("report", str(tmp_path)), "report.json")


def test_train_lenet_with_max_gain(tmp_path: Path) -> None:
    out = tmp_path / "lenet"
    proc = run_cli(
        "train", "--arch", "lenet", "--epochs", "1", "--batch-size", "200", "--max-gain",
        "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["history"]["extra"]["max_gain"]) == 1
    assert (out / "checkpoint.pt").is_file() and "Maximum Gain" in proc.stdout


def test_train_with_the_same_seed_gives_the_same_model(tmp_path: Path) -> None:
    args = ("train", "--arch", "lenet", "--epochs", "1", "--batch-size", "500", "--seed", "3")
    runs = [run_cli(*args, "--no-progress", "--out", str(tmp_path / d)) for d in ("a", "b")]
    assert all(p.returncode == 0 for p in runs), runs[0].stderr
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    wa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
