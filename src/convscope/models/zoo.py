"""Models by name and checkpoints that are safe to load.

A checkpoint is a plain ``dict`` of tensors, strings and numbers written with
``torch.save`` and read back with ``torch.load(weights_only=True)``, so loading a
file never runs code from it. It records the architecture name and the
constructor arguments, so ``load_checkpoint`` rebuilds the model without the
caller knowing what it was.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = [
    "ARCHITECTURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_model",
    "imagenet_normalized",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "torchvision_model",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CHECKPOINT_FORMAT = "convscope-checkpoint-v1"


def _gfnn(**kw: Any) -> nn.Module:
    from convscope.models.gfnn import GFNN

    return GFNN(**kw)


def _gf_resnet50(**kw: Any) -> nn.Module:
    from convscope.models.gfnn import gf_resnet50

    return gf_resnet50(**kw)


def _bicubic(**kw: Any) -> nn.Module:
    from convscope.models.sr import BicubicUpscaler

    return BicubicUpscaler(**kw)


def _espcn(**kw: Any) -> nn.Module:
    from convscope.models.sr import ESPCN

    return ESPCN(**kw)


def _edsr_baseline(**kw: Any) -> nn.Module:
    from convscope.models.sr import EDSRBaseline

    return EDSRBaseline(**kw)


def _cyclegan_generator(**kw: Any) -> nn.Module:
    from convscope.models.i2i import CycleGANGenerator

    return CycleGANGenerator(**kw)


def _lenet(**kw: Any) -> nn.Module:
    from convscope.models.lenet import LeNet

    return LeNet(**kw)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "gfnn": _gfnn,
    "gf_resnet50": _gf_resnet50,
    "lenet": _lenet,
    "bicubic": _bicubic,
    "espcn": _espcn,
    "edsr_baseline": _edsr_baseline,
    "cyclegan_generator": _cyclegan_generator,
}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build a convscope architecture by name and remember how it was built.

    The name and arguments are kept on the model (``convscope_arch``,
    ``convscope_kwargs``) so :func:`save_checkpoint` can record them.
    """
    if arch not in ARCHITECTURES:
        raise ConvscopeError(
            f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        )
    try:
        model = ARCHITECTURES[arch](**kwargs)
    except TypeError as e:
        raise ConvscopeError(f"bad arguments for {arch}: {e}") from None
    model.convscope_arch = arch  # type: ignore[assignment]
    model.convscope_kwargs = dict(kwargs)  # type: ignore[assignment]
    return model


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str | None = None,
    kwargs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (temporary name, then rename).

    Args:
        arch, kwargs: how to rebuild the model; default: what :func:`build_model` noted.
        extra: JSON-like metadata (metrics, epoch, class names ...).
    """
    arch = arch or getattr(model, "convscope_arch", None)
    if arch is None:
        raise ConvscopeError(
            "cannot tell how to rebuild this model: build it with convscope.models.build_model "
            "or pass arch= and kwargs= to save_checkpoint"
        )
    kw = kwargs if kwargs is not None else getattr(model, "convscope_kwargs", {})
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "kwargs": dict(kw),
        "state_dict": state,
        "extra": dict(extra or {}),
    }
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(model, extra)``: the model in eval mode and the checkpoint's metadata.

    Raises:
        ConvscopeError: missing, corrupt or foreign file.
    """
    p = Path(path)
    if not p.is_file():
        raise ConvscopeError(f"checkpoint {p} does not exist")
    try:
        blob = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvscopeError(
            f"cannot read checkpoint {p}: {first[:200]} (is it a convscope checkpoint?)"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ConvscopeError(
            f"{p} is not a convscope checkpoint (write one with `convscope train`)"
        )
    model = build_model(blob["arch"], **blob["kwargs"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise ConvscopeError(f"checkpoint {p} does not match its architecture: {e}") from None
    model.eval()
    return model, dict(blob.get("extra", {}))


def torchvision_model(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """A torchvision classification model by name.

    Args:
        name: e.g. ``"resnet18"``.
        weights: ``None`` (untrained) or ``"DEFAULT"`` / a weights enum name. Weights
            are read from torch's local cache only; this never downloads.

    Raises:
        ConvscopeError: unknown name, or weights not in the local cache.
    """
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover
        raise ConvscopeError("torchvision models need: pip install 'convscope[zoo]'") from e
    models = torchvision.models
    if name not in models.list_models(module=models):
        raise ConvscopeError(f"unknown torchvision model {name!r}")
    if weights is None:
        return models.get_model(name, weights=None, **kwargs)
    w = models.get_model_weights(name)
    enum = w.DEFAULT if weights == "DEFAULT" else w[weights]
    fname = enum.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not cached.is_file():
        raise ConvscopeError(
            f"pretrained weights for {name} are not in the local cache ({cached}); this machine "
            "cannot download them - copy the file there, or use a model you trained"
        )
    return models.get_model(name, weights=enum, **kwargs)


class _ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` with ImageNet statistics, as plain constants (no state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def imagenet_normalized(net: nn.Module) -> nn.Module:
    """``net`` behind ImageNet normalisation, so it reads [0, 1] RGB pixels.

    The analyses then see pixels as the input (the linear interpreter's F acts on
    pixels, the mean shift becomes a bias source named ``normalize``).
    """
    return nn.Sequential(OrderedDict(normalize=_ImageNetNormalize(), net=net))


def load_model(spec: str, weights: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a checkpoint path, a convscope architecture name or a torchvision name.

    Untrained models are built from seed 0, so the same spec gives the same model.
    torchvision models are put behind :func:`imagenet_normalized`.

    Args:
        spec: a checkpoint file (``*.pt``), e.g. ``"gfnn"``, or e.g. ``"resnet18"``.
        weights: torchvision pretrained weights from the local cache (never downloaded).

    Returns:
        ``(model in eval mode, info)`` with ``info`` keys ``source``, ``class_names``
        (or ``None``), ``in_channels`` and ``input_size`` (``None`` when unknown), and
        ``normalization`` for torchvision models.
    """
    path = Path(spec)
    if path.is_file() or path.suffix in (".pt", ".pth") or "/" in spec:
        if weights:
            raise ConvscopeError("--weights is for torchvision model names, not checkpoints")
        model, extra = load_checkpoint(path)
        info: dict[str, Any] = {"source": "checkpoint", "class_names": extra.get("class_names")}
    elif spec in ARCHITECTURES:
        if weights:
            raise ConvscopeError(f"--weights is for torchvision models; {spec} is convscope's")
        with torch.random.fork_rng():  # an untrained model is the same on every run
            torch.manual_seed(0)
            model = build_model(spec)
        info = {"source": "convscope (untrained, seed 0)", "class_names": None}
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = torchvision_model(spec, weights="DEFAULT" if weights else None)
        names = None
        if weights:
            import torchvision

            names = torchvision.models.get_model_weights(spec).DEFAULT.meta.get("categories")
        model = imagenet_normalized(net)
        info = {
            "source": "torchvision" + ("" if weights else " (untrained, seed 0)"),
            "class_names": names,
            "normalization": "imagenet",
        }
    channels = getattr(model, "in_channels", None) or getattr(model, "channels", None)
    if not isinstance(channels, int):
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first.in_channels if first is not None else None
    side = getattr(model, "input_size", None)
    info.update(in_channels=channels, input_size=(side, side) if isinstance(side, int) else None)
    return model.eval(), info
