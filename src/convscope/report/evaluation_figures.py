"""Figures of ``convscope evaluate``: curves per method, the table as a chart, example maps.

Drawing only: every function takes the numbers :func:`convscope.evaluate.compare` measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from convscope.report.figures import Figure, _grey_imshow, _signed_imshow, plt, styled

__all__ = ["plot_curves", "plot_examples", "plot_scores"]

_OURS = "convscope"


def _colours(methods: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    cmap = plt.get_cmap("tab20")
    return {m: cmap(i % 20) for i, m in enumerate(methods)}


@styled
def plot_curves(
    curves: Mapping[str, Mapping[str, np.ndarray]], families: Mapping[str, str]
) -> Figure:
    """Deletion and insertion curves (mean target softmax vs share of pixels), per method.

    convscope's methods are drawn solid, the peers' dashed.
    """
    kinds = [k for k in ("deletion", "insertion") if any(k in c for c in curves.values())]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5.2 * max(1, len(kinds)), 3.6),
                             squeeze=False)  # fmt: skip
    colours = _colours(list(curves))
    for ax, kind in zip(axes[0], kinds, strict=False):
        for method, c in curves.items():
            if kind not in c:
                continue
            y = np.asarray(c[kind])
            x = np.linspace(0, 1, len(y))
            style = "-" if families.get(method) == _OURS else "--"
            ax.plot(x, y, style, color=colours[method], label=method, lw=1.4)
        ax.set_xlabel("share of pixels " + ("removed" if kind == "deletion" else "inserted"))
        ax.set_ylabel("target softmax (mean)")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} area is better)",
                     fontsize=9)  # fmt: skip
        ax.set_ylim(0, 1.02)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


@styled
def plot_scores(
    table: Mapping[str, Mapping[str, Mapping[str, float]]],
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
    families: Mapping[str, str],
) -> Figure:
    """One panel per metric: every method's mean with its 95 % interval, best on top."""
    cols = min(4, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    methods = list(table)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 0.22 * len(methods) * rows + 1.4),
                             squeeze=False)  # fmt: skip
    for ax, metric in zip(axes.flat, metrics, strict=False):
        sign = 1.0 if higher_is_better[metric] else -1.0
        means = {m: table[m][metric]["mean"] for m in methods}
        order = sorted(methods, key=lambda m: -sign * np.nan_to_num(means[m], nan=-np.inf * sign))
        y = np.arange(len(order))[::-1]
        for yi, m in zip(y, order, strict=True):
            cell = table[m][metric]
            lo, hi = cell["mean"] - cell["low"], cell["high"] - cell["mean"]
            colour = "#d62728" if families.get(m) == _OURS else "#1f77b4"
            err = None if not np.isfinite([lo, hi]).all() else [[lo], [hi]]
            ax.errorbar(cell["mean"], yi, xerr=err, fmt="o", color=colour, ms=3, capsize=2)
        ax.set_yticks(y, order, fontsize=6)
        arrow = "higher" if higher_is_better[metric] else "lower"
        ax.set_title(f"{metric} ({arrow} is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


@styled
def plot_examples(
    images: np.ndarray, maps: Mapping[str, np.ndarray], titles: Sequence[str]
) -> Figure:
    """Each row an image, each column a method's map (summed over colour channels).

    Args:
        images: ``(R, C, H, W)`` inputs in [0, 1] (or standardised: shown clipped).
        maps: method -> ``(R, C, H, W)`` attributions.
        titles: One title per row (e.g. the target class).
    """
    r = images.shape[0]
    cols = len(maps) + 1
    fig, axes = plt.subplots(r, cols, figsize=(1.5 * cols, 1.6 * r), squeeze=False)
    for i in range(r):
        _grey_imshow(axes[i, 0], images[i], titles[i])
        for j, (name, m) in enumerate(maps.items()):
            _signed_imshow(axes[i, j + 1], np.asarray(m[i]).sum(0), name if i == 0 else "",
                           label="relevance")  # fmt: skip
            axes[i, j + 1].title.set_fontsize(6)
    fig.tight_layout()
    return fig
