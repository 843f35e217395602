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


def is_signed(k: kb.Kernel) -> bool:
    """A kernel whose weights sum to zero (a derivative): its response is signed around 0.

    Kernels that sum to one (identity, blurs, sharpening, emboss) give back a picture.
    """
    w = np.asarray(k.weight, dtype=np.float64)
    return bool(abs(w.sum()) <= 1e-9 * max(1.0, float(np.abs(w).sum())))


def _limit(res: np.ndarray, k: kb.Kernel) -> float:
    """The scale of a signed response: its largest ``|value|`` away from the border.

    Zero padding puts a dark frame around the photo, so the border's responses are
    edges of the frame, often the largest of all; they saturate instead of setting
    the scale (the whole map when it is too small to have an inside).
    """
    p = k.weight.shape[0] // 2
    inside = res[p : res.shape[0] - p, p : res.shape[1] - p] if p else res
    return float(np.abs(inside if inside.size else res).max()) or 1.0


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

    A kernel whose weights sum to zero (edges, Laplacians) answers with values of either
    sign around 0: it is drawn on a diverging scale centred at 0 (blue < 0, white at 0,
    red > 0, symmetric about 0; for a colour photo the mean of its channels' responses),
    with a colour bar on the contact sheet; its PNG uses the same colours, and
    ``metrics["display"][name]["limit"]`` is the value drawn full red (its negative full
    blue): the largest ``|response|`` away from the border, where zero padding's dark
    frame gives larger ones, which saturate. Any other kernel gives back a picture,
    shown as a viewer shows it: 0..255, with the share of values clipped to that range
    in ``metrics["display"]``.

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
        from convscope.report.figures import plot_contact_sheet, signed_colours

        img = _photo(src, invert, hw)
        colour = img.ndim == 3
        tiles: list[np.ndarray] = [img]
        titles, signed = ["original"], [False]
        limits: list[float | None] = [None]
        display: dict[str, dict[str, float | str]] = {}
        for k, name in zip(ks, pictures, strict=True):
            res = kb.filter_image(img, k, clip=False)
            title = k.name if k.index is None else f"{k.index}: {k.name}"
            lim: float | None = None
            if is_signed(k):
                res = res.mean(-1) if colour else res
                lim = _limit(res, k)
                rgb, lim = signed_colours(res, lim)
                save_png(o.path(name), rgb)
                display[k.name] = {"kind": "signed", "limit": lim}
            else:
                shown = np.clip(np.rint(res), 0, 255).astype(np.uint8)
                save_png(o.path(name), shown)
                clipped = float(((res < -0.5) | (res > 255.5)).mean())
                display[k.name] = {"kind": "picture", "clipped": clipped}
                res = shown
            o.file(name)
            tiles.append(res)
            limits.append(lim)
            titles.append(title)
            signed.append(display[k.name]["kind"] == "signed")
        o.figure(
            "contact_sheet.png",
            plot_contact_sheet(
                tiles,
                titles,
                signed=signed,
                unit="response",
                limits=limits,
                title="signed responses: the mean over R, G, B" if colour and any(signed) else "",
            ),
        )
        metrics = {"image": src.label, "kernels": names, "shape": list(img.shape),
                   "display": display}  # fmt: skip
        return RunResult(o.folder, list(o.written), metrics)

    return plan.run(one, progress=progress, title="kernels applied")
