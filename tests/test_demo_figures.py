"""The demo's own figures: drawing only, arrays in, figures out."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import pyplot as plt

from convscope.errors import ConvscopeError
from convscope.report.demo_figures import plot_top_singular_pairs


def test_top_singular_pairs_one_row_per_model_with_u1_largest_entry_positive() -> None:
    img = np.zeros((4, 4))
    u = np.array([0.1, -0.9, 0.2])  # largest entry negative: drawn with the pair's sign flipped
    v = np.arange(16.0).reshape(4, 4)
    fig = plot_top_singular_pairs(img, {"A": (2.0, u, v), "B": (1.0, -u, -v)}, ["a", "b", "c"])
    axes = fig.axes
    bars = [ax for ax in axes if ax.patches]
    assert len(bars) == 2
    for ax in bars:
        heights = [p.get_height() for p in ax.patches]
        assert heights == pytest.approx([-0.1, 0.9, -0.2])
    assert any("s1 = 2" in ax.get_title() for ax in axes)
    plt.close(fig)


def test_top_singular_pairs_refuses_shapes_that_do_not_fit() -> None:
    with pytest.raises(ConvscopeError, match="v1 is"):
        plot_top_singular_pairs(np.zeros((4, 4)), {"A": (1.0, np.ones(3), np.ones((5, 5)))},
                                ["a", "b", "c"])  # fmt: skip
    with pytest.raises(ConvscopeError, match="at least one model"):
        plot_top_singular_pairs(np.zeros((4, 4)), {}, ["a"])
