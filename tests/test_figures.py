"""convscope.report.figures: what the figures show, read back from their artists and pixels."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from convscope.report import figures as figs

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def text_boxes(fig: Figure) -> list[tuple[str, Bbox]]:
    """Every text the figure draws (titles, labels, tick labels, annotations), with its box."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]  # type: ignore[attr-defined]
        if ax.axison:
            texts += [ax.xaxis.label, ax.yaxis.label]
            texts += ax.get_xticklabels() + ax.get_yticklabels()
    return [(t.get_text(), t.get_window_extent(renderer))
            for t in texts if t.get_visible() and t.get_text().strip()]  # fmt: skip


def overlaps_with_title(fig: Figure) -> list[str]:
    """Texts and axes that the figure's title runs into."""
    title = fig._suptitle  # type: ignore[attr-defined]
    assert title is not None
    fig.canvas.draw()
    box = title.get_window_extent(fig.canvas.get_renderer())  # type: ignore[attr-defined]
    hits = [text for text, b in text_boxes(fig) if text != title.get_text() and box.overlaps(b)]
    hits += [f"axes {i}" for i, ax in enumerate(fig.axes) if box.overlaps(ax.get_window_extent())]
    return hits


def test_top_filters_title_clears_the_panel_titles() -> None:
    r, t = 10, 3  # the demo's figure: one digit per class, its three top filters
    fig = figs.plot_top_filter_images(
        RNG.random((r, 1, 28, 28)),
        RNG.normal(size=(r, t, 28, 28)),
        [["kirsch_w", "kirsch_e", "kirsch_se"]] * r,
        RNG.normal(size=(r, t)),
        [f"digit {i}" for i in range(r)],
    )
    assert overlaps_with_title(fig) == []
    # ... and no panel title runs into another one or into a neighbour's picture
    boxes = [b for text, b in text_boxes(fig) if text.startswith(("kirsch", "digit"))]
    assert len(boxes) == r * (t + 1)
    assert not [
        (i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[:i]) if a.overlaps(b)
    ]
    pictures = [ax.get_window_extent() for ax in fig.axes if ax.get_images()]
    for _, b in text_boxes(fig):
        assert sum(b.overlaps(p) for p in pictures) <= 1


def test_kernel_bank_title_sits_just_above_the_kernels() -> None:
    from convscope import kernels as kb

    names = [k.name for k in kb.gfnn_bank()]
    fig = figs.plot_kernel_bank(kb.bank_array(names), names)
    assert overlaps_with_title(fig) == []
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    title = fig._suptitle.get_window_extent(renderer)  # type: ignore[attr-defined]
    top = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes)
    # no band of empty figure between the title and the first row (it was an inch)
    assert 0 <= title.y0 - top < 0.15 * fig.dpi


def test_contact_sheet_draws_signed_tiles_on_a_scale_centred_at_zero() -> None:
    photo = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    signed = RNG.normal(size=(16, 16)) * 300
    signed[0, 0] = 5000.0  # a border value beyond the scale: it saturates
    fig = figs.plot_contact_sheet(
        [photo, signed], ["original", "sobel_e"], signed=[False, True], unit="response",
        limits=[None, 900.0],
    )  # fmt: skip
    picture, edge = (ax for ax in fig.axes if ax.get_images())
    im = edge.get_images()[0]
    assert im.get_cmap().name == "bwr"  # blue < 0, white at 0, red > 0
    assert im.norm.vmin == -im.norm.vmax == -900.0 and im.norm.vcenter == 0.0
    np.testing.assert_array_equal(im.get_array(), signed)  # the values, not clipped
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "response"
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["-900", "0", "900"]
    assert im.colorbar is not None and im.colorbar.extend == "both"
    # the picture stays a picture: grey, 0..255
    p = picture.get_images()[0]
    assert p.get_cmap().name == "gray" and p.get_clim() == (0, 255)
    assert len(fig.axes) == 3  # two tiles (no empty cells) and one colour bar


def test_signed_colours_white_at_zero_symmetric() -> None:
    rgb, lim = figs.signed_colours(np.array([[-2.0, -1.0, 0.0, 1.0, 2.0, 4.0]]), 2.0)
    assert lim == 2.0
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(rgb[0, 4], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, 5], [255, 0, 0])  # beyond the scale: saturates
    assert (rgb[0, 2] >= 254).all()
    # -1 and +1 equally far from white (to the colour table's 256 steps)
    assert np.abs(rgb[0, 1].astype(int) - rgb[0, 3][::-1]).max() <= 2


# -- the package's style ------------------------------------------------------------------


def test_every_plot_function_draws_in_the_package_style() -> None:
    from convscope.report import (
        decoding_figures,
        demo_figures,
        evaluation_figures,
        linear_figures,
    )

    unstyled = [
        f"{m.__name__}.{name}"
        for m in (figs, decoding_figures, demo_figures, evaluation_figures, linear_figures)
        for name in dir(m)
        if name.startswith("plot_") and not getattr(getattr(m, name), "styled", False)
    ]
    assert unstyled == []
    assert figs.STYLE.is_file()


def test_top_singular_pairs_draw_v1_on_a_scale_centred_at_zero_with_a_colour_bar() -> None:
    import matplotlib as mpl

    from convscope.report.demo_figures import plot_top_singular_pairs

    image = RNG.random((8, 8))
    v1 = RNG.normal(size=(8, 8))
    v1[0, 0] = -4.0  # the largest |entry|: the scale's ends are -4 and 4
    u1 = np.array([-0.9, 0.3, 0.1])  # its largest entry negative: the pair is flipped
    fig = plot_top_singular_pairs(image, {"net": (2.5, u1, v1)}, ["a", "b", "c"])
    assert mpl.rcParams["svg.fonttype"] != "none"  # the style held only while drawing
    signed = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "bwr"]
    assert len(signed) == 1
    im = signed[0]
    assert im.norm.vcenter == 0.0 and im.norm.vmin == -im.norm.vmax == -4.0
    np.testing.assert_array_equal(im.get_array(), -v1)  # shown with u1's largest entry > 0
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and im.colorbar is not None and im.colorbar.ax is bars[0]
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["-4", "0", "4"]
    assert bars[0].get_ylabel() == "pixel weight (unit norm)"
    heights = [p.get_height() for ax in fig.axes for p in ax.patches]
    assert heights == pytest.approx([0.9, -0.3, -0.1])
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == ["a", "b", "c"]


def curves() -> Figure:
    return figs.plot_training_curves(
        {"net": {"train_loss": [1.0, 0.5], "test_loss": [1.1, 0.7], "test_acc": [0.5, 0.8]}}
    )


def test_the_style_holds_while_drawing_and_saving_only(tmp_path: Path) -> None:
    import matplotlib as mpl

    before = dict(mpl.rcParams)
    fig = curves()
    loss = fig.axes[0]
    # the style's sizes where the function sets none (matplotlib's own: 10 and 10)
    assert loss.xaxis.label.get_fontsize() == 8.0
    assert loss.get_legend().get_texts()[0].get_fontsize() == 7.0
    assert loss.get_legend().get_frame_on() is False
    figs.save_figure(fig, tmp_path / "c.pdf", close=False)
    figs.save_figure(fig, tmp_path / "c.svg")
    # the caller's settings are untouched
    assert dict(mpl.rcParams) == before
    from matplotlib.font_manager import FontProperties

    _, ax = plt.subplots()
    ax.set_xlabel("x")
    theirs = FontProperties(size=mpl.rcParams["axes.labelsize"]).get_size_in_points()
    assert ax.xaxis.label.get_fontsize() == theirs != 8.0
    # vector output for papers: TrueType fonts in the PDF, text as text in the SVG
    pdf = (tmp_path / "c.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf
    svg = (tmp_path / "c.svg").read_text()
    assert "<text" in svg and ">epoch</text>" in svg


def test_the_same_figure_gives_the_same_svg(tmp_path: Path) -> None:
    figs.save_figure(curves(), tmp_path / "a.svg")
    figs.save_figure(curves(), tmp_path / "b.svg")
    strip = lambda s: re.sub(r"<dc:date>[^<]*</dc:date>", "", s)  # noqa: E731
    assert strip((tmp_path / "a.svg").read_text()) == strip((tmp_path / "b.svg").read_text())


def test_numpy_cnn_response_maps_have_a_colour_bar_per_row() -> None:
    from convscope.numpy_cnn import plots

    images = RNG.random((3, 8, 8))
    maps = [RNG.normal(size=(3, 6, 6)), 5 * RNG.normal(size=(3, 6, 6))]
    fig = plots.plot_response_maps(images, ["1", "1", "0"], maps, ["K + b_K", "F + b_F"])
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    for mp, bar in zip(maps, bars, strict=True):
        lim = float(np.abs(mp).max())
        assert bar.get_ylim() == pytest.approx((-lim, lim))  # symmetric about 0
    shown = [a.get_images()[0] for a in fig.axes if a.get_images() and a not in bars]
    signed = [im for im in shown if im.get_cmap().name == "bwr"]
    assert len(signed) == 6 and all(im.norm.vmin == -im.norm.vmax for im in signed)


def _signed_bars(fig: Figure) -> list[str]:
    """The colour-bar label of every signed (blue-white-red) image in ``fig``; a signed
    image without a colour bar gives ``"<none>"``."""
    out = []
    for ax in fig.axes:
        for im in ax.get_images():
            if im.get_cmap().name == "bwr":
                out.append(im.colorbar.ax.get_ylabel() if im.colorbar is not None else "<none>")
    return out


def test_every_signed_map_has_a_colour_bar_with_its_unit() -> None:
    """(The kernel bank's 40 small bars go unlabelled: its title says what the colours are.)"""
    from convscope.report import decoding_figures as dfigs
    from convscope.report import evaluation_figures as efigs
    from convscope.report import linear_figures as lf

    img = RNG.random((2, 1, 8, 8))
    maps = RNG.normal(size=(2, 8, 8))
    cases = {
        "top filters": (figs.plot_top_filter_images(img, RNG.normal(size=(2, 2, 8, 8)),
                                                    [["a", "b"], ["c", "d"]],
                                                    RNG.normal(size=(2, 2)), ["x", "y"]),
                        "logit share"),
        "attributions": (figs.plot_attribution_comparison(img, {"m": maps}, ["x", "y"]),
                         "relevance"),
        "evaluation examples": (efigs.plot_examples(img, {"m": RNG.normal(size=(2, 1, 8, 8))},
                                                    ["x", "y"]), "relevance"),
        "signed maps": (lf.plot_signed_maps([maps[0]], ["r"], unit="output units"),
                        "output units"),
        "filter maps": (lf.plot_filter_maps(img[0, 0], maps, [(2, 2), (5, 5)], window=3),
                        "entry of F"),
        "svd pairs": (lf.plot_svd_pairs(np.array([2.0, 1.0]), RNG.normal(size=(2, 1, 8, 8)),
                                        RNG.normal(size=(2, 1, 8, 8))), "entry (unit norm)"),
        "decoded filters": (dfigs.plot_decoded_filters(RNG.normal(size=(2, 1, 5, 5))), "weight"),
        "colour examples": (figs.plot_color_examples(RNG.random((2, 3, 8, 8)),
                                                     RNG.normal(size=(2, 3, 8, 8)), ["x", "y"]),
                            "logit units"),
    }  # fmt: skip
    for what, (fig, unit) in cases.items():
        labels = _signed_bars(fig)
        assert labels and set(labels) == {unit}, (what, labels)
    f = RNG.normal(size=(2, 1, 5, 5))
    labels = _signed_bars(dfigs.plot_decoded_filters(f, np.sign(f)))
    assert labels == ["weight", "weight", "sign", "sign"]  # the filters, then their signs


def test_colour_scores_bars_are_the_scores_in_their_channel_colours() -> None:
    color = np.array([[0.5, -0.25, 0.125], [-1.0, 2.0, 0.0]])
    edges = RNG.normal(size=(2, 4))
    fig = figs.plot_color_scores(color, edges, ["E", "NE", "N", "blur"], ["cat", "sky"])
    axes = np.array(fig.axes).reshape(2, 2)
    for i in range(2):
        bars = axes[i, 0].patches
        np.testing.assert_allclose([b.get_height() for b in bars], color[i])
        assert [b.get_facecolor()[:3] for b in bars] == [
            plt.matplotlib.colors.to_rgb(c) for c in ("#d62728", "#2ca02c", "#1f77b4")
        ]
        np.testing.assert_allclose([b.get_height() for b in axes[i, 1].patches], edges[i])
    assert axes[0, 0].get_ylabel() == "cat" and axes[1, 0].get_ylabel() == "sky"
    assert [t.get_text() for t in axes[1, 0].get_xticklabels()] == ["R", "G", "B"]


def test_colour_examples_share_one_scale_per_row_and_title_each_channel_score() -> None:
    maps = RNG.normal(size=(1, 3, 6, 6))
    maps[0, 1] *= 10  # green dominates: red and blue must be drawn on green's scale
    fig = figs.plot_color_examples(RNG.random((1, 3, 6, 6)), maps, ["patch"])
    signed = [ax for ax in fig.axes if ax.images and ax.images[0].get_cmap().name == "bwr"]
    assert len(signed) == 3
    lim = np.abs(maps).max()
    for j, ax in enumerate(signed):
        norm = ax.images[0].norm
        assert (norm.vmin, norm.vmax) == pytest.approx((-lim, lim))
        assert ax.get_title() == f"{('red', 'green', 'blue')[j]} score {maps[0, j].sum():+.3g}"
