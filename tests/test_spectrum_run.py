"""convscope.report.spectrum_run.run_spectrum from Python (what `convscope spectrum` runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from convscope import spectral as sp
from convscope.data import load_image, load_mnist_subset
from convscope.errors import ConvscopeError
from convscope.models import build_model, load_checkpoint, save_checkpoint
from convscope.report.spectrum_run import run_spectrum


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("spec") / "m.pt", build_model("gfnn"))


def test_impulse_image_gives_the_maximum_gain(ckpt: Path, tmp_path: Path) -> None:
    m = run_spectrum(tmp_path, checkpoint=ckpt)
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    assert (tmp_path / "transfer_function.png").read_bytes()[:4] == b"\x89PNG"
    model, _ = load_checkpoint(ckpt)
    assert m["maximum_gain_db"] == pytest.approx(sp.maximum_gain(model), abs=1e-4)
    assert m["operating_point"] == "impulse image" and m["window"] == "hann"
    assert m["model"] == str(ckpt) and m["projection"] == "softmax"


def test_a_digit_as_operating_point(ckpt: Path, tmp_path: Path) -> None:
    digit = tmp_path / "digit.png"
    Image.fromarray((load_mnist_subset("test").images[0, 0] * 255).astype("uint8")).save(digit)
    m = run_spectrum(tmp_path / "out", checkpoint=ckpt, image=digit, on="logit", target=4)
    model, _ = load_checkpoint(ckpt)
    d = sp.data_derivative(model, load_image(digit), 4, on="logit")[0]
    gain = float(sp.spectrum_db(d, None).amax())
    assert m["maximum_gain_db"] == pytest.approx([gain], abs=1e-6)
    assert m["operating_point"] == "digit.png" and m["window"] is None and m["class"] == 4


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"on": "probability"}, "--on must be softmax or logit"),
        ({}, "give exactly one of --checkpoint and --model"),
        ({"shape": "1x28x28"}, "--shape must look like 1,28,28"),
    ],
)
def test_bad_input(ckpt: Path, tmp_path: Path, kwargs: dict, needle: str) -> None:
    if "shape" in kwargs:
        kwargs["checkpoint"] = ckpt
    with pytest.raises(ConvscopeError) as e:
        run_spectrum(tmp_path / "out", **kwargs)
    assert needle in str(e.value) and not (tmp_path / "out").exists()
