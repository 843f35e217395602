"""Figures for the linear interpreter (seed 001). Drawing only: arrays in, figures out.

- :func:`plot_pixel_votes`: Fig. 3 / 9 / 10, the class each pixel votes for as a coloured
  map (pixels that abstain, vote -1, in dark grey) and the image masked to the pixels
  that vote for a class;
- :func:`plot_contribution_histogram`: Fig. 4 / 8, the share of a score that the input and
  each layer's biases carry, averaged over images (several series side by side, e.g. clean
  and attacked images);
- :func:`plot_residual_shares`: Table 3 / 4 as distributions, one per model;
- :func:`plot_score_split`: one image's top scores split into ``F x0`` and the residual;
- :func:`plot_filter_maps`: Fig. 11, rows (receptive filters) or columns (projective
  filters) of ``F`` at a few positions, whole and zoomed;
- :func:`plot_svd_pairs`: Fig. 5 / 12, singular values and eigen-input / eigen-output pairs;
- :func:`plot_attack`: Fig. 10 and the third column of Fig. 8, votes and contributions
  before and after an attack.

Images are ``(H, W)`` grey or ``(H, W, 3)`` colour in [0, 1]; signed maps (filters,
discussions, eigen-vectors) are red for positive, blue for negative, white at 0, each on
its own symmetric scale. Maps with 3 channels are drawn as colour around mid grey.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from convscope.errors import ConvscopeError
from convscope.report.figures import _grey_imshow, _signed_imshow, styled

__all__ = [
    "masked_image",
    "plot_attack",
    "plot_contribution_histogram",
    "plot_filter_maps",
    "plot_pixel_votes",
    "plot_residual_shares",
    "plot_score_split",
    "plot_signed_maps",
    "plot_svd_pairs",
    "vote_colours",
]

# Pixels that do not vote for the class shown: light grey, so that black background pixels
# of MNIST digits that do vote stay visible against it.
_NOT_VOTING = np.array([0.85, 0.85, 0.87])
_OTHER = "#bdbdbd"  # votes for a class outside the legend
# Pixels that abstain (vote -1: their largest discussion is tied, e.g. all 0): a dark
# neutral grey, apart from _OTHER and from tab10's / tab20's mid and light greys.
_NO_SAY = "#4d4d4d"
_NO_SAY_LABEL = "no say (tied)"


def _hwc(image: np.ndarray) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1|3)`` or ``(1|3, H, W)`` in [0, 1] -> ``(H, W, 3)``."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ConvscopeError(f"expected a grey or RGB image; got shape {np.shape(image)}")
    return np.clip(np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img, 0.0, 1.0)


def _signed_map(ax: plt.Axes, m: np.ndarray, title: str = "", label: str = "") -> None:
    """A signed ``(H, W)`` map, or ``(3, H, W)`` as colour around mid grey; ``label``: the
    colour bar's unit."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 3 and m.shape[0] == 3:
        lim = float(np.abs(m).max()) or 1.0
        ax.imshow(np.moveaxis(0.5 + 0.5 * m / lim, 0, -1))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
        return
    if m.ndim == 3:
        m = m.sum(0)
    _signed_imshow(ax, m, title, label=label)


def vote_colours(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct colours for the classes of a vote map (tab10, then tab20)."""
    base = plt.get_cmap("tab10" if n <= 10 else "tab20").colors  # type: ignore[attr-defined]
    return [to_rgb(base[i % len(base)]) for i in range(n)]


def masked_image(image: np.ndarray, votes: np.ndarray, cls: int) -> np.ndarray:
    """The image where the pixels vote for ``cls``, light grey elsewhere (Fig. 3).

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` in [0, 1].
        votes: ``(H, W)`` class index per pixel.
        cls: the class to show.

    Returns:
        ``(H, W, 3)`` float image.
    """
    img = _hwc(image)
    v = np.asarray(votes)
    if v.shape != img.shape[:2]:
        raise ConvscopeError(f"votes {v.shape} and image {img.shape[:2]} differ in size")
    mask = (v == cls)[..., None]
    return np.where(mask, img, _NOT_VOTING)


def _vote_map(
    ax: plt.Axes, votes: np.ndarray, classes: Sequence[int], colours: Sequence[tuple[float, ...]]
) -> None:
    index = np.full(votes.shape, len(classes), dtype=np.int64)
    for i, c in enumerate(classes):
        index[votes == c] = i
    index[votes < 0] = len(classes) + 1  # abstaining pixels
    cmap = ListedColormap([*colours, to_rgb(_OTHER), to_rgb(_NO_SAY)])
    ax.imshow(index, cmap=cmap, vmin=-0.5, vmax=len(classes) + 1.5, interpolation="nearest")
    ax.axis("off")


def _legend_handles(
    legend: Sequence[int],
    colours: Sequence[tuple[float, float, float]],
    name: Callable[[int], str],
    votes: Iterable[np.ndarray],
) -> list[Patch]:
    """One patch per legend class, and one for abstaining pixels where a map has any."""
    handles = [Patch(color=col, label=name(c)) for c, col in zip(legend, colours, strict=True)]
    if any((np.asarray(v) < 0).any() for v in votes):
        handles.append(Patch(color=_NO_SAY, label=_NO_SAY_LABEL))
    return handles


@styled
def plot_pixel_votes(
    images: np.ndarray | Sequence[np.ndarray],
    votes: np.ndarray | Sequence[np.ndarray],
    classes: Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
    *,
    discussions: np.ndarray | Sequence[np.ndarray] | None = None,
    row_titles: Sequence[str] | None = None,
    legend: Sequence[int] | None = None,
) -> Figure:
    """Seed 001 Fig. 3 / 9: what each pixel votes for, one row per image.

    Each row: the image, (optionally) the pixel discussion of its first class, the vote
    map (one colour per class, abstaining pixels dark grey), then the image masked to
    the pixels that vote for each class in ``classes[i]`` with the share of all pixels
    that do.

    Args:
        images: ``N`` images ``(H, W)`` or ``(H, W, 3)`` in [0, 1].
        votes: ``N`` maps ``(H, W)`` of class indices, -1 where a pixel abstains (its
            largest discussion is tied): drawn dark grey, "no say (tied)" in the legend.
        classes: per image, the classes to show masked images for (e.g. the top-2 scores).
        class_names: names of all classes (default: the indices).
        discussions: ``N`` signed maps ``(H, W)``, the discussion of ``classes[i][0]``.
        row_titles: one title per image, over its first panel.
        legend: classes that get a colour in the vote maps, in order (default: every
            class that appears in ``classes`` or in the votes, at most 20); votes for
            other classes are light grey.

    Returns:
        The figure.
    """
    n = len(images)
    if not (len(votes) == len(classes) == n) or n == 0:
        raise ConvscopeError(
            f"plot_pixel_votes: {n} images, {len(votes)} vote maps, {len(classes)} class lists"
        )
    names = list(class_names) if class_names is not None else None

    def name(c: int) -> str:
        return names[c] if names is not None and 0 <= c < len(names) else str(c)

    if legend is None:
        seen: list[int] = []
        for row in classes:
            seen.extend(int(c) for c in row if int(c) not in seen)
        for v in votes:
            flat = np.asarray(v).ravel().astype(np.int64)
            counts = np.bincount(flat[flat >= 0])
            for c in np.argsort(-counts):
                if counts[c] and int(c) not in seen:
                    seen.append(int(c))
        legend = seen[:20]
    legend = [int(c) for c in legend if int(c) >= 0]
    colours = vote_colours(len(legend))
    k = max(len(row) for row in classes)
    extra = 1 if discussions is not None else 0
    ncols = 2 + extra + k
    fig, axes = plt.subplots(n, ncols, figsize=(1.9 * ncols, 2.0 * n + 0.5), squeeze=False)
    for i in range(n):
        img = _hwc(images[i])
        v = np.asarray(votes[i])
        _grey_imshow(axes[i, 0], img, row_titles[i] if row_titles else "image")
        if discussions is not None:
            c0 = int(classes[i][0]) if len(classes[i]) else -1
            _signed_map(axes[i, 1], np.asarray(discussions[i]), f"discussion: {name(c0)}",
                        "logit share")  # fmt: skip
        _vote_map(axes[i, 1 + extra], v, legend, colours)
        axes[i, 1 + extra].set_title("votes", fontsize=8)
        for j in range(k):
            ax = axes[i, 2 + extra + j]
            ax.axis("off")
            if j < len(classes[i]):
                c = int(classes[i][j])
                share = float((v == c).mean())
                ax.imshow(masked_image(img, v, c))
                ax.set_title(f"votes for {name(c)}: {100 * share:.0f}%", fontsize=8)
    handles = _legend_handles(legend, colours, name, votes)
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 11),  # ten classes and "no say" on one row
        fontsize=7,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    fig.tight_layout(rect=(0, 0.06 if n < 3 else 0.03, 1, 1))
    return fig


@styled
def plot_contribution_histogram(
    names: Sequence[str],
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    residual: Mapping[str, tuple[float, float]] | None = None,
    title: str = "",
    ylabel: str = "share of the top-1 score",
) -> Figure:
    """Seed 001 Fig. 4 / 8: share of a score per source, averaged over images.

    Bars (one colour per series) with one standard deviation as error bars, in model
    order: ``"input"`` (``F x0``) first, then each layer's bias contribution. The residual
    (all biases together, ``1 - input share``) is drawn apart on the right, hatched.

    Args:
        names: the groups, e.g. ``ContributionHistogram.names``.
        series: label -> ``(mean (L,), std (L,))``, e.g. ``{"clean": ..., "FGSM": ...}``.
        residual: label -> ``(mean, std)`` of the residual share, per series.
        title: the figure's title.
        ylabel: the y axis label.

    Returns:
        The figure.
    """
    if not series:
        raise ConvscopeError("plot_contribution_histogram needs at least one series")
    n = len(names)
    for label, (mean, std) in series.items():
        if len(mean) != n or len(std) != n:
            raise ConvscopeError(f"series {label!r}: {len(mean)} values for {n} names")
    s = len(series)
    width = 0.8 / s
    colours = vote_colours(s)
    ticks = list(names) + (["residual\n(all biases)"] if residual else [])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(ticks) * max(1, s * 0.7) + 1.5), 3.6))
    for i, (label, (mean, std)) in enumerate(series.items()):
        pos = np.arange(n) + (i - (s - 1) / 2) * width
        ax.bar(
            pos,
            mean,
            width,
            yerr=std,
            color=colours[i],
            label=label,
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
        if residual and label in residual:
            m, sd = residual[label]
            ax.bar(
                [n + 0.4 + (i - (s - 1) / 2) * width],
                [m],
                width,
                yerr=[sd],
                color=colours[i],
                hatch="//",
                edgecolor="black",
                linewidth=0.5,
                capsize=2,
            )
    ax.axhline(0, color="black", linewidth=0.6)
    positions = list(range(n)) + ([n + 0.4] if residual else [])
    ax.set_xticks(positions, [t if len(t) <= 22 else "..." + t[-19:] for t in ticks])
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    for lbl in ax.get_xticklabels():
        lbl.set_horizontalalignment("right")
    ax.set_ylabel(ylabel, fontsize=8)
    if s > 1:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_residual_shares(shares: Mapping[str, np.ndarray], *, title: str = "") -> Figure:
    """Seed 001 Table 3 / 4 as distributions: residual share ``r_c / y_c`` per model.

    Args:
        shares: label -> ``(N,)`` residual shares of the top-1 score over images.
        title: the figure's title.

    Returns:
        A box plot with the individual images as dots and the mean marked.
    """
    if not shares:
        raise ConvscopeError("plot_residual_shares needs at least one model")
    labels = list(shares)
    data = [np.asarray(shares[k], dtype=np.float64) for k in labels]
    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2.0, 3.4))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    rng = np.random.default_rng(0)  # jitter only: the dots' horizontal spread means nothing
    for i, d in enumerate(data, start=1):
        ax.scatter(i + 0.08 * rng.standard_normal(len(d)), d, s=5, alpha=0.4, color="grey")
        ax.scatter([i], [d.mean()], marker="D", color="red", s=18, zorder=3)
        ax.annotate(
            f"{100 * d.mean():.1f}%",
            (i, d.mean()),
            textcoords="offset points",
            xytext=(8, 0),
            fontsize=7,
            color="red",
        )
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("residual share r_c / y_c of the top-1 score", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_score_split(
    labels: Sequence[str],
    inputs: np.ndarray,
    residuals: np.ndarray,
    *,
    image: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """A few scores, each split into the input's part ``(F x0)_c`` and the residual ``r_c``.

    Args:
        labels: one per score (class names).
        inputs: ``(K,)`` ``(F x0)_c``.
        residuals: ``(K,)`` ``r_c``; the score is their sum, marked by a black tick.
        image: optional image drawn on the left.
        title: the figure's title.

    Returns:
        The figure.
    """
    k = len(labels)
    inputs = np.asarray(inputs, dtype=np.float64)
    residuals = np.asarray(residuals, dtype=np.float64)
    if inputs.shape != (k,) or residuals.shape != (k,):
        raise ConvscopeError(f"plot_score_split: {k} labels, {inputs.shape} and {residuals.shape}")
    if image is not None:
        fig, (ax0, ax) = plt.subplots(
            1, 2, figsize=(7.5, 3.2), gridspec_kw={"width_ratios": [1, 2.2]}
        )
        _grey_imshow(ax0, _hwc(image), "image")
    else:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
    pos = np.arange(k)
    ax.bar(pos - 0.2, inputs, 0.4, label="input  F x0", color="#1f77b4")
    ax.bar(pos + 0.2, residuals, 0.4, label="residual  r", color="#ff7f0e")
    ax.scatter(pos, inputs + residuals, marker="_", s=300, color="black", label="score y")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(pos, [str(v) for v in labels], fontsize=7, rotation=30)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_signed_maps(
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    image: np.ndarray | None = None,
    title: str = "",
    ncols: int = 6,
    unit: str = "",
) -> Figure:
    """Signed maps in a grid, each on its own scale (outputs, residuals, contributions).

    Args:
        maps: ``(H, W)`` maps, ``(C, H, W)`` (3 channels as colour around grey, others
            summed), or 1-D vectors (drawn as bars).
        titles: one per map.
        image: optional image drawn first.
        title: the figure's title.
        ncols: panels per row.
        unit: the colour bars' label (what the values are in).

    Returns:
        The figure.
    """
    if len(maps) != len(titles) or not maps:
        raise ConvscopeError(f"plot_signed_maps: {len(maps)} maps, {len(titles)} titles")
    panels: list[tuple[str, np.ndarray | None]] = [("image", None)] if image is not None else []
    panels += [(t, np.asarray(m, dtype=np.float64)) for t, m in zip(titles, maps, strict=True)]
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (t, m) in zip(axes.flat, panels, strict=False):
        if m is None:
            assert image is not None
            _grey_imshow(ax, _hwc(image), t)
        elif m.ndim == 1:
            ax.bar(np.arange(len(m)), m, color=np.where(m >= 0, "#d62728", "#1f77b4"))
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_title(t, fontsize=8)
            ax.tick_params(labelsize=6)
        else:
            _signed_map(ax, m, t, unit)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _crop(m: np.ndarray, centre: tuple[int, int], window: int) -> np.ndarray:
    """A ``window`` x ``window`` crop of ``(..., H, W)`` around ``centre``, zero-padded."""
    h, w = m.shape[-2:]
    half = window // 2
    y0, x0 = centre[0] - half, centre[1] - half
    out = np.zeros((*m.shape[:-2], window, window), dtype=np.float64)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + window), min(w, x0 + window)
    if ys < ye and xs < xe:
        out[..., ys - y0 : ye - y0, xs - x0 : xe - x0] = m[..., ys:ye, xs:xe]
    return out


@styled
def plot_filter_maps(
    image: np.ndarray,
    maps: np.ndarray,
    marks: Sequence[tuple[int, int]],
    *,
    centres: Sequence[tuple[int, int]] | None = None,
    window: int | None = None,
    titles: Sequence[str] | None = None,
    kind: str = "column",
) -> Figure:
    """Seed 001 Fig. 11: rows or columns of ``F`` at a few positions.

    Top row: the image with the positions marked, then each map whole. Bottom row (when
    ``window`` is given): each map zoomed to ``window`` x ``window`` pixels around its
    centre, where a filter's structure is visible.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` in [0, 1], the image the positions refer to.
        maps: ``(P, H', W')`` or ``(P, C, H', W')`` one map per position: a row
            (receptive filter, input space) or a column (projective filter, output space).
        marks: ``P`` positions ``(y, x)`` in ``image``'s pixels.
        centres: ``P`` positions ``(y, x)`` in the maps' pixels to zoom around (default:
            ``marks`` scaled by the ratio of the sizes).
        window: side of the zoomed crop; ``None``: no zoom row.
        titles: one per map.
        kind: ``"row"`` or ``"column"``, for the titles.

    Returns:
        The figure.
    """
    maps = np.asarray(maps, dtype=np.float64)
    p = len(maps)
    if p == 0 or len(marks) != p:
        raise ConvscopeError(f"plot_filter_maps: {p} maps for {len(marks)} positions")
    img = _hwc(image)
    if centres is None:
        sy, sx = maps.shape[-2] / img.shape[0], maps.shape[-1] / img.shape[1]
        centres = [(int((y + 0.5) * sy), int((x + 0.5) * sx)) for y, x in marks]
    rows = 2 if window else 1
    fig, axes = plt.subplots(rows, p + 1, figsize=(2.1 * (p + 1), 2.2 * rows), squeeze=False)
    _grey_imshow(axes[0, 0], img, "positions")
    colours = vote_colours(p)
    for i, (y, x) in enumerate(marks):
        axes[0, 0].scatter([x], [y], s=30, facecolors="none", edgecolors=[colours[i]], lw=1.5)
        axes[0, 0].annotate(
            str(i), (x, y), color=colours[i], fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    for i in range(p):
        t = titles[i] if titles else f"{kind} {i} at {tuple(marks[i])}"
        _signed_map(axes[0, i + 1], maps[i], t, "entry of F")
        if window:
            _signed_map(
                axes[1, i + 1],
                _crop(maps[i], (int(centres[i][0]), int(centres[i][1])), window),
                f"zoom {window}x{window}",
                "entry of F",
            )
    if window:
        axes[1, 0].axis("off")
    fig.tight_layout()
    return fig


@styled
def plot_svd_pairs(
    S: np.ndarray,
    U: np.ndarray,
    V: np.ndarray,
    *,
    image: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """Seed 001 Fig. 5 / 12: singular values, eigen-inputs ``v_i`` and eigen-outputs ``u_i``.

    Args:
        S: ``(k,)`` singular values, decreasing.
        U: ``(k, *out_shape)`` eigen-outputs; image outputs ``(k, C, H, W)`` are drawn as
            maps, vector outputs (classifiers) as bars.
        V: ``(k, C, H, W)`` eigen-inputs.
        image: optional input image drawn first.
        title: the figure's title.

    Returns:
        The figure: one column per pair, eigen-input on top, eigen-output below.
    """
    S = np.asarray(S, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    k = len(S)
    if k == 0 or len(U) != k or len(V) != k:
        raise ConvscopeError(f"plot_svd_pairs: {k} values, {len(U)} U, {len(V)} V")
    lead = 2 if image is not None else 1
    fig, axes = plt.subplots(2, k + lead, figsize=(2.1 * (k + lead), 4.4), squeeze=False)
    ax = axes[0, 0]
    ax.semilogy(np.arange(1, k + 1), S, "o-", ms=3)
    ax.set_title("singular values", fontsize=8)
    ax.tick_params(labelsize=6)
    axes[1, 0].axis("off")
    axes[1, 0].text(
        0, 0.5, "\n".join(f"s{i + 1} = {s:.4g}" for i, s in enumerate(S)), fontsize=7, va="center"
    )
    if image is not None:
        _grey_imshow(axes[0, 1], _hwc(image), "image")
        axes[1, 1].axis("off")
    for i in range(k):
        _signed_map(axes[0, lead + i], V[i], f"v{i + 1} (eigen-input)", "entry (unit norm)")
        ax = axes[1, lead + i]
        if U[i].ndim >= 2:
            _signed_map(ax, U[i], f"u{i + 1} (eigen-output)", "entry (unit norm)")
        else:
            u = U[i].reshape(-1)
            ax.bar(np.arange(len(u)), u, color=np.where(u >= 0, "#d62728", "#1f77b4"))
            ax.set_title(f"u{i + 1} (eigen-output)", fontsize=8)
            ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@styled
def plot_attack(
    clean: np.ndarray,
    adversarial: np.ndarray,
    votes_clean: np.ndarray,
    votes_adversarial: np.ndarray,
    classes: tuple[int, int],
    names: Sequence[str],
    shares_clean: np.ndarray,
    shares_adversarial: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Seed 001 Fig. 10 (and Fig. 8, third column) for one image: before and after an attack.

    Top: the clean and attacked images with their vote maps and the pixels voting for
    the clean top-1 class and for the attacked top-1 class. Bottom: the share of the
    top-1 score per source, clean against attacked.

    Args:
        clean, adversarial: ``(H, W)`` or ``(H, W, 3)`` in [0, 1].
        votes_clean, votes_adversarial: ``(H, W)`` class per pixel, -1 where a pixel
            abstains (drawn dark grey, "no say (tied)" in the legend).
        classes: ``(clean top-1, attacked top-1)``.
        names: the sources (``"input"`` and layer groups).
        shares_clean, shares_adversarial: ``(L,)`` each source's share of its top-1 score.
        class_names: names of all classes (default: the indices).
        title: the figure's title.

    Returns:
        The figure.
    """
    cn = list(class_names) if class_names is not None else None

    def name(c: int) -> str:
        return cn[c] if cn is not None and 0 <= c < len(cn) else str(c)

    c0, c1 = (int(c) for c in classes)
    legend: list[int] = []
    for c in (c0, c1, *np.unique(votes_clean).tolist(), *np.unique(votes_adversarial).tolist()):
        if int(c) >= 0 and int(c) not in legend:
            legend.append(int(c))
    legend = legend[:20]
    colours = vote_colours(len(legend))
    fig = plt.figure(figsize=(9.0, 7.0))
    grid = fig.add_gridspec(3, 4, height_ratios=[1, 1, 1.2])
    for r, (img, v, label) in enumerate(
        ((clean, votes_clean, "clean"), (adversarial, votes_adversarial, "attacked"))
    ):
        ax = fig.add_subplot(grid[r, 0])
        _grey_imshow(ax, _hwc(img), label)
        ax = fig.add_subplot(grid[r, 1])
        _vote_map(ax, np.asarray(v), legend, colours)
        ax.set_title("votes", fontsize=8)
        for j, c in enumerate((c0, c1)):
            ax = fig.add_subplot(grid[r, 2 + j])
            ax.imshow(masked_image(img, v, c))
            ax.set_title(
                f"for {name(c)}: {100 * float((np.asarray(v) == c).mean()):.0f}%", fontsize=8
            )
            ax.axis("off")
    ax = fig.add_subplot(grid[2, :])
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, shares_clean, 0.4, label=f"clean (top-1 {name(c0)})", color="#1f77b4")
    ax.bar(
        pos + 0.2, shares_adversarial, 0.4, label=f"attacked (top-1 {name(c1)})", color="#d62728"
    )
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(pos, list(names), fontsize=7, rotation=30)
    ax.set_ylabel("share of the top-1 score", fontsize=8)
    ax.legend(fontsize=7)
    handles = _legend_handles(legend, colours, name, [votes_clean, votes_adversarial])
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.96),
        ncol=min(11, len(handles)),
        fontsize=7,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


@styled
def plot_histogram(
    edges: Sequence[float],
    counts: Sequence[int],
    *,
    xlabel: str,
    title: str = "",
    mean: float | None = None,
    percent: bool = True,
) -> Figure:
    """A histogram already counted (a dataset summary's), with its mean marked.

    Args:
        edges: ``(B + 1,)`` bin edges.
        counts: ``(B,)`` images per bin.
        xlabel: What is counted (with its unit).
        title: The figure's title.
        mean: Drawn as a red line and written in the legend.
        percent: Label the x axis in per cent (shares).

    Returns:
        The figure.
    """
    if len(edges) != len(counts) + 1 or not len(counts):
        raise ConvscopeError(f"plot_histogram: {len(edges)} edges for {len(counts)} counts")
    e = np.asarray(edges, dtype=np.float64)
    scale = 100.0 if percent else 1.0
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    ax.bar(scale * e[:-1], counts, width=scale * np.diff(e), align="edge", color="#4c72b0",
           edgecolor="white", linewidth=0.4)  # fmt: skip
    if mean is not None:
        ax.axvline(scale * mean, color="red", linewidth=1.2,
                   label=f"mean {scale * mean:.2f}{'%' if percent else ''}")  # fmt: skip
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel(xlabel + (" (%)" if percent else ""), fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_vote_frequency(frequency: np.ndarray, *, title: str = "") -> Figure:
    """The fraction of images in which each pixel votes for the image's top-1 class.

    Args:
        frequency: ``(H, W)`` values in [0, 1].
        title: The figure's title.

    Returns:
        The map with its colour bar (0 to 100 %).
    """
    f = np.asarray(frequency, dtype=np.float64)
    if f.ndim != 2:
        raise ConvscopeError(f"plot_vote_frequency takes an (H, W) map; got shape {f.shape}")
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(100 * f, cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("images voting for the top-1 class (%)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
