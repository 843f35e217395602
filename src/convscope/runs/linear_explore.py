"""``convscope linear explore``: a static HTML page showing F's row and column under the pointer.

The numbers come from :func:`convscope.linear.explorer.explore`, the page from
:func:`convscope.report.explorer.write_explorer_page`.
"""

from __future__ import annotations

import os

from typing_extensions import Unpack

from convscope.errors import ConvscopeError
from convscope.runs.inputs import ImageSource
from convscope.runs.linear_setup import check_mode
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["MAX_SIDE", "OWNED", "run"]

OWNED = ("explorer.html", "explorer.json", "metrics.json")
RASTER = ("input.png", "output.png")
MAX_SIDE = 64
"""Without ``--size`` (and a model with no input size) the longer side is shrunk to this:
every grid pixel's row and column costs a pass through the model."""


def run(
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "freeze",
    max_pixels: int = 1024,
    k_svd: int = 4,
    tile: int | None = None,
    per_channel: bool = True,
    pack: bool = True,
    **options: Unpack[Options],
) -> RunResult:
    """Write the explorer page: F's row and column under the pointer, and its SVD.

    Args:
        model, image, out, mode, **options: As in
            :func:`convscope.runs.linear_residual.run` (``espcn`` names the trained x4
            ESPCN kept in the repository).
        max_pixels: Compute filters on a grid of at most this many pixels.
        k_svd: Singular pairs shown.
        tile: Filter window in input pixels, odd (default: automatic).
        per_channel: Colour models: tiles for every channel, or only their sums.
        pack: Share probes among pixels whose filters cannot overlap, where exact
            (:mod:`convscope.linear.packing`).

    Returns:
        The :class:`~convscope.runs.RunResult` (``result``: the
        :class:`~convscope.linear.explorer.ExplorerData`); its metrics are
        ``metrics.json``'s plus ``page`` (the HTML file) and ``shape`` (the (H, W) the
        filters were computed at).
    """
    check_mode(mode)
    if max_pixels < 1:
        raise ConvscopeError(f"--max-pixels must be >= 1; got {max_pixels}")
    if tile is not None and (tile < 1 or tile % 2 == 0):
        raise ConvscopeError(f"--tile must be a positive odd number; got {tile}")
    owned = (*OWNED, *RASTER)
    s = start("explore", model, image, out, owned, options)
    return s.plan.run(
        lambda src, o: _one(s, src, o, mode, max_pixels, k_svd, tile, per_channel, pack),
        progress=s.progress,
        title=f"{s.model.short_name}: explorer pages",
    )


def _one(
    s: Started,
    src: ImageSource,
    o: Outputs,
    mode: str,
    max_pixels: int,
    k_svd: int,
    tile: int | None,
    per_channel: bool,
    pack: bool,
) -> RunResult:
    import json

    from convscope.data import _resize
    from convscope.linear.explorer import explore
    from convscope.report.explorer import write_explorer_page

    x, notes = s.read(src)
    h, w = x.shape[-2:]
    if s.size is None and s.model.info.get("input_size") is None and max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        x = _resize(x, (max(1, round(h * scale)), max(1, round(w * scale))))
        notes["shape"] = list(x.shape[1:])
    try:
        data = explore(s.model.module, x, mode=mode, tile=tile, k_svd=k_svd,
                       max_pixels=max_pixels, per_channel=per_channel, pack=pack,
                       class_names=s.model.class_names, progress=s.progress)  # fmt: skip
    except RuntimeError as e:  # the model refuses this input, e.g. a size it cannot take
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConvscopeError(
            f"{s.model.name} cannot run on {src.label} of shape {tuple(x.shape)}: {first} "
            "(try --size)"
        ) from None
    label = s.model.info.get("description") or s.model.name
    page = write_explorer_page(data, o.folder, title=f"{label} at {os.path.basename(src.label)}")
    metrics = json.loads((o.folder / "metrics.json").read_text(encoding="utf-8"))
    metrics.update(s.head(notes), page=str(page), shape=[int(x.shape[-2]), int(x.shape[-1])])
    o.json("metrics.json", metrics)
    o.file("explorer.html")
    o.file("explorer.json")
    return RunResult(o.folder, o.finished(), metrics, result=data)
