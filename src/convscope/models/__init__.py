"""Architectures: fixed-kernel networks and models by name."""

from __future__ import annotations

from convscope.models.gfnn import (
    GFNN,
    ColorFrontEnd,
    KernelBank2d,
    find_kernel_bank,
    gf_resnet50,
    kernel_bank_conv2d,
)
from convscope.models.lenet import LENET_LAYER_NUMBERS, LeNet
from convscope.models.zoo import (
    ARCHITECTURES,
    build_model,
    load_checkpoint,
    save_checkpoint,
    torchvision_model,
)

__all__ = [
    "ARCHITECTURES",
    "GFNN",
    "LENET_LAYER_NUMBERS",
    "ColorFrontEnd",
    "KernelBank2d",
    "LeNet",
    "build_model",
    "find_kernel_bank",
    "gf_resnet50",
    "kernel_bank_conv2d",
    "load_checkpoint",
    "save_checkpoint",
    "torchvision_model",
]
