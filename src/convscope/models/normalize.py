"""Per-channel normalisation put in front of a network, so the model reads [0, 1] pixels."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "imagenet_normalized", "normalized"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics as plain constants.

    The statistics are Python floats, not buffers, so the wrapped model's state dict
    is the inner network's under ``net.`` and nothing else.

    Args:
        mean, std: one value per input channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ConvscopeError(
                f"normalisation needs one mean and one std per channel; got {len(mean)} means "
                f"and {len(std)} stds"
            )
        if any(s <= 0 for s in std):
            raise ConvscopeError(f"normalisation std must be positive; got {list(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a batch.

        Args:
            x: ``(N, C, H, W)`` pixels in [0, 1], ``C == len(mean)``.

        Returns:
            ``(N, C, H, W)``.
        """
        # built per call on x's dtype/device: the model moves with .to() / .double()
        # and the linear interpreter sees a plain subtraction and division
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={list(self.mean)}, std={list(self.std)}"


def normalized(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """``net`` behind ``(x - mean) / std``, so it reads [0, 1] pixels.

    The analyses then see pixels as the input (the linear interpreter's F acts on
    pixels, the mean shift becomes a bias source named ``normalize``).

    Returns:
        ``nn.Sequential`` with submodules ``normalize`` and ``net``.
    """
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))


def imagenet_normalized(
    net: nn.Module,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> nn.Module:
    """``net`` behind normalisation, ImageNet statistics unless others are given."""
    return normalized(net, mean, std)
