"""convscope.report.kernel_sheet.write_kernel_sheet (what `convscope kernels apply` runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope import kernels as kb
from convscope.data import sample_photo
from convscope.errors import ConvscopeError
from convscope.report.kernel_sheet import write_kernel_sheet


def test_a_photo_file_and_two_kernels(tmp_path: Path) -> None:
    photo = sample_photo("chelsea")[40:72, 150:182]
    png = tmp_path / "photo.png"
    Image.fromarray(photo).save(png)
    written = write_kernel_sheet(png, tmp_path / "k", ["identity", "sobel_e"])
    assert written == [
        tmp_path / "k" / "kernel_identity.png",
        tmp_path / "k" / "kernel_sobel_e.png",
    ]
    assert (tmp_path / "k" / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_array_equal(np.asarray(Image.open(written[0])), photo)
    sobel = kb.filter_image(photo, kb.get("sobel_e"))
    np.testing.assert_array_equal(np.asarray(Image.open(written[1])), sobel)


def test_the_whole_bank_by_default_and_a_sample_photo(tmp_path: Path) -> None:
    png = tmp_path / "crop.png"
    Image.fromarray(sample_photo("camera")[200:224, 200:224, 0], mode="L").save(png)
    written = write_kernel_sheet(png, tmp_path / "bank")
    assert [p.name for p in written] == [f"kernel_{k.name}.png" for k in kb.gfnn_bank()]
    written = write_kernel_sheet("sample:camera", tmp_path / "cam", ["box_blur"])
    blurred = np.asarray(Image.open(written[0]))
    assert blurred.shape == sample_photo("camera").shape


def test_unknown_kernel_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConvscopeError, match="unknown kernel 'nope'"):
        write_kernel_sheet("sample:camera", tmp_path / "k", ["sobel_e", "nope"])
    assert not (tmp_path / "k").exists()
