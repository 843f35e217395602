"""Figures for the NumPy CNN walkthrough. Drawing only: every input is already computed.

matplotlib is imported here and not by ``convscope.numpy_cnn`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["plot_kernels_and_probes", "plot_line_probes", "plot_response_maps", "plot_seed_probes"]


def _kernel(ax: plt.Axes, k: np.ndarray, title: str) -> None:
    """A small kernel as a signed heat map with its values written in."""
    lim = float(np.abs(k).max()) or 1.0
    ax.imshow(k, cmap="bwr", norm=TwoSlopeNorm(0.0, -lim, lim))
    for (i, j), v in np.ndenumerate(k):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def plot_line_probes(probes: np.ndarray, names: Sequence[str]) -> Figure:
    """The eight 3x3 line probes X1-X8.

    Args:
        probes: (8, 3, 3).
        names: a label for each.
    """
    fig, axes = plt.subplots(1, len(names), figsize=(1.2 * len(names), 1.5))
    for ax, p, name in zip(np.atleast_1d(axes), probes, names, strict=True):
        ax.imshow(p, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def plot_kernels_and_probes(
    kernels: Sequence[np.ndarray],
    titles: Sequence[str],
    responses: Sequence[np.ndarray],
    labels: Sequence[str],
    probe_names: Sequence[str],
) -> Figure:
    """Kernels side by side, then their responses to the line probes as grouped bars.

    Args:
        kernels: (3, 3) arrays.
        titles: one per kernel.
        responses: (8,) probe responses per kernel (bias included).
        labels: legend entry per response row.
        probe_names: "X1" ... "X8".
    """
    n = len(kernels)
    fig = plt.figure(figsize=(2.4 * n + 5.0, 2.6))
    grid = fig.add_gridspec(1, n + 2)
    for i, (k, t) in enumerate(zip(kernels, titles, strict=True)):
        _kernel(fig.add_subplot(grid[0, i]), k, t)
    ax = fig.add_subplot(grid[0, n:])
    pos = np.arange(len(probe_names))
    width = 0.8 / max(len(responses), 1)
    for j, (r, lab) in enumerate(zip(responses, labels, strict=True)):
        ax.bar(pos + (j - (len(responses) - 1) / 2) * width, r, width, label=lab)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(pos, probe_names)
    ax.set_ylabel("Z = X (star) K + b")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_response_maps(
    images: np.ndarray,
    image_titles: Sequence[str],
    maps: Sequence[np.ndarray],
    map_names: Sequence[str],
) -> Figure:
    """Images in the first row, then one row of response maps per kernel.

    Args:
        images: (M, H, W) in [0, 1].
        image_titles: one per image.
        maps: per kernel, (M, H', W') correlation maps (bias included).
        map_names: one row label per kernel.
    """
    m = images.shape[0]
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, m, figsize=(1.3 * m + 0.7, 1.4 * rows), squeeze=False,
                             layout="constrained")  # fmt: skip
    for j in range(m):
        axes[0, j].imshow(images[j], cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(image_titles[j], fontsize=8)
    for r, (mp, name) in enumerate(zip(maps, map_names, strict=True), start=1):
        lim = float(np.abs(mp).max()) or 1.0
        for j in range(m):
            im = axes[r, j].imshow(mp[j], cmap="bwr", norm=TwoSlopeNorm(0.0, -lim, lim))
        axes[r, 0].set_ylabel(name, fontsize=8)
        # one scale per row (every map of a kernel on it), symmetric about 0
        bar = fig.colorbar(im, ax=axes[r, :].tolist(), fraction=0.03, pad=0.01,
                           ticks=[-lim, 0.0, lim])  # fmt: skip
        bar.ax.set_yticklabels([f"{-lim:.2g}", "0", f"{lim:.2g}"])
        bar.ax.tick_params(labelsize=6, length=2)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def plot_seed_probes(
    responses: np.ndarray, accuracies: Sequence[float], probe_names: Sequence[str]
) -> Figure:
    """Line-probe responses of the kernel learned from different random starts.

    Args:
        responses: (S, 8), one row per seed.
        accuracies: test accuracy per seed, shown in the legend.
        probe_names: "X1" ... "X8".
    """
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    for s, (r, acc) in enumerate(zip(responses, accuracies, strict=True)):
        ax.plot(probe_names, r, marker="o", label=f"seed {s}: test acc {100 * acc:.1f}%")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("Z = X (star) K + b")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
