"""convscope.runs.spectrum.run from Python (what `convscope spectrum` runs)."""

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
from convscope.runs import spectrum


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("spec") / "m.pt", build_model("gfnn"))


def test_impulse_image_gives_the_maximum_gain(ckpt: Path, tmp_path: Path) -> None:
    res = spectrum.run(ckpt, tmp_path)
    m = res.metrics
    assert json.loads((tmp_path / "spectrum.json").read_text()) == m
    assert res.out == tmp_path
    assert res.files == [tmp_path / "transfer_function.png", tmp_path / "spectrum.json"]
    assert (tmp_path / "transfer_function.png").read_bytes()[:4] == b"\x89PNG"
    model, _ = load_checkpoint(ckpt)
    assert m["maximum_gain_db"] == pytest.approx(sp.maximum_gain(model), abs=1e-4)
    # the returned spectrum is the one the gains are the peaks of
    assert res.result.shape == (1, 28, 28)
    assert m["maximum_gain_db"] == [float(v) for v in res.result.flatten(1).amax(1)]
    assert m["operating_point"] == "impulse image" and m["window"] == "hann"
    assert m["model"]["spec"] == str(ckpt) and m["projection"] == "softmax"
    assert m["model"]["source"] == "checkpoint" and m["model"]["trained"] is True
    assert m["input"] == {"image": "impulse image", "shape": [1, 28, 28]}


def test_a_digit_as_operating_point(ckpt: Path, tmp_path: Path) -> None:
    digit = tmp_path / "digit.png"
    Image.fromarray((load_mnist_subset("test").images[0, 0] * 255).astype("uint8")).save(digit)
    res = spectrum.run(ckpt, tmp_path / "out", image=digit, on="logit", target=4)
    m = res.metrics
    model, _ = load_checkpoint(ckpt)
    d = sp.data_derivative(model, load_image(digit), 4, on="logit")[0]
    gain = float(sp.spectrum_db(d, None).amax())
    assert m["maximum_gain_db"] == pytest.approx([gain], abs=1e-6)
    assert m["operating_point"] == str(digit) and m["window"] is None and m["class"] == 4
    assert m["input"]["image"] == str(digit) and m["input"]["converted"] is None
    assert json.loads((tmp_path / "out" / "spectrum.json").read_text()) == m


def test_a_module_gives_the_same_numbers_as_its_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    # replaces the old "exactly one of checkpoint= and model=": the spec is the first
    # argument, and an nn.Module in its place is the same model
    by_path = spectrum.run(ckpt, tmp_path / "a").metrics
    model, _ = load_checkpoint(ckpt)
    by_module = spectrum.run(model, tmp_path / "b").metrics
    assert by_module["maximum_gain_db"] == by_path["maximum_gain_db"]
    assert by_module["class"] == by_path["class"]
    assert by_module["model"]["source"] == "module" and by_module["model"]["trained"] is None


def test_existing_results_are_refused_without_overwrite(ckpt: Path, tmp_path: Path) -> None:
    first = spectrum.run(ckpt, tmp_path).metrics
    with pytest.raises(ConvscopeError, match="already holds spectrum.json") as e:
        spectrum.run(ckpt, tmp_path)
    assert "--overwrite" in str(e.value)
    assert spectrum.run(ckpt, tmp_path, overwrite=True).metrics == first


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        pytest.param({"on": "probability"}, "--on must be softmax or logit", id="on"),
        pytest.param({"shape": "1x28x28"}, "--shape must look like 1,28,28", id="shape"),
        pytest.param({"formats": ("png", "gif")}, "--format takes png, svg, pdf", id="format"),
    ],
)
def test_bad_input(ckpt: Path, tmp_path: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(ConvscopeError) as e:
        spectrum.run(ckpt, tmp_path / "out", **kwargs)
    assert needle in str(e.value) and not (tmp_path / "out").exists()


def test_a_target_out_of_range_writes_nothing(ckpt: Path, tmp_path: Path) -> None:
    # the number of classes is known only once the model has run: --out exists, but empty
    with pytest.raises(ConvscopeError, match="--target 10 is out of range for 10 classes"):
        spectrum.run(ckpt, tmp_path / "out", target=10)
    assert list((tmp_path / "out").iterdir()) == []
