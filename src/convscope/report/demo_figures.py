"""Figures only the demo draws (``convscope demo``). Drawing only: arrays in, figures out.

- :func:`plot_top_singular_pairs`: one test digit, and for each model the top singular
  pair of its frozen system ``F`` (seed 001 Fig. 5 at ``k = 1``): the eigen-input ``v1``
  as a signed map (blue < 0, white at 0, red > 0, with a colour bar) beside the
  eigen-output ``u1`` as bars over the classes.

Every function draws in the package's style (:func:`convscope.report.figures.styled`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from convscope.errors import ConvscopeError
from convscope.report.figures import _grey_imshow, _signed_imshow, styled

__all__ = ["plot_top_singular_pairs"]


@styled
def plot_top_singular_pairs(
    image: np.ndarray,
    pairs: Mapping[str, tuple[float, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    *,
    title: str = "",
) -> Figure:
    """The image, then one row per model: ``v1`` (what input ``F`` amplifies most) and ``u1``.

    Args:
        image: ``(H, W)`` grey image in [0, 1], the ``x0`` every system is frozen at.
        pairs: model label -> ``(s1, u1, v1)``: the largest singular value, its
            eigen-output ``(classes,)`` and its eigen-input ``(H, W)``.
        class_names: one name per output, for the bars' axis.
        title: the figure's title.

    Returns:
        The figure: ``len(pairs)`` rows of image | ``v1`` (a diverging map centred at
        zero, with its colour bar) | ``u1``.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or not pairs:
        raise ConvscopeError(
            f"plot_top_singular_pairs: needs an (H, W) image and at least one model; got "
            f"shape {img.shape} and {len(pairs)} models"
        )
    n = len(pairs)
    fig, axes = plt.subplots(
        n, 3, figsize=(8.4, 2.5 * n + 0.4), squeeze=False, gridspec_kw={"width_ratios": [1, 1.2, 2]}
    )
    for row, (label, (s1, u1, v1)) in enumerate(pairs.items()):
        u = np.asarray(u1, dtype=np.float64).reshape(-1)
        v = np.asarray(v1, dtype=np.float64)
        if v.shape != img.shape or len(u) != len(class_names):
            raise ConvscopeError(
                f"plot_top_singular_pairs: {label}'s v1 is {v.shape} for a {img.shape} image, "
                f"u1 has {len(u)} entries for {len(class_names)} classes"
            )
        # a singular pair is defined up to a joint sign: show u1's largest entry positive
        if u[np.argmax(np.abs(u))] < 0:
            u, v = -u, -v
        _grey_imshow(axes[row, 0], img, f"{label}: x0")
        _signed_imshow(axes[row, 1], v, f"v1 (eigen-input), s1 = {s1:.3g}",
                       label="pixel weight (unit norm)")  # fmt: skip
        ax = axes[row, 2]
        ax.bar(np.arange(len(u)), u, color=np.where(u >= 0, "#d62728", "#1f77b4"))
        ax.axhline(0.0, color="#444", lw=0.6)
        ax.set_xticks(np.arange(len(u)), list(class_names), fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title("u1 (eigen-output): how F x moves each class score", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
