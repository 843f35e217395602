"""`convscope decode`: gallery, metrics.json and report.html from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _cli import run_cli

from convscope.models import build_model, save_checkpoint

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "decoding"
CKPT = RESULTS / "lenet_mnist.pt"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "decode", *args)


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
    # LeNet has no kernel bank: no composition section, figure or numbers
    assert "kernel_composition" not in m and not (out / "kernel_composition.png").exists()
    assert "Kernel-bank composition" not in (out / "report.html").read_text()
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


def test_decode_gfnn_writes_the_kernel_composition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from convscope.decoding import kernel_composition
    from convscope.runs.sources import resolve_model

    out = tmp_path / "gf"
    args = ["--model", "gfnn", "--layer", "features.2", "--images", "8", "--max-filters", "4",
            "--no-progress", "--device", "cpu", "--out", str(out)]  # fmt: skip
    code, _, err = _run(capsys, *args)
    assert code == 0, err
    assert (out / "kernel_composition.png").read_bytes()[:4] == b"\x89PNG"
    comp = json.loads((out / "metrics.json").read_text())["kernel_composition"]
    assert comp["bank"] == "first" and comp["unpool"] == "nearest"
    # the same numbers as kernel_composition called directly on the same (seeded) model
    model = resolve_model("gfnn", device="cpu", warn=False).module
    ref = kernel_composition(model, "features.2", "nearest", filters=range(6))
    assert comp["kernel_names"] == ref.kernel_names
    assert [f["filter"] for f in comp["filters"]] == ref.filter_index == list(range(6))
    for row, f in enumerate(comp["filters"]):
        assert f["top"] == ref.table(row)[:5]
        shares = ref.share[row]
        assert [e["share"] for e in f["top"]] == shares.sort(descending=True).values[:5].tolist()
    html = (out / "report.html").read_text()
    assert "Kernel-bank composition" in html and "kernel_composition.png" in html
    assert ref.table(0)[0]["kernel"] in html


def test_decode_trained_bank_says_why_it_is_not_composed(tmp_path: Path) -> None:
    from convscope.models import GFNN
    from convscope.runs import decode as run

    torch.manual_seed(0)
    model = GFNN(first_layer="init").eval()
    with torch.no_grad():
        model.first.weight.add_(0.1)  # as if trained: no longer the named kernels
    res = run.run(model, "features.2", tmp_path / "o", n_images=4, max_filters=2, top=1)
    assert "no longer the named ones" in res.metrics["kernel_composition"]["error"]
    assert not (tmp_path / "o" / "kernel_composition.png").exists()
    assert "Not decoded to the named kernels" in (tmp_path / "o" / "report.html").read_text()
