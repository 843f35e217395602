"""The kernel bank: classic 3x3 image kernels with their metadata.

Every kernel is applied as cross-correlation (what ``torch.nn.functional.conv2d``
computes). Compass edge kernels are named for the side that is darker: the kernel
for direction ``D`` carries its negative weights on side ``D`` and answers
positively where intensity falls toward ``D``.

The GFNN bank (seed 000, Table 1) keeps the paper's index order:

* 0-31   compass edges, 8 directions (E, NE, N, NW, W, SW, S, SE) x 4 families
         (Prewitt-compass, Kirsch, Prewitt, Sobel), direction-major;
* 32-33  second derivative (Laplacian, 4- and 8-neighbour);
* 34-36  sharpening;
* 37     embossing;
* 38-39  blurring (box, Gaussian);
* 40-47  first derivative (Roberts x2, Prewitt, Sobel, Frei-Chen; optional).

The textbook's kernels (seed 002, section 11.2.3 and 11.6.3) live in the same
registry under their own names; where one coincides with a GFNN kernel it is an
alias of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from convscope.errors import ConvscopeError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DIRECTIONS",
    "EDGE_FAMILIES",
    "FIG4_CATEGORIES",
    "Kernel",
    "bank_array",
    "bank_tensor",
    "compass",
    "convolve2d",
    "correlate2d",
    "edge_subset",
    "filter_image",
    "gaussian_kernel",
    "get",
    "gfnn_bank",
    "names",
    "output_size",
    "rotate_ring",
]

DIRECTIONS: tuple[str, ...] = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")
EDGE_FAMILIES: tuple[str, ...] = ("prewitt_compass", "kirsch", "prewitt", "sobel")

# The 12 categories of seed 000 Fig. 4: the 8 edge directions, then the other groups.
FIG4_CATEGORIES: tuple[str, ...] = (
    *DIRECTIONS,
    "second_derivative",
    "sharpen",
    "emboss",
    "blur",
)


@dataclass(frozen=True)
class Kernel:
    """One image kernel and what a person needs to read it.

    Attributes:
        name: registry name, e.g. ``"kirsch_ne"``.
        group: ``"edge"``, ``"second_derivative"``, ``"sharpen"``, ``"emboss"``,
            ``"blur"``, ``"first_derivative"``, ``"identity"``, ``"detector"`` or
            ``"line_probe"``.
        family: the kernel family (``"sobel"``, ``"kirsch"``, ``"laplacian"`` ...).
        direction: compass direction for edge kernels (the darker side), else ``None``.
        weight: ``(f, f)`` float64 array, read-only.
        index: position in the GFNN bank, or ``None`` for textbook-only kernels.
        description: one line for tables and figures.
    """

    name: str
    group: str
    family: str
    direction: str | None
    weight: np.ndarray = field(repr=False)
    index: int | None = None
    description: str = ""

    @property
    def category(self) -> str:
        """Seed 000 Fig. 4 category: the direction for compass edges, else the group."""
        return self.direction if self.group == "edge" and self.direction else self.group

    def tensor(
        self, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The weight as a ``(f, f)`` torch tensor."""
        import torch

        return torch.as_tensor(np.array(self.weight), dtype=dtype or torch.float32, device=device)


# -- builders -----------------------------------------------------------------

_RING = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))  # clockwise


def rotate_ring(kernel: np.ndarray, steps: int = 1) -> np.ndarray:
    """Rotate the outer ring of a 3x3 kernel counter-clockwise by ``steps`` x 45 degrees.

    The centre stays put. Eight steps give the kernel back.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.shape != (3, 3):
        raise ConvscopeError(f"rotate_ring needs a 3x3 kernel, got shape {k.shape}")
    ring = np.array([k[p] for p in _RING])
    ring = np.roll(ring, -steps)  # value at ring position i moves to i - steps (CCW)
    out = k.copy()
    for p, v in zip(_RING, ring, strict=True):
        out[p] = v
    return out


def compass(east: np.ndarray) -> list[np.ndarray]:
    """The 8 compass kernels of a family from its east kernel, in ``DIRECTIONS`` order."""
    return [rotate_ring(east, s) for s in range(8)]


def gaussian_kernel(size: int = 3, sigma: float = 1.0) -> np.ndarray:
    """Sampled isotropic Gaussian normalised to sum 1 (seed 002, eq. 11.2.11)."""
    if size < 1 or size % 2 == 0:
        raise ConvscopeError(f"gaussian_kernel size must be a positive odd number, got {size}")
    if sigma <= 0:
        raise ConvscopeError(f"gaussian_kernel sigma must be > 0, got {sigma}")
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma**2))
    return g / g.sum()


_EAST: dict[str, np.ndarray] = {
    # ring of 1s, -2 centre, -1s on the east side
    "prewitt_compass": np.array([[1, 1, -1], [1, -2, -1], [1, 1, -1]], dtype=np.float64),
    # 5 on the far (west) side, -3 elsewhere on the ring, 0 centre
    "kirsch": np.array([[5, -3, -3], [5, 0, -3], [5, -3, -3]], dtype=np.float64),
    "prewitt": np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=np.float64),
    "sobel": np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64),
}

_FAMILY_TEXT = {
    "prewitt_compass": "Prewitt compass",
    "kirsch": "Kirsch",
    "prewitt": "Prewitt",
    "sobel": "Sobel",
}

_S2 = math.sqrt(2.0)


# (name, group, family, weight, description) for GFNN indices 32-47.
_GFNN_TAIL: list[tuple[str, str, str, np.ndarray, str]] = [
    ("laplacian_4", "second_derivative", "laplacian",
     np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]]), "Laplacian, 4-neighbour"),
    ("laplacian_8", "second_derivative", "laplacian",
     np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]), "Laplacian, 8-neighbour"),
    ("sharpen_4", "sharpen", "sharpen",
     np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
     "sharpen: identity + 4-neighbour Laplacian"),
    ("sharpen_8", "sharpen", "sharpen",
     np.array([[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]]),
     "sharpen: identity + 8-neighbour Laplacian"),
    ("sharpen_diagonal", "sharpen", "sharpen",
     np.array([[1, -2, 1], [-2, 5, -2], [1, -2, 1]]), "sharpen with positive corners"),
    ("emboss", "emboss", "emboss",
     np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]), "emboss (light from the south-east)"),
    ("box_blur", "blur", "box", np.ones((3, 3)) / 9, "box (mean) blur"),
    ("gaussian_blur", "blur", "gaussian",
     np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16, "Gaussian blur, binomial 1-2-1"),
    ("roberts_1", "first_derivative", "roberts",
     np.array([[0, 0, -1], [0, 1, 0], [0, 0, 0]]), "Roberts cross, anti-diagonal"),
    ("roberts_2", "first_derivative", "roberts",
     np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 0]]), "Roberts cross, diagonal"),
    ("prewitt_x", "first_derivative", "prewitt",
     np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]]), "Prewitt x"),
    ("prewitt_y", "first_derivative", "prewitt",
     np.array([[-1, -1, -1], [0, 0, 0], [1, 1, 1]]), "Prewitt y"),
    ("sobel_x", "first_derivative", "sobel",
     np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]]), "Sobel x"),
    ("sobel_y", "first_derivative", "sobel",
     np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]), "Sobel y"),
    ("frei_chen_x", "first_derivative", "frei_chen",
     np.array([[1, 0, -1], [_S2, 0, -_S2], [1, 0, -1]]), "Frei-Chen x"),
    ("frei_chen_y", "first_derivative", "frei_chen",
     np.array([[-1, -_S2, -1], [0, 0, 0], [1, _S2, 1]]), "Frei-Chen y"),
]  # fmt: skip

# Textbook kernels (seed 002) that are not in the GFNN bank.
_TEXTBOOK: list[tuple[str, str, str, np.ndarray, str]] = [
    ("identity", "identity", "identity", np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]]),
     "identity (dummy filter, eq. 11.2.10)"),
    ("gaussian_5x5", "blur", "gaussian", np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256,
     "Gaussian blur, binomial 1-4-6-4-1"),
    ("gaussian_sigma1", "blur", "gaussian", gaussian_kernel(3, 1.0),
     "Gaussian with sigma = 1 sampled on 3x3 (eq. 11.2.11)"),
    ("first_order", "first_derivative", "first_order",
     np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]]),
     "first-order product filter (eq. 11.2.13)"),
    ("cross", "detector", "cross", np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]),
     "cross-shaped detector (eq. 11.2.5)"),
    ("line_x1", "line_probe", "line", np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]]), "line probe X1"),
    ("line_x2", "line_probe", "line", np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]]), "line probe X2"),
    ("line_x3", "line_probe", "line", np.array([[0, 0, 1], [0, 0, 1], [0, 0, 1]]), "line probe X3"),
    ("line_x4", "line_probe", "line", np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), "line probe X4"),
    ("line_x5", "line_probe", "line", np.array([[1, 1, 1], [0, 0, 0], [0, 0, 0]]), "line probe X5"),
    ("line_x6", "line_probe", "line", np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]]), "line probe X6"),
    ("line_x7", "line_probe", "line", np.array([[0, 0, 0], [0, 0, 0], [1, 1, 1]]), "line probe X7"),
    ("line_x8", "line_probe", "line", np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]), "line probe X8"),
]  # fmt: skip

# Textbook names that are the same matrix as a GFNN kernel.
_ALIASES: dict[str, str] = {
    "laplacian_5": "sharpen_4",
    "laplacian_9": "sharpen_8",
    "box": "box_blur",
    "gaussian_3x3": "gaussian_blur",
    "prewitt_vertical": "prewitt_w",
    "prewitt_horizontal": "prewitt_n",
    "sobel_vertical": "sobel_w",
    "sobel_horizontal": "sobel_n",
}


def _frozen(w: np.ndarray) -> np.ndarray:
    w = np.array(w, dtype=np.float64)
    w.flags.writeable = False
    return w


def _build_registry() -> dict[str, Kernel]:
    reg: dict[str, Kernel] = {}
    east = {fam: compass(_EAST[fam]) for fam in EDGE_FAMILIES}
    idx = 0
    for d, direction in enumerate(DIRECTIONS):
        for fam in EDGE_FAMILIES:
            name = f"{fam}_{direction.lower()}"
            reg[name] = Kernel(
                name=name,
                group="edge",
                family=fam,
                direction=direction,
                weight=_frozen(east[fam][d]),
                index=idx,
                description=f"{_FAMILY_TEXT[fam]} edge, darker side {direction}",
            )
            idx += 1
    for name, group, fam, w, text in _GFNN_TAIL:
        reg[name] = Kernel(name, group, fam, None, _frozen(w), idx, text)
        idx += 1
    for name, group, fam, w, text in _TEXTBOOK:
        reg[name] = Kernel(name, group, fam, None, _frozen(w), None, text)
    return reg


_REGISTRY = _build_registry()


def names(group: str | None = None) -> list[str]:
    """Every registered kernel name (GFNN order first, then the textbook's).

    Args:
        group: keep only kernels of this group (e.g. ``"edge"``).
    """
    return [n for n, k in _REGISTRY.items() if group is None or k.group == group]


def get(name: str) -> Kernel:
    """Look a kernel up by name or alias (``"sobel_vertical"`` is ``"sobel_w"``)."""
    key = _ALIASES.get(name, name)
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ConvscopeError(
            f"unknown kernel {name!r}; `convscope kernels list` prints the names"
        ) from None


def edge_subset(n_edges: int) -> list[str]:
    """Names of the compass edge kernels kept when the bank has ``n_edges`` of them.

    The seed-000 ablation (Fig. 3a) shrinks the 32 edge kernels to 24/16/8/4. We drop
    whole families so every remaining family keeps all 8 directions: 32 = all four,
    24 drops Prewitt-compass, 16 also Prewitt, 8 keeps Sobel alone; 4 keeps Sobel's
    four axis directions (E, N, W, S), the case where opposite diagonals can no longer
    stand in for one another.
    """
    keep = {32: EDGE_FAMILIES, 24: EDGE_FAMILIES[1:], 16: ("kirsch", "sobel"), 8: ("sobel",)}
    if n_edges == 4:
        return [f"sobel_{d}" for d in ("e", "n", "w", "s")]
    if n_edges not in keep:
        raise ConvscopeError(f"n_edges must be one of 32, 24, 16, 8, 4; got {n_edges}")
    fams = keep[n_edges]
    return [k.name for k in _REGISTRY.values() if k.group == "edge" and k.family in fams]


def gfnn_bank(first_order: bool = False, n_edges: int = 32) -> list[Kernel]:
    """The GFNN kernel bank in the paper's index order.

    Args:
        first_order: also include the 8 first-derivative kernels (indices 40-47).
        n_edges: how many compass edge kernels to keep (32, 24, 16, 8 or 4).

    Returns:
        40 kernels (48 with ``first_order``) for ``n_edges=32``.
    """
    edges = set(edge_subset(n_edges))
    last = 48 if first_order else 40
    return [
        k
        for k in _REGISTRY.values()
        if k.index is not None and k.index < last and (k.group != "edge" or k.name in edges)
    ]


def bank_array(kernels: Sequence[Kernel | str]) -> np.ndarray:
    """Stack kernels (or names) into a ``(K, f, f)`` float64 array."""
    ks = [get(k) if isinstance(k, str) else k for k in kernels]
    if not ks:
        raise ConvscopeError("the kernel list is empty")
    shapes = {k.weight.shape for k in ks}
    if len(shapes) != 1:
        raise ConvscopeError(f"kernels of different sizes cannot be stacked: {sorted(shapes)}")
    return np.stack([k.weight for k in ks])


def bank_tensor(
    kernels: Sequence[Kernel | str],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Stack kernels into a ``(K, 1, f, f)`` conv2d weight."""
    import torch

    arr = bank_array(kernels)
    return torch.as_tensor(arr, dtype=dtype or torch.float32, device=device).unsqueeze(1)


# -- NumPy reference correlation / convolution --------------------------------


def output_size(n: int, f: int, padding: int = 0, stride: int = 1) -> int:
    """Output length of a sliding window: ``floor((n + 2p - f) / s) + 1`` (eq. 11.2.7).

    For pooling without padding this is eq. 11.3.1.
    """
    if stride < 1:
        raise ConvscopeError(f"stride must be >= 1, got {stride}")
    if padding < 0:
        raise ConvscopeError(f"padding must be >= 0, got {padding}")
    if f < 1 or f > n + 2 * padding:
        raise ConvscopeError(
            f"window of size {f} does not fit an input of size {n} with padding {padding}"
        )
    return (n + 2 * padding - f) // stride + 1


def correlate2d(
    img: np.ndarray,
    k: np.ndarray,
    stride: int = 1,
    padding: int = 0,
    bias: float = 0.0,
) -> np.ndarray:
    """Cross-correlate an image with a kernel (seed 002, Definition 11.2.1).

    Args:
        img: ``(H, W)`` or ``(H, W, C)``.
        k: ``(f, f)`` or ``(f, f, C)``; a 2-D kernel on a ``(H, W, C)`` image is used
            on every channel (the textbook's "same component on every channel").
        stride: step of the window.
        padding: zero padding on every side.
        bias: added to every output value.

    Returns:
        ``(H_out, W_out)``: channels are summed, as in a convolutional layer.
    """
    x = np.asarray(img, dtype=np.float64)
    w = np.asarray(k, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ConvscopeError(f"image must be (H, W) or (H, W, C), got shape {np.shape(img)}")
    if w.ndim == 2:
        w = np.repeat(w[:, :, None], x.shape[2], axis=2)
    if w.ndim != 3 or w.shape[0] != w.shape[1]:
        raise ConvscopeError(f"kernel must be (f, f) or (f, f, C), got shape {np.shape(k)}")
    if w.shape[2] != x.shape[2]:
        raise ConvscopeError(f"kernel has {w.shape[2]} channels but the image has {x.shape[2]}")
    f = w.shape[0]
    for n in x.shape[:2]:  # the window fits and the stride and padding are valid
        output_size(n, f, padding, stride)
    if padding:
        x = np.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (f, f), axis=(0, 1))
    win = win[::stride, ::stride]  # (H_out, W_out, C, f, f), H_out as output_size gives
    return np.einsum("ijcuv,uvc->ij", win, w) + bias


def convolve2d(
    img: np.ndarray,
    k: np.ndarray,
    stride: int = 1,
    padding: int = 0,
    bias: float = 0.0,
) -> np.ndarray:
    """Convolve (Definition 11.2.2): correlation with the kernel rotated by 180 degrees."""
    w = np.asarray(k)
    if w.ndim not in (2, 3):
        raise ConvscopeError(f"kernel must be (f, f) or (f, f, C), got shape {np.shape(k)}")
    return correlate2d(img, w[::-1, ::-1], stride=stride, padding=padding, bias=bias)


def filter_image(img: np.ndarray, k: np.ndarray | Kernel | str, clip: bool = True) -> np.ndarray:
    """A kernel's effect on a picture: every channel correlated separately, same size.

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` with values in 0..255.
        k: kernel weights, record or name; zero padding keeps the size (odd ``f``).
        clip: clip the result to 0..255 and return ``uint8`` (what a viewer shows).

    Returns:
        Same shape as ``img``: ``uint8`` when ``clip``, else float64.
    """
    w = get(k).weight if isinstance(k, str) else k.weight if isinstance(k, Kernel) else k
    w = np.asarray(w)  # correlate2d computes in float64
    x = np.asarray(img)
    chans = x[..., None] if x.ndim == 2 else x
    out = np.stack(
        [correlate2d(chans[..., c], w, padding=w.shape[0] // 2) for c in range(chans.shape[2])],
        axis=-1,
    )
    out = out[..., 0] if x.ndim == 2 else out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if clip else out
