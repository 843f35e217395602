"""Receptive-field packing (:mod:`convscope.linear.packing`) in the explorer.

Packed filters are checked against the unpacked ones in float64 (the same numbers to
rounding), on an ESPCN-shaped upscaler, a strided downsampler, a colour model with
per-channel filters, and against ``li.columns`` / ``li.rows`` on the trained ESPCN; a
model with one long-range connection off the sampled pixels must be caught by the checks
(and fall back to one probe per filter), and a global op must not be packed at all.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from convscope.data import sample_photo
from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter
from convscope.linear.explorer import ExplorerData, explore, trained_espcn_checkpoint
from convscope.linear.packing import _period, pack_filters, sperner_codes
from convscope.models import load_checkpoint
from convscope.models.sr import ESPCN
from convscope.report.explorer import write_explorer_page

FIELDS = ("windows", "peak", "total", "at", "kept")


def luma(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    rgb = sample_photo("astronaut")[80 : 80 + size, 190 : 190 + size].astype(np.float64)
    y = rgb @ np.array([0.299, 0.587, 0.114]) / 255.0
    return torch.from_numpy(np.ascontiguousarray(y))[None, None].to(dtype)


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and biases (zero biases would leave the ReLU masks too regular)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model.eval()


def assert_same_filters(packed: ExplorerData, plain: ExplorerData) -> None:
    assert list(packed.filters) == list(plain.filters)
    assert packed.probes < plain.probes
    for key in plain.filters:
        for kind in ("columns", "rows"):
            a, b = getattr(packed.filters[key], kind), getattr(plain.filters[key], kind)
            for f in FIELDS:
                want = getattr(b, f)
                np.testing.assert_allclose(getattr(a, f), want, rtol=0, atol=1e-12, err_msg=f)
            assert float(np.abs(b.windows).max()) > 0.1  # the filters did not vanish


class Downsampler(nn.Module):
    """Stride-2 convolutions: each output pixel reads a 7x7 patch, strided."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ColourSR(nn.Module):
    """RGB -> RGB x2 (conv, GELU, conv, PixelShuffle): channels mix, filters per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.GELU(), nn.Conv2d(6, 12, 3, padding=1),
            nn.PixelShuffle(2),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class OneLongWire(nn.Module):
    """A local upscaler plus one wire from input pixel ``(7, 7)`` to every output pixel.

    ``(7, 7)`` is on the step-2 grid of a 40x40 image (grid index 3 of 20) but not one of
    the pixels the footprint is sampled at, so only the checks can see the wire.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sr = ESPCN(scale=2, channels=1, features=(6,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sr(x) + 0.5 * x[:, :, 7:8, 7:8]


class GlobalMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x.mean(dim=(2, 3), keepdim=True)


def both(model: nn.Module, x0: torch.Tensor, **options: Any) -> tuple[ExplorerData, ExplorerData]:
    packed = explore(model, x0, k_svd=0, **options)
    return packed, explore(model, x0, k_svd=0, pack=False, **options)


def test_packed_filters_are_the_unpacked_ones_espcn_float64(tmp_path: Path) -> None:
    model = randomized(ESPCN(scale=2, channels=1, features=(8, 8)), 0).double()
    x0 = luma(40, torch.float64)
    packed, plain = both(model, x0, max_pixels=400, tile=9)
    assert packed.stride == 2 and packed.packed == (True, True)
    assert plain.packed == (False, False) and plain.probes == 2 * 400
    assert_same_filters(packed, plain)
    # 16 footprint samples, then per group of the 5x5 lattice Sperner checks and a value
    # probe: 16 members per group need 6 checks (C(6, 3) = 20 >= 16), rows one more
    assert packed.probes == (16 + 25 * (6 + 1)) + (16 + 25 * (7 + 1))
    page = write_explorer_page(packed, tmp_path / "packed")
    index = json.loads((tmp_path / "packed" / "explorer.json").read_text())
    assert index["probes"] == {"count": 407, "packed": {"columns": True, "rows": True}}
    assert "from 407 probes (columns and rows packed by receptive field)" in page.read_text()
    page = write_explorer_page(plain, tmp_path / "plain")
    assert "from 800 probes</p>" in page.read_text()


def test_packed_filters_strided_downsampler_float64() -> None:
    model = randomized(Downsampler(), 1).double()
    x0 = luma(64, torch.float64)
    packed, plain = both(model, x0, max_pixels=1024, tile=7)
    assert packed.geometry is not None and packed.geometry.scale == (0.5, 0.5)
    assert packed.packed == (True, True)
    assert_same_filters(packed, plain)


def test_packed_filters_per_channel_float64() -> None:
    model = randomized(ColourSR(), 2).double()
    x0 = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    packed, plain = both(model, x0, max_pixels=256, tile=5)
    assert len(packed.filters) == 16 and packed.packed == (True, True)
    assert_same_filters(packed, plain)


def test_a_long_wire_off_the_samples_is_caught_and_not_packed() -> None:
    model = randomized(OneLongWire(), 3).double()
    x0 = luma(40, torch.float64)
    packed, plain = both(model, x0, max_pixels=400, tile=9)
    assert packed.ys[3] == 7 and packed.xs[3] == 7
    # columns: the wire's column spans the image, a check sees it leave its box;
    # rows: every row reads (7, 7), so the sampled footprint is the image: no packing
    assert packed.packed == (False, False)
    for key in plain.filters:
        for kind in ("columns", "rows"):
            a, b = getattr(packed.filters[key], kind), getattr(plain.filters[key], kind)
            for f in FIELDS:
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    k = 3 * len(packed.xs) + 3
    assert plain.filters["sum", "sum"].columns.kept[k] < 0.9  # the wire is really there


def test_a_global_op_is_not_packed() -> None:
    model = randomized(GlobalMean(), 4)
    data = explore(model, luma(32), max_pixels=256, k_svd=0, tile=3)
    assert data.packed == (False, False)


def test_wire_into_another_members_box_is_caught() -> None:
    """A leak that stays inside the union of a group's boxes: only the Sperner checks
    (a probe holding the leaking member but not the one whose box it reaches) see it."""
    h = w = 32
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(9, h, w, generator=g, dtype=torch.float64)  # a 3x3 local map
    ys = xs = list(range(1, 32, 2))  # a 16x16 grid, boxes 3x3, lattice period 2
    wire = [True]  # output (9, 9) reads input (5, 5): inside grid member (4, 4)'s box

    def apply(e: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(e, (1, 1, 1, 1))
        shifts = [padded[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
        out = sum(wt * s for wt, s in zip(weights, shifts, strict=True))
        if wire[0]:  # (0 * NaN would still be NaN: the checks see computation, not values)
            out[:, :, 9, 9] = out[:, :, 9, 9] + e[:, :, 5, 5]
        return out

    args = (apply, (1, h, w), (1, h, w), ys, xs, ys, xs, False, 64, weights)
    # members (2, 2) and (4, 4) are in the same group: only a check holding (2, 2) and
    # not (4, 4) shows the leak (the union of the group's boxes holds it)
    assert pack_filters(*args) is None
    wire[0] = False
    packed = pack_filters(*args)
    assert packed is not None and packed.values.shape == (1, 256, 1, 3, 3)
    assert packed.probes == 16 + 4 * (8 + 1)  # 64 members a group: C(8, 4) = 70 >= 64
    for k in (0, 26, 255):
        y, x = ys[k // 16], xs[k % 16]
        e = torch.zeros(1, 1, h, w, dtype=torch.float64)
        e[0, 0, y, x] = 1
        col = apply(e)[0, 0].numpy()
        oy, ox = packed.origin[k]
        assert (oy, ox) == (y - 1, x - 1)
        want = np.pad(col, 1)[oy + 1 : oy + 4, ox + 1 : ox + 4]
        np.testing.assert_array_equal(packed.values[0, k, 0], want)
        assert np.abs(want).sum() == pytest.approx(np.abs(col).sum())  # all of it


@pytest.mark.parametrize(
    ("wire", "caught_by"),
    [(None, None), (((5, 5), (9, 9)), "a Sperner check"), (((7, 7), (5, 5)), "the outside probe")],
)
def test_rows_are_checked_through_the_forward_map(wire: Any, caught_by: str | None) -> None:
    """Rows (boxes in the input) are checked by forward passes: NaN on the boxes of some
    members, or outside every box of a group, must not reach another member's target.
    Input (5, 5) lies in the box of the row at (5, 5) (grid member (2, 2)) and is read by
    the row at (9, 9) (member (4, 4), the same group): a Sperner check holding (2, 2) and
    not (4, 4) sees it. Input (7, 7) lies outside every box of the group of the row at
    (5, 5) (boxes 0-2, 4-6, 8-10, ...): only the probe NaN outside the boxes sees it. (The
    grid members sampled for the footprint, indices 0, 7, 8 and 15, have no wire.)"""
    h = w = 32
    g = torch.Generator().manual_seed(6)
    weights = torch.randn(9, h, w, generator=g, dtype=torch.float64)

    def forward(e: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(e, (1, 1, 1, 1))
        shifts = [padded[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
        out = sum(wt * s for wt, s in zip(weights, shifts, strict=True))
        if wire is not None:
            (iy, ix), (oy, ox) = wire
            out[:, :, oy, ox] = out[:, :, oy, ox] + e[:, :, iy, ix]
        return out

    def transpose(y: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(y, requires_grad=True)
        (grad,) = torch.autograd.grad(forward(x), x, y)
        return grad

    ys = xs = list(range(1, 32, 2))
    packed = pack_filters(
        transpose, (1, h, w), (1, h, w), ys, xs, ys, xs, False, 64, weights, adjoint=forward
    )
    if caught_by is not None:
        assert packed is None, caught_by
        return
    assert packed is not None and packed.probes == 16 + 4 * (8 + 1 + 1)
    for k in (0, 26, 255):
        y, x = ys[k // 16], xs[k % 16]
        e = torch.zeros(1, 1, h, w, dtype=torch.float64)
        e[0, 0, y, x] = 1
        row = transpose(e)[0, 0].numpy()
        want = np.pad(row, 1)[y : y + 3, x : x + 3]
        np.testing.assert_array_equal(packed.values[0, k, 0], want)
        assert np.abs(want).sum() == pytest.approx(np.abs(row).sum()) and np.abs(want).sum() > 0


def test_packed_explorer_on_the_trained_espcn_matches_the_interpreter() -> None:
    model, _ = load_checkpoint(trained_espcn_checkpoint())
    x0 = luma(48)
    data = explore(model, x0, max_pixels=256, k_svd=0)
    assert data.packed == (True, True) and data.probes < 0.6 * 2 * 256  # 256 each unpacked
    li = LinearInterpreter(model, x0)
    view = data.filters["sum", "sum"]
    gw = len(data.xs)
    for k in (0, 17, 130, data.grid_count - 1):
        y, x = data.ys[k // gw], data.xs[k % gw]
        qy, qx = data.targets[k]
        col = li.columns([y * 48 + x])[0, 0].double().numpy()
        row = li.rows([qy * 192 + qx])[0, 0].double().numpy()
        assert view.columns.peak[k] == pytest.approx(np.abs(col).max(), rel=1e-5)
        assert view.columns.total[k] == pytest.approx(col.sum(), rel=1e-4, abs=1e-5)
        assert view.columns.at[k] == pytest.approx(col[qy, qx], rel=1e-5, abs=1e-7)
        assert view.rows.total[k] == pytest.approx(row.sum(), rel=1e-4, abs=1e-5)
        assert view.rows.at[k] == pytest.approx(row[y, x], rel=1e-5, abs=1e-7)
        oy, ox = data.row_origin[k]
        t = data.tile
        rwin = np.pad(row, t)[oy + t : oy + 2 * t, ox + t : ox + 2 * t]
        np.testing.assert_allclose(view.rows.windows[k], rwin, rtol=1e-5, atol=1e-7)
        assert view.rows.kept[k] == pytest.approx((rwin**2).sum() / (row**2).sum(), rel=1e-5)
        cy, cx = data.column_origin[k]
        th, tw = data.column_tile
        cwin = np.pad(col, th)[cy + th : cy + 2 * th, cx + tw : cx + tw + tw]
        np.testing.assert_allclose(view.columns.windows[k], cwin, rtol=1e-5, atol=1e-7)


def test_sperner_codes_separate_every_pair() -> None:
    for m in (1, 2, 3, 7, 20, 21, 126, 127):
        n, codes = sperner_codes(m)
        assert len(codes) == m and len(set(codes)) == m
        assert all(len(c) == (n + 1) // 2 for c in codes)
        assert math.comb(n, (n + 1) // 2) >= m
        assert n == 1 or math.comb(n - 1, n // 2) < m  # the smallest such n
        for a, b in itertools.permutations(codes, 2):
            assert not set(a) <= set(b)
    assert sperner_codes(126)[0] == 9 and sperner_codes(127)[0] == 10


def test_period_keeps_boxes_apart() -> None:
    assert _period([0, 2, 4, 6, 8, 10, 12], 5) == 3
    assert _period([0, 4, 8], 44) == 3  # never: one member per class along the axis
    assert _period([0, 0, 1, 1, 2, 2], 1) == 2


def test_pack_must_be_a_bool() -> None:
    with pytest.raises(ConvscopeError, match="pack must be True or False, got 'yes'"):
        explore(ESPCN(scale=2), luma(8), pack="yes")  # type: ignore[arg-type]


def test_cli_pack_and_no_pack_write_the_same_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from convscope.cli import main

    pages = {}
    for flag in ("--pack", "--no-pack"):
        out = tmp_path / flag.strip("-")
        args = ["linear", "explore", "--model", "espcn", "--image", "sample:camera",
                "--size", "48,48", "--max-pixels", "256", "--k-svd", "0", "--out", str(out),
                flag]  # fmt: skip
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code in (0, None), capsys.readouterr().err
        pages[flag] = json.loads((out / "explorer.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["probes"] == pages[flag]["probes"]
    packed, plain = pages["--pack"], pages["--no-pack"]
    assert packed["probes"]["packed"] == {"columns": True, "rows": True}
    assert plain["probes"] == {"count": 512, "packed": {"columns": False, "rows": False}}
    assert packed["probes"]["count"] < 0.6 * 512
    packed.pop("probes"), plain.pop("probes"), packed.pop("seconds"), plain.pop("seconds")
    assert packed.keys() == plain.keys()
    assert json.dumps(packed["views"]) == json.dumps(plain["views"])  # rounded numbers agree
