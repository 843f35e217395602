"""Matplotlib figures. Drawing only: every function takes arrays already computed.

Each ``plot_*`` function returns a :class:`matplotlib.figure.Figure`;
:func:`save_figure` writes it as PNG through a temporary name and closes it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from convscope.errors import ConvscopeError  # noqa: E402
from convscope.io import atomic_path  # noqa: E402

__all__ = [
    "STYLE",
    "plot_attribution_comparison",
    "plot_class_filter_scores",
    "plot_color_examples",
    "plot_color_scores",
    "plot_contact_sheet",
    "plot_kernel_bank",
    "plot_top_filter_images",
    "plot_training_curves",
    "plot_transfer_function",
    "save_figure",
    "signed_colours",
    "styled",
]

# One colour per seed-000 Fig. 4 category, stable across figures.
_CATEGORY_COLOURS = {
    "E": "#1f77b4",
    "NE": "#aec7e8",
    "N": "#ff7f0e",
    "NW": "#ffbb78",
    "W": "#2ca02c",
    "SW": "#98df8a",
    "S": "#d62728",
    "SE": "#ff9896",
    "second_derivative": "#9467bd",
    "sharpen": "#8c564b",
    "emboss": "#e377c2",
    "blur": "#7f7f7f",
    "first_derivative": "#bcbd22",
}


_SHORT = {"second_derivative": "2nd der.", "first_derivative": "1st der."}


STYLE = Path(__file__).with_name("convscope.mplstyle")
"""The package's matplotlib style sheet: fonts, sizes, vector-output settings."""

_F = TypeVar("_F", bound=Callable[..., Any])


def styled(fn: _F) -> _F:
    """Draw under :data:`STYLE`: the decorator of every ``plot_*`` function.

    The style holds only while the figure is made (and, through :func:`save_figure`,
    saved); the caller's matplotlib settings are as they were afterwards.
    """

    @functools.wraps(fn)
    def draw(*args: Any, **kwargs: Any) -> Any:
        with plt.style.context(STYLE):
            return fn(*args, **kwargs)

    draw.styled = True  # type: ignore[attr-defined]
    return draw  # type: ignore[return-value]


def save_figure(
    fig: Figure, path: str | os.PathLike[str], dpi: int = 110, *, close: bool = True
) -> Path:
    """Write ``fig`` atomically in the format its suffix names (png, svg, pdf), in :data:`STYLE`.

    Args:
        fig: The figure.
        path: The destination; ``.png``, ``.svg`` or ``.pdf``.
        dpi: Resolution of raster output.
        close: Close the figure afterwards (keep it open to save it in another format).
    """
    dst = Path(path)
    fmt = dst.suffix.lower().lstrip(".") or "png"
    if fmt not in ("png", "svg", "pdf"):
        raise ConvscopeError(f"{dst}: figures are written as .png, .svg or .pdf")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(dst) as tmp, plt.style.context(STYLE):
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        if close:
            plt.close(fig)
    return dst


def _tick(v: float) -> str:
    """A colour bar's end: 433 rather than 4.3e+02, 0.29 as before."""
    return f"{v:.0f}" if 100 <= abs(v) < 1e6 else f"{v:.2g}"


def _signed_imshow(
    ax: plt.Axes,
    img: np.ndarray,
    title: str = "",
    *,
    label: str = "",
    bar: bool = True,
    lim: float | None = None,
) -> None:
    """Red for positive, blue for negative, white at zero, with a colour bar (-lim, 0, +lim).

    ``lim`` defaults to ``max |img|``; values beyond a smaller one saturate, and the colour
    bar then ends in arrows.
    """
    top = float(np.abs(img).max())
    lim = float(lim if lim is not None else top) or 1.0
    im = ax.imshow(img, cmap="bwr", norm=TwoSlopeNorm(0.0, -lim, lim))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    if bar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, ticks=[-lim, 0.0, lim],
                                extend="both" if top > lim else "neither")  # fmt: skip
        cb.ax.set_yticklabels([_tick(-lim), "0", _tick(lim)])
        cb.ax.tick_params(labelsize=6, length=2)
        if label:
            cb.set_label(label, fontsize=6)


def _grey_imshow(ax: plt.Axes, img: np.ndarray, title: str = "") -> None:
    if img.ndim == 3 and img.shape[0] in (1, 3):  # (C, H, W) -> (H, W, C)
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


@styled
def plot_kernel_bank(weights: np.ndarray, names: Sequence[str], ncols: int = 8) -> Figure:
    """The kernels of a bank as small signed images with their names.

    Args:
        weights: ``(K, f, f)``.
    """
    k = len(names)
    nrows = int(np.ceil(k / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.5 * nrows + 0.3),
                             squeeze=False, layout="constrained")  # fmt: skip
    for i, ax in enumerate(axes.flat):
        if i < k:
            _signed_imshow(ax, weights[i], f"{i}: {names[i]}")
            ax.title.set_fontsize(6)
        else:
            ax.axis("off")
    fig.suptitle("Fixed kernels (red > 0, blue < 0)", fontsize=10)
    return fig


@styled
def plot_class_filter_scores(
    scores: np.ndarray,
    kernel_names: Sequence[str],
    categories: Sequence[str],
    class_names: Sequence[str],
    title: str = "Average filter score per class (share of the class logit)",
) -> Figure:
    """Seed 000 Fig. 4: average filter score of every kernel, one panel per class.

    Args:
        scores: ``(num_classes, K)`` class-average filter scores (e.g. divided by the logit).
        categories: the Fig. 4 category of each kernel (edge direction or group).
        title: The figure's title (one image's scores are not an average).
    """
    n_cls, k = scores.shape
    fig, grid = plt.subplots(n_cls, 1, figsize=(11, 1.3 * n_cls + 0.8), sharex=True, squeeze=False)
    axes = list(grid[:, 0])
    colours = [_CATEGORY_COLOURS.get(c, "#333333") for c in categories]
    x = np.arange(k)
    # boundaries between runs of the same category
    bounds = [i for i in range(1, k) if categories[i] != categories[i - 1]]
    for c, ax in enumerate(axes):
        ax.bar(x, scores[c], color=colours, width=0.85)
        ax.axhline(0, color="black", lw=0.5)
        for b in bounds:
            ax.axvline(b - 0.5, color="grey", lw=0.4, ls=":")
        ax.set_ylabel(str(class_names[c]), rotation=0, labelpad=12, fontsize=9, va="center")
        ax.tick_params(labelsize=7)
    starts = [0, *bounds]
    ends = [*bounds, k]
    for s, e in zip(starts, ends, strict=True):
        axes[0].text(
            (s + e - 1) / 2,
            1.02,
            _SHORT.get(categories[s], categories[s]),
            transform=axes[0].get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(kernel_names, rotation=90, fontsize=6)
    fig.suptitle(title, y=1.0, fontsize=10)
    fig.tight_layout()
    return fig


_CHANNEL_COLOURS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4"}


@styled
def plot_color_scores(
    color: np.ndarray,
    edges: np.ndarray,
    categories: Sequence[str],
    class_names: Sequence[str],
    channels: Sequence[str] = ("red", "green", "blue"),
) -> Figure:
    """Seed 000 Fig. 6a: each class's average colour scores beside its edge-category scores.

    Args:
        color: ``(num_classes, C)`` class-average colour scores.
        edges: ``(num_classes, G)`` class-average filter scores by category (edge directions).
        categories: the ``G`` category names.
        channels: the ``C`` channel names (bars in those colours where known).
    """
    n = len(class_names)
    fig, axes = plt.subplots(
        n, 2, figsize=(7.5, 1.25 * n + 0.9), squeeze=False,
        gridspec_kw={"width_ratios": [1, 2.6]}, layout="constrained",
    )  # fmt: skip
    ccol = [_CHANNEL_COLOURS.get(c, "#555555") for c in channels]
    ecol = [_CATEGORY_COLOURS.get(c, "#333333") for c in categories]
    for i, name in enumerate(class_names):
        a, b = axes[i]
        a.bar(np.arange(len(channels)), color[i], color=ccol, width=0.7)
        b.bar(np.arange(len(categories)), edges[i], color=ecol, width=0.8)
        for ax in (a, b):
            ax.axhline(0, color="black", lw=0.5)
            ax.tick_params(labelsize=7)
            ax.set_xticks([])
        a.set_ylabel(str(name), rotation=0, ha="right", va="center", fontsize=8)
    axes[-1, 0].set_xticks(np.arange(len(channels)), [c[0].upper() for c in channels])
    short = [_SHORT.get(c, c) for c in categories]
    axes[-1, 1].set_xticks(np.arange(len(categories)), short, rotation=60, fontsize=7)
    axes[0, 0].set_title("colour scores (logit units)", fontsize=8)
    axes[0, 1].set_title("filter scores by edge category (logit units)", fontsize=8)
    fig.suptitle("Class averages of the colour front-end's scores", fontsize=10)
    return fig


@styled
def plot_color_examples(
    images: np.ndarray,
    maps: np.ndarray,
    row_titles: Sequence[str],
    channels: Sequence[str] = ("red", "green", "blue"),
) -> Figure:
    """Seed 000 Fig. 6b: an image, its channels, and each channel's colour filter score image.

    Args:
        images: ``(R, C, H, W)`` in [0, 1].
        maps: ``(R, C, H, W)``: per channel, the filter score images of its maps summed.
    """
    r, c = images.shape[:2]
    fig, axes = plt.subplots(r, 1 + 2 * c, figsize=(1.45 * (1 + 2 * c), 1.45 * r + 0.5),
                             squeeze=False, layout="constrained")  # fmt: skip
    for i in range(r):
        _grey_imshow(axes[i, 0], images[i], row_titles[i])
        lim = float(np.abs(maps[i]).max()) or 1.0  # one scale per row: channels compare
        for j in range(c):
            _grey_imshow(axes[i, 1 + j], images[i, j], channels[j] if i == 0 else "")
            _signed_imshow(
                axes[i, 1 + c + j],
                maps[i, j],
                f"{channels[j]} score {maps[i, j].sum():+.3g}",
                label="logit units",
                lim=lim,
            )
    fig.suptitle("Colour filter score images (red: raises the logit, blue: lowers it)",
                 fontsize=10)  # fmt: skip
    return fig


@styled
def plot_top_filter_images(
    images: np.ndarray,
    score_images: np.ndarray,
    top_names: Sequence[Sequence[str]],
    top_scores: np.ndarray,
    row_titles: Sequence[str],
) -> Figure:
    """Seed 000 Fig. 5: each input beside its top filter score images.

    Args:
        images: ``(R, C, H, W)`` inputs in [0, 1].
        score_images: ``(R, T, H, W)`` filter score images of the top ``T`` kernels.
        top_names: ``R`` lists of ``T`` kernel names.
        top_scores: ``(R, T)`` their filter scores.
    """
    r, t = score_images.shape[:2]
    # Constrained layout places the title above the first row's two-line panel titles and
    # leaves each colour bar its room (tight_layout let the title run into the labels).
    fig, axes = plt.subplots(r, t + 1, figsize=(1.7 * (t + 1), 1.75 * r + 0.3), squeeze=False,
                             layout="constrained")  # fmt: skip
    for i in range(r):
        _grey_imshow(axes[i, 0], images[i], row_titles[i])
        for j in range(t):
            _signed_imshow(
                axes[i, j + 1],
                score_images[i, j],
                f"{top_names[i][j]}\n{top_scores[i, j]:+.2f}",
                label="logit share",
            )
    fig.suptitle("Top filters and their filter score images", fontsize=10)
    return fig


@styled
def plot_attribution_comparison(
    images: np.ndarray,
    maps: dict[str, np.ndarray],
    row_titles: Sequence[str],
) -> Figure:
    """Seed 000 Fig. 1 (right): one column per attribution method.

    Args:
        images: ``(R, C, H, W)`` inputs in [0, 1].
        maps: method name -> ``(R, H, W)`` signed maps.
    """
    r = images.shape[0]
    cols = len(maps) + 1
    fig, axes = plt.subplots(r, cols, figsize=(1.8 * cols, 1.8 * r), squeeze=False)
    for i in range(r):
        _grey_imshow(axes[i, 0], images[i], row_titles[i] if i else f"input\n{row_titles[i]}")
        for j, (name, m) in enumerate(maps.items()):
            _signed_imshow(axes[i, j + 1], m[i], name if i == 0 else "", label="relevance")
    fig.tight_layout()
    return fig


@styled
def plot_training_curves(histories: dict[str, dict[str, list[float]]]) -> Figure:
    """Loss and test accuracy per epoch for several runs."""
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, h in histories.items():
        ep = np.arange(1, len(h["train_loss"]) + 1)
        ax_l.plot(ep, h["train_loss"], label=f"{name} train")
        if h.get("test_loss"):
            ax_l.plot(ep, h["test_loss"], ls="--", label=f"{name} test")
        if h.get("test_acc"):
            ax_a.plot(ep, 100 * np.asarray(h["test_acc"]), marker="o", label=name)
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("cross-entropy")
    ax_l.legend(fontsize=7)
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("test accuracy (%)")
    ax_a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def signed_colours(img: np.ndarray, lim: float | None = None) -> tuple[np.ndarray, float]:
    """A signed map as an RGB picture: blue < 0, white at 0, red > 0, on -lim..+lim.

    Args:
        img: ``(H, W)`` values of either sign.
        lim: the value drawn full red (and its negative full blue); default ``max |img|``.

    Returns:
        ``(H, W, 3)`` uint8 and the ``lim`` used (the colour bar the picture lacks).
    """
    lim = float(lim if lim is not None else np.abs(img).max()) or 1.0
    rgba = plt.get_cmap("bwr")(TwoSlopeNorm(0.0, -lim, lim)(np.asarray(img, dtype=np.float64)))
    return np.rint(255 * np.asarray(rgba)[..., :3]).astype(np.uint8), lim


@styled
def plot_contact_sheet(
    tiles: Sequence[np.ndarray],
    titles: Sequence[str],
    ncols: int = 8,
    signed: Sequence[bool] | None = None,
    unit: str = "",
    title: str = "",
    limits: Sequence[float | None] | None = None,
) -> Figure:
    """Images in a grid with titles; signed tiles on a diverging scale with a colour bar.

    Args:
        tiles: pictures (``(H, W)`` or ``(H, W, 3)``, 0..255) or, where ``signed`` says so,
            ``(H, W)`` signed responses (any float), drawn blue < 0, white at 0, red > 0
            on a scale symmetric about 0, each with its colour bar.
        titles: one per tile.
        signed: one flag per tile (default: none signed).
        unit: the colour bars' label.
        title: the figure's title (none by default).
        limits: per tile, the value drawn full red on a signed tile (its negative full
            blue; larger values saturate); ``None``: the tile's largest ``|value|``.
    """
    n = len(tiles)
    flags = list(signed) if signed is not None else [False] * n
    lims = list(limits) if limits is not None else [None] * n
    if len(flags) != n or len(titles) != n or len(lims) != n:
        raise ConvscopeError(f"{n} tiles need {n} titles, flags and limits")
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols + 0.3 * any(flags), 2.0 * nrows),
                             squeeze=False, layout="constrained")  # fmt: skip
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        tile = tiles[i]
        if flags[i]:
            _signed_imshow(ax, np.asarray(tile, dtype=np.float64), titles[i], label=unit,
                           lim=lims[i])  # fmt: skip
            ax.title.set_fontsize(7)
            continue
        ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


@styled
def plot_transfer_function(
    derivative: np.ndarray, spectrum: np.ndarray, gains: Sequence[float], title: str = ""
) -> Figure:
    """Seed 004 Fig. 3-6: data derivative and its amplitude spectrum, one row per channel.

    Args:
        derivative: ``(C, H, W)`` data derivatives.
        spectrum: ``(C, H, W)`` spectra in dB, DC in the centre.
        gains: Maximum Gain per channel (dB).
    """
    c = derivative.shape[0]
    fig, axes = plt.subplots(c, 2, figsize=(6.4, 3.0 * c), squeeze=False)
    for i in range(c):
        _signed_imshow(axes[i, 0], derivative[i], f"dz/dx, channel {i}", label="dz/dx")
        finite = spectrum[i][spectrum[i] > -300]
        lo = float(finite.min()) if finite.size else -300.0
        im = axes[i, 1].imshow(spectrum[i], cmap="viridis", vmin=max(lo, float(gains[i]) - 80),
                               extent=(-0.5, 0.5, 0.5, -0.5))  # fmt: skip
        axes[i, 1].set_title(f"|H|, max {gains[i]:.1f} dB", fontsize=8)
        axes[i, 1].set_xlabel("cycles / pixel", fontsize=7)
        axes[i, 1].set_ylabel("cycles / pixel", fontsize=7)
        axes[i, 1].tick_params(labelsize=6)
        bar = fig.colorbar(im, ax=axes[i, 1], fraction=0.046)
        bar.set_label("dB", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@styled
def plot_class_gains(
    classes: Sequence[str],
    channels: Sequence[str],
    mean: np.ndarray,
    std: np.ndarray,
    title: str = "",
) -> Figure:
    """Mean Maximum Gain per class (one bar per channel), one standard deviation as error bars.

    Args:
        classes: ``K`` class names.
        channels: ``C`` channel names.
        mean, std: ``(K, C)`` in dB.
    """
    k, c = mean.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * k * c + 1.5), 3.0))
    width = 0.8 / c
    colours = {"red": "#c44e52", "green": "#55a868", "blue": "#4c72b0"}
    for j, ch in enumerate(channels):
        x = np.arange(k) + (j - (c - 1) / 2) * width
        ax.bar(x, mean[:, j], width, yerr=std[:, j], capsize=2, label=ch,
               color=colours.get(ch, "#4c72b0"))  # fmt: skip
    ax.set_xticks(np.arange(k), list(classes), fontsize=7, rotation=0 if k <= 12 else 60)
    ax.set_ylabel("Maximum Gain (dB)", fontsize=8)
    ax.set_xlabel("class", fontsize=8)
    ax.tick_params(labelsize=7)
    if c > 1:
        ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_mean_spectra(spectra: dict[str, np.ndarray], title: str = "", ncols: int = 5) -> Figure:
    """Mean amplitude spectra (dB, DC in the centre) per class, first channel, on one scale.

    Args:
        spectra: class name -> ``(C, H, W)`` mean spectrum in dB.
        title: The figure's title.
        ncols: Panels per row.
    """
    names = list(spectra)
    first = {k: np.asarray(v)[0] for k, v in spectra.items()}
    hi = max(float(v.max()) for v in first.values())
    lo = max(min(float(v.min()) for v in first.values()), hi - 80)
    n = len(names)
    cols = min(ncols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols + 0.8, 2.1 * rows + 0.5),
                             squeeze=False)  # fmt: skip
    im = None
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        im = ax.imshow(first[names[i]], cmap="viridis", vmin=lo, vmax=hi,
                       extent=(-0.5, 0.5, 0.5, -0.5))  # fmt: skip
        ax.set_title(names[i], fontsize=8)
        ax.tick_params(labelsize=6)
        if i % cols == 0:
            ax.set_ylabel("cycles / pixel", fontsize=7)
        if i >= n - cols:
            ax.set_xlabel("cycles / pixel", fontsize=7)
    if im is not None:
        bar = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03)
        bar.set_label("|H| (dB)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


@styled
def plot_radial_profiles(
    frequencies: np.ndarray,
    profiles: dict[str, np.ndarray],
    channels: Sequence[str],
    title: str = "",
) -> Figure:
    """Mean transfer function per class against frequency (rings of the 2-D spectrum).

    Args:
        frequencies: ``(R,)`` ring centres in cycles per pixel.
        profiles: class name -> ``(C, R)`` mean dB per ring.
        channels: ``C`` channel names (one panel each).
        title: The figure's title.
    """
    c = len(channels)
    fig, axes = plt.subplots(1, c, figsize=(4.2 * c, 3.0), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(profiles) <= 10 else "viridis")
    for j, ax in enumerate(axes[0]):
        for i, (name, prof) in enumerate(profiles.items()):
            colour = cmap(i if len(profiles) <= 10 else i / max(1, len(profiles) - 1))
            ax.plot(frequencies, prof[j], color=colour, linewidth=1.0, label=name)
        ax.set_xlabel("frequency (cycles / pixel)", fontsize=8)
        ax.set_ylabel("|H| (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        if c > 1:
            ax.set_title(channels[j], fontsize=8)
    if len(profiles) <= 12:
        axes[0, -1].legend(fontsize=6, frameon=False, ncol=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_max_gain_curves(curves: dict[str, Sequence[float]]) -> Figure:
    """Maximum Gain (dB) per epoch, one line per model (seed 004 Figs. 7-9)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), list(values), marker="o", markersize=3, label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("Maximum Gain (dB)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Maximum Gain during training", fontsize=9)
    fig.tight_layout()
    return fig
