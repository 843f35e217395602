"""`convscope decode`: gallery, metrics.json and report.html from a checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from convscope.cli import main
from convscope.models import build_model, save_checkpoint

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "decoding"
CKPT = RESULTS / "lenet_mnist.pt"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny convolutions on a busy machine
    yield
    torch.set_num_threads(before)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # in-process: a subprocess per case would spend most of the test importing torch
    try:
        main(["decode", *args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_decode_writes_gallery_metrics_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dec"
    args = ["--layer", "features.conv4", "--images", "40", "--unpool", "bicubic", "--no-progress",
            "--device", "cpu"]  # fmt: skip
    code, stdout, err = _run(capsys, "--model", str(CKPT), *args, "--out", str(out))
    assert code == 0, err
    assert "bicubic   reconstruction error" in stdout
    for name in ("decoded_filters.png", "top_images.png", "responses.png", "max_activation.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    m = json.loads((out / "metrics.json").read_text())
    assert m["layer"] == "features.conv4" and m["filters_shape"] == [10, 1, 28, 28]
    assert m["stride"] == [4, 4] and m["n_images"] == 40
    assert set(m["reconstruction_error"]) == {"nearest", "bilinear", "bicubic", "adjoint"}
    assert 0 < m["reconstruction_error"]["bicubic"]["mean"] < 0.2
    assert m["model"]["spec"] == str(CKPT) and m["model"]["source"] == "checkpoint"
    assert m["model"]["trained"] is True and m["model"]["device"] == "cpu"
    assert "features.conv4" in (out / "report.html").read_text()
    # --checkpoint is an alias of --model: the same numbers
    code, _, err = _run(capsys, "--checkpoint", str(CKPT), *args, "--out", str(tmp_path / "alias"))
    assert code == 0, err
    assert json.loads((tmp_path / "alias" / "metrics.json").read_text()) == m
    # the same --out again is refused (one line, exit 2) and left as it was
    code, _, err = _run(capsys, "--model", str(CKPT), *args, "--out", str(out))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "already holds metrics.json" in lines[0]
    assert "--overwrite" in lines[0]
    assert json.loads((out / "metrics.json").read_text()) == m


def test_decode_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gfnn = tmp_path / "gfnn.pt"
    torch.manual_seed(0)
    save_checkpoint(gfnn, build_model("gfnn"))
    cases = [
        (("--checkpoint", str(CKPT), "--layer", "features.pool1"), "decodes Conv2d layers"),
        (("--checkpoint", str(CKPT), "--layer", "nope"), "has no module 'nope'"),
        (("--checkpoint", str(CKPT), "--layer", "features.conv2", "--unpool", "x"), "unpool"),
        (("--checkpoint", str(tmp_path / "missing.pt"), "--layer", "a"), "does not exist"),
        # GFNN's conv layers decode through the kernel bank; its dense layers do not
        (("--checkpoint", str(gfnn), "--layer", "classifier.1"), "is a Linear"),
        (
            ("--checkpoint", str(CKPT), "--layer", "features.conv2", "--dataset", "digits"),
            "LeNet failed on images shaped (1, 8, 8)",
        ),
    ]
    for args, needle in cases:
        code, _, err = _run(capsys, *args, "--no-progress", "--out", str(tmp_path / "o"))
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("error: ") and needle in lines[0], lines
