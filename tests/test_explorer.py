"""The explorer page: its data and index and tiles against the interpreter, and a browser.

:func:`convscope.linear.explorer.explore` computes, :func:`write_explorer_page` draws;
the data is checked against ``li.columns`` / ``li.rows`` directly, the page's index and
tiles against the same. The browser tests open the page from disk in Debian's headless
Chromium, driven by Selenium through the system chromedriver (so Selenium Manager never
downloads a browser), and move the pointer with real mouse events.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _browser
import numpy as np
import pytest
import torch
from _browser import chromium_or_skip
from PIL import Image
from torch import nn

from convscope.cli import main
from convscope.data import sample_photo
from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter
from convscope.linear.explorer import (
    ExplorerData,
    explore,
    explorer_image,
    pixel_grid,
    trained_espcn_checkpoint,
)
from convscope.models import load_checkpoint
from convscope.models.sr import BicubicUpscaler
from convscope.report import explorer as report_explorer
from convscope.report.explorer import _diverging_lut, write_explorer_page


def write_explorer(model: nn.Module, x: torch.Tensor, out: Path, *, title: str | None = None,
                   **options: Any) -> Path:  # fmt: skip
    """The two halves, as the run composes them: compute, then draw."""
    return write_explorer_page(explore(model, x, **options), out, title=title)


def luma_crop(size: int = 24) -> torch.Tensor:
    """(1, 1, size, size) luma crop of the astronaut photo: eye, hair and skin."""
    rgb = sample_photo("astronaut")[100 : 100 + size, 200 : 200 + size].astype(np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(luma))[None, None]


def read_index(out: Path) -> dict[str, Any]:
    return json.loads((out / "explorer.json").read_text())


@pytest.fixture(scope="module")
def espcn_data() -> tuple[nn.Module, torch.Tensor, ExplorerData]:
    """The trained ESPCN x4 on a 24x24 crop, filters on every 2nd pixel (a 12x12 grid)."""
    torch.manual_seed(0)
    model, _ = load_checkpoint(trained_espcn_checkpoint())
    x0 = luma_crop(24)
    return model, x0, explore(model, x0, max_pixels=144, k_svd=2)


@pytest.fixture(scope="module")
def espcn_page(
    tmp_path_factory: pytest.TempPathFactory, espcn_data: Any
) -> tuple[nn.Module, torch.Tensor, Path]:
    """:func:`espcn_data` drawn."""
    model, x0, data = espcn_data
    out = tmp_path_factory.mktemp("espcn_page")
    write_explorer_page(data, out, title="ESPCN test")
    return model, x0, out


def test_pixel_grid_subsamples_to_the_budget() -> None:
    assert pixel_grid(24, 24, 1024) == (list(range(24)), list(range(24)), 1)
    ys, xs, stride = pixel_grid(24, 24, 144)
    assert stride == 2 and ys == xs == list(range(1, 24, 2))
    ys, xs, stride = pixel_grid(100, 30, 50)
    assert len(ys) * len(xs) <= 50 and ys[0] == xs[0] == stride // 2
    with pytest.raises(ConvscopeError, match="max_pixels"):
        pixel_grid(8, 8, 0)


def test_index_covers_the_grid_and_every_file_is_there(espcn_page: Any) -> None:
    _, _, out = espcn_page
    idx = read_index(out)
    assert idx["format"] == "convscope-explorer-v1" and idx["kind"] == "image"
    ys, xs, stride = pixel_grid(24, 24, 144)
    g = idx["grid"]
    assert (g["ys"], g["xs"], g["stride"], g["full"]) == (ys, xs, stride, False)
    n = len(ys) * len(xs)
    assert g["count"] == n and len(idx["targets"]) == n
    assert idx["scale"] == [4.0, 4.0] and idx["output"]["shape"] == [1, 96, 96]
    for kind in ("columns", "rows"):
        spec = idx[kind]
        for key in ("origin", "peak", "sum", "kept"):
            assert len(spec[key]) == n, (kind, key)
        th, tw = spec["tile_shape"]
        with Image.open(out / spec["sprite"]) as im:
            assert im.size == (len(xs) * tw, len(ys) * th)
    assert idx["rows"]["tile_shape"] == [idx["tile"]] * 2
    assert idx["columns"]["tile_shape"] == [4 * idx["tile"]] * 2
    # ESPCN's receptive field is 11 pixels wide: the automatic window holds it whole.
    assert idx["tile"] >= 11 and idx["columns"]["min_kept"] > 0.9999
    assert idx["rows"]["min_kept"] > 0.9999
    files = [idx["input"]["file"], idx["output"]["file"], "metrics.json"]
    files += [f for p in idx["svd"]["pairs"] for f in (p["input"], p["output"])]
    for f in files:
        assert (out / f).is_file(), f
    assert len(idx["svd"]["values"]) == 2 and idx["svd"]["method"] == "randomized"
    html = (out / "explorer.html").read_text()
    # Static and self-contained: relative links only, nothing from a network.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html and "import " not in html
    assert "Subsampled grid" in html and "a step of\n2 pixels" in html  # the page says so
    # One channel in and out: nothing to choose.
    assert idx["channels"]["inputs"] == idx["channels"]["outputs"] == ["sum"]
    assert idx["views"] == {} and "<select" not in html
    inline = re.search(
        r'<script type="application/json" id="explorer-index">(.*?)</script>', html, re.S
    )
    assert inline is not None and json.loads(inline.group(1)) == idx


def test_index_numbers_are_the_interpreters_rows_and_columns(espcn_page: Any) -> None:
    model, x0, out = espcn_page
    idx = read_index(out)
    li = LinearInterpreter(model, x0, mode="freeze")
    gw = len(idx["grid"]["xs"])
    picks = [0, gw + 3, idx["grid"]["count"] - 1]  # a corner, the inside, the far corner
    pixels = [(idx["grid"]["ys"][k // gw], idx["grid"]["xs"][k % gw]) for k in picks]
    cols = li.columns([y * 24 + x for y, x in pixels])[:, 0].numpy()  # (3, 96, 96)
    targets = [tuple(idx["targets"][k]) for k in picks]
    assert all(q == (4 * y + 2, 4 * x + 2) for q, (y, x) in zip(targets, pixels, strict=True))
    rows = li.rows([qy * 96 + qx for qy, qx in targets])[:, 0].numpy()  # (3, 24, 24)
    C, R = idx["columns"], idx["rows"]
    for i, k in enumerate(picks):
        (y, x), (qy, qx) = pixels[i], targets[i]
        assert C["peak"][k] == pytest.approx(np.abs(cols[i]).max(), rel=1e-5)
        assert C["sum"][k] == pytest.approx(cols[i].sum(), rel=1e-4, abs=1e-5)
        assert C["at_target"][k] == pytest.approx(cols[i][qy, qx], rel=1e-5, abs=1e-7)
        assert R["peak"][k] == pytest.approx(np.abs(rows[i]).max(), rel=1e-5)
        assert R["sum"][k] == pytest.approx(rows[i].sum(), rel=1e-4, abs=1e-5)
        assert R["at_pixel"][k] == pytest.approx(rows[i][y, x], rel=1e-5, abs=1e-7)
        # F[q, p] read from the column and from the row: the same entry of F.
        assert R["at_pixel"][k] == pytest.approx(C["at_target"][k], rel=1e-4, abs=1e-6)
    # The sprite tile shows that column, in its window, on its own colour scale.
    lut = _diverging_lut().astype(np.int64)
    with Image.open(out / C["sprite"]) as im:
        sheet = np.asarray(im.convert("RGB")).astype(np.int64)
    th, tw = C["tile_shape"]
    for i, k in enumerate(picks):
        r, c = divmod(k, C["per_row"])
        tile = sheet[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
        nearest = ((tile[:, :, None, :] - lut[None, None]) ** 2).sum(-1).argmin(-1)
        shown = (nearest / 127.5 - 1.0) * C["peak"][k]
        oy, ox = C["origin"][k]
        padded = np.pad(cols[i], ((th, th), (tw, tw)))
        want = padded[oy + th : oy + 2 * th, ox + tw : ox + 2 * tw]
        # A 256-step colour scale, some of whose neighbours round to one colour.
        assert np.abs(shown - want).max() <= 4 / 127.5 * C["peak"][k]


def window(full: np.ndarray, origin: Any, h: int, w: int) -> np.ndarray:
    """``full[oy : oy + h, ox : ox + w]`` with zeros outside ``full``."""
    oy, ox = (int(v) for v in origin)
    padded = np.pad(full, ((h, h), (w, w)))
    return padded[oy + h : oy + 2 * h, ox + w : ox + 2 * w]


def holds_no_tensor(value: Any) -> bool:
    """True when nothing inside ``value`` (dataclasses, dicts, sequences) is a tensor."""
    if isinstance(value, torch.Tensor):
        return False
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(holds_no_tensor(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return all(holds_no_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(holds_no_tensor(v) for v in value)
    return True


def test_explore_filters_are_the_interpreters_columns_and_rows(espcn_data: Any) -> None:
    model, x0, data = espcn_data
    assert data.kind == "image" and data.in_shape == (1, 24, 24) and data.out_shape == (1, 96, 96)
    assert (data.ys, data.xs, data.stride) == pixel_grid(24, 24, 144)
    assert holds_no_tensor(data)  # the page draws from NumPy alone
    li = LinearInterpreter(model, x0, mode="freeze")
    np.testing.assert_allclose(data.output, li.output[0].numpy(), rtol=1e-6)
    assert list(data.filters) == [("sum", "sum")]
    cols, rows = data.filters["sum", "sum"].columns, data.filters["sum", "sum"].rows
    assert data.column_tile is not None and data.tile is not None
    th, tw = data.column_tile
    g, gw = data.grid_count, len(data.xs)
    assert cols.windows.shape == (g, th, tw) and rows.windows.shape == (g, data.tile, data.tile)
    for k in (0, gw + 3, 77, g - 1):
        y, x = data.ys[k // gw], data.xs[k % gw]
        qy, qx = data.targets[k]
        col = li.columns([y * 24 + x])[0, 0].double().numpy()  # (96, 96)
        row = li.rows([qy * 96 + qx])[0, 0].double().numpy()  # (24, 24)
        cwin = window(col, data.column_origin[k], th, tw)
        rwin = window(row, data.row_origin[k], data.tile, data.tile)
        np.testing.assert_allclose(cols.windows[k], cwin, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rows.windows[k], rwin, rtol=1e-5, atol=1e-7)
        assert cols.peak[k] == pytest.approx(np.abs(col).max(), rel=1e-5)
        assert cols.total[k] == pytest.approx(col.sum(), rel=1e-4, abs=1e-5)
        assert cols.at[k] == pytest.approx(col[qy, qx], rel=1e-5, abs=1e-7)
        assert cols.kept[k] == pytest.approx((cwin**2).sum() / (col**2).sum(), rel=1e-6)
        assert rows.peak[k] == pytest.approx(np.abs(row).max(), rel=1e-5)
        assert rows.total[k] == pytest.approx(row.sum(), rel=1e-4, abs=1e-5)
        assert rows.at[k] == pytest.approx(row[y, x], rel=1e-5, abs=1e-7)
        assert rows.kept[k] == pytest.approx((rwin**2).sum() / (row**2).sum(), rel=1e-6)
    # The singular pairs: F v = s u (randomized: to a per cent or two), signed so the
    # eigen-input's largest entry is positive.
    assert data.svd_method == "randomized" and data.singular_values.shape == (2,)
    for s, u, v in zip(data.singular_values, data.eigen_outputs, data.eigen_inputs, strict=True):
        fv = li.linear(torch.from_numpy(v[None]).float())[0].double().numpy()
        assert np.linalg.norm(fv) == pytest.approx(s, rel=0.02)
        assert float((fv * u).sum()) / np.linalg.norm(fv) > 0.99
        flat = v.reshape(-1)
        assert flat[np.abs(flat).argmax()] > 0


def test_explore_channel_views_are_slices_of_f() -> None:
    torch.manual_seed(3)
    model = TinyColourSR().eval()
    x0 = torch.rand(1, 3, 6, 6)
    data = explore(model, x0, k_svd=0, tile=5)
    assert data.svd_method == "none" and data.singular_values.shape == (0,)
    assert len(data.filters) == 16 and data.views.keys[0] == ("sum", "sum")
    li = LinearInterpreter(model, x0)
    F = li.columns(range(108)).permute(1, 2, 3, 0).reshape(3, 12, 12, 3, 6, 6)
    F = F.double().numpy()  # (out C, 12, 12, in C, 6, 6)
    for i, o in (("sum", "sum"), ("0", "2"), ("sum", "1"), ("2", "sum")):
        Fi = F.sum(3) if i == "sum" else F[:, :, :, int(i)]
        Fio = Fi.sum(0) if o == "sum" else Fi[int(o)]  # (12, 12, 6, 6)
        view = data.filters[i, o]
        for k in (0, 14, 35):
            y, x = divmod(k, 6)
            qy, qx = data.targets[k]
            cwin = window(Fio[:, :, y, x], data.column_origin[k], 10, 10)
            rwin = window(Fio[qy, qx], data.row_origin[k], 5, 5)
            np.testing.assert_allclose(view.columns.windows[k], cwin, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(view.rows.windows[k], rwin, rtol=1e-5, atol=1e-7)
            assert view.columns.at[k] == pytest.approx(Fio[qy, qx, y, x], rel=1e-5, abs=1e-7)


def test_explore_classifier_rows_and_columns() -> None:
    torch.manual_seed(0)
    model = TinyClassifier().eval()
    x0 = torch.rand(1, 3, 16, 16)
    data = explore(model, x0, max_pixels=64, top_classes=2, k_svd=1)
    assert data.kind == "classifier" and data.stride == 2 and data.filters == {}
    assert data.class_names == [str(i) for i in range(6)]
    assert holds_no_tensor(data)
    li = LinearInterpreter(model, x0)
    top = torch.argsort(li.output[0], descending=True)[:2].tolist()
    assert data.classes == top
    rows = li.rows(top).reshape(2, 3, 16, 16).double().numpy()
    gw = len(data.xs)
    assert list(data.class_rows) == [("sum", "sum"), ("0", "sum"), ("1", "sum"), ("2", "sum")]
    for key, cr in data.class_rows.items():
        want = rows.sum(1) if key[0] == "sum" else rows[:, int(key[0])]  # (class, H, W)
        np.testing.assert_allclose(cr.rows, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(cr.peak, np.abs(want).max((1, 2)), rtol=1e-5)
        for k in (0, 9, data.grid_count - 1):
            y, x = data.ys[k // gw], data.xs[k % gw]
            ch = range(3) if key[0] == "sum" else [int(key[0])]
            col = li.columns([c * 256 + y * 16 + x for c in ch]).sum(0)[top].double().numpy()
            np.testing.assert_allclose(cr.columns[k], col, rtol=1e-4, atol=1e-6)
    assert data.eigen_inputs.shape == (1, 3, 16, 16) and data.eigen_outputs.shape == (1, 6)


def test_explore_progress_bars_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    model, x0 = BicubicUpscaler(scale=2, channels=1), luma_crop(8)
    explore(model, x0, k_svd=1, batch_size=16)
    assert capsys.readouterr().err == ""
    explore(model, x0, k_svd=1, batch_size=16, progress=True)
    err = capsys.readouterr().err
    # 64 pixels: 64 column and 64 row probes (too few to pack); then the exact SVD.
    assert "explorer columns and rows" in err and "128/128" in err and "exact svd" in err
    explore(model, x0, k_svd=1, max_pixels=16, progress=True)
    assert "randomized svd" in capsys.readouterr().err
    explore(TinyClassifier().eval(), torch.rand(1, 3, 16, 16), k_svd=1, progress=True)
    err = capsys.readouterr().err
    assert "explorer rows" in err and "randomized svd" in err


def test_report_explorer_only_draws() -> None:
    # Importing the drawing module loads neither torch nor the interpreter ...
    code = (
        "import sys, convscope.report.explorer; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
        "or m.startswith('convscope.linear')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    # ... and its source imports them only for types.
    tree = ast.parse(Path(report_explorer.__file__).read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                mods = [a.name for a in sub.names]
            elif isinstance(sub, ast.ImportFrom):
                mods = [sub.module or ""]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] != "torch", mod
                assert not mod.startswith("convscope.linear"), mod


def test_bicubic_page_exact_svd_and_interpolation_identities(tmp_path: Path) -> None:
    # float32: in float64 BicubicUpscaler hands its kernel buffer to conv2d as is, and
    # the interpreter's in-place restore of buffers after a pass breaks li.rows then.
    x0 = luma_crop(12)
    model = BicubicUpscaler(scale=2, channels=1)
    write_explorer(model, x0, tmp_path, k_svd=3, max_pixels=1024)
    idx = read_index(tmp_path)
    assert idx["grid"]["full"] and idx["svd"]["method"] == "exact"
    li = LinearInterpreter(model, x0)
    F = li.columns(range(144)).reshape(144, -1).T  # (N, n), materialized
    want = torch.linalg.svdvals(F)[:3]
    np.testing.assert_allclose(idx["svd"]["values"], want.numpy(), rtol=1e-5)
    # Every output pixel of an interpolation is a weighted mean: each row sums to 1, and
    # away from the borders each column spreads its pixel over scale^2 output pixels.
    np.testing.assert_allclose(idx["rows"]["sum"], 1.0, rtol=1e-5)
    gw = len(idx["grid"]["xs"])
    inside = [y * gw + x for y in range(3, 9) for x in range(3, 9)]
    np.testing.assert_allclose(np.asarray(idx["columns"]["sum"])[inside], 4.0, rtol=1e-5)
    # The bicubic kernel has 4 taps a side per phase: the window holds it whole.
    assert idx["columns"]["min_kept"] == pytest.approx(1.0)


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def classifier_page(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[nn.Module, torch.Tensor, Path]:
    torch.manual_seed(0)
    model = TinyClassifier().eval()
    x0 = torch.rand(1, 3, 16, 16)
    out = tmp_path_factory.mktemp("classifier_page")
    names = [f"class {i}" for i in range(6)]
    write_explorer(model, x0, out, max_pixels=64, top_classes=3, k_svd=2, class_names=names)
    return model, x0, out


def test_classifier_page_columns_are_class_score_vectors(classifier_page: Any) -> None:
    model, x0, out = classifier_page
    idx = read_index(out)
    assert idx["kind"] == "classifier" and idx["grid"]["stride"] == 2
    li = LinearInterpreter(model, x0)
    top = torch.argsort(li.output[0], descending=True)[:3].tolist()
    assert [c["index"] for c in idx["classes"]] == top
    assert [c["name"] for c in idx["classes"]] == [f"class {i}" for i in top]
    gw = len(idx["grid"]["xs"])
    for k in (0, 9, idx["grid"]["count"] - 1):
        y, x = idx["grid"]["ys"][k // gw], idx["grid"]["xs"][k % gw]
        # An impulse in every channel at (y, x): the channel columns summed.
        col = li.columns([c * 256 + y * 16 + x for c in range(3)]).sum(0)
        np.testing.assert_allclose(
            idx["columns"]["values"][k], col[top].numpy(), rtol=1e-4, atol=1e-6
        )
    # The rows: one strip of the top classes per channel choice.
    assert idx["channels"]["inputs"] == ["sum", "0", "1", "2"]
    assert idx["channels"]["input_names"] == ["R", "G", "B"]
    assert sorted(idx["views"]) == ["0,sum", "1,sum", "2,sum"]
    rows = li.rows(top).reshape(3, 3, 16, 16)  # (class, channel, H, W)
    for key, spec in [("sum,sum", idx), *idx["views"].items()]:
        ch = key.split(",")[0]
        want = rows.sum(1) if ch == "sum" else rows[:, int(ch)]
        with Image.open(out / spec["rows"]["sprite"]) as im:
            assert im.size == (3 * 16, 16)
        np.testing.assert_allclose(spec["rows"]["sum"], want.sum((1, 2)), rtol=1e-5, atol=1e-6)
        peaks = want.abs().amax((1, 2))
        np.testing.assert_allclose(spec["rows"]["peak"], peaks, rtol=1e-5)
        # The column of one input channel: its flat index in channel ch.
        for k in (0, 9):
            y, x = idx["grid"]["ys"][k // gw], idx["grid"]["xs"][k % gw]
            np.testing.assert_allclose(
                spec["columns"]["values"][k], want[:, y, x], rtol=1e-5, atol=1e-7
            )
    # The channels' columns add up to the sum's, at every grid pixel.
    by_channel = np.array([idx["views"][f"{c},sum"]["columns"]["values"] for c in "012"])
    np.testing.assert_allclose(by_channel.sum(0), idx["columns"]["values"], rtol=1e-5, atol=1e-6)
    for p in idx["svd"]["pairs"]:
        assert (out / p["input"]).is_file() and len(p["classes"]) == 3


class TinyColourSR(nn.Module):
    """RGB -> RGB x2 upscaler (conv, ReLU, conv, PixelShuffle) whose channels mix."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 12, 3, padding=1),
            nn.PixelShuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def colour_page(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[nn.Module, torch.Tensor, Path]:
    """A 10x10 RGB image through :class:`TinyColourSR`, filters at every pixel."""
    torch.manual_seed(3)
    model = TinyColourSR().eval()
    x0 = torch.from_numpy(sample_photo("chelsea")[100:110, 200:210].astype(np.float32) / 255)
    x0 = x0.permute(2, 0, 1)[None].contiguous()
    out = tmp_path_factory.mktemp("colour_page")
    write_explorer(model, x0, out, k_svd=1, title="colour test")
    return model, x0, out


def decode_tile(out: Path, spec: dict[str, Any], k: int) -> np.ndarray:
    """Tile ``k`` of a sprite sheet back to values, from its colours and its peak."""
    lut = _diverging_lut().astype(np.int64)
    with Image.open(out / spec["sprite"]) as im:
        sheet = np.asarray(im.convert("RGB")).astype(np.int64)
    th, tw = spec["tile_shape"]
    r, c = divmod(k, spec["per_row"])
    tile = sheet[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
    nearest = ((tile[:, :, None, :] - lut[None, None]) ** 2).sum(-1).argmin(-1)
    return (nearest / 127.5 - 1.0) * spec["peak"][k]


def view_spec(idx: dict[str, Any], key: str, kind: str) -> dict[str, Any]:
    """The filters of one channel choice, with the layout of the sums (as the page does)."""
    return {**idx[kind], **(idx["views"][key][kind] if key != "sum,sum" else {})}


def test_colour_page_has_every_channel_choice_and_they_add_up(colour_page: Any) -> None:
    model, x0, out = colour_page
    idx = read_index(out)
    ch = idx["channels"]
    assert ch["inputs"] == ch["outputs"] == ["sum", "0", "1", "2"]
    assert ch["input_names"] == ch["output_names"] == ["R", "G", "B"]
    keys = [f"{i},{o}" for i in ch["inputs"] for o in ch["outputs"]]
    assert sorted(idx["views"]) == sorted(keys[1:])  # every choice but the sums
    files = {idx["columns"]["sprite"], idx["rows"]["sprite"]}
    for spec in idx["views"].values():
        files |= {spec["columns"]["sprite"], spec["rows"]["sprite"]}
    assert len(files) == 2 * 16 and all((out / f).is_file() for f in files)
    html = (out / "explorer.html").read_text()
    assert 'id="input-channel"' in html and 'id="output-channel"' in html
    # Against the interpreter: F materialized from its columns, (out C, 20, 20, in C, 10, 10).
    li = LinearInterpreter(model, x0)
    F = li.columns(range(300)).permute(1, 2, 3, 0).reshape(3, 20, 20, 3, 10, 10).numpy()
    n = idx["grid"]["count"]
    assert n == 100 and idx["grid"]["full"]
    for key in keys:
        i, o = key.split(",")
        Fi = F.sum(3) if i == "sum" else F[:, :, :, int(i)]  # (C', 20, 20, 10, 10)
        Fio = Fi.sum(0) if o == "sum" else Fi[int(o)]  # (20, 20, 10, 10)
        C, R = view_spec(idx, key, "columns"), view_spec(idx, key, "rows")
        for k in (0, 34, 99):
            y, x = divmod(k, 10)
            qy, qx = idx["targets"][k]
            col, row = Fio[:, :, y, x], Fio[qy, qx]
            assert C["peak"][k] == pytest.approx(np.abs(col).max(), rel=1e-5)
            assert C["sum"][k] == pytest.approx(col.sum(), rel=1e-4, abs=1e-6)
            assert C["at_target"][k] == pytest.approx(col[qy, qx], rel=1e-5, abs=1e-7)
            assert R["peak"][k] == pytest.approx(np.abs(row).max(), rel=1e-5)
            assert R["sum"][k] == pytest.approx(row.sum(), rel=1e-4, abs=1e-6)
            assert R["at_pixel"][k] == pytest.approx(row[y, x], rel=1e-5, abs=1e-7)
    # From the data written alone: the channels' filters add up to the sum's. Exactly in
    # the numbers; in the tiles up to the 256-step colour scale of each tile.
    for kind, names in (("columns", ("sum", "at_target")), ("rows", ("sum", "at_pixel"))):
        for o in ch["outputs"]:
            total = view_spec(idx, f"sum,{o}", kind)
            parts = [view_spec(idx, f"{i},{o}", kind) for i in "012"]
            for name in names:
                np.testing.assert_allclose(
                    np.sum([p[name] for p in parts], axis=0), total[name], rtol=1e-5, atol=1e-6
                )
    for k in (0, 34, 55, 99):
        for kind in ("columns", "rows"):
            total = view_spec(idx, "sum,sum", kind)
            parts = [view_spec(idx, f"{i},sum", kind) for i in "012"]
            summed = sum(decode_tile(out, p, k) for p in parts)
            step = 4 / 127.5 * (sum(p["peak"][k] for p in parts) + total["peak"][k])
            assert np.abs(summed - decode_tile(out, total, k)).max() <= step
            # and the channels differ: choosing one shows another filter
            assert not np.allclose(decode_tile(out, parts[0], k), decode_tile(out, parts[1], k))


def test_colour_page_sums_only(tmp_path: Path, colour_page: Any) -> None:
    model, x0, out = colour_page
    write_explorer(model, x0, tmp_path, k_svd=0, per_channel=False)
    idx, full = read_index(tmp_path), read_index(out)
    assert idx["views"] == {} and idx["channels"]["inputs"] == ["sum"]
    assert "<select" not in (tmp_path / "explorer.html").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "columns.png",
        "input.png",
        "output.png",
        "rows.png",
    ]
    # An impulse in every channel at once is the sum of the per-channel columns.
    for kind in ("columns", "rows"):
        for name in ("peak", "sum", "kept"):
            np.testing.assert_allclose(idx[kind][name], full[kind][name], rtol=1e-5, atol=1e-6)


def test_explore_refuses_bad_input() -> None:
    model = BicubicUpscaler(scale=2, channels=1)
    x0 = luma_crop(8)
    with pytest.raises(ConvscopeError, match="tile must be a positive odd"):
        explore(model, x0, tile=4)
    with pytest.raises(ConvscopeError, match="svd_method"):
        explore(model, x0, svd_method="lanczos")
    with pytest.raises(ConvscopeError, match="needs a one-channel input, every pixel"):
        explore(model, x0, max_pixels=16, svd_method="exact")
    with pytest.raises(ConvscopeError, match=r"image must be \(1, C, H, W\)"):
        explore(model, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ConvscopeError, match="image-to-image model .* or a classifier"):
        explore(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(2)), x0)
    with pytest.raises(ConvscopeError, match="exact' is for image-to-image"):
        explore(TinyClassifier().eval(), torch.rand(1, 3, 16, 16), svd_method="exact")
    with pytest.raises(ConvscopeError, match="class_names has 2 names"):
        explore(TinyClassifier().eval(), torch.rand(1, 3, 16, 16), class_names=["a", "b"])
    with pytest.raises(ConvscopeError, match="batch_size must be an integer >= 1"):
        explore(model, x0, batch_size=0)


def test_write_explorer_refuses_bad_input(tmp_path: Path) -> None:
    # The composition passes explore's errors on, before anything is written.
    model = BicubicUpscaler(scale=2, channels=1)
    with pytest.raises(ConvscopeError, match="tile must be a positive odd"):
        write_explorer(model, luma_crop(8), tmp_path / "page", tile=4)
    assert not (tmp_path / "page").exists()
    data = explore(model, luma_crop(8), k_svd=0)
    with pytest.raises(ConvscopeError, match="kind must be image or classifier"):
        write_explorer_page(dataclasses.replace(data, kind="volume"), tmp_path)


def test_explorer_image_shrinks_and_converts(tmp_path: Path) -> None:
    x = explorer_image("sample:astronaut", 1)
    assert x.shape == (1, 1, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert explorer_image("sample:chelsea", 3).shape == (1, 3, 43, 64)  # 300x451, aspect kept
    assert explorer_image("sample:astronaut", 3, (20, 30)).shape == (1, 3, 20, 30)


# -- the command line ----------------------------------------------------------------------


def run_main(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def test_cli_explore_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "photo.png"
    Image.fromarray(sample_photo("astronaut")[:64, :64]).save(png)
    out = tmp_path / "page"
    code = run_main(
        "linear",
        "explore",
        "--model",
        "bicubic",
        "--image",
        str(png),
        "--out",
        str(out),
        "--size",
        "10,12",
        "--k-svd",
        "2",
    )
    assert code == 0, capsys.readouterr().err
    idx = read_index(out)
    assert idx["input"]["shape"] == [1, 10, 12] and idx["output"]["shape"] == [1, 40, 48]
    assert (out / "explorer.html").is_file() and "explorer page" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--model", "no_such_net"), "unknown model 'no_such_net': give a convscope checkpoint"),
        (("--model", "bicubic", "--weights", "DEFAULT"), "are for torchvision and timm"),
        (("--model", "espcn", "--weights", "DEFAULT"), "are for torchvision and timm"),
        (("--model", "missing/net.pt"), "does not exist"),
        (("--model", "bicubic", "--mode", "exact"), "--mode must be freeze or taylor"),
        (("--model", "bicubic", "--size", "ten"), "--size must be H,W"),
        (("--model", "bicubic", "--tile", "4"), "tile must be a positive odd"),
    ],
)
def test_cli_explore_errors_are_one_line(
    args: tuple[str, ...], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = run_main(
        "linear",
        "explore",
        "--image",
        "sample:camera",
        "--out",
        str(tmp_path),
        "--size",
        "8,8",
        *args,
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert needle in err[0]


def test_cli_explore_says_when_torchvision_weights_are_absent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("torchvision")
    cached = Path(torch.hub.get_dir()) / "checkpoints"
    if any(cached.glob("resnet18-*.pth")):
        pytest.skip("resnet18 weights are cached here; the absent-weights message cannot show")
    code = run_main(
        "linear",
        "explore",
        "--model",
        "resnet18",
        "--weights",
        "DEFAULT",
        "--image",
        "sample:camera",
        "--out",
        str(tmp_path),
    )
    err = capsys.readouterr().err
    assert code == 2 and "not in the local cache" in err and "resnet18" in err


# -- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium_or_skip()


def open_page(driver: Any, page: Path) -> None:
    _browser.open_page(driver, page, ready=True)


def point_at(driver: Any, element: Any, y: float, x: float, h: int, w: int) -> None:
    """Move the mouse over pixel (y, x) of an image of h x w pixels shown by ``element``."""
    from selenium.webdriver.common.action_chains import ActionChains

    rect = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();return [r.width, r.height];", element
    )
    # Selenium measures offsets from the element's centre.
    dx = (x + 0.5) / w * rect[0] - rect[0] / 2
    dy = (y + 0.5) / h * rect[1] - rect[1] / 2
    ActionChains(driver).move_to_element_with_offset(element, round(dx), round(dy)).perform()


def shown_column(driver: Any) -> tuple[str, str]:
    """(grid pixel on show, hash of the column canvas as the page draws it)."""
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "column-view")
    png = canvas.screenshot_as_png
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    # Not a blank canvas: a filter is drawn in colour.
    assert (np.abs(pixels.astype(int) - 255).sum(-1) > 60).mean() > 0.001
    return canvas.get_attribute("data-pixel"), hashlib.sha256(pixels.tobytes()).hexdigest()


def test_browser_pointer_moves_show_different_columns(browser: Any, espcn_page: Any) -> None:
    from selenium.webdriver.common.by import By

    _, _, out = espcn_page
    open_page(browser, out / "explorer.html")
    image = browser.find_element(By.ID, "input-view")
    point_at(browser, image, 5, 5, 24, 24)
    pixel_a, hash_a = shown_column(browser)
    point_at(browser, image, 17, 11, 24, 24)
    pixel_b, hash_b = shown_column(browser)
    # Grid pixels are the odd ones (stride 2): the pointer snaps to the nearest.
    assert pixel_a == "5,5" and pixel_b == "17,11"
    assert hash_a != hash_b
    # Back at the first pixel: the same picture again, so the tile follows the pixel.
    point_at(browser, image, 5, 5, 24, 24)
    assert shown_column(browser) == (pixel_a, hash_a)
    # The output image maps back to the input grid: output pixel (70, 46) lies in the
    # block of input pixel (17, 11).
    point_at(browser, browser.find_element(By.ID, "output-view"), 70, 46, 96, 96)
    assert shown_column(browser) == (pixel_b, hash_b)
    info = browser.find_element(By.ID, "column-info").text
    idx = read_index(out)
    k = idx["grid"]["ys"].index(17) * len(idx["grid"]["xs"]) + idx["grid"]["xs"].index(11)
    assert "p = (17, 11)" in info and f"q = ({4 * 17 + 2}, {4 * 11 + 2})" in info
    assert math.isclose(
        float(re.search(r"peak \|F e_p\| = (\S+)", info).group(1)),  # type: ignore[union-attr]
        idx["columns"]["peak"][k],
        rel_tol=1e-3,
    )


def choose_channel(driver: Any, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_value(value)
    deadline = time.monotonic() + 20
    while driver.execute_script("return document.body.dataset.ready") != "1":
        assert time.monotonic() < deadline, "the page never showed the channel"
        time.sleep(0.05)


def test_browser_channel_choice_shows_that_channels_column(browser: Any, colour_page: Any) -> None:
    from selenium.webdriver.common.by import By

    _, _, out = colour_page
    idx = read_index(out)
    open_page(browser, out / "explorer.html")
    image = browser.find_element(By.ID, "input-view")
    point_at(browser, image, 4, 6, 10, 10)
    canvas = browser.find_element(By.ID, "column-view")
    assert canvas.get_attribute("data-view") == "sum,sum"
    _, hash_sum = shown_column(browser)
    shown = {}
    for ch in ("0", "1"):
        choose_channel(browser, "input-channel", ch)
        assert canvas.get_attribute("data-view") == f"{ch},sum"
        pixel, shown[ch] = shown_column(browser)
        assert pixel == "4,6"  # the same pixel, another channel
        info = browser.find_element(By.ID, "column-info").text
        peak = float(re.search(r"peak \|F e_p\| = (\S+)", info).group(1))  # type: ignore[union-attr]
        want = idx["views"][f"{ch},sum"]["columns"]["peak"][4 * 10 + 6]
        assert math.isclose(peak, want, rel_tol=1e-3)
    assert len({hash_sum, shown["0"], shown["1"]}) == 3
    # An output channel on top, then back: the pictures follow the choice.
    choose_channel(browser, "output-channel", "2")
    assert canvas.get_attribute("data-view") == "1,2"
    assert shown_column(browser)[1] not in (shown["1"], hash_sum)
    choose_channel(browser, "output-channel", "sum")
    choose_channel(browser, "input-channel", "0")
    assert shown_column(browser) == ("4,6", shown["0"])
    choose_channel(browser, "input-channel", "sum")
    assert shown_column(browser) == ("4,6", hash_sum)


def test_browser_classifier_bars_follow_the_pointer(browser: Any, classifier_page: Any) -> None:
    from selenium.webdriver.common.by import By

    _, _, out = classifier_page
    open_page(browser, out / "explorer.html")
    image = browser.find_element(By.ID, "input-view")
    shown = []
    for y, x in ((1, 1), (9, 13)):
        point_at(browser, image, y, x, 16, 16)
        bars = browser.find_element(By.ID, "column-view")
        shown.append((bars.get_attribute("data-pixel"), bars.text))
    assert [p for p, _ in shown] == ["1,1", "9,13"]
    assert shown[0][1] != shown[1][1] and "class" in shown[0][1]
    # Another input channel at the same pixel: other bars, the row strips follow.
    choose_channel(browser, "input-channel", "2")
    bars = browser.find_element(By.ID, "column-view")
    assert bars.get_attribute("data-pixel") == "9,13" and bars.text != shown[1][1]
    strips = browser.find_elements(By.CSS_SELECTOR, "img.strip")
    assert strips and all(s.get_attribute("src").endswith("/rows_2_sum.png") for s in strips)


def test_cli_explore_per_channel_tiles_or_sums_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "photo.png"
    Image.fromarray(sample_photo("astronaut")[:64, :64]).save(png)
    common = ("linear", "explore", "--model", "resnet18", "--image", str(png))
    common += ("--size", "16,16", "--max-pixels", "16", "--k-svd", "0")
    assert run_main(*common, "--out", str(tmp_path / "each")) == 0, capsys.readouterr().err
    assert run_main(*common, "--sum-channels", "--out", str(tmp_path / "sum")) == 0
    each, summed = read_index(tmp_path / "each"), read_index(tmp_path / "sum")
    assert {"0,sum", "1,sum", "2,sum"} <= set(each.get("views", {}))
    assert not summed.get("views")
    assert sorted(p.name for p in (tmp_path / "each").glob("rows_*.png"))
    assert not list((tmp_path / "sum").glob("rows_*.png"))
