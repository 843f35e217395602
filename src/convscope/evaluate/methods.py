"""One registry of explanation methods: convscope's own and the peers', one name each.

Every method is a function ``explain(model, x, targets) -> attributions`` with ``x`` a batch
``(N, C, H, W)``, ``targets`` one class per image ``(N,)`` and attributions shaped like
``x`` (a map with one channel, such as Grad-CAM's, is repeated over the colour channels).
The peers' methods are called, not re-written: Captum's ``Saliency``,
``InputXGradient``, ``IntegratedGradients``, ``GuidedBackprop``, ``Occlusion`` and
``LayerGradCam``; Zennit's LRP composites (through :mod:`convscope.interop.zennit`);
pytorch-grad-cam's ``GradCAMPlusPlus`` (Captum has no Grad-CAM++). convscope's methods
go through its Captum adapters (:mod:`convscope.interop.captum`).

    >>> from convscope.evaluate.methods import get_method, list_methods
    >>> list_methods(family="convscope")
    ['deconvnet', 'filter_score_map', 'input_contribution', ...]
    >>> a = get_method("integrated_gradients").explain(model, x, targets)

:func:`register_method` adds a method (a duplicate name is refused, as torchvision's
``register_model`` does), so a user's own method joins every comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.interop import require

__all__ = [
    "Explain",
    "Method",
    "get_method",
    "last_conv_layer",
    "list_methods",
    "register_method",
    "unregister_method",
]

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """An explanation method of the registry.

    Attributes:
        name: Its one name (``"integrated_gradients"``).
        family: Where it comes from: ``"convscope"``, ``"captum"``, ``"zennit"``,
            ``"grad-cam"`` or ``"user"``.
        explain: ``explain(model, x, targets) -> attributions`` shaped like ``x``.
        description: One line for tables and the report.
        needs_kernel_bank: Only for models with convscope's fixed kernel layer.
    """

    name: str
    family: str
    explain: Explain
    description: str
    needs_kernel_bank: bool = False

    def applies_to(self, model: nn.Module) -> bool:
        """Whether the method can explain ``model`` (the kernel-bank methods need one)."""
        if not self.needs_kernel_bank:
            return True
        from convscope.models.gfnn import KernelBank2d

        return any(isinstance(m, KernelBank2d) for m in model.modules())


_METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    explain: Explain,
    *,
    family: str = "user",
    description: str = "",
    needs_kernel_bank: bool = False,
) -> Method:
    """Add a method under ``name``; a name that is taken is refused.

    Raises:
        ConvscopeError: ``name`` is already registered.
    """
    if name in _METHODS:
        raise ConvscopeError(
            f"an explanation method named {name!r} is already registered "
            f"({_METHODS[name].family}); choose another name or unregister_method({name!r})"
        )
    method = Method(name, family, explain, description, needs_kernel_bank)
    _METHODS[name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method (built-in ones too, for the session)."""
    if name not in _METHODS:
        raise ConvscopeError(f"no explanation method named {name!r}")
    del _METHODS[name]


def list_methods(family: str | None = None) -> list[str]:
    """Sorted names of the registered methods, optionally of one family."""
    return sorted(n for n, m in _METHODS.items() if family is None or m.family == family)


def get_method(name: str) -> Method:
    """The method registered under ``name``.

    Raises:
        ConvscopeError: an unknown name, listing the registered ones.
    """
    if name not in _METHODS:
        raise ConvscopeError(
            f"unknown explanation method {name!r}; choose from {', '.join(list_methods())}"
        )
    return _METHODS[name]


# -- helpers ------------------------------------------------------------------------------


def last_conv_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last ``nn.Conv2d`` (or convscope kernel bank) whose output on ``x`` still has a
    spatial extent (more than one position), for Grad-CAM: a convolution that acts as a
    dense layer (LeNet's last two) has no map to show.

    Raises:
        ConvscopeError: the model has no such convolution.
    """
    from convscope.models.gfnn import KernelBank2d

    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, KernelBank2d))]
    sizes: dict[int, int] = {}
    handles = [
        m.register_forward_hook(lambda mod, _i, out: sizes.__setitem__(id(mod), out[0, 0].numel()))
        for m in convs
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    spatial = [m for m in convs if sizes.get(id(m), 0) > 1]
    if not spatial:
        raise ConvscopeError(
            f"Grad-CAM needs a convolution with a spatial output; {type(model).__name__} has none"
        )
    return spatial[-1]


def _like(a: torch.Tensor | tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    """``a`` (N, 1 or C, H, W) as ``x``'s shape, dtype and device, detached."""
    if isinstance(a, tuple):
        a = a[0]
    a = a.detach().to(dtype=x.dtype, device=x.device)
    if a.shape[1] == 1 and x.shape[1] != 1:
        a = a.expand(-1, x.shape[1], -1, -1)
    return a.contiguous()


def _leaf(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` that requires grad (Captum warns when it has to set that itself)."""
    return x.detach().clone().requires_grad_(True)


def _captum(name: str) -> type:
    attr = require("captum.attr", f"the {name} method")
    return getattr(attr, name)  # type: ignore[no-any-return]


def _occlusion_window(x: torch.Tensor) -> tuple[int, int, int]:
    side = max(2, min(x.shape[-2:]) // 7)  # 4 x 4 on MNIST's 28 x 28
    return (x.shape[1], side, side)


# -- built-in methods -----------------------------------------------------------------------


def _input_contribution(mode: Literal["freeze", "taylor"]) -> Explain:
    def explain(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from convscope.interop.captum import InputContribution

        return _like(InputContribution(model, mode=mode).attribute(x, target=t), x)

    return explain


def _pixel_discussion(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from convscope.interop.captum import PixelDiscussion

    return _like(PixelDiscussion(model).attribute(x, target=t), x)


def _filter_score_map(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from convscope.interop.captum import FilterScoreMap

    return _like(FilterScoreMap(model).attribute(x, target=t), x)


def _deconvnet(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from convscope.interop.captum import Deconvnet

    return _like(Deconvnet(model).attribute(x, target=t), x)


def _saliency(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _like(_captum("Saliency")(model).attribute(_leaf(x), target=t, abs=True), x)


def _gradient_x_input(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _like(_captum("InputXGradient")(model).attribute(_leaf(x), target=t), x)


def _integrated_gradients(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ig = _captum("IntegratedGradients")(model)
    return _like(ig.attribute(_leaf(x), baselines=torch.zeros_like(x), target=t, n_steps=32), x)


def _guided_backprop(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _like(_captum("GuidedBackprop")(model).attribute(_leaf(x), target=t), x)


def _occlusion(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    window = _occlusion_window(x)
    stride = (x.shape[1], max(1, window[1] // 2), max(1, window[2] // 2))
    occ = _captum("Occlusion")(model)
    return _like(occ.attribute(x, sliding_window_shapes=window, strides=stride, target=t), x)


def _grad_cam(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    attr = require("captum.attr", "the grad_cam method")
    layer = last_conv_layer(model, x)
    cam = attr.LayerGradCam(model, layer).attribute(_leaf(x), target=t, relu_attributions=True)
    up = attr.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
    return _like(up, x)


def _grad_cam_plus_plus(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    cams = require("pytorch_grad_cam", "the grad_cam_plus_plus method")
    targets = require("pytorch_grad_cam.utils.model_targets", "the grad_cam_plus_plus method")
    layer = last_conv_layer(model, x)
    with cams.GradCAMPlusPlus(model=model, target_layers=[layer]) as cam:
        maps = cam(
            input_tensor=x, targets=[targets.ClassifierOutputTarget(int(c)) for c in t]
        )  # (N, H, W) numpy, scaled to [0, 1] per image
    return _like(torch.from_numpy(maps)[:, None], x)


def _lrp(composite: str) -> Explain:
    def explain(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from convscope.interop.zennit import lrp

        return _like(lrp(model, x, t, composite=composite), x)

    return explain


_OWN, _CAPTUM = "convscope", "captum"
# name, explain, family, description (the built-ins go through register_method like a user's)
_BUILTINS: tuple[tuple[str, Explain, str, str], ...] = (
    ("input_contribution", _input_contribution("freeze"), _OWN,
     "x * F^T e_c of the linear interpreter frozen at the image (seed 001)"),
    ("input_contribution_taylor", _input_contribution("taylor"), _OWN,
     "x * J^T e_c with the exact Jacobian (taylor mode)"),
    ("pixel_discussion", _pixel_discussion, _OWN,
     "input part plus every bias source, per pixel (seed 001 eq. 18)"),
    ("filter_score_map", _filter_score_map, _OWN,
     "gradient x activation at the fixed kernel layer, per pixel (seed 000)"),
    ("deconvnet", _deconvnet, _OWN,
     "the class score deconvolved: rectified backward signal at every ReLU"),
    ("saliency", _saliency, _CAPTUM, "|d y_c / d x| (Captum Saliency)"),
    ("gradient_x_input", _gradient_x_input, _CAPTUM, "x * d y_c / d x (Captum InputXGradient)"),
    ("integrated_gradients", _integrated_gradients, _CAPTUM,
     "Captum IntegratedGradients from a black baseline, 32 steps"),
    ("guided_backprop", _guided_backprop, _CAPTUM, "Captum GuidedBackprop"),
    ("occlusion", _occlusion, _CAPTUM,
     "Captum Occlusion, a square window of a seventh of the side, half strides"),
    ("grad_cam", _grad_cam, _CAPTUM,
     "Captum LayerGradCam (ReLU of the weighted maps) at the last spatial convolution, "
     "upsampled bilinearly"),
    ("grad_cam_plus_plus", _grad_cam_plus_plus, "grad-cam",
     "pytorch-grad-cam GradCAMPlusPlus at the last convolution"),
    ("lrp_epsilon_plus", _lrp("epsilon_plus"), "zennit", "LRP: Zennit EpsilonPlus composite"),
    ("lrp_epsilon_gamma_box", _lrp("epsilon_gamma_box"), "zennit",
     "LRP: Zennit EpsilonGammaBox composite"),
    ("lrp_epsilon_alpha2_beta1", _lrp("epsilon_alpha2_beta1"), "zennit",
     "LRP: Zennit EpsilonAlpha2Beta1"),
)  # fmt: skip


def _register_builtins() -> None:
    for name, explain, family, description in _BUILTINS:
        register_method(name, explain, family=family, description=description,
                        needs_kernel_bank=name == "filter_score_map")  # fmt: skip


_register_builtins()
