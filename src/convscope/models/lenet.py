"""LeNet as MatConvNet builds it for MNIST (seed 003's network).

MatConvNet's ``cnn_mnist_init`` (the default MNIST example) stacks eight layers,
numbered as seed 003 numbers them::

    1 conv  20 @ 5x5     28 -> 24
    2 max-pool 2x2 / 2   24 -> 12
    3 conv  50 @ 5x5     12 -> 8
    4 max-pool 2x2 / 2    8 -> 4
    5 conv 500 @ 4x4      4 -> 1
    6 ReLU
    7 conv  10 @ 1x1      1 -> 1
    8 softmax (here: inside the cross-entropy loss)

There is a single ReLU, between the 500-filter layer and the classifier, so the
first five layers are linear apart from max-pooling. The top layer is a 1x1
convolution rather than a dense layer; :meth:`LeNet.forward` flattens its 1x1 map
into logits. Module names map to the paper's numbering through
:data:`LENET_LAYER_NUMBERS`.
"""

from __future__ import annotations

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = ["LENET_LAYER_NUMBERS", "LeNet"]

LENET_LAYER_NUMBERS: dict[str, int] = {
    "features.conv1": 1,
    "features.pool1": 2,
    "features.conv2": 3,
    "features.pool2": 4,
    "features.conv3": 5,
    "features.relu": 6,
    "features.conv4": 7,
}
"""Dotted module name -> layer number in seed 003 (MatConvNet's ``net.layers`` index)."""


class LeNet(nn.Module):
    """MatConvNet's default MNIST LeNet: 1x28x28 images -> 10 logits.

    Args:
        num_classes: filters of the top 1x1 convolution (10 for digits).

    Shapes:
        input ``(N, 1, 28, 28)``; output ``(N, num_classes)`` logits (the softmax of
        MatConvNet's last layer is left to the loss).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConvscopeError(f"LeNet needs num_classes >= 1 (got {num_classes})")
        self.num_classes = num_classes
        self.in_channels = 1  # MNIST digits, 28x28: the convolutions end at 1x1
        self.input_size = 28
        self.features = nn.Sequential()
        self.features.add_module("conv1", nn.Conv2d(1, 20, 5))
        self.features.add_module("pool1", nn.MaxPool2d(2, 2))
        self.features.add_module("conv2", nn.Conv2d(20, 50, 5))
        self.features.add_module("pool2", nn.MaxPool2d(2, 2))
        self.features.add_module("conv3", nn.Conv2d(50, 500, 4))
        self.features.add_module("relu", nn.ReLU())
        self.features.add_module("conv4", nn.Conv2d(500, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, 1, 28, 28)``.

        No shape check here on purpose: a data-dependent ``if`` would stop torch.fx
        from tracing the model, which :mod:`convscope.decoding` relies on.
        """
        return torch.flatten(self.features(x), 1)
