"""Layers with parameters or shape changes: convolution, pooling, dense, dropout."""

from __future__ import annotations

from convscope.numpy_cnn.layers.base import Layer
from convscope.numpy_cnn.layers.conv import Conv2D, FixedConv2D
from convscope.numpy_cnn.layers.dense import Dense, Flatten
from convscope.numpy_cnn.layers.dropout import Dropout
from convscope.numpy_cnn.layers.pooling import AvgPool2D, GlobalAvgPool, MaxPool2D

__all__ = [
    "AvgPool2D",
    "Conv2D",
    "Dense",
    "Dropout",
    "FixedConv2D",
    "Flatten",
    "GlobalAvgPool",
    "Layer",
    "MaxPool2D",
]
