"""Shared pieces of the linear interpreter tests: real photos, calibrated torchvision
models, and the reference ``f(x0) + J(x0)(x1 - x0)`` by ``torch.func.jvp``."""

from __future__ import annotations

import torch
from torch import nn

import convscope as cs

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def photos(size: int, names: tuple[str, ...] = PHOTOS) -> torch.Tensor:
    """``(len(names), 3, size, size)`` float64 photos, roughly standardized."""
    out = []
    for name in names:
        a = torch.from_numpy(cs.data.sample_photo(name)).permute(2, 0, 1).float() / 255
        out.append(
            nn.functional.interpolate(a[None], size=(size, size), mode="bilinear", antialias=True)
        )
    return ((torch.cat(out) - 0.45) / 0.25).double()


def calibrate(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Give every bias and batch-norm affine a random value, then set the batch-norm
    statistics from ``x`` (a train-mode pass with cumulative averaging), then eval.

    Untrained torchvision models keep running statistics of 0 and 1 and zero biases,
    which make deep signals vanish and bias contributions trivial. The library's own
    :func:`convscope.linear.verify.calibrate_batch_norm`.
    """
    from convscope.linear.verify import calibrate_batch_norm

    return calibrate_batch_norm(model, x, seed=seed)


def jvp_reference(
    model: nn.Module, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x0), J(x0)(x1 - x0))`` for a batch ``x1``, by forward-mode autodiff."""
    with torch.no_grad():
        f0 = model(x0)
    base = x0.expand_as(x1).clone()
    _, tangent = torch.func.jvp(model, (base,), (x1 - x0,))
    return f0, tangent.detach()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``b``."""
    return float((a - b).detach().abs().max() / b.detach().abs().max())


# -- calibrated torchvision models, built once per test session ------------------------------

TORCHVISION: dict[str, tuple[dict[str, object], int]] = {
    "alexnet": ({}, 63),
    "densenet121": ({}, 32),
    "efficientnet_b0": ({}, 32),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 75),
    "mobilenet_v3_small": ({}, 32),
    "resnet18": ({}, 32),
    "resnet50": ({}, 32),
    "squeezenet1_1": ({}, 32),
    "vgg11_bn": ({}, 32),
}
"""name -> (constructor keywords, smallest comfortable input size)."""

_CACHE: dict[str, tuple[nn.Module, torch.Tensor]] = {}


def torchvision_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """An untrained torchvision model in float64 and eval mode with calibrated batch
    norm, and ``(5, 3, S, S)`` photos it was calibrated on (cached)."""
    if name not in _CACHE:
        import torchvision.models as tvm

        kwargs, size = TORCHVISION[name]
        torch.manual_seed(0)
        model = getattr(tvm, name)(**kwargs).double()
        x = photos(size)
        _CACHE[name] = (calibrate(model, x), x)
    return _CACHE[name]
