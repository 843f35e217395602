"""Architectures (fixed-kernel networks, super-resolution, image-to-image) and load_model."""

from __future__ import annotations

from convscope.models.gfnn import (
    GFNN,
    ColorFrontEnd,
    KernelBank2d,
    find_kernel_bank,
    gf_resnet50,
    gf_resnet_small,
    kernel_bank_conv2d,
)
from convscope.models.i2i import CycleGANGenerator
from convscope.models.lenet import LENET_LAYER_NUMBERS, LeNet
from convscope.models.sr import ESPCN, BicubicUpscaler, EDSRBaseline
from convscope.models.zoo import (
    ARCHITECTURES,
    MODEL_SOURCES,
    build_model,
    imagenet_normalized,
    load_checkpoint,
    load_model,
    normalized,
    save_checkpoint,
    torchvision_model,
)

__all__ = [
    "ARCHITECTURES",
    "ESPCN",
    "GFNN",
    "LENET_LAYER_NUMBERS",
    "MODEL_SOURCES",
    "BicubicUpscaler",
    "ColorFrontEnd",
    "CycleGANGenerator",
    "EDSRBaseline",
    "KernelBank2d",
    "LeNet",
    "build_model",
    "find_kernel_bank",
    "gf_resnet50",
    "gf_resnet_small",
    "imagenet_normalized",
    "kernel_bank_conv2d",
    "load_checkpoint",
    "load_model",
    "normalized",
    "save_checkpoint",
    "torchvision_model",
]
