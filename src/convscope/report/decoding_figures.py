"""Figures for filter decoding (seed 003). Drawing only: arrays in, figures out.

Decoded filters are drawn signed (red > 0, blue < 0, white at 0), each on its own
scale, because a decoded filter's absolute size depends on the unpooling mode and
says nothing about its shape. Thresholded versions (values -1, 0, 1) use the same
colours. Filters with 3 channels are drawn as colour images (0 at mid grey).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from convscope.errors import ConvscopeError
from convscope.report.figures import _grey_imshow, _signed_imshow, styled

__all__ = [
    "plot_cross_lens",
    "plot_decoded_filters",
    "plot_kernel_composition",
    "plot_max_activation_matrix",
    "plot_response_comparison",
    "plot_three_views",
    "plot_top_images",
]


def _show_filter(ax: plt.Axes, f: np.ndarray, title: str = "", unit: str = "weight") -> None:
    """A decoded filter ``(C, h, w)`` with C = 1 (signed) or 3 (colour around grey)."""
    if f.ndim == 2 or f.shape[0] == 1:
        _signed_imshow(ax, f.reshape(f.shape[-2:]), title, label=unit)
        return
    if f.shape[0] != 3:
        raise ConvscopeError(f"can draw 1- or 3-channel filters, got {f.shape[0]} channels")
    lim = float(np.abs(f).max()) or 1.0
    ax.imshow(np.moveaxis(0.5 + 0.5 * f / lim, 0, -1))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


@styled
def plot_decoded_filters(
    filters: np.ndarray,
    thresholded: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 10,
    title: str = "Decoded filters",
) -> Figure:
    """Seed 003 Fig. 4: decoded filters in a grid, each above its thresholded version.

    Args:
        filters: ``(K, C, h, w)`` decoded filters, C in {1, 3}.
        thresholded: ``(K, C, h, w)`` values in {-1, 0, 1}, drawn under each filter.
        titles: one per filter (default: its index).
    """
    k = filters.shape[0]
    titles = list(titles) if titles is not None else [str(i) for i in range(k)]
    ncols = max(1, min(ncols, k))
    nrows = int(np.ceil(k / ncols))
    per = 2 if thresholded is not None else 1
    fig, axes = plt.subplots(
        nrows * per, ncols, figsize=(1.1 * ncols, 1.2 * nrows * per), squeeze=False
    )
    for i in range(nrows * ncols):
        r, c = divmod(i, ncols)
        if i >= k:
            for j in range(per):
                axes[r * per + j, c].axis("off")
            continue
        _show_filter(axes[r * per, c], filters[i], titles[i])
        if thresholded is not None:
            _show_filter(axes[r * per + 1, c], thresholded[i], unit="sign")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@styled
def plot_max_activation_matrix(
    filters: np.ndarray,
    thresholded: np.ndarray,
    images: np.ndarray,
    matrix: np.ndarray,
    filter_labels: Sequence[str],
    image_labels: Sequence[str],
    title: str = "Decoded filters (left: thresholded, raw) against the images that excite "
    "each filter most (top)",
) -> Figure:
    """Seed 003 Fig. 1: decoded filters (rows) against the images they excite most (columns).

    Args:
        filters, thresholded: ``(K, C, h, w)``, drawn on the left of each row.
        images: ``(K, C, H, W)`` in [0, 1]: image ``j`` excites filter ``j`` most.
        matrix: ``(K, K)``, ``matrix[k, j]`` = activation of filter ``k`` on image ``j``.
        filter_labels, image_labels: ``K`` names each.
        title: the figure's title.
    """
    k = matrix.shape[0]
    size = 0.75
    fig = plt.figure(figsize=(size * (k + 3), size * (k + 1.4)))
    grid = fig.add_gridspec(k + 1, k + 2, wspace=0.05, hspace=0.05)
    for j in range(k):
        _grey_imshow(fig.add_subplot(grid[0, j + 2]), images[j], image_labels[j])
    for i in range(k):
        _show_filter(fig.add_subplot(grid[i + 1, 0]), thresholded[i])
        _show_filter(fig.add_subplot(grid[i + 1, 1]), filters[i])
    ax = fig.add_subplot(grid[1:, 2:])
    ax.imshow(matrix, cmap="viridis", aspect="auto")
    top = np.abs(matrix).max() or 1.0
    for i in range(k):
        for j in range(k):
            v = matrix[i, j]
            ax.text(
                j,
                i,
                f"{v:.2g}",
                ha="center",
                va="center",
                fontsize=6,
                color="black" if v > 0.6 * top else "white",
            )
    ax.set_xticks([])
    ax.set_yticks(range(k))
    ax.set_yticklabels(filter_labels, fontsize=7)
    ax.yaxis.tick_right()
    fig.suptitle(title, fontsize=9)
    return fig


@styled
def plot_top_images(
    filters: np.ndarray,
    images: np.ndarray,
    scores: np.ndarray,
    titles: Sequence[str],
) -> Figure:
    """Each decoded filter beside the images that excite it most.

    Args:
        filters: ``(K, C, h, w)``.
        images: ``(K, n, C, H, W)`` in [0, 1], highest first.
        scores: ``(K, n)`` their activations.
        titles: one per filter.
    """
    k, n = scores.shape
    fig, axes = plt.subplots(k, n + 1, figsize=(1.3 * (n + 1), 1.35 * k), squeeze=False)
    for i in range(k):
        _show_filter(axes[i, 0], filters[i], titles[i])
        for j in range(n):
            _grey_imshow(axes[i, j + 1], images[i, j], f"{scores[i, j]:.3g}")
    fig.suptitle("Decoded filters and their top-activating images", fontsize=10)
    fig.tight_layout()
    return fig


@styled
def plot_response_comparison(
    image: np.ndarray,
    network: np.ndarray,
    decoded: np.ndarray,
    titles: Sequence[str],
) -> Figure:
    """Seed 003 Fig. 3: a layer's response maps beside the decoded filters' estimates.

    Maps of one position each (a layer whose response is 1 x 1, such as LeNet's last
    convolution on a 28 x 28 digit) are drawn as one table of cells, each with its value
    written in it, rather than as squares of one grey each.

    Args:
        image: ``(C, H, W)`` in [0, 1].
        network, decoded: ``(R, h, w)`` maps of ``R`` filters, each already
            contrast-normalised the way the error is (values in [0, 1]).
        titles: one per filter.
    """
    r = network.shape[0]
    title = "Layer response (top) and the image correlated with decoded filters (bottom)"
    if network.shape[-2:] == (1, 1):
        return _response_cells(image, network, decoded, titles, title)
    fig, axes = plt.subplots(
        2, r + 1, figsize=(1.3 * (r + 1) + 0.6, 2.9), squeeze=False, layout="constrained"
    )
    _grey_imshow(axes[0, 0], image, "image")
    axes[1, 0].axis("off")
    im = None
    for j in range(r):
        for row, maps, label in ((0, network, "network"), (1, decoded, "decoded")):
            ax = axes[row, j + 1]
            im = ax.imshow(maps[j], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{label} {titles[j]}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    if im is not None:
        bar = fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), fraction=0.02, pad=0.01)
        bar.set_label("normalised response", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def _response_cells(
    image: np.ndarray,
    network: np.ndarray,
    decoded: np.ndarray,
    titles: Sequence[str],
    title: str,
) -> Figure:
    """1 x 1 response maps: a 2 x R table (network, decoded), each cell's value written."""
    r = network.shape[0]
    cells = np.stack([network.reshape(r), decoded.reshape(r)])
    fig = plt.figure(figsize=(1.6 + 0.75 * r + 1.0, 2.4), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=[1.4, 0.75 * r])
    _grey_imshow(fig.add_subplot(grid[0, 0]), image, "image")
    ax = fig.add_subplot(grid[0, 1])
    im = ax.imshow(cells, cmap="viridis", vmin=0, vmax=1, aspect="equal")
    for i in range(2):
        for j in range(r):
            v = float(cells[i, j])
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 else "white")  # fmt: skip
    ax.set_xticks(range(r), [f"filter {t}" for t in titles], fontsize=7, rotation=45)
    ax.set_yticks([0, 1], ["network", "decoded"], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(-0.5, r, 1), minor=True)
    ax.set_yticks([-0.5, 0.5, 1.5], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title("one position per filter (1 x 1 response)", fontsize=8)
    bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("normalised response", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


@styled
def plot_three_views(
    images: np.ndarray,
    decoded: np.ndarray,
    deconv: np.ndarray,
    rows: np.ndarray,
    titles: Sequence[str],
) -> Figure:
    """One unit per row: its image, decoded filter, Zeiler-Fergus deconvolution, linear row.

    Args:
        images: ``(R, C, H, W)`` in [0, 1], the image each unit is read on.
        decoded: ``(R, C, h, w)`` decoded filters (independent of the image).
        deconv, rows: ``(R, C, H, W)``, the deconvolution and the linear interpreter's row.
        titles: one per unit.
    """
    r = images.shape[0]
    fig, axes = plt.subplots(r, 4, figsize=(5.6, 1.45 * r), squeeze=False)
    heads = ("image", "decoded filter", "deconvnet", "linear row")
    for i in range(r):
        _grey_imshow(axes[i, 0], images[i], titles[i])
        for j, arr in enumerate((decoded, deconv, rows)):
            _show_filter(axes[i, j + 1], arr[i], heads[j + 1] if i == 0 else "")
    axes[0, 0].set_title(f"{heads[0]}\n{titles[0]}", fontsize=8)
    fig.suptitle("One unit, three readings (red > 0, blue < 0)", fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_cross_lens(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    window: tuple[int, int, int, int],
    title: str,
    cosines: Mapping[str, float] | None = None,
) -> Figure:
    """One unit read three ways, side by side: the image and the unit's three maps.

    Args:
        image: ``(C, H, W)`` in [0, 1], the image the unit is read on; the unit's
            receptive field is outlined on it.
        maps: ``(decoded, deconvnet, row)``, each ``(C, h, w)`` on the receptive field;
            drawn signed (red > 0, blue < 0, white at 0), each with its colour bar.
        window: ``(top, left, height, width)`` of the receptive field in image pixels (it
            may reach past the image's edges).
        title: the figure's title (which unit, which image).
        cosines: ``{"decoded_deconvnet", "decoded_row", "deconvnet_row"}`` similarities,
            written under the maps' titles.
    """
    if len(maps) != 3:
        raise ConvscopeError(f"plot_cross_lens draws 3 maps, got {len(maps)}")
    fig, axes = plt.subplots(1, 4, figsize=(8.4, 2.4), squeeze=False)
    _grey_imshow(axes[0, 0], image, "image")
    top, left, h, w = window
    axes[0, 0].add_patch(
        Rectangle((left - 0.5, top - 0.5), w, h, fill=False, edgecolor="#fc0", linewidth=1.5)
    )
    c = dict(cosines or {})
    heads = (
        ("decoded filter", "decoded_deconvnet", "vs deconvnet", "weight"),
        ("deconvnet", "deconvnet_row", "vs row", "backward signal"),
        ("linear row", "decoded_row", "vs decoded", "d unit / d pixel"),
    )
    for j, (arr, (head, key, vs, unit)) in enumerate(zip(maps, heads, strict=True)):
        sub = f"{head}\ncos {c[key]:.2f} {vs}" if key in c else head
        _show_filter(axes[0, j + 1], arr, sub, unit)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_kernel_composition(
    filters: np.ndarray,
    kernel_names: Sequence[str],
    share: np.ndarray,
    net: np.ndarray,
    titles: Sequence[str],
    top: int = 5,
    title: str = "Deep filters over the kernel bank",
) -> Figure:
    """Each decoded filter beside bars of the bank kernels it is built from.

    One row per filter: the decoded image-space filter (signed, with a colour bar), then
    horizontal bars of its ``top`` kernels by share, labelled with the kernel names;
    a bar is red where the kernel's net (signed) weight is positive, blue where negative.

    Args:
        filters: ``(R, C, h, w)`` decoded filters, C in {1, 3}.
        kernel_names: the bank's ``K`` kernel names.
        share, net: ``(R, K)``, :attr:`KernelComposition.share` and ``.net`` of the filters.
        titles: one per filter.
        top: kernels shown per filter (the largest shares).
        title: the figure's title.
    """
    r, k = share.shape
    if net.shape != share.shape or len(kernel_names) != k or filters.shape[0] != r:
        raise ConvscopeError(
            f"filters {filters.shape[0]}, shares {share.shape}, nets {net.shape} and "
            f"{len(kernel_names)} kernel names do not match"
        )
    n = max(1, min(top, k))
    fig, axes = plt.subplots(
        r, 2, figsize=(5.2, 0.25 * n * r + 0.6 * r + 0.5), squeeze=False,
        gridspec_kw={"width_ratios": [1.0, 1.6]}, layout="constrained",
    )  # fmt: skip
    for i in range(r):
        _show_filter(axes[i, 0], filters[i], titles[i])
        order = np.argsort(-share[i], kind="stable")[:n]
        ax = axes[i, 1]
        colours = ["tab:red" if net[i, j] > 0 else "tab:blue" for j in order]
        ax.barh(np.arange(n), share[i, order], color=colours)
        ax.set_yticks(np.arange(n), [kernel_names[j] for j in order], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1e-12, float(share[i, order].max())) * 1.1)
        ax.tick_params(axis="x", labelsize=6)
        if i == r - 1:
            ax.set_xlabel("share of |weight| (red: net > 0, blue: net < 0)", fontsize=6)
    fig.suptitle(title, fontsize=9)
    return fig
