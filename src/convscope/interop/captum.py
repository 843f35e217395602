"""convscope's methods as Captum attributions: ``Method(model).attribute(inputs, target=...)``.

Each class subclasses ``captum.attr.Attribution`` and follows its convention, so Captum's
visualisation (``captum.attr.visualization``) and metrics (``captum.metrics.infidelity``,
``sensitivity_max``) take them as they take Captum's own methods:

- ``inputs``: a batch ``(N, C, H, W)``, or a tuple holding just that tensor (the result
  is then a one-tuple too, as in Captum).
- ``target``: ``None`` (each image's predicted class), an ``int``, or one class per image
  (a list or an ``(N,)`` tensor); the same rules and messages as
  :mod:`convscope.attribution`. Scores are logits, never a softmax.
- The result has the shape, dtype and device of ``inputs``.
- ``additional_forward_args`` must be ``None``: the model is called with the images alone.

Every method runs the model in eval mode for the call and gives back each module's own
flag afterwards (``eval_mode=False`` runs it in the mode it is in: a batch norm in training
mode then normalizes with the batch's statistics); no hook or changed ``requires_grad``
flag outlives a call, also when it raises.

Importing this module without Captum installed raises one :class:`ConvscopeError` naming
the extra that brings it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convscope.attribution import (
    Target,
    _check_logits,
    _mode,
    _resolve_target,
    gradient_x_activation,
)
from convscope.errors import ConvscopeError
from convscope.interop import require
from convscope.linear.context import Mode, check_batch_size
from convscope.linear.interpreter import LinearInterpreter
from convscope.models.gfnn import find_kernel_bank

captum_attr = require("captum.attr", "convscope.interop.captum")

__all__ = ["Deconvnet", "FilterScoreMap", "InputContribution", "PixelDiscussion"]

Inputs = torch.Tensor | tuple[torch.Tensor, ...]

# captum is imported at run time through require(), so mypy sees its classes as Any
_Attribution: Any = captum_attr.Attribution

_MODES = ("freeze", "taylor")


# -- shared plumbing ------------------------------------------------------------


def _unpack(inputs: Inputs, additional_forward_args: object) -> tuple[torch.Tensor, bool]:
    """The image batch inside ``inputs`` and whether it came as a tuple."""
    if additional_forward_args is not None:
        raise ConvscopeError(
            "additional_forward_args is not supported by convscope's Captum methods: the "
            "model is called with the images alone; wrap extra arguments into the model"
        )
    as_tuple = isinstance(inputs, tuple)
    if as_tuple:
        if len(inputs) != 1:
            raise ConvscopeError(
                f"inputs must be one image batch (a tensor or a 1-tuple); got a tuple of "
                f"{len(inputs)} values"
            )
        (x,) = inputs
    else:
        x = inputs
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConvscopeError(f"inputs must be an image batch (N, C, H, W); got {shape}")
    if not x.is_floating_point():
        raise ConvscopeError(f"inputs must be a floating-point tensor; got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ConvscopeError("inputs holds no images: (0, C, H, W)")
    return x, as_tuple


def _targets(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """The ``(N,)`` class of every image, resolved on the model's logits."""
    with torch.no_grad():
        logits = _check_logits(model(x), x.shape[0])
    return _resolve_target(logits, target)


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ConvscopeError(f"mode must be one of {list(_MODES)}; got {mode!r}")


class _ConvscopeAttribution(_Attribution):
    """What every method shares: input checks, the model's mode, the Captum output form."""

    def __init__(self, forward_func: nn.Module, *, eval_mode: bool = True) -> None:
        if not isinstance(forward_func, nn.Module):
            raise ConvscopeError(
                f"{type(self).__name__} needs the model as an nn.Module; "
                f"got {type(forward_func).__name__}"
            )
        super().__init__(forward_func)
        self.model: nn.Module = forward_func
        self.eval_mode = eval_mode

    def attribute(
        self,
        inputs: Inputs,
        target: Target = None,
        additional_forward_args: object = None,
    ) -> Inputs:
        """Attributions for ``inputs`` (see the class docstring), shaped like them."""
        x, as_tuple = _unpack(inputs, additional_forward_args)
        x = x.detach()
        with _mode(self.model, self.eval_mode), torch.enable_grad():
            attr = self._attribute(x, target)
        attr = attr.detach().to(dtype=x.dtype, device=x.device)
        assert attr.shape == x.shape, (attr.shape, x.shape)
        return (attr,) if as_tuple else attr

    def _attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        raise NotImplementedError

    def has_convergence_delta(self) -> bool:
        """No convergence delta: every method here is exact, not an approximation."""
        return False


# -- the linear interpreter -----------------------------------------------------


class _Interpreted(_ConvscopeAttribution):
    """A method that freezes one :class:`LinearInterpreter` per image."""

    def __init__(
        self,
        forward_func: nn.Module,
        mode: Mode = "freeze",
        batch_size: int | None = None,
        *,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(forward_func, eval_mode=eval_mode)
        _check_mode(mode)
        self.mode: Mode = mode
        self.batch_size = None if batch_size is None else check_batch_size(batch_size)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def _interpreter(self, x0: torch.Tensor) -> LinearInterpreter:
        # one row or one discussion per interpreter: capturing CUDA graphs would not pay off
        options: dict[str, Any] = {"cuda_graphs": False}
        if self.batch_size is not None:
            options["batch_size"] = self.batch_size
        return LinearInterpreter(self.model, x0, self.mode, **options)

    def _attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        t = _targets(self.model, x, target)
        return torch.cat([self._one(x[i : i + 1], int(t[i])) for i in range(x.shape[0])])

    def _one(self, x0: torch.Tensor, t: int) -> torch.Tensor:
        raise NotImplementedError


class InputContribution(_Interpreted):
    """The input's share of the target score, pixel by pixel: ``x * F^T e_t`` (seed 001).

    ``F`` is the linear interpreter frozen at each image (``mode="freeze"``: the paper's
    frozen decisions; ``"taylor"``: the Jacobian), so an image's attribution sums to
    ``LinearInterpreter(model, x).contributions(target=t)["input"]``, the score without
    the biases' contributions. On a ReLU network it equals gradient x input.

    Args:
        forward_func: the model, returning logits ``(N, classes)``.
        mode: ``"freeze"`` or ``"taylor"``.
        batch_size: probes per pass of each image's interpreter (default: its own).
        eval_mode: run the model in eval mode for the call.

    Returns (``attribute``): ``(N, C, H, W)``, like ``inputs``.

    Example:
        >>> attr = InputContribution(model).attribute(x, target=[3, 1])
    """

    def _one(self, x0: torch.Tensor, t: int) -> torch.Tensor:
        return x0 * self._interpreter(x0).rows([t])


class PixelDiscussion(_Interpreted):
    """Seed 001 eq. 18: the target score spread over the pixels, biases included.

    Per image, the input's part ``x * F^T e_t`` plus every bias source's contribution
    back-projected to the pixels, scaled so that the map sums to the target logit
    exactly (see :func:`convscope.linear.contributions.pixel_discussion`); kept per
    colour channel.

    Args:
        forward_func: the model, returning logits ``(N, classes)``.
        mode: ``"freeze"`` or ``"taylor"``.
        batch_size: probes per pass of each image's interpreter (default: its own).
        eval_mode: run the model in eval mode for the call.

    Returns (``attribute``): ``(N, C, H, W)``, like ``inputs``; ``attr[i].sum()`` is the
    target logit of image ``i``.

    Example:
        >>> attr = PixelDiscussion(model).attribute(x)  # explains the predicted classes
    """

    def _one(self, x0: torch.Tensor, t: int) -> torch.Tensor:
        return self._interpreter(x0).pixel_discussion([t], channels=True)


# -- the fixed kernel bank ----------------------------------------------------------


class FilterScoreMap(_ConvscopeAttribution):
    """The pixel map of a fixed-kernel network (seed 000): its filter-score images summed
    over the kernels, one map per colour channel of the bank.

    For the output ``L`` of the kernel bank, ``(d y_t / d L) * L`` summed over the
    kernels of each colour channel. Summed over the channels it is
    ``convscope.attribution.filter_scores(...).pixel_map``; with no bias after the bank it
    sums to the target logit.

    Args:
        forward_func: a model holding a :class:`~convscope.models.KernelBank2d` (a GFNN),
            returning logits ``(N, classes)``; the bank must keep the input's resolution.
        eval_mode: run the model in eval mode for the call.

    Returns (``attribute``): ``(N, C, H, W)``, like ``inputs``; ``C = 1`` for a grey bank.

    Raises:
        ConvscopeError: the model has no kernel bank (at construction), the inputs do not
            have the bank's colour channels, or the bank changes the resolution.

    Example:
        >>> attr = FilterScoreMap(GFNN(input_size=8)).attribute(x, target=torch.tensor([2, 7]))
    """

    def __init__(self, forward_func: nn.Module, *, eval_mode: bool = True) -> None:
        super().__init__(forward_func, eval_mode=eval_mode)
        self.layer_name, self.bank = find_kernel_bank(forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def _attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        c, k = self.bank.in_channels, self.bank.num_kernels
        if x.shape[1] != c:
            raise ConvscopeError(
                f"the kernel bank {self.layer_name!r} filters {c} colour channel(s); "
                f"inputs have {x.shape[1]}"
            )
        prod = gradient_x_activation(self.model, x, self.layer_name, target, eval_mode=False)
        n, _, h, w = prod.shape
        if (h, w) != tuple(x.shape[2:]):
            raise ConvscopeError(
                f"FilterScoreMap needs a kernel bank that keeps the input's resolution; "
                f"{self.layer_name!r} maps {tuple(x.shape[2:])} to {(h, w)}: use "
                "convscope.attribution.filter_scores for maps at the bank's resolution"
            )
        # maps are ordered by channel (c * K + k): one reshape exposes both axes
        return prod.reshape(n, c, k, h, w).sum(dim=2)


# -- deconvolution ---------------------------------------------------------------


class _RectifiedBackward(torch.autograd.Function):
    """``relu`` going forward, ``relu`` of the incoming gradient going back (Zeiler-Fergus)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


_FUNCTIONAL_RELUS: dict[Callable[..., Any], str] = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.relu_: "relu_",
    torch.Tensor.relu: "Tensor.relu",
    torch.Tensor.relu_: "Tensor.relu_",
}


class _FunctionalReluGuard(TorchFunctionMode):
    """Refuses a relu called as a function outside an ``nn.ReLU`` module."""

    def __init__(self, stack: list[tuple[str, nn.Module]], root: str) -> None:
        super().__init__()
        self.stack = stack
        self.root = root

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = _FUNCTIONAL_RELUS.get(func)
        if name is not None and not (self.stack and isinstance(self.stack[-1][1], nn.ReLU)):
            path = self.stack[-1][0] if self.stack else ""
            where = path or f"{self.root}.forward"
            raise ConvscopeError(
                f"Deconvnet needs nn.ReLU modules; found function call {name} inside {where}"
            )
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _deconvolution(model: nn.Module) -> Iterator[None]:
    """Rectify the backward signal at every ``nn.ReLU`` module for the duration.

    A pre-hook on each ReLU keeps a copy of its input (an in-place ReLU overwrites it) and
    a forward hook replaces the output by :class:`_RectifiedBackward` of that copy: the
    same values, with ``relu(grad)`` instead of the forward mask going back. Every module
    also records that it is running, so that a functional relu is refused with the
    module it sits in. All hooks are removed in ``finally``.
    """
    stack: list[tuple[str, nn.Module]] = []
    inputs: list[torch.Tensor] = []

    def enter(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, _args: Any) -> None:
            stack.append((name, module))

        return hook

    def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    def keep_input(_m: nn.Module, args: tuple[Any, ...]) -> None:
        inputs.append(args[0].clone())

    def rectify(_m: nn.Module, _args: Any, _out: Any) -> torch.Tensor:
        return _RectifiedBackward.apply(inputs.pop())

    handles: list[Any] = []
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(name)))
            if isinstance(module, nn.ReLU):
                handles.append(module.register_forward_pre_hook(keep_input))
                handles.append(module.register_forward_hook(rectify))
            handles.append(module.register_forward_hook(leave, always_call=True))
        with _FunctionalReluGuard(stack, type(model).__name__):
            yield
    finally:
        for h in handles:
            h.remove()


class Deconvnet(_ConvscopeAttribution):
    """Zeiler-Fergus deconvolution of the target logit down to the image.

    The backward pass of the target logit with the rectified backward signal at every
    ``nn.ReLU`` module (``relu`` of the incoming gradient instead of the forward mask);
    every other layer passes its usual gradient (max-pools their switches). Equal to
    ``captum.attr.Deconvolution`` on chains of layers; a relu called as a function,
    which no module hook reaches, is refused instead of being passed silently.

    Args:
        forward_func: the model, returning logits ``(N, classes)``.
        eval_mode: run the model in eval mode for the call.

    Returns (``attribute``): ``(N, C, H, W)``, like ``inputs``.

    Raises:
        ConvscopeError: the model calls a relu as a function (naming where).

    Example:
        >>> attr = Deconvnet(model).attribute(x, target=0)
    """

    def _attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        with _deconvolution(self.model):
            logits = _check_logits(self.model(xg), x.shape[0])
        t = _resolve_target(logits, target)
        score = logits.gather(1, t[:, None]).sum()
        if not score.requires_grad:  # the logits do not depend on the images
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(score, xg, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad
