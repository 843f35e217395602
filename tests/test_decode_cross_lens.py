"""One unit read three ways (issue 16 item 2): ``convscope.cross_lens`` and ``decode --unit``.

The library's maps are checked against references built here without it: the linear row
against autograd's gradient of the unit (``taylor`` on a ReLU network; ``freeze`` on a
piecewise-linear one, where the frozen map is the gradient), the deconvnet against a copy
of the network whose ReLUs pass ``relu(grad)`` back through their own autograd Function,
the decoded filter of a first-layer unit against that convolution's weight, and the
receptive-field window against where ``DecodedFilters.correlate`` reads. Then the command
line: the figure, the report section and the JSON numbers, and one line and exit 2 for each
bad ``--unit`` before any long work. Last, the committed three-views numbers of
``experiments/decoding_table.py`` are recomputed with the script's own code.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _cli import run_cli
from _scripts import experiment
from torch import nn

from convscope.cross_lens import MAPS, cross_lens, locate_unit
from convscope.decoding import decode, deconvnet, linear_rows
from convscope.errors import ConvscopeError

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "decoding"
CKPT = RESULTS / "lenet_mnist.pt"

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0) -> nn.Sequential:
    """conv(pad 1) -> ReLU -> max-pool -> conv(pad 1) -> ReLU -> conv, float64, 1x12x12 in."""
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 2, 2),
        )
        .double()
        .eval()
    )


def _image(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, 12, 12, generator=g, dtype=torch.float64)


def _gradient(
    model: nn.Module, upto: int, x: torch.Tensor, k: int, y: int, xx: int
) -> torch.Tensor:
    """d model[:upto+1](x)[0, k, y, xx] / dx by autograd: the reference row."""
    x = x.clone().requires_grad_(True)
    out = model[: upto + 1](x)
    (g,) = torch.autograd.grad(out[0, k, y, xx], x)
    return g[0]


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g.clamp(min=0)  # Zeiler-Fergus: rectify the backward signal, no forward mask


class _DeconvReLUModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DeconvReLU.apply(x)


def _deconv_reference(
    model: nn.Sequential, upto: int, x: torch.Tensor, k: int, y: int, xx: int
) -> torch.Tensor:
    ref = copy.deepcopy(model)
    for i, m in enumerate(ref):
        if isinstance(m, nn.ReLU):
            ref[i] = _DeconvReLUModule()
    return _gradient(ref, upto, x, k, y, xx)


@pytest.mark.parametrize("mode", ["taylor", "freeze"])
@pytest.mark.parametrize(("layer", "upto"), [("3", 3), ("5", 5)])
def test_row_is_the_gradient_of_the_unit(mode: str, layer: str, upto: int) -> None:
    model, x = _net(), _image()
    for k, pos in ((0, (2, 3)), (1, (4, 0)), (0, None)):
        c = cross_lens(model, layer, x, k, pos, mode=mode)
        y, xx = c.position
        assert c.row.dtype == torch.float64 and c.row.shape == (1, 12, 12)
        torch.testing.assert_close(c.row, _gradient(model, upto, x, k, y, xx), rtol=0, atol=1e-12)
        with torch.no_grad():
            assert c.activation == pytest.approx(
                float(model[: upto + 1](x)[0, k, y, xx]), abs=1e-12
            )
        assert c.mode == mode and c.layer == layer and c.channel == k


def test_no_position_is_the_strongest_unit_as_in_decoding() -> None:
    model, x = _net(), _image()
    with torch.no_grad():
        r = model[:6](x)[0, 1]
    c = cross_lens(model, "5", x, 1)
    assert c.position == divmod(int(r.flatten().argmax()), r.shape[1])
    assert c.map_shape == tuple(r.shape)
    # the same maps as decoding's deconvnet() and linear_rows(), which read that unit
    assert torch.equal(c.deconvnet, deconvnet(model, "5", x, 1)[0])
    torch.testing.assert_close(c.row, linear_rows(model, "5", x, 1)[0], rtol=0, atol=1e-12)
    assert torch.equal(c.decoded, decode(model, "5").filters[1])


def test_deconvnet_rectifies_the_backward_signal() -> None:
    model, x = _net(), _image()
    for k, pos in ((0, (1, 1)), (1, (3, 4)), (1, (0, 0))):
        c = cross_lens(model, "5", x, k, pos)
        ref = _deconv_reference(model, 5, x, k, *pos)
        torch.testing.assert_close(c.deconvnet, ref, rtol=0, atol=1e-12)
    # layer 3 has the ReLU at index 1 below it: rectified there, not the gradient
    c = cross_lens(model, "3", x, 2, (2, 2))
    ref = _deconv_reference(model, 3, x, 2, 2, 2)
    torch.testing.assert_close(c.deconvnet, ref, rtol=0, atol=1e-12)
    # with no ReLU below the unit, the deconvnet and the row are the same map
    lin = nn.Sequential(*[m for m in _net() if not isinstance(m, nn.ReLU)]).eval()
    c = cross_lens(lin, "3", x, 1, (1, 2))  # conv, pool, conv, conv
    torch.testing.assert_close(c.deconvnet, c.row, rtol=0, atol=1e-12)
    assert c.cosine()["deconvnet_row"] == pytest.approx(1.0, abs=1e-12)


def test_first_layer_unit_decodes_to_its_weight_on_its_window() -> None:
    model, x = _net(), _image()
    w = model[0].weight.detach()
    for k, pos in ((0, (5, 7)), (2, (0, 0)), (1, (11, 4))):
        c = cross_lens(model, "0", x, k, pos)
        assert torch.equal(c.decoded, w[k])
        y, xx = pos
        assert c.window == (y - 1, xx - 1, 3, 3)  # padding 1: the window starts one pixel up-left
        crop = c.cropped()
        # a first-layer unit's row is its weight wherever the window lies on the image
        inside = torch.zeros(3, 3, dtype=torch.bool)
        inside[max(0, 1 - y) : 3 - max(0, y + 2 - 12), max(0, 1 - xx) : 3 - max(0, xx + 2 - 12)] = (
            True
        )
        torch.testing.assert_close(crop["row"][0][inside], w[k, 0][inside], rtol=0, atol=1e-12)
        assert bool((crop["row"][0][~inside] == 0).all())
        assert c.inside_window() == {"deconvnet": 1.0, "row": 1.0}
    c = cross_lens(model, "0", x, 0, (5, 7))
    assert c.cosine()["decoded_row"] == pytest.approx(1.0, abs=1e-12)


def test_window_is_where_the_decoded_filter_reads() -> None:
    model, x = _net(), _image()
    dec = decode(model, "5")
    est = dec.correlate(x)  # (1, 2, h, w)
    padded = F.pad(x[0], (20, 20, 20, 20))
    for k, pos in ((0, (0, 0)), (1, (4, 4)), (0, (2, 1))):
        c = cross_lens(model, "5", x, k, pos)
        top, left, h, w = c.window
        patch = padded[:, top + 20 : top + 20 + h, left + 20 : left + 20 + w]
        assert float((patch * c.decoded).sum()) == pytest.approx(
            float(est[0, k, pos[0], pos[1]]), abs=1e-12
        )
        # nothing outside the window reaches the unit
        assert c.inside_window()["row"] == pytest.approx(1.0, abs=1e-12)
        for m in c.cropped().values():
            assert m.shape == (1, h, w)
    d = c.to_dict()
    assert set(d["cosine"]) == {"decoded_deconvnet", "decoded_row", "deconvnet_row"}
    assert d["receptive_field"] == dict(
        zip(("top", "left", "height", "width"), c.window, strict=True)
    )
    assert set(d["max_abs"]) == set(MAPS)
    json.dumps(d)


def test_bad_units_are_refused() -> None:
    model, x = _net(), _image()
    with pytest.raises(ConvscopeError, match=r"^5 has channels 0\.\.1; got 2$"):
        locate_unit(model, "5", x, 2)
    with pytest.raises(ConvscopeError, match=r"^5 has channels 0\.\.1; got -1$"):
        locate_unit(model, "5", x, -1)
    msg = r"^position 5,0 lies outside 5's output map \(5x5: y 0\.\.4, x 0\.\.4\)$"
    with pytest.raises(ConvscopeError, match=msg):
        locate_unit(model, "5", x, 0, (5, 0))
    with pytest.raises(ConvscopeError, match="lies outside"):
        locate_unit(model, "5", x, 0, (0, -1))
    with pytest.raises(ConvscopeError, match=r"^the image must be one \(1, C, H, W\) tensor"):
        locate_unit(model, "5", torch.cat([x, x]), 0)
    with pytest.raises(ConvscopeError, match="mode must be one of"):
        cross_lens(model, "5", x, 0, mode="exact")

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(self.a(x)))

    msg = r"^deconvnet needs ReLU modules below b; found function call relu$"
    with pytest.raises(ConvscopeError, match=msg):
        locate_unit(Functional().double(), "b", x, 0)


# --------------------------------------------------------------------------- the command line


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "decode", *args)


_BASE = ("--model", str(CKPT), "--layer", "features.conv4", "--images", "20", "--no-progress",
         "--device", "cpu")  # fmt: skip


def test_decode_unit_writes_figure_report_and_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from convscope.data import load_dataset
    from convscope.models import load_checkpoint

    out = tmp_path / "dec"
    units = ("features.conv4:3", "features.conv2:5@2,3")
    args = [a for u in units for a in ("--unit", u)]
    code, stdout, err = _run(capsys, *_BASE, *args, "--out", str(out))
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    got = {u["unit"]: u for u in m["units"]}
    assert list(got) == list(units)
    assert got["features.conv4:3"]["figure"] == "cross_lens_features.conv4_3.png"
    assert got["features.conv2:5@2,3"]["figure"] == "cross_lens_features.conv2_5_at_2_3.png"
    model, _ = load_checkpoint(CKPT)
    # the run's own images (the same values; a layout that rounds the same way)
    x = torch.from_numpy(load_dataset("mnist-subset", "test").subset(range(20)).images)
    html = (out / "report.html").read_text()
    assert "One unit, three readings" in html
    for text, u in got.items():
        assert (out / u["figure"]).read_bytes()[:4] == b"\x89PNG"
        assert u["figure"] in html
        assert u["image_chosen"] == "strongest"
        layer, ch = u["layer"], u["channel"]
        # the image the unit answers most (at its position, when it was given one)
        with torch.no_grad():
            r = model.features[: {"features.conv2": 3, "features.conv4": 7}[layer]](x)[:, ch]
        at = r[:, 2, 3] if "@" in text else r.flatten(1).amax(1)
        assert u["image"] == int(at.argmax())
        # the same numbers as the library on that image
        c = cross_lens(model, layer, x[u["image"] : u["image"] + 1], ch,
                       (2, 3) if "@" in text else None)  # fmt: skip
        assert u["position"] == list(c.position) and u["activation"] == c.activation
        assert u["cosine"] == c.cosine() and u["mode"] == "freeze" and u["unpool"] == "nearest"
        assert u["receptive_field"] == dict(
            zip(("top", "left", "height", "width"), c.window, strict=True)
        )
        assert f"{u['cosine']['decoded_row']:.3f}" in stdout
    assert got["features.conv2:5@2,3"]["position"] == [2, 3]
    # conv2's grid is 2 image pixels apart (pool1), its units read 14x14 pixels
    assert got["features.conv2:5@2,3"]["receptive_field"] == {
        "top": 4, "left": 6, "height": 14, "width": 14,
    }  # fmt: skip
    # LeNet has no ReLU below layer 5: there the deconvnet and the row agree
    assert got["features.conv2:5@2,3"]["cosine"]["deconvnet_row"] == pytest.approx(1.0, abs=1e-6)
    # --unit-image reads every unit on that one image
    code, _, err = _run(capsys, *_BASE, "--unit", "features.conv4:3", "--unit-image", "7",
                        "--out", str(tmp_path / "seven"))  # fmt: skip
    assert code == 0, err
    (u,) = json.loads((tmp_path / "seven" / "metrics.json").read_text())["units"]
    assert u["image"] == 7 and u["image_chosen"] == "given"
    assert u["cosine"] == cross_lens(model, "features.conv4", x[7:8], 3).cosine()
    # --unit-mode taylor: the row is the unit's gradient (LeNet's max pools and ReLUs are
    # piecewise linear, so the numbers differ from freeze only where the modes differ)
    code, _, err = _run(capsys, *_BASE, "--unit", "features.conv4:3", "--unit-image", "7",
                        "--unit-mode", "taylor", "--out", str(tmp_path / "taylor"))  # fmt: skip
    assert code == 0, err
    (t,) = json.loads((tmp_path / "taylor" / "metrics.json").read_text())["units"]
    assert t["mode"] == "taylor"
    assert t["cosine"] == cross_lens(model, "features.conv4", x[7:8], 3, mode="taylor").cosine()
    assert "mode taylor" in (tmp_path / "taylor" / "report.html").read_text()


_CONVS = "features.conv1, features.conv2, features.conv3, features.conv4"
_BAD = [
    (["--unit", "features.conv4"],
     "error: --unit must look like features.conv4:3 or features.conv2:5@2,3 "
     "(LAYER:CHANNEL or LAYER:CHANNEL@Y,X); got 'features.conv4'"),
    (["--unit", "features.conv4:3@1"],
     "error: --unit must look like features.conv4:3 or features.conv2:5@2,3 "
     "(LAYER:CHANNEL or LAYER:CHANNEL@Y,X); got 'features.conv4:3@1'"),
    (["--unit", "nope:1"],
     f"error: --unit nope:1: LeNet has no module 'nope'; its Conv2d layers are {_CONVS}"),
    (["--unit", "features.conv4:10"],
     "error: --unit features.conv4:10: features.conv4 has channels 0..9; got 10"),
    (["--unit", "features.conv2:-1"],
     "error: --unit features.conv2:-1: features.conv2 has channels 0..49; got -1"),
    (["--unit", "features.conv2:5@8,0"],
     "error: --unit features.conv2:5@8,0: position 8,0 lies outside features.conv2's output "
     "map (8x8: y 0..7, x 0..7)"),
    (["--unit", "features.conv4:0@0,-1"],
     "error: --unit features.conv4:0@0,-1: position 0,-1 lies outside features.conv4's output "
     "map (1x1: y 0..0, x 0..0)"),
    (["--unit", "features.conv4:1", "--unit-image", "20"],
     "error: --unit-image 20 is out of range: the run reads test images 0..19"),
    (["--unit-mode", "exact"], "error: --unit-mode must be freeze or taylor; got 'exact'"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "line"), _BAD, ids=[" ".join(a) for a, _ in _BAD])
def test_bad_unit_is_one_line_and_exit_2_before_any_work(
    args: list[str],
    line: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from convscope.runs import decode as run

    def no_work(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the long work started before the --unit check")

    monkeypatch.setattr(run, "reconstruction_error", no_work)
    monkeypatch.setattr(run, "cross_lens", no_work)
    out = tmp_path / "o"
    code, stdout, err = _run(capsys, *_BASE, "--unit", "features.conv4:0", *args, "--out", str(out))
    assert code == 2, err
    assert [ln for ln in err.splitlines() if ln.strip()] == [line]
    assert not (out / "metrics.json").exists() and not list(out.glob("*.png"))


# --------------------------------------------------------------------------- the experiment


def test_committed_three_views_are_what_the_script_computes(tmp_path: Path) -> None:
    """``experiments/decoding_table.py``'s three views, now drawn by the library, again."""
    from convscope.data import load_mnist_subset
    from convscope.models import load_checkpoint

    table = experiment("decoding_table")
    model, _ = load_checkpoint(table.RESULTS / "lenet_mnist.pt")
    test = load_mnist_subset("test")
    committed = json.loads((table.RESULTS / "table.json").read_text())
    assert committed["n_images"] == len(test)
    again = table._three_views(model, test, torch.from_numpy(test.images), tmp_path)
    assert json.loads(json.dumps(again)) == committed["three_views"]
    for n in (5, 7):
        assert (tmp_path / f"three_views_layer{n}.png").read_bytes()[:4] == b"\x89PNG"


def test_cross_lens_figure_has_a_colour_bar_per_map() -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from convscope.report.decoding_figures import plot_cross_lens

    rng = np.random.default_rng(0)
    maps = [rng.standard_normal((1, 5, 5)) for _ in range(3)]
    cos = {"decoded_deconvnet": 0.5, "decoded_row": 0.25, "deconvnet_row": 1.0}
    fig = plot_cross_lens(rng.random((1, 12, 12)), maps, (-1, 3, 5, 5), "unit", cos)
    try:
        assert len(fig.axes) == 4 + 3  # the image, three maps, their colour bars
        titles = [ax.get_title() for ax in fig.axes[:7]]
        assert "decoded filter\ncos 0.50 vs deconvnet" in titles
        assert "linear row\ncos 0.25 vs decoded" in titles
        # signed maps: each colour bar is centred at zero, from -max|map| to +max|map|
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        for bar, m in zip(bars, maps, strict=True):
            lo, hi = bar.get_ylim()
            assert lo == pytest.approx(-np.abs(m).max()) and hi == pytest.approx(np.abs(m).max())
    finally:
        plt.close(fig)
    with pytest.raises(ConvscopeError, match="draws 3 maps, got 2"):
        plot_cross_lens(rng.random((1, 12, 12)), maps[:2], (0, 0, 5, 5), "unit")
