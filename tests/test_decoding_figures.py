"""Decoding figures: every plot draws from plain arrays and saves a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from convscope.errors import ConvscopeError
from convscope.report.decoding_figures import (
    plot_decoded_filters,
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
