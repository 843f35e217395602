"""``convscope kernels apply``: each kernel's effect on a photo, and a contact sheet.

The filtering is :func:`convscope.kernels.filter_image`, the sheet
:func:`convscope.report.figures.plot_contact_sheet`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from convscope import kernels as kb
from convscope.runs.inputs import ImageSource, expand_images, load_input, parse_size
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult, plan_outputs

__all__ = ["run"]


def _photo(src: ImageSource, invert: bool, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8, the way the kernels see a photo."""
    x, _ = load_input(src, invert=invert, size=size)
    img = np.rint(np.moveaxis(x[0].numpy(), 0, -1) * 255).astype(np.uint8)
    return img[..., 0] if img.shape[-1] == 1 else img


def run(
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kernels: Sequence[str] | None = None,
    invert: bool = False,
    size: str | tuple[int, int] | None = None,
    overwrite: bool = False,
    formats: Sequence[str] = ("png",),
    progress: bool = False,
) -> RunResult:
    """Filter a photo with each kernel: one PNG per kernel and ``contact_sheet.png``.

    Args:
        image: A file, ``sample:NAME``, a folder or a glob (several: one folder each).
        out: The folder to write into.
        kernels: Registered kernel names (default: the GFNN bank of 40).
        invert, size, overwrite, formats, progress: As the shared options
            (``formats`` applies to the contact sheet; the filtered images are PNGs).

    Returns:
        The :class:`~convscope.runs.RunResult`; ``files`` starts with the per-kernel
        PNGs (``kernel_<name>.png``) in the order of ``kernels``.

    Raises:
        ConvscopeError: An unknown kernel name, a bad image or ``--out`` (all before
            anything is written).
    """
    names = list(kernels) if kernels else [k.name for k in kb.gfnn_bank()]
    ks = [kb.get(n) for n in names]
    hw = parse_size(size)
    images = expand_images(image)
    pictures = [f"kernel_{k.name}.png" for k in ks]
    plan = plan_outputs("kernels", images, out, ["contact_sheet.png"], overwrite=overwrite,
                        formats=formats, raster=pictures)  # fmt: skip

    def one(src: ImageSource, o: Outputs) -> RunResult:
        from convscope.io import save_png
        from convscope.report.figures import plot_contact_sheet

        img = _photo(src, invert, hw)
        tiles, titles = [img], ["original"]
        for k, name in zip(ks, pictures, strict=True):
            res = kb.filter_image(img, k)
            save_png(o.path(name), res)
            o.file(name)
            tiles.append(res)
            titles.append(k.name if k.index is None else f"{k.index}: {k.name}")
        o.figure("contact_sheet.png", plot_contact_sheet(tiles, titles))
        metrics = {"image": src.label, "kernels": names, "shape": list(img.shape)}
        return RunResult(o.folder, list(o.written), metrics)

    return plan.run(one, progress=progress, title="kernels applied")
