"""The model a run looks at: any source, the same way in every run.

A run's ``model`` is a spec for :func:`convscope.models.load_model` (a convscope
checkpoint, a convscope architecture, a torchvision or timm name, ``pkg.mod:factory`` or
``file.py:factory``, an exported ``.pt2``), an ``nn.Module`` of the caller's, or a
:class:`LoadedModel` already resolved. :func:`resolve_model` gives all of them the same
shape: the module in eval mode on the chosen device plus what is known of it (class
names, input size, preprocessing, whether it was trained).

An untrained model (random weights: a torchvision or timm name without ``--weights``, a
convscope architecture name) is worth a warning in every command, because its
explanations show the architecture and not anything learned: :func:`resolve_model` issues
:class:`UntrainedModelWarning` once per model, which the command line prints as one
``warning:`` line on stderr, and every JSON and HTML output marks the model untrained.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = [
    "LoadedModel",
    "ModelLike",
    "UntrainedModelWarning",
    "resolve_device",
    "resolve_model",
    "warn_untrained",
]


class UntrainedModelWarning(UserWarning):
    """The model has random weights: what it shows is the architecture, not learning."""


@dataclass
class LoadedModel:
    """A model ready for a run.

    Attributes:
        module: The network, in eval mode, on ``device``; it reads [0, 1] pixels
            (any normalisation the weights need is inside it).
        info: What :func:`convscope.models.load_model` says of it (``spec``, ``source``,
            ``description``, ``trained``, ``weights``, ``class_names``, ``in_channels``,
            ``input_size``, ``normalization``, ``preprocess``).
        device: Where it runs.
    """

    module: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def name(self) -> str:
        """The spec as given (a path, a name), for titles."""
        return str(self.info.get("spec") or type(self.module).__name__)

    @property
    def trained(self) -> bool | None:
        """``False`` for random weights, ``None`` when it cannot be told."""
        return self.info.get("trained")

    @property
    def class_names(self) -> list[str] | None:
        names = self.info.get("class_names")
        return [str(n) for n in names] if names else None

    def class_name(self, c: int) -> str:
        """Class ``c``'s name where the model has names, else the index as text."""
        names = self.class_names
        return names[c] if names and 0 <= c < len(names) else str(c)

    @property
    def short_name(self) -> str:
        """The name for titles: a file's base name (``lenet_mnist.pt``), else the spec."""
        import os

        spec = self.name
        path = spec.split(":", 1)[0] if spec.count(":") == 1 and ".py:" in spec else spec
        files = (".pt", ".pt2", ".pth", ".py", ".ckpt", ".safetensors")
        if os.sep in path and (path.endswith(files) or os.path.exists(path)):
            return os.path.basename(path)
        return spec  # a name (timm/resnet18 keeps its prefix)

    def metadata(self) -> dict[str, Any]:
        """The model's block in every JSON output."""
        meta = {
            "spec": self.name,
            "source": self.info.get("source"),
            "description": self.info.get("description"),
            "trained": self.trained,
            "weights": self.info.get("weights"),
            "device": str(self.device),
        }
        if self.info.get("normalization") is not None:
            meta["normalization"] = self.info["normalization"]
        return meta


ModelLike = str | os.PathLike[str] | nn.Module | LoadedModel


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``--device``: ``"auto"``/``None`` (CUDA when there is one), ``"cpu"``, ``"cuda:1"`` ...

    Raises:
        ConvscopeError: An unknown device, or CUDA asked for where there is none.
    """
    from convscope.train.common import resolve_device as _resolve

    return _resolve(device if device not in (None, "") else "auto")


def _guess_channels(module: nn.Module) -> int | None:
    for attr in ("in_channels", "channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    first = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else None


def _module_info(module: nn.Module) -> dict[str, Any]:
    side = getattr(module, "input_size", None)
    names = getattr(module, "class_names", None)
    return {
        "spec": type(module).__name__,
        "source": "module",
        "description": f"{type(module).__name__} (a module passed from Python)",
        "trained": None,
        "weights": None,
        "class_names": list(names) if names else None,
        "in_channels": _guess_channels(module),
        "input_size": (side, side) if isinstance(side, int) else None,
        "normalization": None,
        "preprocess": None,
    }


def _espcn_spec(spec: str, weights: Any) -> str:
    """``espcn`` without weights names the trained x4 ESPCN kept in the repository."""
    if spec != "espcn" or weights:
        return spec
    from convscope.linear.explorer import trained_espcn_checkpoint

    return str(trained_espcn_checkpoint())


def resolve_model(
    model: ModelLike,
    *,
    weights: str | bool | None = None,
    state_dict: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = None,
    warn: bool = True,
) -> LoadedModel:
    """Load or adopt ``model`` and move it where the run computes.

    Args:
        model: A spec, a module or a :class:`LoadedModel`.
        weights: ``--weights``: pretrained weights of a torchvision/timm name
            (``"DEFAULT"`` or a weights name); downloaded through their own cache.
        state_dict: ``--state-dict``: a file of weights for the model the spec builds.
        device: ``--device``.
        dtype: Cast the parameters (the linear runs work in float64).
        warn: Issue :class:`UntrainedModelWarning` for random weights now (a caller with
            more checks to make calls :func:`warn_untrained` after them).

    Returns:
        The :class:`LoadedModel`; a warning went out if it is untrained.

    Raises:
        ConvscopeError: A bad spec, weights, state dict or device (before any work).
    """
    dev = resolve_device(device)
    if isinstance(model, LoadedModel):
        if weights or state_dict is not None:
            raise ConvscopeError("weights and a state dict go with a spec, not a loaded model")
        loaded = model
    elif isinstance(model, nn.Module):
        if weights or state_dict is not None:
            raise ConvscopeError(
                "weights and a state dict go with a spec; load them into your module yourself"
            )
        loaded = LoadedModel(model, _module_info(model))
    elif isinstance(model, (str, os.PathLike)):
        from convscope.models import load_model

        spec = _espcn_spec(os.fspath(model), weights)
        net, info = load_model(spec, weights or None, state_dict=state_dict)
        info = dict(info)
        info["spec"] = os.fspath(model)
        loaded = LoadedModel(net, info)
    else:
        raise ConvscopeError(
            f"model must be a spec (path or name) or an nn.Module; got {type(model).__name__}"
        )
    module = loaded.module.eval()
    if not isinstance(model, (str, os.PathLike)) and _would_change(module, dtype, dev):
        # nn.Module.to works in place: a caller's own module must come back as it was
        # (a float64 run must not leave it float64 for the caller's next float32 call)
        module = copy.deepcopy(module)
    if dtype is not None:
        module = module.to(dtype)
    info = dict(loaded.info)
    if not any(True for _ in module.parameters()):
        info["trained"] = None  # nothing to learn (bicubic): neither trained nor untrained
    loaded = LoadedModel(module.to(dev), info, dev)
    if warn:
        warn_untrained(loaded)
    return loaded


def _would_change(module: nn.Module, dtype: torch.dtype | None, dev: torch.device) -> bool:
    """Whether casting ``module`` to ``dtype`` or moving it to ``dev`` changes any tensor."""
    for t in [*module.parameters(), *module.buffers()]:
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            return True
        if t.device != dev:
            return True
    return False


def warn_untrained(loaded: LoadedModel) -> None:
    """Issue :class:`UntrainedModelWarning` when the model has random weights."""
    if loaded.trained is False:
        warnings.warn(
            f"{loaded.name} has random weights (untrained): its explanations show the "
            "architecture, not learned features; pass --weights DEFAULT or a trained model",
            UntrainedModelWarning,
            stacklevel=3,
        )
