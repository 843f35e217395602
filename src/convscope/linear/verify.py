"""Check the interpreter on a model against autograd: is the frozen system what it claims?

:func:`verify` freezes ``model`` at ``x0`` and measures, in float64 where the model allows:

- ``x0_error``: how far the interpreter's ``f(x0)`` is from the model's own output;
- ``conservation_error``: how far the contributions (input part plus every bias source)
  are from summing to ``f(x0)`` (seed 001, Theorem 1);
- ``jvp_error`` (``mode="taylor"``): ``li.linear(x1 - x0)`` against ``torch.func.jvp`` of
  the model at ``x0`` (the linear part compared on its own: a difference of two outputs
  would lose digits when ``f(x0)`` dominates), and ``vjp_error``: ``li.transpose(y)``
  against ``torch.func.vjp``;
- ``signal``: ``|J dx| / |f(x0)|``, so a check that passes because the signal vanished
  (untrained batch-norm statistics of 0 and 1 do that) is seen for what it is.

:func:`calibrate_batch_norm` gives an untrained model what makes these checks mean
something: random affine values and batch-norm statistics set from real images by
cumulative averaging (``momentum=None``; a couple of passes at the default 0.1 still
shrink the signal block by block).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = [
    "KWARGS",
    "SIZES",
    "TIMM",
    "Verification",
    "build_zoo_model",
    "calibrate_batch_norm",
    "verify",
    "zoo_models",
]


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor, *, seed: int = 0) -> nn.Module:
    """Random affine values and biases, batch-norm statistics from ``x``; then eval mode.

    Weights that are all zero (the classification head of torchvision's ViT starts so)
    get random values too: a zero map makes every check pass trivially.

    Args:
        model: An untrained network (changed in place).
        x: ``(N, C, H, W)`` real images the statistics are taken from (one pass).
        seed: Seed of the random affine values.

    Returns:
        ``model``, in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                if not m.weight.any():  # zero-initialised heads (torchvision's ViT) give F = 0
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=gen))
        model.train()
        model(x)
    return model.eval()


@dataclass(frozen=True)
class Verification:
    """How exact the interpreter is on one model at one image (relative errors).

    Attributes:
        mode: ``"freeze"`` or ``"taylor"``.
        x0_error: ``max |li.output - f(x0)| / max |f(x0)|``.
        conservation_error: ``max |sum of contributions - f(x0)| / max |f(x0)|``.
        jvp_error: taylor only: ``li.linear(dx)`` against ``torch.func.jvp`` (``None`` in
            freeze mode, where ``F`` is not the Jacobian).
        vjp_error: taylor only: ``li.transpose(y)`` against ``torch.func.vjp``.
        jvp_floor: taylor only: how much ``jvp`` itself moves when ``x0`` moves by a
            relative 1e-15 (random): the precision the model's Jacobian at ``x0`` allows.
            An interpreter error near it is rounding amplified by the model, not a rule.
        signal: ``max |J dx| / max |f(x0)|`` (taylor) or ``max |F dx| / max |f(x0)|``.
        sources: the number of bias sources.
        seconds: the time the checks took.
    """

    mode: str
    x0_error: float
    conservation_error: float
    jvp_error: float | None
    vjp_error: float | None
    signal: float
    sources: int
    seconds: float
    jvp_floor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    ref = (scale if scale is not None else b).detach().abs().max()
    diff = (a - b).detach().abs().max()
    return float(diff / ref) if float(ref) > 0 else float(diff)


def _math_attention() -> Any:
    """Scaled dot-product attention by its plain formula (differentiable in both modes)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def verify(
    model: nn.Module,
    x0: torch.Tensor,
    x1: torch.Tensor,
    *,
    mode: str = "taylor",
    output: Any = None,
    seed: int = 0,
) -> Verification:
    """Freeze ``model`` at ``x0`` and compare the frozen system with autograd at ``x1``.

    Args:
        model: The network (in the mode it is read in, usually eval).
        x0: ``(1, *in_shape)`` the operating point.
        x1: ``(B, *in_shape)`` probes; ``x1 - x0`` are the tangents.
        mode: ``"taylor"`` (``F`` must be the Jacobian: jvp and vjp are compared) or
            ``"freeze"`` (reproduction of ``f(x0)`` and conservation only).
        output: Passed to the interpreter for models whose output is not one tensor
            (a key, an index or a callable), and used to pick the same tensor here.
        seed: Seed of the random output-space vector of the vjp check.

    Returns:
        The :class:`Verification`.

    Raises:
        ConvscopeError: Whatever the interpreter refuses (an op without a rule ...).
    """
    from convscope.linear import LinearInterpreter

    if mode not in ("freeze", "taylor"):
        raise ConvscopeError(f"mode must be freeze or taylor; got {mode!r}")
    pick: Callable[[Any], torch.Tensor]
    if output is None:
        pick = lambda out: out  # noqa: E731
    elif callable(output):
        pick = output
    else:
        pick = lambda out: out[output]  # noqa: E731

    def f(x: torch.Tensor) -> torch.Tensor:
        return pick(model(x))

    start = time.perf_counter()
    kwargs: dict[str, Any] = {} if output is None else {"output": output}
    li = LinearInterpreter(model, x0, mode=mode, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        f0 = f(x0)
    x0_error = _rel(li.output, f0)
    total = torch.stack(list(li.contributions().values())).sum(0)
    conservation = _rel(total, f0)
    dx = x1 - x0
    lin = li.linear(dx)
    jvp_error = vjp_error = jvp_floor = None
    if mode == "taylor":
        with _math_attention():  # the fused attention kernels have no forward-mode formula
            jv = torch.func.jvp(f, (x0.expand_as(x1).clone(),), (dx,))[1]
        jvp_error = _rel(lin, jv)
        gen = torch.Generator().manual_seed(seed)
        nudge = 1e-15 * torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
        with _math_attention():
            x0n = (x0 * (1 + nudge)).expand_as(x1).clone()
            jvp_floor = _rel(torch.func.jvp(f, (x0n,), (dx,))[1], jv)
        signal = float(jv.detach().abs().max() / f0.abs().max())
        gen = torch.Generator().manual_seed(seed)
        y = torch.randn(li.out_shape, generator=gen, dtype=f0.dtype).to(f0.device)[None]
        with _math_attention():
            pullback = torch.func.vjp(f, x0)[1]
            vj = pullback(y)[0]
        vjp_error = _rel(li.transpose(y), vj)
    else:
        signal = float(lin.abs().max() / f0.abs().max())
    return Verification(mode, x0_error, conservation, jvp_error, vjp_error, signal,
                        len(li.sources), round(time.perf_counter() - start, 3),
                        jvp_floor)  # fmt: skip


# -- the model zoo the coverage table and its tests walk ------------------------------------

# name -> constructor keywords, where the default cannot take a small input or needs help
KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "googlenet": {"aux_logits": False, "init_weights": True},
    "vit_b_16": {"image_size": 32},
    "vit_b_32": {"image_size": 32},
    "vit_l_16": {"image_size": 32},
    "vit_l_32": {"image_size": 32},
    "vit_h_14": {"image_size": 28},
}
SEGMENTATION_KWARGS: dict[str, Any] = {"weights_backbone": None}
# name -> input side; the rest take 32 x 32
SIZES: dict[str, int] = {
    "alexnet": 63,
    "inception_v3": 75,
    "vit_h_14": 28,
    "maxvit_t": 224,
}


# timm families (when timm is installed): name -> constructor keywords
TIMM: dict[str, dict[str, Any]] = {
    "timm/vit_tiny_patch16_224": {"img_size": 32},
    "timm/deit_tiny_patch16_224": {"img_size": 32},
    "timm/convnext_atto": {},
    "timm/efficientnet_b0": {},
    "timm/regnetx_002": {},
}


def zoo_models() -> list[tuple[str, str]]:
    """``(kind, name)`` of every model :func:`build_zoo_model` builds: torchvision's
    classification and segmentation models, and a few timm families when timm is there."""
    import importlib.util

    import torchvision.models as tvm

    cls = [("classification", n) for n in tvm.list_models(module=tvm)]
    seg = [("segmentation", n) for n in tvm.list_models(module=tvm.segmentation)]
    timm = [("timm", n) for n in TIMM] if importlib.util.find_spec("timm") else []
    return cls + seg + timm


def build_zoo_model(
    kind: str, name: str, *, images: int = 4, seed: int = 0
) -> tuple[nn.Module, torch.Tensor, Any]:
    """An untrained zoo model, float64, at its smallest input, its batch norm calibrated on
    :func:`calibration_crops` (not on the images it is checked at).

    Args:
        kind: ``"classification"``, ``"segmentation"`` or ``"timm"`` (see :func:`zoo_models`).
        name: The model's name.
        images: How many photos (``x[:1]`` is then the operating point, the rest probes).
        seed: Seed of the weights and of the calibration's affine values.

    Returns:
        ``(model, x, output)``: the model in eval mode, ``(images, 3, S, S)`` standardised
        photos, and the ``output=`` the interpreter needs (``"out"`` for segmentation).
    """
    import torchvision.models as tvm

    size = SIZES.get(name, 32)
    x = photo_batch(size, images)
    calibration = calibration_crops(size, seed=seed)
    torch.manual_seed(seed)
    output: Any = None
    if kind == "segmentation":
        model = tvm.get_model(name, weights=None, **SEGMENTATION_KWARGS)
        output = "out"
    elif kind == "timm":
        import timm

        model = timm.create_model(name.removeprefix("timm/"), pretrained=False, **TIMM[name])
    else:
        model = tvm.get_model(name, weights=None, **KWARGS.get(name, {}))
    return calibrate_batch_norm(model.double(), calibration, seed=seed), x, output


_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


def _standardise(a: torch.Tensor) -> torch.Tensor:
    return ((a - 0.45) / 0.25).double()


def photo_batch(size: int, images: int = 4) -> torch.Tensor:
    """``(images, 3, size, size)`` whole photos, resized and standardised, float64."""
    from convscope.data import sample_photo

    out = []
    for p in _PHOTOS[:images]:
        a = torch.from_numpy(sample_photo(p)).permute(2, 0, 1).float()[None] / 255
        out.append(nn.functional.interpolate(a, size=(size, size), mode="bilinear", antialias=True))
    return _standardise(torch.cat(out))


def calibration_crops(size: int, *, per_photo: int = 8, seed: int = 0) -> torch.Tensor:
    """Random crops (every other one mirrored) of the sample photos, for batch-norm statistics.

    Statistics from the handful of images a check runs on leave channels of the last
    stages (1 x 1 spatially at small inputs) with a variance from four numbers; their
    gains then reach 1e5 and the Jacobian at ``x0`` becomes so sensitive that ``jvp``
    itself changes by 1e-8 when ``x0`` moves by one rounding error. Forty-eight crops
    keep untrained models as well conditioned as trained ones are.
    """
    from convscope.data import sample_photo

    gen = torch.Generator().manual_seed(seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    out = []
    for p in _PHOTOS:
        a = torch.from_numpy(sample_photo(p)).permute(2, 0, 1).float()[None] / 255
        h, w = a.shape[-2:]
        for k in range(per_photo):
            s = pick(min(h, w) // 3, min(h, w))
            i, j = pick(0, h - s), pick(0, w - s)
            c = a[..., i : i + s, j : j + s]
            c = c.flip(-1) if k % 2 else c
            out.append(
                nn.functional.interpolate(c, size=(size, size), mode="bilinear", antialias=True)
            )
    return _standardise(torch.cat(out))
