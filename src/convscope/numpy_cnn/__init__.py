"""The textbook CNN in NumPy (seed 002, sections 11.2-11.6). No torch import anywhere.

Layers take and return (N, C, H, W) arrays like PyTorch. Each has ``forward`` and
``backward``; learnable arrays sit in ``layer.params`` and their gradients, after a
backward pass, in ``layer.grads``::

    from convscope import numpy_cnn as ncnn

    conv = ncnn.Conv2D(1, 8, 3, stride=1, padding="same", convention="correlation")
    y = conv.forward(x)          # (N, 8, H, W)
    dx = conv.backward(dy)       # conv.grads["W"], conv.grads["b"] now hold dL/dW, dL/db

    net = ncnn.Sequential(conv, ncnn.Sigmoid(), ncnn.MaxPool2D(2), ncnn.GlobalAvgPool(),
                          ncnn.Dense(8, 10), ncnn.Softmax())
    history = net.fit(x, labels, epochs=2, batch_size=32, optimizer=ncnn.Adam(1e-2),
                      loss="bce")

Everything is vectorized: convolutions are matrix products over unfolded windows
(im2col by stride tricks), pooling gradients are scattered with one ``bincount``.
The explainable-AI walkthrough of section 11.6.3 is in
:mod:`convscope.numpy_cnn.walkthrough` (imported on demand: it needs matplotlib).
"""

from __future__ import annotations

from convscope.numpy_cnn.activations import ReLU, Sigmoid, Softmax, Tanh
from convscope.numpy_cnn.layers import (
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    FixedConv2D,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool2D,
)
from convscope.numpy_cnn.losses import (
    BinaryCrossEntropy,
    CategoricalCrossEntropy,
    Loss,
    MeanSquaredError,
    get_loss,
    one_hot,
)
from convscope.numpy_cnn.model import Sequential, accuracy
from convscope.numpy_cnn.networks import mnist_cnn
from convscope.numpy_cnn.normalization import BatchNorm
from convscope.numpy_cnn.optimizers import (
    SGD,
    Adagrad,
    Adam,
    Momentum,
    Optimizer,
    RMSprop,
    get_optimizer,
)

__all__ = [
    "Adagrad",
    "Adam",
    "AvgPool2D",
    "BatchNorm",
    "BinaryCrossEntropy",
    "CategoricalCrossEntropy",
    "Conv2D",
    "Dense",
    "Dropout",
    "FixedConv2D",
    "Flatten",
    "GlobalAvgPool",
    "Layer",
    "Loss",
    "MaxPool2D",
    "MeanSquaredError",
    "Momentum",
    "Optimizer",
    "RMSprop",
    "ReLU",
    "SGD",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "accuracy",
    "get_loss",
    "get_optimizer",
    "mnist_cnn",
    "one_hot",
]
