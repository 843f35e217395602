"""convscope.report.figures: what the figures show, read back from their artists and pixels."""

from __future__ import annotations

from collections.abc import Iterator

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
