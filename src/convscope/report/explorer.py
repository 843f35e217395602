"""The explorer page: move the pointer over an image, see ``F``'s row and column there.

:func:`write_explorer` freezes a model at one image with the linear interpreter
(:class:`convscope.linear.LinearInterpreter`) and writes a static HTML page, with no
server and nothing from the network, that shows the image and, under the pointer, the
two filters of ``y = F(x0) x + r(x0)`` at that pixel:

- the **column** of ``F`` (projective filter): what a unit impulse at the pixel does to
  the output, ``F e_p``;
- the **row** of ``F`` (receptive filter): how every input pixel weighs into the output
  at the position that corresponds to the pixel, ``F^T e_q``;

plus the top singular pairs of ``F`` (eigen-inputs and eigen-outputs) as images.

Everything is computed here, in batches, and stored next to the page: the page only looks
tiles up. Two kinds of model are supported:

- **image-to-image** (output ``(C', H', W')``, e.g. super-resolution with ``H' = s H``):
  the pointer position maps between the input grid and the output grid by the ratio of
  their sizes. Each filter is cropped to a window around its pixel (rows: ``tile x tile``
  input pixels; columns: the same span in output pixels) and stored as one tile of a
  sprite sheet (``columns.png``, ``rows.png``), each tile coloured on its own symmetric
  scale. The page says how much of each filter's energy the window keeps.
- **classifier** (output ``(K,)``): a row is a whole input image per class, so the page
  shows the rows of the top classes (one strip ``rows.png``), and under the pointer the column
  restricted to those classes, the class-score vector ``F e_p`` as bars. Column entries
  are read off the rows (``(F e_p)_c = (F^T e_c)_p``), so they cost nothing extra.

Channels. With several input channels the page has a selector: one input channel (R, G,
B for three channels) or ``sum``; image-to-image models with several output channels get
a second one for the output channel. For input channel ``i`` and output channel ``o`` the
column at ``p`` is ``F[(o, .), (i, p)]`` and the row at ``q`` is ``F[(o, q), (i, .)]``;
``sum`` adds the filters of every channel: the column for an impulse in every input
channel at once (``sum_i F e_(i,p)``), the row of the sum of the output channels. Every
choice has its own precomputed tiles (a sprite sheet per choice, loaded when chosen).
``per_channel=False`` computes only the sums (the probes per pixel drop from ``C`` to 1
for columns and from ``C'`` to 1 for rows). On images larger than ``max_pixels`` the
filters are computed on every ``stride``-th pixel only and the pointer snaps to the
nearest computed pixel; the page says so.

Files written into ``out_dir``: ``explorer.html`` (the page, with the index inlined),
``explorer.json`` (the same index: grid, tile layout and the numbers shown),
``input.png``, ``output.png`` (image-to-image), the sprite sheets (``columns.png`` and
``rows.png`` for the sums, ``columns_<i>_<o>.png`` and ``rows_<i>_<o>.png`` for the other
channel choices), ``eigen_input_<i>.png`` / ``eigen_output_<i>.png``, and ``metrics.json``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.io import atomic_write_bytes, save_png, write_json

__all__ = [
    "ESPCN_CHECKPOINT",
    "EXPLORER_FORMAT",
    "explorer_image",
    "pixel_grid",
    "trained_espcn_checkpoint",
    "write_explorer",
]

EXPLORER_FORMAT = "convscope-explorer-v1"
"""The ``format`` field of ``explorer.json``."""

ESPCN_CHECKPOINT = Path("experiments") / "results" / "espcn" / "espcn_x4.pt"
"""The trained ESPCN x4 checkpoint, relative to the repository root (``--model espcn``)."""

# Filters whose every entry is below this fraction of their peak are treated as zero
# when the window size is chosen automatically (rounding noise must not widen it).
_SUPPORT_RTOL = 1e-4
# An automatic window never exceeds this many input pixels a side: a model whose filters
# span the whole image still gets a page of reasonable size (the kept energy says so).
_MAX_AUTO_TILE = 41
# Above this many entries F is not materialized for an exact SVD (64 MiB in float32).
_MAX_DENSE = 2**24


# -- the pixel grid ---------------------------------------------------------------------


def pixel_grid(height: int, width: int, max_pixels: int) -> tuple[list[int], list[int], int]:
    """The input pixels filters are computed at: every ``stride``-th row and column.

    Args:
        height, width: Input size.
        max_pixels: At most about this many grid pixels; ``stride`` is the smallest
            integer with ``ceil(H / stride) * ceil(W / stride) <= max_pixels``.

    Returns:
        ``(ys, xs, stride)``: grid rows and columns, each starting at ``stride // 2`` so
        the grid pixels sit in the middle of the blocks they stand for.

    Raises:
        ConvscopeError: ``max_pixels < 1``.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConvscopeError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    stride = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    while math.ceil(height / stride) * math.ceil(width / stride) > max_pixels:
        stride += 1
    off = stride // 2
    ys = list(range(min(off, height - 1), height, stride))
    xs = list(range(min(off, width - 1), width, stride))
    return ys, xs, stride


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


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    save_png(path, np.ascontiguousarray(rgb))


def _sprite(tiles: np.ndarray, per_row: int) -> np.ndarray:
    """``(G, h, w, 3)`` tiles -> one ``(rows * h, per_row * w, 3)`` sheet, row-major."""
    g, h, w, _ = tiles.shape
    rows = math.ceil(g / per_row)
    sheet = np.full((rows * h, per_row * w, 3), 255, dtype=np.uint8)
    for k in range(g):
        r, c = divmod(k, per_row)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = tiles[k]
    return sheet


def _crop(maps: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int, w: int) -> np.ndarray:
    """Windows ``maps[b, y0[b]:y0[b]+h, x0[b]:x0[b]+w]``, zero outside the map."""
    b, mh, mw = maps.shape
    padded = np.zeros((b, mh + 2 * h, mw + 2 * w), dtype=maps.dtype)
    padded[:, h : h + mh, w : w + mw] = maps
    out = np.empty((b, h, w), dtype=maps.dtype)
    for i in range(b):
        ty, tx = int(y0[i]) + h, int(x0[i]) + w
        out[i] = padded[i, ty : ty + h, tx : tx + w]
    return out


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5)


# -- the filters --------------------------------------------------------------------------


@dataclass
class _Geometry:
    """How input pixels map to output positions for an image-to-image model."""

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        return (self.out_hw[0] / self.in_hw[0], self.out_hw[1] / self.in_hw[1])

    def target(self, y: int, x: int) -> tuple[int, int]:
        """The output pixel whose row is shown for input pixel ``(y, x)``: the one under
        the input pixel's centre (for an x4 upscaler, ``(4 y + 2, 4 x + 2)``)."""
        sy, sx = self.scale
        qy = min(self.out_hw[0] - 1, math.floor((y + 0.5) * sy))
        qx = min(self.out_hw[1] - 1, math.floor((x + 0.5) * sx))
        return qy, qx

    def column_origin(self, y: int, x: int, th: int, tw: int) -> tuple[int, int]:
        """Top-left output pixel of a ``th x tw`` window centred on input pixel ``(y, x)``."""
        sy, sx = self.scale
        cy, cx = (y + 0.5) * sy - 0.5, (x + 0.5) * sx - 0.5
        return _round_half_up(cy - (th - 1) / 2), _round_half_up(cx - (tw - 1) / 2)


def _impulses(
    shape: tuple[int, ...], positions: Sequence[tuple[int, int]], like: torch.Tensor
) -> torch.Tensor:
    """``(B, *shape)`` with a 1 in every channel at each ``(y, x)`` and 0 elsewhere."""
    e = torch.zeros((len(positions), *shape), dtype=like.dtype, device=like.device)
    for b, (y, x) in enumerate(positions):
        e[b, :, y, x] = 1
    return e


def _columns(li: Any, positions: Sequence[tuple[int, int]], batch_size: int) -> np.ndarray:
    """``(B, H', W')`` columns for impulses in every input channel, output channels summed.

    For a one-channel input and output this is exactly ``li.columns`` of the flat indices.
    """
    e = _impulses(li.in_shape, positions, li.x0)
    out = li.linear(e, batch_size=batch_size)
    return out.sum(dim=1).detach().cpu().numpy()


def _rows(li: Any, targets: Sequence[tuple[int, int]], batch_size: int) -> np.ndarray:
    """``(B, H, W)`` rows of the output channels' sum at each target, input channels summed."""
    e = _impulses(li.out_shape, targets, li.output)
    out = li.transpose(e, batch_size=batch_size)
    return out.sum(dim=1).detach().cpu().numpy()


def _channel_names(n: int) -> list[str]:
    """Labels of ``n`` channels: R, G, B for three, else their indices."""
    return ["R", "G", "B"] if n == 3 else [str(k) for k in range(n)]


@dataclass(frozen=True)
class _Views:
    """The channel choices a page offers: ``"sum"`` and, when filters are computed per
    channel and there are several, each channel index (as a string)."""

    n_in: int
    n_out: int
    split_in: bool
    split_out: bool

    @classmethod
    def make(cls, n_in: int, n_out: int, per_channel: bool) -> _Views:
        return cls(n_in, n_out, per_channel and n_in > 1, per_channel and n_out > 1)

    @property
    def inputs(self) -> list[str]:
        return ["sum", *map(str, range(self.n_in))] if self.split_in else ["sum"]

    @property
    def outputs(self) -> list[str]:
        return ["sum", *map(str, range(self.n_out))] if self.split_out else ["sum"]

    @property
    def keys(self) -> list[tuple[str, str]]:
        """Every ``(input, output)`` choice, the sums first."""
        return [(i, o) for i in self.inputs for o in self.outputs]

    def index(self) -> dict[str, Any]:
        return {
            "input": self.n_in,
            "output": self.n_out,
            "input_names": _channel_names(self.n_in),
            "output_names": _channel_names(self.n_out),
            "inputs": self.inputs,
            "outputs": self.outputs,
        }


def _view_file(kind: str, i: str, o: str) -> str:
    """Sprite sheet of one channel choice: ``columns.png`` for the sums."""
    return f"{kind}.png" if (i, o) == ("sum", "sum") else f"{kind}_{i}_{o}.png"


def _split_columns(
    li: Any, positions: Sequence[tuple[int, int]], split: bool, batch_size: int
) -> np.ndarray:
    """``(G, B, C', H', W')`` float64 columns: ``G = C`` groups of impulses in one input
    channel each when ``split``, else ``G = 1`` group of impulses in every channel."""
    c = li.in_shape[0]
    e = _impulses(li.in_shape, positions, li.x0)
    if split:
        e = torch.stack(
            [e * (torch.arange(c, device=e.device) == k).view(1, c, 1, 1) for k in range(c)]
        )
        e = e.reshape(-1, *li.in_shape)
    out = li.linear(e, batch_size=batch_size).detach().cpu().double().numpy()
    return out.reshape(-1, len(positions), *li.out_shape)


def _split_rows(
    li: Any, targets: Sequence[tuple[int, int]], split: bool, batch_size: int
) -> np.ndarray:
    """``(G, B, C, H, W)`` float64 rows: ``G = C'`` groups, one output channel each, when
    ``split``, else ``G = 1``: the rows of the sum of the output channels."""
    c = li.out_shape[0]
    e = _impulses(li.out_shape, targets, li.output)
    if split:
        e = torch.stack(
            [e * (torch.arange(c, device=e.device) == k).view(1, c, 1, 1) for k in range(c)]
        )
        e = e.reshape(-1, *li.out_shape)
    out = li.transpose(e, batch_size=batch_size).detach().cpu().double().numpy()
    return out.reshape(-1, len(targets), *li.in_shape)


def _pick(full: np.ndarray, group: str, channel: str) -> np.ndarray:
    """From ``(G, B, C, h, w)`` the maps ``(B, h, w)`` of one group (or their sum over
    the groups) and one channel (or their sum over the channels)."""
    x = full.sum(axis=0) if group == "sum" else full[int(group)]
    return x.sum(axis=1) if channel == "sum" else x[:, int(channel)]


def _support_radius(maps: np.ndarray, cy: float, cx: float, sy: float, sx: float) -> float:
    """Largest distance, in input pixels, from ``(cy, cx)`` to a non-negligible entry."""
    peak = float(np.abs(maps).max())
    if peak == 0:
        return 0.0
    ys, xs = np.nonzero(np.abs(maps) > _SUPPORT_RTOL * peak)
    return float(max(np.abs(ys - cy).max() / sy, np.abs(xs - cx).max() / sx))


def _auto_tile(li: Any, geo: _Geometry, batch_size: int) -> int:
    """Smallest odd window (input pixels) holding the centre pixel's row and column."""
    h, w = geo.in_hw
    y, x = h // 2, w // 2
    sy, sx = geo.scale
    col = _columns(li, [(y, x)], batch_size)[0]
    radius = _support_radius(col, (y + 0.5) * sy - 0.5, (x + 0.5) * sx - 0.5, sy, sx)
    row = _rows(li, [geo.target(y, x)], batch_size)[0]
    radius = max(radius, _support_radius(row, y, x, 1.0, 1.0))
    # A window larger than twice the image holds every filter whole from any pixel.
    cap = min(_MAX_AUTO_TILE, 2 * max(h, w) - 1)
    return min(cap, 2 * math.ceil(radius) + 1)


def _kept(full: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Fraction of each map's energy (sum of squares) inside its window; 1 for zero maps."""
    total = (full.astype(np.float64) ** 2).sum(axis=(1, 2))
    inside = (crop.astype(np.float64) ** 2).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 1.0)


def _fix_sign(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip a singular pair so the eigen-input's largest entry is positive (SVD signs are free)."""
    flat = v.reshape(-1)
    if flat[np.abs(flat).argmax()] < 0:
        return -u, -v
    return u, v


# -- the page -----------------------------------------------------------------------------


def _render(index: dict[str, Any]) -> str:
    import jinja2

    from convscope import __version__

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("convscope.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("explorer.html.j2").render(idx=index, version=__version__)


def _fmt(v: float) -> float:
    """A number for JSON with the shortest digits that give back the same float32 (the
    page formats it; Python reads it back): half the size of a float64 repr."""
    return float(str(np.float32(v)))


def write_explorer(
    model: nn.Module,
    image: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    mode: str = "freeze",
    tile: int | None = None,
    k_svd: int = 4,
    max_pixels: int = 1024,
    batch_size: int = 64,
    svd_method: str = "auto",
    top_classes: int = 5,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    per_channel: bool = True,
) -> Path:
    """Write the explorer page for ``model`` at ``image`` into ``out_dir``.

    Args:
        model: An image-to-image network ``(N, C, H, W) -> (N, C', H', W')`` or a
            classifier ``(N, C, H, W) -> (N, K)``, in the mode it should be read in
            (usually eval).
        image: ``(1, C, H, W)`` or ``(C, H, W)``, the operating point ``x0``; shown as is
            (values in [0, 1] are drawn directly, others stretched).
        out_dir: Folder for the page and its files (created).
        mode: ``"freeze"`` or ``"taylor"``, as in :class:`~convscope.linear.LinearInterpreter`.
        tile: Window side in input pixels for image-to-image filters (odd; columns get
            the same span in output pixels). ``None`` takes the smallest window holding
            the centre pixel's row and column whole, at most 41.
        k_svd: Singular pairs shown (0 for none).
        max_pixels: Filters are computed on a grid of at most this many input pixels.
        batch_size: Probes per forward pass of the interpreter.
        svd_method: ``"exact"`` (materialize ``F`` from all columns: one-channel
            image-to-image models at full grid only, and small ``F``), ``"randomized"``,
            ``"power"`` (the paper's Algorithm 1; slow), or ``"auto"`` (exact when
            possible, else randomized).
        top_classes: Classifiers: classes whose rows are shown.
        class_names: Classifiers: names of the ``K`` outputs (default: their indices).
        title: Page title (default: the model's class name).
        per_channel: Offer every input channel (and, for image-to-image models, every
            output channel) next to their sum, each with its own tiles. Costs ``C``
            column probes per grid pixel instead of one, and ``C'`` row probes
            (classifiers: nothing extra). ``False``: the sums only.

    Returns:
        The path of ``explorer.html``.

    Raises:
        ConvscopeError: A bad image or option, a model whose output is neither an image
            nor a vector, or an op the interpreter cannot freeze.
    """
    from convscope.linear import LinearInterpreter

    started = time.perf_counter()
    x0 = _check_image(image)
    checks = (("k_svd", k_svd, 0), ("batch_size", batch_size, 1), ("top_classes", top_classes, 1))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConvscopeError(f"{name} must be an integer >= {low}, got {value!r}")
    if tile is not None and (
        isinstance(tile, bool) or not isinstance(tile, int) or tile < 1 or tile % 2 == 0
    ):
        raise ConvscopeError(f"tile must be a positive odd integer, got {tile!r}")
    if svd_method not in ("auto", "exact", "randomized", "power"):
        raise ConvscopeError(
            f"svd_method must be auto, exact, randomized or power; got {svd_method!r}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    li = LinearInterpreter(model, x0, mode=mode, batch_size=batch_size)  # type: ignore[arg-type]
    _, c, h, w = x0.shape
    ys, xs, stride = pixel_grid(h, w, max_pixels)
    lut = _diverging_lut()
    index: dict[str, Any] = {
        "format": EXPLORER_FORMAT,
        "title": title or type(model).__name__,
        "mode": mode,
        "input": {"file": "input.png", "shape": [c, h, w]},
        "grid": {
            "ys": ys,
            "xs": xs,
            "stride": stride,
            "count": len(ys) * len(xs),
            "full": stride == 1,
        },
    }
    _save_rgb(out / "input.png", _to_rgb(_picture(x0[0].cpu().numpy())))
    if len(li.out_shape) == 3:
        dense = _image_to_image(
            li, index, out, ys, xs, tile, batch_size, lut, svd_method, per_channel
        )
        _svd_image(li, index, out, k_svd, svd_method, dense, lut)
    elif len(li.out_shape) == 1:
        _classifier(li, index, out, ys, xs, top_classes, class_names, batch_size, lut, per_channel)
        _svd_classifier(li, index, out, k_svd, svd_method, class_names, lut)
    else:
        raise ConvscopeError(
            f"the explorer page needs an image-to-image model (output C, H, W) or a "
            f"classifier (output K); this model's output is {tuple(li.out_shape)}"
        )
    index["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / "explorer.json", index)
    write_json(
        out / "metrics.json",
        {
            "kind": index["kind"],
            "mode": mode,
            "input_shape": [c, h, w],
            "output_shape": list(li.out_shape),
            "grid": {k: index["grid"][k] for k in ("stride", "count", "full")},
            "singular_values": index["svd"]["values"],
            "svd_method": index["svd"]["method"],
            "seconds": index["seconds"],
        },
    )
    page = out / "explorer.html"
    atomic_write_bytes(page, _render(index).encode("utf-8"))
    return page


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise ConvscopeError(f"image must be a tensor (1, C, H, W); got {type(image).__name__}")
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ConvscopeError(f"image must be (1, C, H, W) or (C, H, W); got {tuple(image.shape)}")
    if not x.is_floating_point():
        raise ConvscopeError(f"image must hold floats; got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ConvscopeError("image contains NaN or infinite values")
    return x.detach()


def _to_rgb(pic: np.ndarray) -> np.ndarray:
    """(h, w) grey or (h, w, 3) in [0, 1] -> (h, w, 3) uint8."""
    if pic.ndim == 2:
        pic = np.repeat(pic[:, :, None], 3, axis=2)
    return np.round(pic * 255.0).astype(np.uint8)


def _image_to_image(
    li: Any,
    index: dict[str, Any],
    out: Path,
    ys: list[int],
    xs: list[int],
    tile: int | None,
    batch_size: int,
    lut: np.ndarray,
    svd_method: str,
    per_channel: bool,
) -> np.ndarray | None:
    """Rows and columns on the grid as sprite sheets, one pair per channel choice;
    returns dense ``F`` (N, n) if kept."""
    c, h, w = li.in_shape
    co, ho, wo = li.out_shape
    geo = _Geometry((h, w), (ho, wo))
    sy, sx = geo.scale
    views = _Views.make(c, co, per_channel)
    if tile is None:
        tile = _auto_tile(li, geo, batch_size)
    th, tw = max(1, math.ceil(tile * sy)), max(1, math.ceil(tile * sx))
    points = [(y, x) for y in ys for x in xs]
    targets = [geo.target(y, x) for y, x in points]
    half = (tile - 1) // 2
    col_origin = np.array([geo.column_origin(y, x, th, tw) for y, x in points]).reshape(-1, 2)
    row_origin = np.array([(y - half, x - half) for y, x in points]).reshape(-1, 2)
    # F is kept whole for an exact SVD only when the grid columns are all of F's columns.
    keep_dense = (
        svd_method in ("auto", "exact")
        and c == 1
        and len(points) == h * w
        and h * w * co * ho * wo <= _MAX_DENSE
    )
    if svd_method == "exact" and not keep_dense:
        raise ConvscopeError(
            "svd_method='exact' needs a one-channel input, every pixel on the grid "
            f"(max_pixels >= {h * w}) and at most {_MAX_DENSE} entries in F; use 'randomized'"
        )
    dense = np.zeros((h * w, co * ho * wo), dtype=np.float32) if keep_dense else None
    names = ("cpeak", "csum", "cat", "ckept", "rpeak", "rsum", "rat", "rkept")
    stats: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {
        key: {k: [] for k in names} for key in views.keys
    }
    tiles: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {
        key: {"columns": [], "rows": []} for key in views.keys
    }
    chunk = max(batch_size, 1)
    for start in range(0, len(points), chunk):
        sl = slice(start, min(len(points), start + chunk))
        pts, tgs = points[sl], targets[sl]
        full_c = _split_columns(li, pts, views.split_in, batch_size)  # (G, B, C', H', W')
        full_r = _split_rows(li, tgs, views.split_out, batch_size)  # (G', B, C, H, W)
        if dense is not None:  # one input channel: the columns are F's columns
            dense[sl] = full_c[0].reshape(len(pts), -1)
        idx = np.arange(len(pts))
        for i, o in views.keys:
            cols = _pick(full_c, i, o)
            rows = _pick(full_r, o, i)
            ccrop = _crop(cols, col_origin[sl, 0], col_origin[sl, 1], th, tw)
            rcrop = _crop(rows, row_origin[sl, 0], row_origin[sl, 1], tile, tile)
            st = stats[i, o]
            cpeak = np.abs(cols).reshape(len(pts), -1).max(axis=1)
            rpeak = np.abs(rows).reshape(len(pts), -1).max(axis=1)
            st["cpeak"].append(cpeak)
            st["csum"].append(cols.reshape(len(pts), -1).sum(axis=1))
            st["cat"].append(cols[idx, [q[0] for q in tgs], [q[1] for q in tgs]])
            st["ckept"].append(_kept(cols, ccrop))
            st["rpeak"].append(rpeak)
            st["rsum"].append(rows.reshape(len(pts), -1).sum(axis=1))
            st["rat"].append(rows[idx, [p[0] for p in pts], [p[1] for p in pts]])
            st["rkept"].append(_kept(rows, rcrop))
            tiles[i, o]["columns"].append(_signed_rgb(ccrop, cpeak, lut))
            tiles[i, o]["rows"].append(_signed_rgb(rcrop, rpeak, lut))
    specs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for i, o in views.keys:
        s = {k: np.concatenate(v) for k, v in stats[i, o].items()}
        for kind in ("columns", "rows"):
            sheet = _sprite(np.concatenate(tiles[i, o][kind]), len(xs))
            _save_rgb(out / _view_file(kind, i, o), sheet)
        specs[i, o] = {
            "columns": {
                "sprite": _view_file("columns", i, o),
                "peak": [_fmt(v) for v in s["cpeak"]],
                "sum": [_fmt(v) for v in s["csum"]],
                "at_target": [_fmt(v) for v in s["cat"]],
                "kept": [_fmt(v) for v in s["ckept"]],
                "min_kept": _fmt(s["ckept"].min()),
            },
            "rows": {
                "sprite": _view_file("rows", i, o),
                "peak": [_fmt(v) for v in s["rpeak"]],
                "sum": [_fmt(v) for v in s["rsum"]],
                "at_pixel": [_fmt(v) for v in s["rat"]],
                "kept": [_fmt(v) for v in s["rkept"]],
                "min_kept": _fmt(s["rkept"].min()),
            },
        }
    _save_rgb(out / "output.png", _to_rgb(_picture(li.output[0].cpu().numpy())))
    default = specs.pop(("sum", "sum"))
    index.update(
        kind="image",
        output={"file": "output.png", "shape": [co, ho, wo]},
        scale=[sy, sx],
        tile=tile,
        targets=[list(q) for q in targets],
        columns={
            "tile_shape": [th, tw],
            "per_row": len(xs),
            "origin": col_origin.tolist(),
            **default["columns"],
        },
        rows={
            "tile_shape": [tile, tile],
            "per_row": len(xs),
            "origin": row_origin.tolist(),
            **default["rows"],
        },
        channels=views.index(),
        views={f"{i},{o}": spec for (i, o), spec in specs.items()},
        min_kept={
            kind: min([default[kind]["min_kept"], *(v[kind]["min_kept"] for v in specs.values())])
            for kind in ("columns", "rows")
        },
    )
    return dense


def _svd_image(
    li: Any,
    index: dict[str, Any],
    out: Path,
    k: int,
    method: str,
    dense: np.ndarray | None,
    lut: np.ndarray,
) -> None:
    k = min(k, math.prod(li.in_shape), math.prod(li.out_shape))
    pairs: list[dict[str, Any]] = []
    if k == 0:
        index["svd"] = {"method": "none", "values": [], "pairs": []}
        return
    if dense is not None:
        # dense is F^T (n, N), n <= N. The eigen-decomposition of the small Gram matrix
        # F^T F (n x n) gives the same top pairs as a full SVD for a fraction of the time
        # (LAPACK's SVD of 576 x 9216 took 30 s here, eigh of 576 x 576 half a second);
        # squaring only costs precision in the smallest singular values, never shown.
        ft = torch.from_numpy(dense).double()
        evals, evecs = torch.linalg.eigh(ft @ ft.T)
        top = torch.argsort(evals, descending=True)[:k]
        S_ = evals[top].clamp_min(0).sqrt()
        V_ = evecs[:, top].T  # (k, n) eigen-inputs
        U_ = (V_ @ ft) / torch.where(S_ > 0, S_, 1.0)[:, None]  # (k, N): F v / s
        S = S_.numpy()
        V = V_.numpy().reshape(k, *li.in_shape)
        U = U_.numpy().reshape(k, *li.out_shape)
        used = "exact"
    else:
        used = "randomized" if method in ("auto", "randomized") else "power"
        res = li.svd(k, method=used)
        S, U, V = (t.detach().cpu().numpy() for t in (res.S, res.U, res.V))
    for i in range(k):
        u, v = _fix_sign(U[i], V[i])
        _save_rgb(out / f"eigen_input_{i}.png", _display(v, lut))
        _save_rgb(out / f"eigen_output_{i}.png", _display(u, lut))
        pairs.append(
            {
                "sigma": float(S[i]),
                "input": f"eigen_input_{i}.png",
                "output": f"eigen_output_{i}.png",
            }
        )
    index["svd"] = {"method": used, "values": [float(v) for v in S[:k]], "pairs": pairs}


def _classifier(
    li: Any,
    index: dict[str, Any],
    out: Path,
    ys: list[int],
    xs: list[int],
    top: int,
    class_names: Sequence[str] | None,
    batch_size: int,
    lut: np.ndarray,
    per_channel: bool,
) -> None:
    """Rows of the top classes as a strip per channel choice; columns on the grid read
    off those rows."""
    (k_out,) = li.out_shape
    c, h, w = li.in_shape
    names = _class_names(class_names, k_out)
    scores = li.output[0].detach().cpu()
    order = torch.argsort(scores, descending=True)[: min(top, k_out)].tolist()
    e = torch.zeros((len(order), k_out), dtype=li.output.dtype, device=li.output.device)
    for t, cls in enumerate(order):
        e[t, cls] = 1
    rows = li.transpose(e, batch_size=batch_size).detach().cpu().double().numpy()  # (T, C, H, W)
    views = _Views.make(c, 1, per_channel)
    specs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for i, o in views.keys:
        # (T, H, W): the column entry (F e_p)_c of one input channel, or summed over them
        flat = _pick(rows[None], "sum", i)
        peaks = np.abs(flat).reshape(len(order), -1).max(axis=1)
        _save_rgb(
            out / _view_file("rows", i, o), _sprite(_signed_rgb(flat, peaks, lut), len(order))
        )
        values = [[_fmt(flat[t, y, x]) for t in range(len(order))] for y in ys for x in xs]
        specs[i, o] = {
            "columns": {
                "values": values,
                "peak": max((abs(v) for r in values for v in r), default=0.0),
            },
            "rows": {
                "sprite": _view_file("rows", i, o),
                "peak": [_fmt(v) for v in peaks],
                "sum": [_fmt(v) for v in flat.reshape(len(order), -1).sum(axis=1)],
            },
        }
    classes = [{"index": cls, "name": names[cls], "score": float(scores[cls])} for cls in order]
    default = specs.pop(("sum", "sum"))
    index.update(
        kind="classifier",
        output={"shape": [k_out]},
        classes=classes,
        columns=default["columns"],
        rows={"tile_shape": [h, w], "per_row": len(order), **default["rows"]},
        channels=views.index(),
        views={f"{i},{o}": spec for (i, o), spec in specs.items()},
    )


def _class_names(names: Sequence[str] | None, k: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(k)]
    if len(names) != k:
        raise ConvscopeError(f"class_names has {len(names)} names but the model has {k} outputs")
    return [str(n) for n in names]


def _svd_classifier(
    li: Any,
    index: dict[str, Any],
    out: Path,
    k: int,
    method: str,
    class_names: Sequence[str] | None,
    lut: np.ndarray,
) -> None:
    k = min(k, math.prod(li.in_shape), math.prod(li.out_shape))
    if k == 0:
        index["svd"] = {"method": "none", "values": [], "pairs": []}
        return
    if method == "exact":
        raise ConvscopeError("svd_method='exact' is for image-to-image models; use 'randomized'")
    used = "power" if method == "power" else "randomized"
    res = li.svd(k, method=used)
    S, U, V = (t.detach().cpu().numpy() for t in (res.S, res.U, res.V))
    names = _class_names(class_names, li.out_shape[0])
    pairs = []
    for i in range(k):
        u, v = _fix_sign(U[i], V[i])
        _save_rgb(out / f"eigen_input_{i}.png", _display(v, lut))
        top = np.argsort(-np.abs(u))[:3]
        pairs.append(
            {
                "sigma": float(S[i]),
                "input": f"eigen_input_{i}.png",
                "classes": [
                    {"index": int(j), "name": names[j], "weight": float(u[j])} for j in top
                ],
            }
        )
    index["svd"] = {"method": used, "values": [float(v) for v in S[:k]], "pairs": pairs}


# -- inputs for the command line -----------------------------------------------------------


def trained_espcn_checkpoint() -> Path:
    """The trained ESPCN x4 checkpoint kept in the repository (``--model espcn``).

    Raises:
        ConvscopeError: When it is not there (an install without the repository).
    """
    # src/convscope/report/explorer.py -> the repository root of an editable install.
    ckpt = Path(__file__).resolve().parents[3] / ESPCN_CHECKPOINT
    if not ckpt.is_file():
        raise ConvscopeError(
            f"the trained ESPCN checkpoint is not at {ckpt} (it ships with the repository as "
            f"{ESPCN_CHECKPOINT.as_posix()}); pass its path to --model"
        )
    return ckpt


def explorer_image(
    source: str | os.PathLike[str],
    channels: int,
    size: tuple[int, int] | None = None,
    *,
    max_side: int = 64,
) -> torch.Tensor:
    """Read an image for the explorer with the model's channels, at a size the CPU affords.

    Every pixel's row and column costs a pass through the model, so an image that is
    not given a size is shrunk (aspect kept) until its longer side is ``max_side``.

    Args:
        source: An image file, or ``"sample:NAME"`` for a scikit-image photo
            (:func:`convscope.data.sample_photo`).
        channels: The model's input channels: 3 for RGB, 1 for luma (ITU-R 601-2),
            others repeat the grey image.
        size: ``(H, W)`` to resize to; ``None`` keeps the size, shrunk as above.
        max_side: See above.

    Returns:
        float32 ``(1, channels, H, W)`` in [0, 1].

    Raises:
        ConvscopeError: A missing or unreadable file, an unknown sample photo, a bad size.
    """
    from convscope.data import load_image, prepare_for_model, sample_photo

    text = os.fspath(source)
    if text.startswith("sample:"):
        rgb = sample_photo(text[len("sample:") :])
        x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    else:
        x = load_image(text)
    if size is None:
        h, w = x.shape[-2:]
        if max(h, w) > max_side:
            f = max_side / max(h, w)
            size = (max(1, round(h * f)), max(1, round(w * f)))
    return prepare_for_model(x, channels, size)
