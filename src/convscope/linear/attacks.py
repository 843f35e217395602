"""The fast gradient sign method (FGSM), to see what an attack does to votes and contributions.

Seed 001 (section 8.A, Fig. 8 and 10) attacks its classifiers with FGSM (Goodfellow et al.
2015) and looks at the linear interpreter of the attacked image: the pixel votes stop
agreeing and the per-layer contributions scatter. The attack is one step along the sign of
the loss gradient::

    x_adv = clamp(x + eps * sign(d loss(f(x), c) / dx))          # untargeted: away from c
    x_adv = clamp(x - eps * sign(d loss(f(x), t) / dx))          # targeted: toward t

with the cross-entropy of the logits as the loss. Each pixel moves by at most ``eps`` (the
max-norm ball of the original paper), then the clamp keeps the image valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convscope.errors import ConvscopeError

__all__ = ["fgsm"]


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    eps: float = 0.1,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    *,
    targeted: bool = False,
) -> torch.Tensor:
    """One FGSM step on a batch of images.

    The model runs as it is (its train/eval mode is not touched) and its parameters'
    ``.grad`` are left alone: the gradient is taken with respect to the input only.

    Args:
        model: a classifier returning logits ``(N, K)``.
        x: ``(N, C, H, W)`` (any ``(N, ...)``) floating-point images.
        target: the class of each image, one int for all, or ``(N,)``; ``None``: the
            model's own prediction (the usual untargeted attack on a correct image).
        eps: the step per pixel, ``>= 0``, in the units of ``x``.
        clamp: ``(low, high)`` valid range of the pixels, or ``None`` for no clamp.
        targeted: step toward ``target`` (decrease its loss) instead of away from it.

    Returns:
        ``(N, ...)`` the attacked images, detached, same dtype and device as ``x``;
        ``|x_adv - x| <= eps`` everywhere (before clamping moves pixels back in range).

    Raises:
        ConvscopeError: bad ``x``, ``eps``, ``clamp`` or ``target``, or a model that does
            not return ``(N, K)`` logits.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConvscopeError(f"fgsm: x must be a floating-point batch (N, C, H, W); got {got}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ConvscopeError(f"fgsm: eps must be a number >= 0; got {eps!r}")
    if clamp is not None and (len(clamp) != 2 or not clamp[0] < clamp[1]):
        raise ConvscopeError(f"fgsm: clamp must be (low, high) with low < high; got {clamp!r}")
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(x):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ConvscopeError(f"fgsm needs a classifier returning (N, K) logits; got {shape}")
        t = _targets(target, logits)
        loss = F.cross_entropy(logits, t, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    step = -eps if targeted else eps
    adv = x.detach() + step * grad.sign()
    if clamp is not None:
        adv = adv.clamp(clamp[0], clamp[1])
    return adv


def _targets(
    target: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor
) -> torch.Tensor:
    n, k = logits.shape
    if target is None:
        return logits.detach().argmax(1)
    t = torch.as_tensor(target, device=logits.device).reshape(-1)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ConvscopeError(f"fgsm: target must be integer classes; got {target!r}")
    t = t.long().expand(n) if t.numel() == 1 else t.long()
    if t.numel() != n:
        raise ConvscopeError(f"fgsm: {t.numel()} targets for {n} images")
    if int(t.min()) < 0 or int(t.max()) >= k:
        raise ConvscopeError(f"fgsm: target classes must lie in [0, {k}); got {t.tolist()}")
    return t
