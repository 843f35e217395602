"""Layer-wise relevance propagation (LRP) through Zennit's composites, down to the kernel layer.

:func:`lrp` gives the relevance of every input pixel for each image's target logit, for any
torch model. :func:`filter_relevance` gives the relevance of every kernel of convscope's fixed
kernel layer (which kernel got the relevance), laid out like
:class:`convscope.attribution.FilterScores` so the two can be set side by side.

Seed. The modified backward pass starts from an output relevance that is 0 for every class
except the target, where it is the target logit ``y_t`` itself (Zennit's own default would
start from all the logits). Zennit's rules then hand this relevance down layer by layer, so
with rules that conserve it the input relevance of an image adds up to ``y_t``. With LRP-0
(``composite="epsilon"`` and a tiny ``epsilon``) the input relevance of a ReLU network is
gradient x input; it adds up to ``y_t`` only when the network has no biases, because each
bias keeps its share.

Kernel bank. :class:`~convscope.models.KernelBank2d` runs its convolution through
``F.conv2d``, so Zennit's type-based layer maps would not see a convolution and the bank would
get no rule at all. While a composite is registered, :class:`KernelBankCanonizer` swaps each
bank for an equivalent grouped ``nn.Conv2d`` (the bank repeated once per input channel, no
bias), so the composite's convolution rules and its special first-layer rule (ZBox, Flat)
apply to the bank exactly as to any ``nn.Conv2d``. The model gets its own bank back afterwards.

Batch norm. With ``canonize=True`` (the default) each batch norm right after a linear layer
is merged into it for the call, as Zennit's ``SequentialMergeBatchNorm`` does, except that the
merged batch norm is left an exact identity (Zennit's leaves a factor ``1 / sqrt(1 + eps)``).
Other batch norms pass relevance through unchanged (Zennit's Pass rule).

Model state. Each call runs the model in eval mode, as :mod:`convscope.attribution` does, and
leaves it as it came in, even when it raises: every hook removed, the batch-norm merge
(``canonize=True``) undone, the banks back in place, each module's ``training`` flag and each
parameter's ``requires_grad`` flag restored.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convscope.attribution import (
    Target,
    _check_input,
    _check_logits,
    _mode,
    _resolve_target,
    _target_logits,
)
from convscope.errors import ConvscopeError
from convscope.interop import require
from convscope.models.gfnn import KernelBank2d, find_kernel_bank

_WHAT = "convscope.interop.zennit"
require("zennit", _WHAT)  # first, so a missing zennit is reported even if a sub-module is cached
_canonizers = require("zennit.canonizers", _WHAT)
_composites = require("zennit.composites", _WHAT)
_core = require("zennit.core", _WHAT)
_rules = require("zennit.rules", _WHAT)
_types = require("zennit.types", _WHAT)
# the base classes, typed as Any for mypy (zennit ships no type hints)
_Canonizer: Any = _canonizers.Canonizer
_SequentialMergeBatchNorm: Any = _canonizers.SequentialMergeBatchNorm

__all__ = [
    "COMPOSITES",
    "FilterRelevance",
    "KernelBankCanonizer",
    "filter_relevance",
    "list_composites",
    "lrp",
]

#: ``factory(x, canonizers, **options) -> zennit Composite``; ``x`` is the (detached) batch.
CompositeFactory = Callable[..., Any]


# -- composites -----------------------------------------------------------------


def _epsilon(
    x: torch.Tensor,
    canonizers: list[Any],
    *,
    epsilon: float = 1e-6,
    stabilizer: float | None = None,
    zero_params: list[str] | None = None,
) -> Any:
    """The Epsilon rule on every convolution and linear layer; ``epsilon -> 0`` is LRP-0.

    Average pooling and sums get Zennit's Norm rule, stabilised by ``stabilizer``, which
    defaults to ``epsilon`` so that a tiny ``epsilon`` is LRP-0 everywhere.
    """
    stab = epsilon if stabilizer is None else stabilizer
    layer_map = [
        *_composites.layer_map_base(stab),
        (_types.Linear, _rules.Epsilon(epsilon=epsilon, zero_params=zero_params)),
    ]
    return _composites.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)


def _zennit_named(cls_name: str, doc: str) -> CompositeFactory:
    """A factory for one of Zennit's own composites that take epsilon and a stabilizer."""

    def factory(
        x: torch.Tensor,
        canonizers: list[Any],
        *,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        zero_params: list[str] | None = None,
    ) -> Any:
        return getattr(_composites, cls_name)(
            epsilon=epsilon, stabilizer=stabilizer, zero_params=zero_params, canonizers=canonizers
        )

    factory.__doc__ = doc
    return factory


_epsilon_plus = _zennit_named(
    "EpsilonPlus", "Zennit's EpsilonPlus: ZPlus on convolutions, Epsilon on linear layers."
)
_epsilon_plus_flat = _zennit_named(
    "EpsilonPlusFlat",
    "Zennit's EpsilonPlusFlat: as EpsilonPlus, with the Flat rule on the first layer.",
)
_epsilon_alpha2_beta1 = _zennit_named(
    "EpsilonAlpha2Beta1",
    "Zennit's EpsilonAlpha2Beta1: alpha=2, beta=1 on convolutions, Epsilon on linear layers.",
)


def _epsilon_gamma_box(
    x: torch.Tensor,
    canonizers: list[Any],
    *,
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    stabilizer: float = 1e-6,
    zero_params: list[str] | None = None,
) -> Any:
    """Zennit's EpsilonGammaBox: ZBox on the first layer, Gamma on the other convolutions,
    Epsilon on linear layers.

    ``low`` and ``high`` bound the input pixels (a number, or a tensor that broadcasts to
    the input, e.g. ``(1, C, 1, 1)``); they default to the batch's minimum and maximum.
    """
    return _composites.EpsilonGammaBox(
        low=x.min() if low is None else low,
        high=x.max() if high is None else high,
        epsilon=epsilon,
        gamma=gamma,
        stabilizer=stabilizer,
        zero_params=zero_params,
        canonizers=canonizers,
    )


#: Composite name -> factory ``(x, canonizers, **options) -> zennit Composite``. The options
#: a factory takes are its keyword-only parameters; add an entry to offer another composite.
COMPOSITES: dict[str, CompositeFactory] = {
    "epsilon": _epsilon,
    "epsilon_plus": _epsilon_plus,
    "epsilon_plus_flat": _epsilon_plus_flat,
    "epsilon_alpha2_beta1": _epsilon_alpha2_beta1,
    "epsilon_gamma_box": _epsilon_gamma_box,
}


def list_composites() -> list[str]:
    """The names :func:`lrp` and :func:`filter_relevance` accept, sorted."""
    return sorted(COMPOSITES)


def _factory(name: str) -> CompositeFactory:
    if not isinstance(name, str) or name not in COMPOSITES:
        raise ConvscopeError(
            f"unknown composite {name!r}; choose one of: {', '.join(list_composites())}"
        )
    return COMPOSITES[name]


def _check_options(name: str, factory: CompositeFactory, options: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters.values()
    accepted = sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConvscopeError(
            f"composite {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        )


# -- the kernel bank as a convolution ---------------------------------------------


def _as_conv(bank: KernelBank2d) -> nn.Conv2d:
    """A bias-free grouped ``nn.Conv2d`` computing exactly what ``bank`` computes."""
    c = bank.in_channels
    weight = bank.weight.detach().repeat(c, 1, 1, 1)  # map c * K + k is kernel k on channel c
    # skip_init: no random initialisation, so the global random state is left alone
    conv = torch.nn.utils.skip_init(
        nn.Conv2d,
        c,
        weight.shape[0],
        tuple(weight.shape[-2:]),
        stride=bank.stride,
        padding=bank.padding,
        groups=c,
        bias=False,
        device=weight.device,
        dtype=weight.dtype,
    )
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.train(bank.training)
    return conv


class _BankSwap:
    """One bank swapped for its convolution in one parent; ``remove`` puts the bank back."""

    def __init__(self, parent: nn.Module, name: str, bank: KernelBank2d, conv: nn.Conv2d) -> None:
        self.parent, self.name, self.bank = parent, name, bank
        parent._modules[name] = conv

    def remove(self) -> None:
        self.parent._modules[self.name] = self.bank


class KernelBankCanonizer(_Canonizer):
    """Zennit canonizer that stands an equivalent ``nn.Conv2d`` in for every KernelBank2d.

    ``apply(model)`` swaps the banks and returns the handles that swap them back (Zennit
    removes them with the composite). ``convs`` maps each bank to the convolution standing
    in for it, e.g. to hook the kernel layer's output while the composite is registered.
    """

    def __init__(self) -> None:
        self.convs: dict[KernelBank2d, nn.Conv2d] = {}

    def apply(self, root_module: nn.Module) -> list[_BankSwap]:
        """Swap every bank below ``root_module``; returns the handles that undo it."""
        swaps: list[_BankSwap] = []
        try:
            for parent in list(root_module.modules()):
                for name, child in list(parent.named_children()):
                    if isinstance(child, KernelBank2d):
                        if child not in self.convs:
                            self.convs[child] = _as_conv(child)
                        swaps.append(_BankSwap(parent, name, child, self.convs[child]))
        except BaseException:
            for swap in reversed(swaps):
                swap.remove()
            raise
        return swaps

    def register(self) -> None:
        """Nothing to do: :meth:`apply` makes the swaps."""

    def remove(self) -> None:
        """Nothing to do: the handles :meth:`apply` returns undo the swaps."""

    def copy(self) -> KernelBankCanonizer:
        return KernelBankCanonizer()


class _MergeBatchNorm(_SequentialMergeBatchNorm):
    """Zennit's SequentialMergeBatchNorm, leaving the batch norm an exact identity.

    Zennit sets the merged batch norm's running variance to 1, so it still divides by
    ``sqrt(1 + eps)``: the canonized model's outputs, and so the relevance, come out about
    ``eps / 2`` (relative) too small. A running variance of ``1 - eps`` makes it divide by 1.
    """

    @staticmethod
    def merge_batch_norm(modules: Any, batch_norm: nn.Module) -> None:
        _SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        var = batch_norm.running_var
        assert isinstance(var, torch.Tensor)
        var.data = torch.full_like(var.data, 1.0 - float(batch_norm.eps))  # type: ignore[arg-type]


# -- the modified backward pass -----------------------------------------------------


@contextlib.contextmanager
def _registered(model: nn.Module, composite: Any) -> Iterator[None]:
    """Register a Zennit composite; remove its hooks and undo its canonizers on the way out."""
    try:
        composite.register(model)
        yield
    finally:
        composite.remove()


@contextlib.contextmanager
def _grad_flags_kept(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _captured(
    layer: nn.Module | None, outputs: list[torch.Tensor], relevance: list[torch.Tensor]
) -> Iterator[None]:
    """While open, record each output of ``layer`` and, through a tensor hook on it, the
    relevance that the modified backward pass later delivers to that output."""
    if layer is None:
        yield
        return

    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        outputs.append(out)
        if out.requires_grad:
            out.register_hook(lambda grad: relevance.append(grad.detach()))

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _ruled_modules(model: nn.Module, composite: Any) -> dict[str, nn.Module]:
    """The modules to which ``composite`` gave a rule that keeps its input (a BasicHook)."""
    hooks = composite.hook_refs
    ruled = {}
    for name, m in model.named_modules():
        owners = (getattr(fn, "__self__", None) for fn in m._forward_pre_hooks.values())
        if any(o in hooks and isinstance(o, _core.BasicHook) for o in owners):
            ruled[name] = m
    return ruled


@contextlib.contextmanager
def _run_once(model: nn.Module, composite: Any) -> Iterator[None]:
    """Refuse a forward pass that runs a module with a rule more than once.

    Such a rule keeps only the input of the module's last run, so its relevance would be
    silently wrong (e.g. one layer applied to two branches): give each use its own module.
    """
    counts: dict[str, int] = {}

    def counter(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            counts[name] = counts.get(name, 0) + 1

        return hook

    handles = [
        m.register_forward_hook(counter(n)) for n, m in _ruled_modules(model, composite).items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    twice = {n: k for n, k in counts.items() if k > 1}
    if twice:
        name, k = next(iter(twice.items()))
        raise ConvscopeError(
            f"layer {name!r} ran {k} times in one forward pass; LRP rules need every layer "
            "with a rule to run once - give each use its own module"
        )


@dataclass
class _Pass:
    relevance: torch.Tensor  # (N, C, H, W) at the input
    layer: torch.Tensor | None  # at the kernel layer's output, when asked for
    targets: torch.Tensor
    logits: torch.Tensor


def _propagate(
    model: nn.Module,
    x: torch.Tensor,
    target: Target,
    composite: str,
    options: dict[str, Any],
    *,
    canonize: bool,
    eval_mode: bool,
    bank: KernelBank2d | None = None,
) -> _Pass:
    """One forward and one modified backward pass, seeded with ``y_t`` on the target class."""
    factory = _factory(composite)
    _check_options(composite, factory, options)
    _check_input(x)
    bank_canonizer = KernelBankCanonizer()
    # batch norm is merged first, so a batch norm right after a bank is never merged into it
    # and the bank's output stays the bank's output
    canonizers = [_MergeBatchNorm()] if canonize else []
    zcomposite = factory(x.detach(), [*canonizers, bank_canonizer], **options)
    xg = x.detach().requires_grad_(True)
    outputs: list[torch.Tensor] = []
    arrived: list[torch.Tensor] = []
    with (
        _mode(model, eval_mode),
        _grad_flags_kept(model),
        _registered(model, zcomposite),
        torch.enable_grad(),
    ):
        layer = None if bank is None else bank_canonizer.convs[bank]
        with _run_once(model, zcomposite), _captured(layer, outputs, arrived):
            logits = _check_logits(model(xg), x.shape[0])
        if layer is not None and len(outputs) != 1:
            raise ConvscopeError(
                f"the kernel layer ran {len(outputs)} times in one forward pass; "
                "filter relevance needs it to run exactly once"
            )
        t = _resolve_target(logits, target)
        y = _target_logits(logits, t).detach()
        seed = torch.zeros_like(logits).scatter(1, t[:, None], y[:, None])
        (relevance,) = torch.autograd.grad(logits, xg, grad_outputs=seed)
    at_layer = None
    if layer is not None:
        at_layer = sum(arrived[1:], arrived[0]) if arrived else torch.zeros_like(outputs[0])
    return _Pass(relevance.detach(), at_layer, t, y)


def lrp(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    composite: str = "epsilon_plus",
    canonize: bool = True,
    eval_mode: bool = True,
    **options: Any,
) -> torch.Tensor:
    """Input relevance of each image's target logit under a Zennit composite.

    The output relevance is ``y_t`` on the target class and 0 elsewhere (see the module
    docstring), so a conserving composite gives relevance that adds up to ``y_t``.

    Args:
        model: any network returning logits ``(N, classes)``; its KernelBank2d layers
            (if any) get the composite's convolution rules.
        x: ``(N, C, H, W)`` images.
        target: ``None`` (predicted class), an ``int`` or one class per image.
        composite: a name from :func:`list_composites`.
        canonize: merge each batch norm into the linear layer right before it (Zennit's
            ``SequentialMergeBatchNorm``) for the call.
        eval_mode: run in eval mode for the call.
        **options: the composite's options, e.g. ``epsilon``, ``stabilizer``, ``gamma``,
            ``low``/``high`` (``epsilon_gamma_box``), ``zero_params``.

    Returns:
        ``(N, C, H, W)`` relevance, same dtype and device as ``x``.

    Raises:
        ConvscopeError: unknown composite or option, bad input or target, or a layer with
            a rule that runs more than once in a forward pass (its relevance would be wrong).
    """
    run = _propagate(model, x, target, composite, options, canonize=canonize, eval_mode=eval_mode)
    return run.relevance


@dataclass
class FilterRelevance:
    """LRP relevance of each kernel of the fixed kernel layer, for a batch.

    Let ``R`` be the relevance that the modified backward pass delivers to the kernel layer's
    output ``(N, C * K, H', W')`` (map ``c * K + k`` is kernel ``k`` on channel ``c``).

    Attributes:
        scores: ``(N, K)`` relevance of each kernel: ``R`` summed over space and channels.
        images: ``(N, K, H', W')`` relevance of each kernel at each position, summed over
            channels; ``images.sum((2, 3)) == scores``.
        color_scores: ``(N, C)`` relevance of each colour channel (every kernel's maps on
            it), or ``None`` for a grey bank (C = 1).
        kernel_names: the ``K`` kernel names in bank order.
        composite: the composite's name.
        targets: ``(N,)`` the class each image is explained for.
        logits: ``(N,)`` the target logit of each image (the relevance the pass starts from).
        layer_name: dotted name of the kernel layer in the model.
    """

    scores: torch.Tensor
    images: torch.Tensor
    color_scores: torch.Tensor | None
    kernel_names: list[str]
    composite: str
    targets: torch.Tensor
    logits: torch.Tensor
    layer_name: str


def _find_bank(model: nn.Module) -> tuple[str, KernelBank2d]:
    try:
        return find_kernel_bank(model)
    except ConvscopeError:
        raise ConvscopeError(
            f"filter_relevance needs a model with a convscope kernel bank (KernelBank2d), "
            f"e.g. a GFNN; {type(model).__name__} has none - use lrp for input relevance"
        ) from None


def filter_relevance(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    composite: str = "epsilon_plus",
    canonize: bool = True,
    eval_mode: bool = True,
    **options: Any,
) -> FilterRelevance:
    """Which kernel of the fixed kernel layer got the relevance, under a Zennit composite.

    The relevance is captured as it arrives at the kernel layer's output during the modified
    backward pass (seeded as in :func:`lrp`). Under LRP-0 (``composite="epsilon"``, tiny
    ``epsilon``) on a ReLU network it equals convscope's filter scores
    (:func:`convscope.attribution.filter_scores`): both are gradient x activation there.

    Args:
        model: a network holding a :class:`~convscope.models.KernelBank2d` (GFNN, GF-ResNet);
            the first bank is the one reported.
        x, target, composite, canonize, eval_mode, **options: as in :func:`lrp`.

    Returns:
        A :class:`FilterRelevance`.

    Raises:
        ConvscopeError: the model has no kernel bank, or as :func:`lrp`.
    """
    name, bank = _find_bank(model)
    run = _propagate(
        model, x, target, composite, options, canonize=canonize, eval_mode=eval_mode, bank=bank
    )
    assert run.layer is not None
    n, _, h, w = run.layer.shape
    per_map = run.layer.reshape(n, bank.in_channels, bank.num_kernels, h, w)
    per_channel_kernel = per_map.sum(dim=(3, 4))  # (N, C, K)
    return FilterRelevance(
        scores=per_channel_kernel.sum(dim=1),
        images=per_map.sum(dim=1),
        color_scores=per_channel_kernel.sum(dim=2) if bank.in_channels > 1 else None,
        kernel_names=list(bank.kernel_names),
        composite=composite,
        targets=run.targets,
        logits=run.logits,
        layer_name=name,
    )
