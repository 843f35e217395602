"""Seed 003 Table 1 at layer 3: what moves our reconstruction error, one thing at a time.

``experiments/decoding_table.py`` reproduces the paper's Table 1 on our LeNet at layers 5 and
7, but its layer 3 comes out above the paper's 0.002-0.003 (issue 16 item 2). This script
changes one thing at a time in how the error is computed, or in what it is computed on, and
measures layers 3, 5 and 7 under the paper's three unpoolings:

- **normalisation**: over what the contrast range is taken (the layer, each map, each filter
  over the data set, the data set), z-score or energy instead of the range, a least-squares
  scale, none at all, and eq. 3's ``||.||^2`` read as a sum over positions;
- **alignment**: the 9 grid phases ``(dy, dx)`` in ``{-1, 0, 1}^2`` pixels around the one
  :meth:`DecodedFilters.correlate` uses, and the estimate at stride 1 against the response
  repeated onto that grid;
- **cropping**: only interior units, and a zero-padded ("same") estimate cropped to the
  response's size at its top-left or centre;
- **biases**: none (eq. 3 literally), or the mean training image instead of the black one as
  the reference whose response carries them;
- **unpooling**: the library's ``"adjoint"``, bilinear and bicubic with ``align_corners``,
  MATLAB ``imresize``'s bicubic (Keys ``a = -0.5``, mirrored borders; the paper used
  MatConvNet) and zero insertion;
- **data**: the 4,000 training images, each half of the test set, a bootstrap interval and
  the per-digit means;
- **training**: the committed recipe (``experiments/train_lenet.py``) retrained with seeds
  0-4, and MatConvNet's own recipe for this net (SGD, rate 0.001, momentum 0.9, weight
  decay 5e-4, batch 100, 20 epochs, N(0, 0.01^2) weights, zero biases, pixels 0-255 minus
  the mean training image), on the 4,000 embedded training images.

Everything is computed on the committed checkpoint ``lenet_mnist.pt`` and the embedded
1,000 test images with ``convscope.decoding`` (``error_table``, ``reconstruction_error``,
``decode``, ``layer_response``, ``DecodedFilters.correlate``), except the few local variants
the library has no option for, each a few lines below. Writes
``experiments/results/decoding/layer3_gap.json`` and ``layer3_gap.md``; the page is generated
from the JSON (:func:`page`), every sentence about a result computed from the numbers.

Usage::

    python experiments/decoding_gap.py      # about 8 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_lenet import CONFIG as LENET_CONFIG  # noqa: E402

from convscope.data import load_mnist_subset  # noqa: E402
from convscope.decoding import (  # noqa: E402
    ChainStep,
    DecodedFilters,
    decode,
    decoding_chain,
    error_table,
    layer_response,
    reconstruction_error,
)
from convscope.io import write_json  # noqa: E402
from convscope.models import build_model, load_checkpoint  # noqa: E402
from convscope.train import TrainConfig, fit, seed_everything  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "decoding"
CHECKPOINT = RESULTS / "lenet_mnist.pt"
JSON = RESULTS / "layer3_gap.json"
PAGE = RESULTS / "layer3_gap.md"
LAYERS = {3: "features.conv2", 5: "features.conv3", 7: "features.conv4"}
MODES = ("bicubic", "nearest", "bilinear")  # the paper's columns
# seed 003 Table 1: (mean, std) per paper layer and unpooling mode
PAPER = {
    3: {"bicubic": (0.002, 0.001), "nearest": (0.0022, 0.001), "bilinear": (0.003, 0.001)},
    5: {"bicubic": (0.012, 0.005), "nearest": (0.012, 0.005), "bilinear": (0.013, 0.0055)},
    7: {"bicubic": (0.078, 0.056), "nearest": (0.077, 0.055), "bilinear": (0.081, 0.057)},
}
TOLERANCE = 1.25  # "matches the paper": our mean within this factor of the paper's, either way
CHECK_N = 100  # the test recomputes these variants on the first CHECK_N test images
CHECK_KEYS = ("baseline_local", "norm_per_map", "shift_0_1", "unpool_matlab_bicubic")
SEEDS = (0, 1, 2, 3, 4)
BOOTSTRAP = 2000

Stats = dict[str, float]


def _stats(per_image: np.ndarray) -> Stats:
    return {"mean": float(per_image.mean()), "std": float(per_image.std())}


# ------------------------------------------------------------------------ local variants


def minmax(z: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``(z - min) / (max - min)`` over ``dims``; a constant part maps to 0 (as the library)."""
    lo, hi = z.amin(dims, keepdim=True), z.amax(dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (z - lo) / torch.where(span > 0, span, 1), 0.0)


def _zscore(z: torch.Tensor) -> torch.Tensor:
    flat = z.flatten(1)
    mu, sd = flat.mean(1), flat.std(1)
    return (z - mu[:, None, None, None]) / sd[:, None, None, None]


def _rms(z: torch.Tensor) -> torch.Tensor:
    return z / z.flatten(1).pow(2).mean(1).sqrt()[:, None, None, None]


def _sq(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per image: the mean over filters and positions of ``(a - b)^2``."""
    return ((a - b) ** 2).flatten(1).mean(1).numpy()


def _layer_err(r: torch.Tensor, e: torch.Tensor) -> np.ndarray:
    """The library's eq. 3: both min-max normalised over the image's whole layer."""
    return _sq(minmax(r, (1, 2, 3)), minmax(e, (1, 2, 3)))


def _ls_scaled(r: torch.Tensor, e: torch.Tensor) -> np.ndarray:
    """The estimate scaled by least squares onto the response, both divided by its range."""
    a = (r * e).flatten(1).sum(1) / (e * e).flatten(1).sum(1)
    lo, hi = r.flatten(1).amin(1), r.flatten(1).amax(1)
    span = (hi - lo)[:, None, None, None]
    return _sq(r / span, a[:, None, None, None] * e / span)


def _crop(z: torch.Tensor, c: int) -> torch.Tensor:
    h, w = z.shape[-2:]
    return z[..., c : h - c, c : w - c] if min(h, w) > 2 * c else z


def cubic_matrix(n: int, factor: int, a: float, border: str) -> torch.Tensor:
    """``(n * factor, n)``: cubic-convolution upsampling by ``factor`` (half-pixel centres).

    Keys' kernel with parameter ``a``; source indices outside ``0..n-1`` are clamped
    (``"replicate"``, what ``F.interpolate(mode="bicubic")`` does) or mirrored with the edge
    repeated (``"symmetric"``, MATLAB ``imresize``); each row's weights sum to 1.
    """

    def keys(s: float) -> float:
        s = abs(s)
        if s <= 1:
            return (a + 2) * s**3 - (a + 3) * s**2 + 1
        if s < 2:
            return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
        return 0.0

    m = np.zeros((n * factor, n))
    mirror = list(range(n)) + list(range(n - 1, -1, -1))
    for i in range(n * factor):
        src = (i + 0.5) / factor - 0.5
        base = math.floor(src)
        for j in range(base - 1, base + 3):
            k = min(max(j, 0), n - 1) if border == "replicate" else mirror[j % (2 * n)]
            m[i, k] += keys(src - j)
    m /= m.sum(1, keepdims=True)
    return torch.from_numpy(m)


def _cubic_up(a: float, border: str) -> Callable[[torch.Tensor, ChainStep], torch.Tensor]:
    def up(d: torch.Tensor, step: ChainStep) -> torch.Tensor:
        f = step.stride[0]
        mh = cubic_matrix(d.shape[-2], f, a, border).to(d.dtype)
        mw = cubic_matrix(d.shape[-1], f, a, border).to(d.dtype)
        return mh @ d @ mw.T

    return up


def _interp_up(mode: str) -> Callable[[torch.Tensor, ChainStep], torch.Tensor]:
    def up(d: torch.Tensor, step: ChainStep) -> torch.Tensor:
        size = (d.shape[-2] * step.stride[0], d.shape[-1] * step.stride[1])
        return F.interpolate(d, size=size, mode=mode, align_corners=True)

    return up


def _zero_insert(d: torch.Tensor, step: ChainStep) -> torch.Tensor:
    (sh, sw) = step.stride
    out = d.new_zeros(*d.shape[:2], d.shape[-2] * sh, d.shape[-1] * sw)
    out[..., ::sh, ::sw] = d
    return out


def _replicate(d: torch.Tensor, step: ChainStep) -> torch.Tensor:
    return d.repeat_interleave(step.stride[0], -2).repeat_interleave(step.stride[1], -1)


def decode_with(
    model: nn.Module,
    layer: str,
    up: Callable[[torch.Tensor, ChainStep], torch.Tensor],
    name: str,
) -> DecodedFilters:
    """:func:`convscope.decoding.decode` in float64 with another unpooling ``up(d, step)``.

    The chain, substitution and grid are the library's; only the pool steps differ. LeNet's
    chain has convolutions, non-overlapping max-pools and one ReLU (skipped).
    """
    dec = decode(model, layer, "nearest", dtype=torch.float64)
    steps = decoding_chain(model, layer)
    k = dec.filters.shape[0]
    d = torch.eye(k, dtype=torch.float64).view(k, k, 1, 1)
    for step in reversed(steps):
        if step.kind == "conv":
            assert isinstance(step.module, nn.Conv2d)
            w = step.module.weight.detach().double()
            d = F.conv_transpose2d(d, w, stride=step.stride, dilation=step.dilation)
        elif step.kind == "pool":
            assert step.kernel_size == step.stride, "non-overlapping pools only"
            d = up(d, step)
        elif step.kind != "skip":
            raise ValueError(f"decode_with does not handle {step.describe()}")
    return dataclasses.replace(dec, filters=d, unpool=name)


# ------------------------------------------------------------------------ the measurements


@dataclasses.dataclass
class Pair:
    """One layer and unpooling: the raw response, the raw estimate and the biases' map."""

    r: torch.Tensor  # (N, K, h, w) the layer's response, float64
    e: torch.Tensor  # (N, K, h, w) I * df, cropped to the response's extent
    base: torch.Tensor  # (1, K, h, w) the response to a black image
    dec: DecodedFilters


def pair(model: nn.Module, layer: str, x: torch.Tensor, dec: DecodedFilters) -> Pair:
    """What :func:`convscope.decoding.reconstruction_error` compares, before normalising."""
    r = layer_response(model, layer, x).double()
    e = dec.correlate(x.double())
    h, w = min(r.shape[-2], e.shape[-2]), min(r.shape[-1], e.shape[-1])
    base = layer_response(model, layer, torch.zeros_like(x[:1])).double()
    return Pair(r[..., :h, :w], e[..., :h, :w], base[..., :h, :w], dec)


def _shifted(p: Pair, x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The estimate with every unit's image window moved by ``(dy, dx)`` pixels (zero padded)."""
    xs = F.pad(x.double(), (1, 1, 1, 1))[..., 1 + dy :, 1 + dx :]
    e = F.conv2d(xs, p.dec.filters, stride=p.dec.stride)
    h, w = p.r.shape[-2:]
    return e[..., :h, :w] + p.base


def _shift_variant(dy: int, dx: int) -> Callable[[Pair, torch.Tensor], np.ndarray]:
    def f(p: Pair, x: torch.Tensor) -> np.ndarray:
        return _layer_err(p.r, _shifted(p, x, dy, dx))

    return f


def _stride_one(p: Pair, x: torch.Tensor) -> np.ndarray:
    """The estimate at every pixel against the response repeated onto that grid."""
    e = F.conv2d(x.double(), p.dec.filters)
    sh, sw = p.dec.stride
    up = p.r.repeat_interleave(sh, -2).repeat_interleave(sw, -1)
    bu = p.base.repeat_interleave(sh, -2).repeat_interleave(sw, -1)
    h, w = min(up.shape[-2], e.shape[-2]), min(up.shape[-1], e.shape[-1])
    return _layer_err(up[..., :h, :w], e[..., :h, :w] + bu[..., :h, :w])


def _padded(p: Pair, x: torch.Tensor, where: str) -> np.ndarray:
    """A "same" estimate (image zero-padded by half the filter) cropped to the response."""
    fh, fw = p.dec.filters.shape[-2:]
    e = F.conv2d(
        F.pad(x.double(), (fw // 2, fw // 2, fh // 2, fh // 2)), p.dec.filters, stride=p.dec.stride
    )
    h, w = p.r.shape[-2:]
    top, left = ((e.shape[-2] - h) // 2, (e.shape[-1] - w) // 2) if where == "centre" else (0, 0)
    return _layer_err(p.r, e[..., top : top + h, left : left + w] + p.base)


# Definitional variants measured on (R, E) pairs of the paper's three unpoolings:
# key -> (group, description, error(pair, images) -> per-image errors)
PairVariant = Callable[[Pair, torch.Tensor], np.ndarray]


def _pair_variants() -> dict[str, tuple[str, str, PairVariant]]:
    v: dict[str, tuple[str, str, PairVariant]] = {
        "baseline_local": (
            "baseline",
            "ours, recomputed by this script's own code (must equal the library's)",
            lambda p, x: _layer_err(p.r, p.e + p.base),
        ),
        "norm_per_map": (
            "normalisation",
            "range per filter map (each image, each filter); a 1x1 map has none (error 0)",
            lambda p, x: _sq(minmax(p.r, (2, 3)), minmax(p.e + p.base, (2, 3))),
        ),
        "norm_per_filter_dataset": (
            "normalisation",
            "range per filter over all images and positions",
            lambda p, x: _sq(minmax(p.r, (0, 2, 3)), minmax(p.e + p.base, (0, 2, 3))),
        ),
        "norm_dataset": (
            "normalisation",
            "one range for the whole layer over all images",
            lambda p, x: _sq(minmax(p.r, (0, 1, 2, 3)), minmax(p.e + p.base, (0, 1, 2, 3))),
        ),
        "norm_zscore": (
            "normalisation",
            "z-score (mean 0, std 1) over the image's layer instead of the range",
            lambda p, x: _sq(_zscore(p.r), _zscore(p.e + p.base)),
        ),
        "norm_energy": (
            "normalisation",
            "divided by the RMS (energy) over the image's layer instead of the range",
            lambda p, x: _sq(_rms(p.r), _rms(p.e + p.base)),
        ),
        "norm_ls_scale": (
            "normalisation",
            "estimate scaled by least squares onto the response, both over the response's range",
            lambda p, x: _ls_scaled(p.r, p.e + p.base),
        ),
        "norm_none": (
            "normalisation",
            "no normalisation (raw responses, pixels in [0, 1])",
            lambda p, x: _sq(p.r, p.e + p.base),
        ),
        "norm_sum_positions": (
            "normalisation",
            "ours, but ||.||^2 summed over each map's positions, then averaged over filters",
            lambda p, x: (
                ((minmax(p.r, (1, 2, 3)) - minmax(p.e + p.base, (1, 2, 3))) ** 2)
                .sum((2, 3))
                .mean(1)
                .numpy()
            ),
        ),
    }
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dy, dx) == (0, 0):
                continue
            v[f"shift_{dy}_{dx}".replace("-", "m")] = (
                "alignment",
                f"every unit's image window moved by ({dy:+d}, {dx:+d}) pixels",
                _shift_variant(dy, dx),
            )
    v["stride_one"] = (
        "alignment",
        "estimate at stride 1 (every pixel), response repeated onto that grid",
        _stride_one,
    )
    v["crop_1"] = (
        "cropping",
        "only interior units: 1 unit dropped at each border (layer 3; 5 and 7 are 1x1)",
        lambda p, x: _layer_err(_crop(p.r, 1), _crop(p.e + p.base, 1)),
    )
    v["crop_2"] = (
        "cropping",
        "only interior units: 2 units dropped at each border (layer 3; 5 and 7 are 1x1)",
        lambda p, x: _layer_err(_crop(p.r, 2), _crop(p.e + p.base, 2)),
    )
    v["padded_topleft"] = (
        "cropping",
        "image zero-padded by half the filter ('same' estimate), top-left crop",
        lambda p, x: _padded(p, x, "topleft"),
    )
    v["padded_centre"] = (
        "cropping",
        "image zero-padded by half the filter ('same' estimate), centred crop",
        lambda p, x: _padded(p, x, "centre"),
    )
    v["bias_none"] = (
        "biases",
        "no biases in the estimate (eq. 3 literally; the library's offset=False)",
        lambda p, x: _layer_err(p.r, p.e),
    )
    return v


def _mean_reference(
    model: nn.Module, layer: str, p: Pair, x: torch.Tensor, mean_image: torch.Tensor
) -> np.ndarray:
    """Biases through the mean training image: ``E = (I - mu) * df + CNN(mu)``."""
    e = p.dec.correlate(x.double() - mean_image.double())[..., : p.r.shape[-2], : p.r.shape[-1]]
    ref = layer_response(model, layer, mean_image).double()[..., : p.r.shape[-2], : p.r.shape[-1]]
    return _layer_err(p.r, e + ref)


UNPOOLS: dict[str, tuple[str, Callable[[torch.Tensor, ChainStep], torch.Tensor]]] = {
    "unpool_bilinear_corners": ("bilinear, align_corners=True", _interp_up("bilinear")),
    "unpool_bicubic_corners": ("bicubic, align_corners=True", _interp_up("bicubic")),
    "unpool_matlab_bicubic": (
        "MATLAB imresize bicubic (Keys a = -0.5, mirrored borders)",
        _cubic_up(-0.5, "symmetric"),
    ),
    "unpool_zero_insert": ("zero insertion (each value at its window's first pixel)", _zero_insert),
}


def measure(
    model: nn.Module,
    x: torch.Tensor,
    mean_image: torch.Tensor,
    keys: tuple[str, ...] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every definitional variant on ``x``: ``{key: {group, description, layers}}``.

    ``layers[paper layer][mode] = {mean, std}`` over the images; the paper's three modes for
    the variants of the error's definition, the variant's own unpooling for ``unpool_*``.
    """
    pv = _pair_variants()
    want = set(keys) if keys is not None else None
    out: dict[str, dict[str, Any]] = {}

    def add(key: str, group: str, desc: str, n: int, mode: str, per: np.ndarray) -> None:
        row = out.setdefault(key, {"group": group, "description": desc, "layers": {}})
        row["layers"].setdefault(str(n), {})[mode] = _stats(per)

    for n, layer in LAYERS.items():
        for mode in MODES:
            p = pair(model, layer, x, decode(model, layer, mode, dtype=torch.float64))
            for key, (group, desc, f) in pv.items():
                if want is None or key in want:
                    add(key, group, desc, n, mode, f(p, x))
            if want is None or "bias_mean_image" in want:
                add(
                    "bias_mean_image",
                    "biases",
                    "biases through the mean training image: (I - mu) * df + CNN(mu)",
                    n,
                    mode,
                    _mean_reference(model, layer, p, x, mean_image),
                )
        for key, (desc, up) in UNPOOLS.items():
            if want is None or key in want:
                dec = decode_with(model, layer, up, key)
                add(key, "unpooling", desc, n, key, _layer_err_pair(model, layer, x, dec))
        if want is None or "unpool_adjoint" in want:
            err = reconstruction_error(model, layer, x, "adjoint")
            add(
                "unpool_adjoint",
                "unpooling",
                "the library's 'adjoint' (nearest / pool area)",
                n,
                "adjoint",
                err.per_image,
            )
    return out


def _layer_err_pair(
    model: nn.Module, layer: str, x: torch.Tensor, dec: DecodedFilters
) -> np.ndarray:
    p = pair(model, layer, x, dec)
    return _layer_err(p.r, p.e + p.base)


def checks(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The local code against the library: each must be 0 up to rounding."""
    out: dict[str, float] = {}
    dev = 0.0
    for layer in LAYERS.values():
        lib = decode(model, layer, "nearest", dtype=torch.float64).filters
        mine = decode_with(model, layer, _replicate, "nearest").filters
        dev = max(dev, float((lib - mine).abs().max() / lib.abs().max()))
    out["decode_with_nearest_vs_decode"] = dev
    d = torch.randn(3, 2, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    step = ChainStep("pool", "pool", None, stride=(2, 2), kernel_size=(2, 2))
    ref = F.interpolate(d, scale_factor=2, mode="bicubic", align_corners=False)
    out["cubic_matrix_vs_interpolate"] = float(
        (_cubic_up(-0.75, "replicate")(d, step) - ref).abs().max()
    )
    return out


# ------------------------------------------------------------------------ data and training


def _data_variants(
    model: nn.Module, base: dict[str, dict[str, Any]], labels: np.ndarray, train_x: torch.Tensor
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {
        "data_train": {
            "group": "data",
            "description": f"the {len(train_x):,} embedded training images instead of the test set",
            "layers": {},
        },
        "data_first_half": {"group": "data", "description": "test images 0-499 only", "layers": {}},
        "data_second_half": {
            "group": "data",
            "description": "test images 500-999 only",
            "layers": {},
        },
    }
    extra: dict[str, Any] = {"bootstrap_95": {}, "per_digit": {}, "bootstrap_resamples": BOOTSTRAP}
    rng = np.random.default_rng(0)
    for n, layer in LAYERS.items():
        for r in rows.values():
            r["layers"][str(n)] = {}
        extra["bootstrap_95"][str(n)], extra["per_digit"][str(n)] = {}, {}
        for mode in MODES:
            per = base[str(n)][mode]
            half = len(per) // 2
            rows["data_first_half"]["layers"][str(n)][mode] = _stats(per[:half])
            rows["data_second_half"]["layers"][str(n)][mode] = _stats(per[half:])
            tr = reconstruction_error(model, layer, train_x, mode).per_image
            rows["data_train"]["layers"][str(n)][mode] = _stats(tr)
            means = per[rng.integers(0, len(per), (BOOTSTRAP, len(per)))].mean(1)
            extra["bootstrap_95"][str(n)][mode] = [
                float(np.quantile(means, 0.025)),
                float(np.quantile(means, 0.975)),
            ]
            extra["per_digit"][str(n)][mode] = {
                str(c): float(per[labels == c].mean()) for c in range(10)
            }
    return rows, extra


MATCONVNET = TrainConfig(
    epochs=20,
    batch_size=100,
    lr=1e-3,
    optimizer="sgd",
    momentum=0.9,
    weight_decay=5e-4,
    schedule="none",
    seed=0,
    device="cpu",
)


def _train(
    config: TrainConfig,
    matconvnet: bool,
    xtr: torch.Tensor,
    ytr: torch.Tensor,
    xte: torch.Tensor,
    yte: torch.Tensor,
) -> tuple[nn.Module, float]:
    seed_everything(config.seed)
    model = build_model("lenet", num_classes=10)
    if matconvnet:  # cnn_mnist_init: f * randn with f = 1/100, zero biases
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.normal_(0.0, 0.01)
                    assert m.bias is not None
                    m.bias.zero_()
    h = fit(model, TensorDataset(xtr, ytr), TensorDataset(xte, yte), config, progress=False)
    return model.eval(), float(h.test_acc[-1])


def training_variants(
    xtr: torch.Tensor,
    ytr: torch.Tensor,
    xte: torch.Tensor,
    yte: torch.Tensor,
    seeds: tuple[int, ...] = SEEDS,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """LeNets trained here, each measured with the library's error at layers 3, 5, 7."""
    runs: list[tuple[str, str, TrainConfig, bool]] = [
        (
            f"train_seed_{s}",
            f"the committed recipe (train_lenet.py: Adam, 12 epochs) retrained with seed {s}",
            LENET_CONFIG.replace(seed=s),
            False,
        )
        for s in seeds
    ]
    runs.append(
        (
            "train_matconvnet",
            "MatConvNet's recipe: SGD 0.001, momentum 0.9, weight decay 5e-4, batch 100, "
            "20 epochs, N(0, 0.01^2) init, pixels 0-255 minus the mean training image",
            MATCONVNET,
            True,
        )
    )
    mu = (255 * xtr).mean(0, keepdim=True)
    out: dict[str, dict[str, Any]] = {}
    for key, desc, config, mcn in runs:
        t0 = time.perf_counter()
        a, b = (255 * xtr - mu, 255 * xte - mu) if mcn else (xtr, xte)
        model, acc = _train(config, mcn, a, ytr, b, yte)
        table = error_table(model, list(LAYERS.values()), b, MODES)
        out[key] = {
            "group": "training",
            "description": desc,
            "test_acc": acc,
            "config": config.to_dict(),
            "layers": {
                str(n): {m: _stats(table[layer][m].per_image) for m in MODES}
                for n, layer in LAYERS.items()
            },
        }
        log(f"{key}: test accuracy {acc:.3f}, {time.perf_counter() - t0:.0f} s")
    return out


# ------------------------------------------------------------------------ the reading


def layer_mean(row: dict[str, Any], n: int) -> float:
    """A row's error at paper layer ``n``, averaged over the unpooling modes it has."""
    cells = row["layers"][str(n)]
    return float(np.mean([c["mean"] for c in cells.values()]))


def paper_mean(data: dict[str, Any], n: int) -> float:
    return float(np.mean([v[0] for v in data["paper"][str(n)].values()]))


def ratios(data: dict[str, Any], row: dict[str, Any]) -> dict[int, float]:
    return {n: layer_mean(row, n) / paper_mean(data, n) for n in LAYERS}


def within(data: dict[str, Any], ratio: float) -> bool:
    return 1 / data["tolerance"] <= ratio <= data["tolerance"]


def _cell(row: dict[str, Any], n: int) -> str:
    cells = row["layers"][str(n)]
    if set(cells) == set(MODES):
        return " / ".join(f"{cells[m]['mean']:.4f}" for m in MODES)
    return " / ".join(f"{c['mean']:.4f}" for c in cells.values())


def _names(keys: list[str]) -> str:
    return ", ".join(f"`{k}`" for k in keys) if keys else "none"


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The numbers the page and docs quote, derived from the measurements."""
    v = data["variants"]
    definitional = [k for k, r in v.items() if r["group"] not in ("baseline", "training")]
    l3_ok = [k for k in definitional if within(data, ratios(data, v[k])[3])]
    all_ok = [k for k in l3_ok if all(within(data, x) for x in ratios(data, v[k]).values())]
    seeds = [k for k, r in v.items() if k.startswith("train_seed_")]
    ours = ["baseline"] + seeds
    spread = {
        str(n): {
            "min": min(layer_mean(v[k], n) for k in ours),
            "max": max(layer_mean(v[k], n) for k in ours),
        }
        for n in LAYERS
    }
    paper_lo = {str(n): min(x[0] for x in data["paper"][str(n)].values()) for n in LAYERS}
    paper_hi = {str(n): max(x[0] for x in data["paper"][str(n)].values()) for n in LAYERS}
    shifts = {k: layer_mean(v[k], 3) for k in v if k.startswith("shift_")}
    best_shift = min(shifts, key=shifts.__getitem__)
    boot = data["data"]["bootstrap_95"]["3"]
    digits = data["data"]["per_digit"]["3"]
    digit_means = {c: float(np.mean([digits[m][c] for m in MODES])) for c in digits["nearest"]}
    return {
        "baseline_ratio": {str(n): r for n, r in ratios(data, v["baseline"]).items()},
        "definitional": definitional,
        "l3_within": l3_ok,
        "all_within": all_ok,
        "seed_keys": seeds,
        "spread": spread,
        "paper_lo": paper_lo,
        "paper_hi": paper_hi,
        "paper_inside_spread": {
            n: spread[n]["min"] <= paper_mean(data, int(n)) <= spread[n]["max"] for n in spread
        },
        "checkpoints_within": {
            str(n): [k for k in ours if within(data, ratios(data, v[k])[n])] for n in LAYERS
        },
        "checkpoints_all_within": [
            k for k in ours if all(within(data, x) for x in ratios(data, v[k]).values())
        ],
        "aligned_best": layer_mean(v["baseline"], 3) < min(shifts.values()),
        "best_shift": best_shift,
        "best_shift_l3": shifts[best_shift],
        "boot_l3": [
            float(np.mean([boot[m][0] for m in MODES])),
            float(np.mean([boot[m][1] for m in MODES])),
        ],
        "digit_lo": min(digit_means.values()),
        "digit_hi": max(digit_means.values()),
        "digit_argmin": min(digit_means, key=digit_means.__getitem__),
        "digit_argmax": max(digit_means, key=digit_means.__getitem__),
        "digits_below_paper": [c for c, m in digit_means.items() if m < paper_hi["3"]],
    }


GROUPS = ("normalisation", "alignment", "cropping", "biases", "unpooling", "data", "training")


def page(data: dict[str, Any]) -> str:
    """``layer3_gap.md``, generated from ``layer3_gap.json`` alone."""
    v, s = data["variants"], summary(data)
    br = {int(n): r for n, r in s["baseline_ratio"].items()}
    tol = data["tolerance"]
    lines = [
        "# Seed 003 Table 1, layer 3: what moves the reconstruction error",
        "",
        "Written by `experiments/decoding_gap.py` from `layer3_gap.json`: the committed "
        f"checkpoint `{data['checkpoint']}` on {data['test_set']} ({data['n_images']:,} images) "
        "unless a row says otherwise, one thing changed per row. Each cell is the mean over "
        "the images of the per-image error at that paper layer, for bicubic / nearest / "
        "bilinear unpooling (the paper's columns), or for the row's own unpooling. The "
        "baseline is `convscope.decoding.error_table` (`docs/decoding.md`).",
        "",
        f"A row *matches* the paper at a layer when its mean over the unpoolings is within a "
        f"factor {tol} of the paper's mean over its three columns.",
        "",
        "## Reading",
        "",
    ]
    lines.append(
        f"- The baseline is {br[3]:.2f}x the paper at layer 3, {br[5]:.2f}x at layer 5 and "
        f"{br[7]:.2f}x at layer 7, so it "
        + ("matches" if within(data, br[3]) else "does not match")
        + " at layer 3 and "
        + ("matches" if within(data, br[5]) and within(data, br[7]) else "does not match both")
        + " at layers 5 and 7."
    )
    lines.append(
        f"- Of the {len(s['definitional'])} variants of the definition and the data "
        f"(normalisation, alignment, cropping, biases, unpooling, data), "
        f"{len(s['l3_within'])} match the paper at layer 3 ({_names(s['l3_within'])}); "
        f"{len(s['all_within'])} of them match at layers 5 and 7 too "
        f"({_names(s['all_within'])})."
    )
    lines.append(
        "- Alignment: "
        + (
            "the library's grid (phase (0, 0)) gives the smallest layer-3 error of the 9 "
            f"phases; the next best, `{s['best_shift']}`, gives {s['best_shift_l3']:.4f}."
            if s["aligned_best"]
            else f"the phase `{s['best_shift']}` gives a smaller layer-3 error "
            f"({s['best_shift_l3']:.4f}) than the library's grid."
        )
    )
    lo, hi = s["boot_l3"]
    lines.append(
        f"- Data: the 95% bootstrap interval of the layer-3 mean over our test images is "
        f"{lo:.4f}-{hi:.4f} (averaged over the unpoolings, {data['data']['bootstrap_resamples']:,} "
        f"resamples) and the per-digit means range from {s['digit_lo']:.4f} (digit "
        f"{s['digit_argmin']}) to {s['digit_hi']:.4f} (digit {s['digit_argmax']}); "
        + (
            f"no re-weighting of the digits could reach the paper's {s['paper_hi']['3']:.4f}."
            if not s["digits_below_paper"]
            else f"only digit(s) {', '.join(s['digits_below_paper'])} are below the paper's "
            f"{s['paper_hi']['3']:.4f} on their own, so only a test set made mostly of them "
            "would reach it."
        )
    )
    low = sorted(
        (k for k in s["definitional"] if min(ratios(data, v[k]).values()) > 0),
        key=lambda k: layer_mean(v[k], 3),
    )[:3]
    lines.append(
        "- The lowest layer-3 errors among the variants (leaving out those that make a layer's "
        "error 0) come from "
        + "; ".join(
            f"`{k}` ({layer_mean(v[k], 3):.4f}, with layer 5 at {ratios(data, v[k])[5]:.2f}x "
            f"and layer 7 at {ratios(data, v[k])[7]:.2f}x the paper)"
            for k in low
        )
        + "."
    )
    n_ck = len(s["seed_keys"]) + 1
    parts = []
    for n in LAYERS:
        sp = s["spread"][str(n)]
        parts.append(
            f"layer {n} from {sp['min']:.4f} to {sp['max']:.4f} ({sp['max'] / sp['min']:.1f}x; "
            f"the paper's mean {paper_mean(data, n):.4f} "
            + ("inside" if s["paper_inside_spread"][str(n)] else "outside")
            + ")"
        )
    cw = s["checkpoints_within"]
    seed0 = v["train_seed_0"] if "train_seed_0" in v else None
    lines.append(
        f"- Training: over the {n_ck} checkpoints of our recipe (the committed one and "
        f"{len(s['seed_keys'])} retrained with seeds "
        f"{', '.join(k.rsplit('_', 1)[1] for k in s['seed_keys'])}), the error runs "
        + "; ".join(parts)
        + f". Of the {n_ck}, {len(cw['3'])} match the paper at layer 3, {len(cw['5'])} at "
        f"layer 5, {len(cw['7'])} at layer 7 and {len(s['checkpoints_all_within'])} at all "
        f"three ({_names(s['checkpoints_all_within'])})."
        + (
            f" Retrained with seed 0 the recipe gives {layer_mean(seed0, 3):.4f} at layer 3, "
            f"against the committed checkpoint's {layer_mean(v['baseline'], 3):.4f}."
            if seed0 is not None
            else ""
        )
        + " MatConvNet's own recipe gives "
        + " / ".join(f"{layer_mean(v['train_matconvnet'], n):.4f}" for n in LAYERS)
        + f" at layers 3 / 5 / 7 (test accuracy {v['train_matconvnet']['test_acc']:.1%})."
    )
    sp3 = s["spread"]["3"]
    explained = not s["all_within"] and s["aligned_best"] and s["paper_inside_spread"]["3"]
    lines += [
        "",
        "**Conclusion.** "
        + (
            "No change to the definition or the data brings layer 3 to the paper's value "
            "while keeping layers 5 and 7 there, and the library's alignment is the best one. "
            f"The layer-3 gap ({br[3]:.2f}x) is smaller than what retraining the same network "
            f"with another seed does to layer 3 ({sp3['max'] / sp3['min']:.1f}x between the "
            "lowest and the highest checkpoint, the paper's value in between)"
            + (
                f", and {len(s['checkpoints_all_within'])} of our {n_ck} checkpoints "
                f"({_names(s['checkpoints_all_within'])}) "
                + ("matches" if len(s["checkpoints_all_within"]) == 1 else "match")
                + " the paper at all three layers"
                if s["checkpoints_all_within"]
                else ""
            )
            + ": the gap is a property of the committed checkpoint, not of the definition, "
            "and one checkpoint's Table 1 cannot pin the definition down more finely than "
            "this spread."
            if explained
            else "Some change to the definition or the data closes the gap, the alignment "
            "is not the best one, or the seed spread does not cover the paper's value: read "
            "the rows above."
        ),
        "",
    ]
    head = "| row | what changed | L3 | L5 | L7 |"
    rule = "| --- | --- | ---: | ---: | ---: |"
    paper_row = (
        "| paper | seed 003 Table 1 | "
        + " | ".join(
            " / ".join(f"{data['paper'][str(n)][m][0]:.4f}" for m in MODES) for n in LAYERS
        )
        + " |"
    )

    def row_line(k: str) -> str:
        r = v[k]
        rat = ratios(data, r)
        mark = {n: "" if within(data, rat[n]) else " ✗" for n in LAYERS}
        return (
            f"| `{k}` | {r['description']} | "
            + " | ".join(f"{_cell(r, n)}{mark[n]}" for n in LAYERS)
            + " |"
        )

    lines += ["## The rows", "", "✗: does not match the paper at that layer.", ""]
    lines += [head, rule, paper_row, row_line("baseline"), row_line("baseline_local")]
    for g in GROUPS:
        keys = [k for k, r in v.items() if r["group"] == g]
        lines += ["", f"### {g.capitalize()}", "", head, rule, row_line("baseline")]
        lines += [row_line(k) for k in keys]
    ck = data["checks"]
    lines += [
        "",
        "## Checks of the local code",
        "",
        f"- `baseline_local` against the library: largest difference "
        f"{data['baseline_local_vs_library']:.1e}.",
        f"- `decode_with` with replication against `decode(..., 'nearest')`: largest relative "
        f"difference {ck['decode_with_nearest_vs_decode']:.1e}.",
        f"- `cubic_matrix` with Keys a = -0.75 and clamped borders against "
        f"`F.interpolate(mode='bicubic')`: largest difference "
        f"{ck['cubic_matrix_vs_interpolate']:.1e}.",
        "",
        f"Run time: {data['seconds']:.0f} s on one CPU thread.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--page-only", action="store_true", help="rewrite the summary and page from the JSON"
    )
    args = p.parse_args()
    if args.page_only:
        report(json.loads(JSON.read_text()))
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, _ = load_checkpoint(CHECKPOINT)
    model.eval()
    test, train = load_mnist_subset("test"), load_mnist_subset("train")
    x, xtr = torch.from_numpy(test.images), torch.from_numpy(train.images)
    mean_image = xtr.mean(0, keepdim=True)

    table = error_table(model, list(LAYERS.values()), x, MODES)
    baseline: dict[str, Any] = {
        "group": "baseline",
        "description": "ours: convscope.decoding.error_table (the library), as table.json",
        "layers": {
            str(n): {m: _stats(table[layer][m].per_image) for m in MODES}
            for n, layer in LAYERS.items()
        },
    }
    per_image = {
        str(n): {m: table[layer][m].per_image for m in MODES} for n, layer in LAYERS.items()
    }
    variants: dict[str, dict[str, Any]] = {"baseline": baseline}
    variants.update(measure(model, x, mean_image))
    print(f"definitional variants: {time.perf_counter() - t0:.0f} s")
    dev = max(
        abs(variants["baseline_local"]["layers"][n][m]["mean"] - baseline["layers"][n][m]["mean"])
        for n in baseline["layers"]
        for m in MODES
    )
    rows, extra = _data_variants(model, per_image, test.labels, xtr)
    variants.update(rows)
    print(f"data variants: {time.perf_counter() - t0:.0f} s")
    ytr, yte = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    variants.update(training_variants(xtr, ytr, x, yte))

    check_x = x[:CHECK_N]
    data: dict[str, Any] = {
        "checkpoint": str(CHECKPOINT.relative_to(HERE.parent)),
        "test_set": test.name,
        "n_images": len(test),
        "layers": {str(n): layer for n, layer in LAYERS.items()},
        "modes": list(MODES),
        "paper": {str(n): {m: list(v) for m, v in row.items()} for n, row in PAPER.items()},
        "tolerance": TOLERANCE,
        "variants": variants,
        "baseline_local_vs_library": dev,
        "checks": checks(model, x[:8]),
        "data": extra,
        "check_subset": {
            "n_images": CHECK_N,
            "variants": measure(model, check_x, mean_image, CHECK_KEYS),
        },
    }
    data["seconds"] = time.perf_counter() - t0
    write_json(JSON, data)  # the measurements first: the reading below is derived from them
    print(report(data))


def report(data: dict[str, Any]) -> str:
    """Store the summary beside the measurements and write the page; returns the page."""
    data["summary"] = summary(data)
    write_json(JSON, data)
    text = page(data)
    PAGE.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
