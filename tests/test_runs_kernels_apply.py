"""convscope.runs.kernels_apply.run (what `convscope kernels apply` runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope import kernels as kb
from convscope.data import sample_photo
from convscope.errors import ConvscopeError
from convscope.runs import kernels_apply


def test_a_photo_file_and_two_kernels(tmp_path: Path) -> None:
    photo = sample_photo("chelsea")[40:72, 150:182]
    png = tmp_path / "photo.png"
    Image.fromarray(photo).save(png)
    res = kernels_apply.run(png, tmp_path / "k", kernels=["identity", "sobel_e"])
    written = res.files[:2]
    assert written == [
        tmp_path / "k" / "kernel_identity.png",
        tmp_path / "k" / "kernel_sobel_e.png",
    ]
    assert res.files[2:] == [tmp_path / "k" / "contact_sheet.png"]
    assert res.out == tmp_path / "k"
    assert res.metrics == {"image": str(png), "kernels": ["identity", "sobel_e"],
                           "shape": [32, 32, 3]}  # fmt: skip
    assert (tmp_path / "k" / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_array_equal(np.asarray(Image.open(written[0])), photo)
    sobel = kb.filter_image(photo, kb.get("sobel_e"))
    np.testing.assert_array_equal(np.asarray(Image.open(written[1])), sobel)


def test_the_whole_bank_by_default_and_a_sample_photo(tmp_path: Path) -> None:
    png = tmp_path / "crop.png"
    Image.fromarray(sample_photo("camera")[200:224, 200:224, 0], mode="L").save(png)
    res = kernels_apply.run(png, tmp_path / "bank")
    bank = kb.gfnn_bank()
    assert [p.name for p in res.files[: len(bank)]] == [f"kernel_{k.name}.png" for k in bank]
    assert [p.name for p in res.files[len(bank) :]] == ["contact_sheet.png"]
    res = kernels_apply.run("sample:camera", tmp_path / "cam", kernels=["box_blur"])
    blurred = np.asarray(Image.open(res.files[0]))
    assert blurred.shape == sample_photo("camera").shape


def test_unknown_kernel_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConvscopeError, match="unknown kernel 'nope'"):
        kernels_apply.run("sample:camera", tmp_path / "k", kernels=["sobel_e", "nope"])
    assert not (tmp_path / "k").exists()


def test_existing_results_are_refused_without_overwrite(tmp_path: Path) -> None:
    png = tmp_path / "crop.png"
    Image.fromarray(sample_photo("camera")[200:216, 200:216, 0], mode="L").save(png)
    first = kernels_apply.run(png, tmp_path / "k", kernels=["sobel_e"])
    before = first.files[0].read_bytes()
    with pytest.raises(
        ConvscopeError, match="already holds contact_sheet.png, kernel_sobel_e.png"
    ) as e:
        kernels_apply.run(png, tmp_path / "k", kernels=["sobel_e"])
    assert "--overwrite" in str(e.value)
    again = kernels_apply.run(png, tmp_path / "k", kernels=["sobel_e"], overwrite=True)
    assert again.files == first.files and again.files[0].read_bytes() == before
