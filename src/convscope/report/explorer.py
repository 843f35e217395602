"""The explorer page: move the pointer over an image, see ``F``'s row and column there.

:func:`write_explorer_page` draws an :class:`~convscope.linear.explorer.ExplorerData`
(computed by :func:`convscope.linear.explorer.explore`) as a static HTML page, with no
server and nothing from the network, that shows the image and, under the pointer, the
two filters of ``y = F(x0) x + r(x0)`` at that pixel (the column ``F e_p`` and the row
``F^T e_q``), plus the top singular pairs of ``F`` as images. This module only draws:
it takes NumPy arrays and writes pictures and JSON; the page looks tiles up.

- **image-to-image** models: each filter's window is one tile of a sprite sheet
  (``columns.png``, ``rows.png``), each tile coloured on its own symmetric scale; the
  page says how much of each filter's energy the window keeps.
- **classifiers**: the rows of the top classes as one strip (``rows.png``), and under
  the pointer the column restricted to those classes as bars.

With several input channels the page has a selector: one input channel (R, G, B for
three channels) or ``sum``; image-to-image models with several output channels get a
second one for the output channel. Every choice has its own sprite sheets, loaded when
chosen. On a subsampled grid the pointer snaps to the nearest computed pixel; the page
says so.

Files written into ``out_dir``: ``explorer.html`` (the page, with the index inlined),
``explorer.json`` (the same index, format ``convscope-explorer-v1``: grid, tile layout
and the numbers shown), ``input.png``, ``output.png`` (image-to-image), the sprite sheets
(``columns.png`` and ``rows.png`` for the sums, ``columns_<i>_<o>.png`` and
``rows_<i>_<o>.png`` for the other channel choices), ``eigen_input_<i>.png`` /
``eigen_output_<i>.png``, and ``metrics.json``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convscope.errors import ConvscopeError
from convscope.io import atomic_write_bytes, save_png, write_json

if TYPE_CHECKING:  # only the type: importing convscope.linear loads the interpreter
    from convscope.linear.explorer import ChannelViews, ExplorerData

__all__ = [
    "EXPLORER_FORMAT",
    "write_explorer_page",
]

EXPLORER_FORMAT = "convscope-explorer-v1"
"""The ``format`` field of ``explorer.json``."""

# Tiles coloured at once: bounds the float scratch of a large sprite sheet.
_TILE_CHUNK = 256


# -- drawing ------------------------------------------------------------------------------


def _diverging_lut() -> np.ndarray:
    """(256, 3) uint8: blue for negative, white for zero, red for positive."""
    from matplotlib import colormaps

    lut = colormaps["RdBu_r"](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(lut * 255.0).astype(np.uint8)


def _signed_rgb(maps: np.ndarray, peaks: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Colour each map on its own symmetric scale ``[-peak, peak]``.

    Args:
        maps: ``(B, h, w)`` float.
        peaks: ``(B,)`` the value drawn at full colour; 0 draws the map white.
        lut: ``(256, 3)`` from :func:`_diverging_lut`.

    Returns:
        ``(B, h, w, 3)`` uint8.
    """
    safe = np.where(peaks > 0, peaks, 1.0).reshape(-1, 1, 1)
    t = np.clip(maps / safe, -1.0, 1.0)
    idx = np.round((t + 1.0) * 127.5).astype(np.int64)
    return lut[idx]


def _display(field: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """An eigen-vector or filter ``(C, h, w)`` as an RGB picture ``(h, w, 3)`` uint8.

    Three channels are drawn as colour around mid-grey (``0.5 + 0.5 v / max|v|``), so
    the colour of the pattern shows; any other count is summed and drawn signed.
    """
    if field.shape[0] == 3:
        peak = float(np.abs(field).max()) or 1.0
        return np.round((0.5 + 0.5 * field.transpose(1, 2, 0) / peak) * 255).astype(np.uint8)
    flat = field.sum(axis=0)
    return _signed_rgb(flat[None], np.array([np.abs(flat).max()]), lut)[0]


def _picture(x: np.ndarray) -> np.ndarray:
    """An image ``(C, h, w)`` for display: [0, 1] clipped, or min-max when far outside."""
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.05 or hi > 1.05:  # not a [0, 1] image: stretch rather than clip it all
        x = (x - lo) / ((hi - lo) or 1.0)
    x = np.clip(x, 0.0, 1.0)
    if x.shape[0] == 1:
        return x[0]
    if x.shape[0] == 3:
        return x.transpose(1, 2, 0)
    return x.mean(axis=0)


def _to_rgb(pic: np.ndarray) -> np.ndarray:
    """(h, w) grey or (h, w, 3) in [0, 1] -> (h, w, 3) uint8."""
    if pic.ndim == 2:
        pic = np.repeat(pic[:, :, None], 3, axis=2)
    return np.round(pic * 255.0).astype(np.uint8)


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    save_png(path, np.ascontiguousarray(rgb))


def _sheet(maps: np.ndarray, peaks: np.ndarray, per_row: int, lut: np.ndarray) -> np.ndarray:
    """``(G, h, w)`` maps, each on its own colour scale, as one sprite sheet
    ``(rows * h, per_row * w, 3)``, row-major; white where the last row is short."""
    g, h, w = maps.shape
    rows = math.ceil(g / per_row)
    sheet = np.full((rows * h, per_row * w, 3), 255, dtype=np.uint8)
    for start in range(0, g, _TILE_CHUNK):
        stop = min(g, start + _TILE_CHUNK)
        tiles = _signed_rgb(maps[start:stop], peaks[start:stop], lut)
        for k in range(start, stop):
            r, c = divmod(k, per_row)
            sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = tiles[k - start]
    return sheet


def _channel_names(n: int) -> list[str]:
    """Labels of ``n`` channels: R, G, B for three, else their indices."""
    return ["R", "G", "B"] if n == 3 else [str(k) for k in range(n)]


def _channels_index(views: ChannelViews) -> dict[str, Any]:
    return {
        "input": views.n_in,
        "output": views.n_out,
        "input_names": _channel_names(views.n_in),
        "output_names": _channel_names(views.n_out),
        "inputs": views.inputs,
        "outputs": views.outputs,
    }


def _view_file(kind: str, i: str, o: str) -> str:
    """Sprite sheet of one channel choice: ``columns.png`` for the sums."""
    return f"{kind}.png" if (i, o) == ("sum", "sum") else f"{kind}_{i}_{o}.png"


def _fmt(v: float) -> float:
    """A number for JSON with the shortest digits that give back the same float32 (the
    page formats it; Python reads it back): half the size of a float64 repr."""
    return float(str(np.float32(v)))


def _fmts(values: np.ndarray) -> list[float]:
    return [_fmt(v) for v in values]


# -- the page -----------------------------------------------------------------------------


def _image_page(data: ExplorerData, index: dict[str, Any], out: Path, lut: np.ndarray) -> None:
    """Sprite sheets of the rows and columns, one pair per channel choice, and their index."""
    geo, tile, column_tile = data.geometry, data.tile, data.column_tile
    if geo is None or tile is None or column_tile is None:
        raise ConvscopeError("explorer data of kind 'image' lacks its geometry or tile")
    if data.column_origin is None or data.row_origin is None:
        raise ConvscopeError("explorer data of kind 'image' lacks its window origins")
    per_row = len(data.xs)
    specs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for i, o in data.views.keys:
        view = data.filters[i, o]
        for kind, f in (("columns", view.columns), ("rows", view.rows)):
            _save_rgb(out / _view_file(kind, i, o), _sheet(f.windows, f.peak, per_row, lut))
        cols, rows = view.columns, view.rows
        specs[i, o] = {
            "columns": {
                "sprite": _view_file("columns", i, o),
                "peak": _fmts(cols.peak),
                "sum": _fmts(cols.total),
                "at_target": _fmts(cols.at),
                "kept": _fmts(cols.kept),
                "min_kept": _fmt(cols.kept.min()),
            },
            "rows": {
                "sprite": _view_file("rows", i, o),
                "peak": _fmts(rows.peak),
                "sum": _fmts(rows.total),
                "at_pixel": _fmts(rows.at),
                "kept": _fmts(rows.kept),
                "min_kept": _fmt(rows.kept.min()),
            },
        }
    _save_rgb(out / "output.png", _to_rgb(_picture(data.output)))
    default = specs.pop(("sum", "sum"))
    index.update(
        kind="image",
        output={"file": "output.png", "shape": list(data.out_shape)},
        scale=list(geo.scale),
        tile=tile,
        targets=[list(q) for q in data.targets],
        columns={
            "tile_shape": list(column_tile),
            "per_row": per_row,
            "origin": data.column_origin.tolist(),
            **default["columns"],
        },
        rows={
            "tile_shape": [tile, tile],
            "per_row": per_row,
            "origin": data.row_origin.tolist(),
            **default["rows"],
        },
        channels=_channels_index(data.views),
        views={f"{i},{o}": spec for (i, o), spec in specs.items()},
        min_kept={
            kind: min([default[kind]["min_kept"], *(v[kind]["min_kept"] for v in specs.values())])
            for kind in ("columns", "rows")
        },
    )


def _classifier_page(data: ExplorerData, index: dict[str, Any], out: Path, lut: np.ndarray) -> None:
    """The top classes' rows as a strip per channel choice, and the columns' bars."""
    _, h, w = data.in_shape
    n = len(data.classes)
    specs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for i, o in data.views.keys:
        cr = data.class_rows[i, o]
        _save_rgb(out / _view_file("rows", i, o), _sheet(cr.rows, cr.peak, n, lut))
        values = [_fmts(col) for col in cr.columns]
        specs[i, o] = {
            "columns": {
                "values": values,
                "peak": max((abs(v) for r in values for v in r), default=0.0),
            },
            "rows": {
                "sprite": _view_file("rows", i, o),
                "peak": _fmts(cr.peak),
                "sum": _fmts(cr.total),
            },
        }
    classes = [
        {"index": cls, "name": data.class_names[cls], "score": float(data.output[cls])}
        for cls in data.classes
    ]
    default = specs.pop(("sum", "sum"))
    index.update(
        kind="classifier",
        output={"shape": list(data.out_shape)},
        classes=classes,
        columns=default["columns"],
        rows={"tile_shape": [h, w], "per_row": n, **default["rows"]},
        channels=_channels_index(data.views),
        views={f"{i},{o}": spec for (i, o), spec in specs.items()},
    )


def _svd_page(data: ExplorerData, index: dict[str, Any], out: Path, lut: np.ndarray) -> None:
    """Eigen-input pictures, and eigen-output pictures (image) or top classes (classifier)."""
    S, U, V = data.singular_values, data.eigen_outputs, data.eigen_inputs
    if data.svd_method == "none" or len(S) == 0:
        index["svd"] = {"method": "none", "values": [], "pairs": []}
        return
    pairs: list[dict[str, Any]] = []
    for i in range(len(S)):
        _save_rgb(out / f"eigen_input_{i}.png", _display(V[i], lut))
        pair: dict[str, Any] = {"sigma": float(S[i]), "input": f"eigen_input_{i}.png"}
        if data.kind == "image":
            _save_rgb(out / f"eigen_output_{i}.png", _display(U[i], lut))
            pair["output"] = f"eigen_output_{i}.png"
        else:
            top = np.argsort(-np.abs(U[i]))[:3]
            pair["classes"] = [
                {"index": int(j), "name": data.class_names[j], "weight": float(U[i][j])}
                for j in top
            ]
        pairs.append(pair)
    index["svd"] = {"method": data.svd_method, "values": [float(v) for v in S], "pairs": pairs}


def _render(index: dict[str, Any]) -> str:
    import jinja2

    from convscope import __version__

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("convscope.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("explorer.html.j2").render(idx=index, version=__version__)


def write_explorer_page(
    data: ExplorerData, out_dir: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draw the explorer page of ``data`` into ``out_dir``.

    Args:
        data: From :func:`convscope.linear.explorer.explore`.
        out_dir: Folder for the page and its files (created).
        title: Page title (default: the model's class name).

    Returns:
        The path of ``explorer.html``.

    Raises:
        ConvscopeError: ``data`` of an unknown kind or missing its image-to-image layout.
    """
    started = time.perf_counter()
    if data.kind not in ("image", "classifier"):
        raise ConvscopeError(f"explorer data kind must be image or classifier; got {data.kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lut = _diverging_lut()
    c, h, w = data.in_shape
    index: dict[str, Any] = {
        "format": EXPLORER_FORMAT,
        "title": title or data.model_name,
        "mode": data.mode,
        "input": {"file": "input.png", "shape": [c, h, w]},
        "grid": {
            "ys": data.ys,
            "xs": data.xs,
            "stride": data.stride,
            "count": data.grid_count,
            "full": data.stride == 1,
        },
    }
    _save_rgb(out / "input.png", _to_rgb(_picture(data.image)))
    if data.kind == "image":
        _image_page(data, index, out, lut)
        index["probes"] = {
            "count": data.probes,
            "packed": {"columns": data.packed[0], "rows": data.packed[1]},
        }
    else:
        _classifier_page(data, index, out, lut)
    _svd_page(data, index, out, lut)
    # Computing and drawing together: the time the page took.
    index["seconds"] = round(data.seconds + time.perf_counter() - started, 2)
    write_json(out / "explorer.json", index)
    write_json(
        out / "metrics.json",
        {
            "kind": index["kind"],
            "mode": data.mode,
            "input_shape": [c, h, w],
            "output_shape": list(data.out_shape),
            "grid": {k: index["grid"][k] for k in ("stride", "count", "full")},
            "singular_values": index["svd"]["values"],
            "svd_method": index["svd"]["method"],
            "seconds": index["seconds"],
            **({"probes": index["probes"]} if "probes" in index else {}),
        },
    )
    page = out / "explorer.html"
    atomic_write_bytes(page, _render(index).encode("utf-8"))
    return page
