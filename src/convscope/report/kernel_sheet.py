"""The run behind ``convscope kernels apply``: each kernel's effect on a photo.

The filtering is :func:`convscope.kernels.filter_image`, the sheet
:func:`convscope.report.figures.plot_contact_sheet`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convscope import kernels as kb
from convscope.io import save_png
from convscope.report.figures import plot_contact_sheet, save_figure

__all__ = ["write_kernel_sheet"]


def _photo(image: str | os.PathLike[str]) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 from a file or ``sample:NAME``."""
    from convscope.data import load_image, sample_photo

    if str(image).startswith("sample:"):
        return sample_photo(str(image)[len("sample:") :])
    x = load_image(image)[0].numpy()
    img = np.rint(np.moveaxis(x, 0, -1) * 255).astype(np.uint8)
    return img[..., 0] if img.shape[-1] == 1 else img


def write_kernel_sheet(
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    kernels: Sequence[str] | None = None,
) -> list[Path]:
    """Filter a photo with each kernel: one PNG per kernel and ``contact_sheet.png``.

    Args:
        image: A PNG/JPEG file, or ``"sample:NAME"`` for a scikit-image photo.
        out: Folder to write into (created).
        kernels: Registered kernel names (default: the GFNN bank of 40).

    Returns:
        The per-kernel PNGs (``kernel_<name>.png``), in the order of ``kernels``;
        the contact sheet (the photo, then every result) is ``out/contact_sheet.png``.

    Raises:
        ConvscopeError: An unknown kernel name (before anything is written) or an
            image that cannot be read.
    """
    img = _photo(image)
    names = list(kernels) if kernels else [k.name for k in kb.gfnn_bank()]
    ks = [kb.get(n) for n in names]  # fail before writing anything
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiles, titles, written = [img], ["original"], []
    for k in ks:
        res = kb.filter_image(img, k)
        written.append(save_png(out / f"kernel_{k.name}.png", res))
        tiles.append(res)
        titles.append(k.name if k.index is None else f"{k.index}: {k.name}")
    save_figure(plot_contact_sheet(tiles, titles), out / "contact_sheet.png")
    return written
