"""convscope.runs.kernels_apply.run (what `convscope kernels apply` runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope import kernels as kb
from convscope.data import sample_photo
from convscope.errors import ConvscopeError
from convscope.report.figures import signed_colours
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
    sobel = kb.filter_image(photo, kb.get("sobel_e"), clip=False).mean(-1)
    lim = float(np.abs(sobel[1:-1, 1:-1]).max())
    assert res.metrics == {"image": str(png), "kernels": ["identity", "sobel_e"],
                           "shape": [32, 32, 3],
                           "display": {"identity": {"kind": "picture", "clipped": 0.0},
                                       "sobel_e": {"kind": "signed", "limit": lim}}}  # fmt: skip
    assert (tmp_path / "k" / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_array_equal(np.asarray(Image.open(written[0])), photo)
    # an edge kernel's response, signed, in the colours of the contact sheet's scale
    np.testing.assert_array_equal(np.asarray(Image.open(written[1])), signed_colours(sobel, lim)[0])


def test_signed_responses_are_not_clipped_to_black(tmp_path: Path) -> None:
    # a bright square on grey: a vertical edge kernel answers +, then - across it
    photo = np.full((24, 24), 100, np.uint8)
    photo[8:16, 8:16] = 200
    png = tmp_path / "square.png"
    Image.fromarray(photo, mode="L").save(png)
    res = kernels_apply.run(png, tmp_path / "k", kernels=["sobel_e", "gaussian_blur"])
    resp = kb.filter_image(photo, kb.get("sobel_e"), clip=False)
    lim = res.metrics["display"]["sobel_e"]["limit"]
    assert lim == float(np.abs(resp[1:-1, 1:-1]).max()) == 400.0
    rgb = np.asarray(Image.open(res.files[0])).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    inside = np.zeros_like(resp, dtype=bool)
    inside[1:-1, 1:-1] = True
    neg, pos, zero = inside & (resp <= -lim / 2), inside & (resp >= lim / 2), resp == 0
    assert neg.sum() >= 8 and pos.sum() >= 8 and zero.sum() > 100
    # negative: blue (it was black, clipped to 0); positive: red; zero: white
    assert (b[neg] == 255).all() and (r[neg] < 130).all() and (r[neg] == g[neg]).all()
    assert (r[pos] == 255).all() and (b[pos] < 130).all() and (b[pos] == g[pos]).all()
    assert (rgb[zero] >= 254).all()  # bwr at its centre: (255, 254, 254)
    # the same scale on both sides: -400 (column 7) as far from white as +400 (column 15)
    assert resp[10, 7] == -400 and resp[10, 15] == 400
    np.testing.assert_array_equal(rgb[10, 7], rgb[10, 15][::-1])
    # a blur gives back a picture, 0..255, nothing clipped
    assert res.metrics["display"]["gaussian_blur"] == {"kind": "picture", "clipped": 0.0}


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
