"""Decoding figures: every plot draws from plain arrays and saves a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from convscope.errors import ConvscopeError
from convscope.report.decoding_figures import (
    plot_decoded_filters,
    plot_kernel_composition,
    plot_max_activation_matrix,
    plot_response_comparison,
    plot_top_images,
)
from convscope.report.figures import save_figure

RNG = np.random.default_rng(0)


def _png(fig: Figure, path: Path) -> None:
    save_figure(fig, path, dpi=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decoded_filters_grey_and_colour(tmp_path: Path) -> None:
    f = RNG.normal(size=(7, 1, 9, 9))
    _png(plot_decoded_filters(f, np.sign(f), ncols=4), tmp_path / "a.png")
    _png(plot_decoded_filters(RNG.normal(size=(3, 3, 5, 5))), tmp_path / "b.png")
    with pytest.raises(ConvscopeError, match="1- or 3-channel"):
        plot_decoded_filters(RNG.normal(size=(2, 2, 5, 5)))


def test_matrix_top_images_and_responses(tmp_path: Path) -> None:
    k = 4
    f = RNG.normal(size=(k, 1, 12, 12))
    images = RNG.random((k, 1, 12, 12))
    labels = [str(i) for i in range(k)]
    fig = plot_max_activation_matrix(f, np.sign(f), images, RNG.normal(size=(k, k)), labels, labels)
    _png(fig, tmp_path / "m.png")
    top = RNG.random((k, 3, 1, 12, 12))
    _png(plot_top_images(f, top, RNG.random((k, 3)), labels), tmp_path / "t.png")
    maps = RNG.random((5, 6, 6))
    _png(plot_response_comparison(images[0], maps, maps, list("abcde")), tmp_path / "r.png")


def test_one_by_one_responses_are_cells_with_their_values() -> None:
    # LeNet's conv4 answers a 28 x 28 digit with one number per filter: once drawn as
    # squares of one grey each, the largest (1.0) white on white.
    network = np.array([1.0, 0.0, 0.5, 0.25]).reshape(4, 1, 1)
    decoded = np.array([0.9, 0.1, 0.4, 0.75]).reshape(4, 1, 1)
    fig = plot_response_comparison(RNG.random((1, 28, 28)), network, decoded, list("6503"))
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    ax = next(
        a for a in fig.axes if a.get_images() and a.get_images()[0].get_array().shape == (2, 4)
    )
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["1.00", "0.00", "0.50", "0.25", "0.90", "0.10", "0.40", "0.75"]
    # a colour bar for the scale, 0 to 1
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["network", "decoded"]
    height = pixels.shape[0]

    def colour(i: int, j: int) -> np.ndarray:
        # a corner of the cell, clear of its text and of the white grid lines
        x, y = ax.transData.transform((j - 0.3, i - 0.3))
        return pixels[height - int(round(y)), int(round(x))]

    cells = np.array([[colour(i, j) for j in range(4)] for i in range(2)])
    # no cell is blank (white) and every value has its own colour
    assert (np.abs(cells - 255).sum(-1) > 60).all(), cells
    flat = cells.reshape(8, 3)
    assert len({tuple(c) for c in flat}) == 8
    plt_close(fig)


def test_larger_responses_keep_their_maps_and_gain_a_scale() -> None:
    maps = RNG.random((3, 4, 4))
    fig = plot_response_comparison(RNG.random((1, 12, 12)), maps, maps, list("abc"))
    shown = [a.get_images()[0].get_array() for a in fig.axes if a.get_images()]
    assert sum(s.shape == (4, 4) for s in shown) == 6
    assert len([a for a in fig.axes if a.get_label() == "<colorbar>"]) == 1
    plt_close(fig)


def plt_close(fig: Figure) -> None:
    from matplotlib import pyplot as plt

    plt.close(fig)


def test_kernel_composition_figure_shows_each_filters_top_kernels_and_shares() -> None:
    import torch
    from matplotlib.colors import to_rgba

    from convscope.decoding import kernel_composition
    from convscope.models import GFNN

    torch.manual_seed(0)
    model = GFNN().eval()
    comp = kernel_composition(model, "features.2", filters=[0, 3, 7])
    share, net = comp.share.numpy(), comp.net.numpy()
    fig = plot_kernel_composition(
        comp.filters().numpy(), comp.kernel_names, share, net, ["a", "b", "c"], top=4
    )
    bars = [ax for ax in fig.axes if ax.patches]
    pictures = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    colourbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == len(pictures) == len(colourbars) == 3
    assert [ax.get_title() for ax in pictures] == ["a", "b", "c"]
    for row, ax in enumerate(bars):
        top = comp.table(row)[:4]
        assert [t.get_text() for t in ax.get_yticklabels()] == [e["kernel"] for e in top]
        widths = [p.get_width() for p in ax.patches]  # type: ignore[attr-defined]
        np.testing.assert_allclose(widths, [e["share"] for e in top], rtol=1e-6)
        k = [comp.kernel_names.index(e["kernel"]) for e in top]
        np.testing.assert_allclose(widths, share[row, k], rtol=0)
        # red where the kernel's net weight is positive, blue where negative
        rgba = [to_rgba(p.get_facecolor()) for p in ax.patches]  # type: ignore[arg-type]
        reds = [c[0] > c[2] for c in rgba]
        assert reds == [bool(net[row, j] > 0) for j in k]
    # the decoded filter on a zero-centred diverging scale
    im = pictures[0].get_images()[0]
    assert im.get_cmap().name == "bwr" and im.norm.vcenter == 0.0  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.asarray(im.get_array()), comp.filters()[0, 0].numpy())
    with pytest.raises(ConvscopeError, match="do not match"):
        plot_kernel_composition(comp.filters().numpy(), comp.kernel_names[:3], share, net, "abc")
