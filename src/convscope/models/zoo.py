"""Models by name, checkpoints that are safe to load, and ``load_model`` for every source.

A checkpoint is a plain ``dict`` of tensors, strings and numbers written with
``torch.save`` and read back with ``torch.load(weights_only=True)``, so loading a
file never runs code from it. It records the architecture name and the
constructor arguments, so ``load_checkpoint`` rebuilds the model without the
caller knowing what it was.

:func:`load_model` takes the one spec every ``--model`` option takes: a checkpoint,
a convscope architecture, a torchvision or timm name, ``file.py:factory`` /
``package.module:factory``, or an exported program (``.pt2``). The loaders for the
outside sources live in :mod:`convscope.models.sources`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.models import sources as src
from convscope.models.normalize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_normalized,
    normalized,
)
from convscope.models.sources import torchvision_model

__all__ = [
    "ARCHITECTURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_SOURCES",
    "build_model",
    "imagenet_normalized",
    "load_checkpoint",
    "load_model",
    "normalized",
    "save_checkpoint",
    "torchvision_model",
]

CHECKPOINT_FORMAT = "convscope-checkpoint-v1"


def _gfnn(**kw: Any) -> nn.Module:
    from convscope.models.gfnn import GFNN

    return GFNN(**kw)


def _gf_resnet50(**kw: Any) -> nn.Module:
    from convscope.models.gfnn import gf_resnet50

    return gf_resnet50(**kw)


def _gf_resnet_small(**kw: Any) -> nn.Module:
    from convscope.models.gfnn import gf_resnet_small

    return gf_resnet_small(**kw)


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
    "gf_resnet_small": _gf_resnet_small,
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


# -- load_model: every source behind one spec ---------------------------------------------------

MODEL_SOURCES = ("checkpoint", "convscope", "torchvision", "timm", "factory", "exported")

_ACCEPTED = (
    "a convscope checkpoint (.pt), an exported program (.pt2), file.py:factory or "
    "package.module:factory, a convscope architecture ({archs}), a torchvision name "
    "(e.g. resnet18) or a timm name (timm/NAME, e.g. timm/resnet10t)"
)


def _weights_name(weights: str | bool | None) -> str | None:
    if weights is None or weights is False:
        return None
    if weights is True:
        return "DEFAULT"
    if isinstance(weights, str) and weights.strip():
        return weights.strip()
    raise ConvscopeError(
        f"weights must be None, True, 'DEFAULT' or a weights name; got {weights!r}"
    )


def _detect(text: str) -> str:
    """The kind of spec, in the documented order (before anything is loaded)."""
    if text.endswith(".pt2"):
        return "exported"
    if src.parse_factory_spec(text) is not None:
        return "factory"
    path = Path(text)
    if path.is_file() or path.suffix in (".pt", ".pth"):
        return "checkpoint"
    if text in ARCHITECTURES:
        return "convscope"
    if src.is_torchvision_name(text):
        return "torchvision"
    if text.startswith("timm/"):
        return "timm"
    if "/" in text or os.sep in text:
        # a path, not a name: say so rather than list every kind of spec
        raise ConvscopeError(f"model file {text} does not exist")
    if src.is_timm_name(text):
        return "timm"
    hint = "" if src.timm_available() else f" (timm names need timm: {src.ZOO_HINT})"
    raise ConvscopeError(
        f"unknown model {text!r}: give "
        + _ACCEPTED.format(archs=", ".join(sorted(ARCHITECTURES)))
        + hint
    )


def _shape_facts(model: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """``(in_channels, (H, W))`` from the model's attributes or its first input layer.

    The first input layer is the first kernel bank or convolution in module order: a
    GF-ResNet's fixed bank reads the image (3 channels) while its first ``Conv2d`` is the
    1x1 mix behind it (96 channels).
    """
    from convscope.models.gfnn import KernelBank2d

    channels = getattr(model, "in_channels", None) or getattr(model, "channels", None)
    if not isinstance(channels, int):
        first = next((m for m in model.modules() if isinstance(m, (KernelBank2d, nn.Conv2d))), None)
        channels = first.in_channels if first is not None else None
    side = getattr(model, "input_size", None)
    size: tuple[int, int] | None = None
    if isinstance(side, int):
        size = (side, side)
    elif isinstance(side, Sequence) and len(side) == 2 and all(isinstance(s, int) for s in side):
        size = (int(side[0]), int(side[1]))
    return channels, size


def _class_names(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConvscopeError(f"{where}: class_names must be a list of strings; got {value!r:.80}")
    return [str(v) for v in value]


def load_model(
    spec: str | os.PathLike[str],
    weights: str | bool | None = None,
    *,
    state_dict: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A model from any source, in eval mode, reading [0, 1] pixels, and what it is.

    The spec's kind is detected in this order: ``*.pt2`` (exported program,
    ``torch.export.load(path).module()``); ``file.py:factory`` or
    ``package.module:factory`` (a callable returning an ``nn.Module``, called with no
    arguments); an existing file or ``*.pt`` / ``*.pth`` (convscope checkpoint); a
    convscope architecture name (:data:`ARCHITECTURES`); a torchvision classification
    name; ``timm/NAME`` or a name timm knows. Untrained builds (architectures,
    factories, torchvision, timm) start from seed 0 without touching the caller's
    random state, so a spec gives the same model on every run. torchvision and timm
    networks are put behind their normalisation (submodules ``normalize`` and ``net``).

    Args:
        spec: see above, e.g. ``"runs/gfnn.pt"``, ``"gfnn"``, ``"resnet18"``,
            ``"timm/resnet10t"``, ``"models.py:make_net"``, ``"net.pt2"``.
        weights: torchvision / timm only. ``None`` or ``False``: untrained; ``True``
            or ``"DEFAULT"``: the default weights; a string: a torchvision weights
            name (``"IMAGENET1K_V1"``) or a timm pretrained tag (``"a1_in1k"``).
            Downloaded through torchvision's / timm's own cache when not there yet.
        state_dict: a file of tensors for the network (plain, or under
            ``"state_dict"`` / ``"model"``), for factories, torchvision, timm and
            convscope architectures. All keys and shapes must match.

    Returns:
        ``(model, info)``. ``info`` keys: ``spec`` (str), ``source`` (one of
        :data:`MODEL_SOURCES`), ``description`` (short label), ``trained`` (bool, or
        None when unknown: a factory without a state dict, an exported program),
        ``weights`` (the weights name loaded, or None), ``class_names`` (list or
        None), ``in_channels`` (int or None), ``input_size`` ((H, W) or None),
        ``normalization`` (``"imagenet"`` for torchvision, ``{"mean", "std"}`` for
        timm, else None; already inside the model) and ``preprocess`` (the weights'
        own ``resize``, ``crop``, ``interpolation``, ``mean``, ``std``, or None).

    Raises:
        ConvscopeError: one line, before any computation, for every bad spec,
            weights name or state dict, and for weights that are neither cached nor
            downloadable (naming the URL and the cache).
    """
    text = os.fspath(spec)
    wname = _weights_name(weights)
    kind = _detect(text)
    sd = Path(state_dict) if state_dict is not None else None
    labels = {
        "checkpoint": "a convscope checkpoint, which has its own weights",
        "exported": "an exported program, which has its own weights",
        "factory": "a factory (load trained tensors with --state-dict)",
        "convscope": "a convscope architecture (use a checkpoint, or --state-dict)",
    }
    if wname is not None and kind in labels:
        raise ConvscopeError(
            f"weights (--weights) are for torchvision and timm names; {text} is {labels[kind]}"
        )
    if sd is not None and kind in ("checkpoint", "exported"):
        raise ConvscopeError(
            "a state dict (--state-dict) is for factories, torchvision, timm and convscope "
            f"architectures; {text} is {labels[kind]}"
        )
    if sd is not None and wname is not None:
        raise ConvscopeError(
            f"give weights or a state dict for {text}, not both (weights={wname!r}, {sd})"
        )
    info: dict[str, Any] = {
        "spec": text,
        "source": kind,
        "trained": sd is not None,
        "weights": None,
        "class_names": None,
        "normalization": None,
        "preprocess": None,
    }
    untrained = "untrained, seed 0" if sd is None else f"state dict {sd.name}"
    model: nn.Module
    if kind == "exported":
        ex = src.load_exported(text)
        model = ex.model
        shape = ex.input_shape
        channels = shape[1] if shape is not None and len(shape) == 4 else None
        size = shape[2:] if shape is not None and len(shape) == 4 else None
        info.update(
            description=f"exported program {Path(text).name}",
            trained=None,
            in_channels=channels,
            input_size=(size[0], size[1]) if size and None not in size else None,
        )
        return model, info  # its mode is fixed: it runs as it was exported
    if kind == "factory":
        target, attr = src.parse_factory_spec(text)  # type: ignore[misc]
        fm = src.load_factory(target, attr)
        model = fm.model
        label = f"{Path(target).name if target.endswith('.py') else target}:{attr}"
        if sd is not None:
            src.apply_state_dict(model, sd, f"factory {label}")
        names = getattr(model, "class_names", None)
        if names is None:
            names = getattr(fm.module, "class_names", None)
        info.update(
            description=f"factory {label} ({'seed 0' if sd is None else untrained})",
            trained=True if sd is not None else None,
            class_names=_class_names(names, f"factory {label}"),
        )
    elif kind == "checkpoint":
        model, extra = load_checkpoint(text)
        arch = getattr(model, "convscope_arch", "?")
        info.update(
            description=f"checkpoint {Path(text).name} ({arch})",
            trained=True,
            class_names=_class_names(extra.get("class_names"), f"checkpoint {text}"),
        )
    elif kind == "convscope":
        with src.seeded():  # an untrained model is the same on every run
            model = build_model(text)
        if sd is not None:
            src.apply_state_dict(model, sd, f"convscope {text}")
        info.update(description=f"convscope {text} ({untrained})")
    elif kind == "torchvision":
        tvm = src.torchvision_load(text, wname)
        if sd is not None:
            src.apply_state_dict(tvm.net, sd, f"torchvision {text}")
        model = imagenet_normalized(tvm.net)
        pre = tvm.preprocess()
        done = untrained if tvm.weights is None else f"weights: {tvm.weights.name}"
        info.update(
            description=f"torchvision {text} ({done})",
            trained=tvm.weights is not None or sd is not None,
            weights=tvm.weights.name if tvm.weights is not None else None,
            class_names=(
                list(tvm.weights.meta.get("categories") or []) or None
                if tvm.weights is not None
                else None
            ),
            normalization="imagenet",
            preprocess=pre,
        )
        channels, size = _shape_facts(model)
        crop = pre["crop"] if pre else None
        info.update(in_channels=channels, input_size=tuple(crop) if crop else size)
        return model.eval(), info
    else:  # timm
        tm = src.timm_load(text.removeprefix("timm/"), wname)
        if sd is not None:
            src.apply_state_dict(tm.net, sd, f"timm {tm.name}")
        model = normalized(tm.net, tm.mean, tm.std)
        done = untrained if tm.tag is None else f"weights: {tm.tag}"
        c, h, w = tm.input_shape
        info.update(
            description=f"timm {tm.name} ({done})",
            trained=tm.tag is not None or sd is not None,
            weights=tm.tag,
            class_names=tm.class_names(),
            normalization={"mean": tm.mean, "std": tm.std},
            preprocess=tm.preprocess(),
            in_channels=c,
            input_size=(h, w),
        )
        return model.eval(), info
    channels, size = _shape_facts(model)
    info.update(in_channels=channels, input_size=size)
    return model.eval(), info
