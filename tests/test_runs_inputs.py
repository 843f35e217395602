"""convscope.runs.inputs: what --image names and how an image is made ready for a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.data import sample_photo
from convscope.errors import ConvscopeError
from convscope.runs.inputs import ImageSource, expand_images, load_input, parse_size


@pytest.fixture()
def pics(tmp_path: Path) -> Path:
    rgb = sample_photo("chelsea")[:40, :60]
    Image.fromarray(rgb).save(tmp_path / "b_cat.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "a_grey.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    return tmp_path


def test_file_sample_folder_and_glob(pics: Path) -> None:
    assert expand_images(pics / "b_cat.png") == [
        ImageSource(str(pics / "b_cat.png"), path=pics / "b_cat.png")
    ]
    assert expand_images("sample:camera") == [ImageSource("sample:camera", sample="camera")]
    folder = expand_images(pics)
    assert [s.path.name for s in folder if s.path] == ["a_grey.jpg", "b_cat.png"]
    assert [s.stem for s in folder] == ["a_grey", "b_cat"]
    assert [s.label for s in expand_images(str(pics / "*.png"))] == [str(pics / "b_cat.png")]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("sample:nope", "unknown sample photo; choose one of astronaut"),
        ("{d}/missing.png", "missing.png: no such file or folder (or give sample:NAME"),
        ("{d}/*.gif", "*.gif: the pattern matches no image files"),
        ("{d}/empty", "the folder holds no image files"),
    ],
)
def test_bad_image_specs(pics: Path, spec: str, needle: str) -> None:
    (pics / "empty").mkdir()
    with pytest.raises(ConvscopeError) as e:
        expand_images(spec.format(d=pics))
    assert needle in str(e.value)


def test_parse_size() -> None:
    assert parse_size("224") == parse_size("224, 224") == parse_size((224, 224)) == (224, 224)
    assert parse_size("10,12") == (10, 12) and parse_size(None) is None
    for bad in ("0,5", "ten", "1,2,3", "28,x", (3, -1)):
        with pytest.raises(ConvscopeError, match="--size must be H,W"):
            parse_size(bad)  # type: ignore[arg-type]


def test_channels_are_converted_to_the_model(pics: Path) -> None:
    rgb_src = expand_images(pics / "b_cat.png")[0]
    x, notes = load_input(rgb_src, in_channels=1)
    raw = torch.from_numpy(np.asarray(Image.open(pics / "b_cat.png"), dtype=np.float32) / 255)
    luma = raw @ torch.tensor([0.299, 0.587, 0.114])
    assert x.shape == (1, 1, 40, 60) and torch.allclose(x[0, 0], luma, atol=1e-6)
    assert notes["converted"] == "RGB -> grey (ITU-R 601-2 luma)"
    assert notes["original_shape"] == [3, 40, 60] and notes["shape"] == [1, 40, 60]
    g, notes = load_input(expand_images(pics / "a_grey.jpg")[0], in_channels=3)
    assert g.shape == (1, 3, 40, 60) and torch.equal(g[0, 0], g[0, 2])
    assert notes["converted"] == "grey -> RGB (repeated)"
    same, notes = load_input(rgb_src, in_channels=3)
    assert notes["converted"] is None and torch.allclose(same[0].permute(1, 2, 0), raw)


def test_channel_mismatches_that_do_not_convert(pics: Path) -> None:
    src = expand_images(pics / "b_cat.png")[0]
    with pytest.raises(ConvscopeError, match="the image has 3 channels but the model takes 4"):
        load_input(src, in_channels=4)
    with pytest.raises(ConvscopeError, match="--channels 1 but the model takes 3 channels"):
        load_input(src, in_channels=3, channels=1)
    with pytest.raises(ConvscopeError, match="--channels must be 1 or 3; got 2"):
        load_input(src, channels=2)


def test_invert_size_and_the_weights_preprocessing(pics: Path) -> None:
    src = expand_images("sample:chelsea")[0]  # 300 x 451
    x, _ = load_input(src)
    inv, notes = load_input(src, invert=True)
    assert torch.allclose(inv, 1 - x) and notes["inverted"] is True
    assert load_input(src, size=(20, 30))[0].shape == (1, 3, 20, 30)
    # the model's own input size wins over the preprocessing of its weights
    assert load_input(src, input_size=(28, 28), preprocess={"resize": 256})[0].shape[-2:] == (
        28,
        28,
    )
    # torchvision style: shorter side to 256, then the centre 224 x 224
    y, notes = load_input(src, preprocess={"resize": 256, "crop": [224, 224]})
    assert notes["shape"] == [3, 224, 224]
    resized = torch.nn.functional.interpolate(
        x, size=(256, 385), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)
    top, left = (256 - 224) // 2, (385 - 224) // 2
    assert torch.allclose(y, resized[..., top : top + 224, left : left + 224], atol=1e-6)
