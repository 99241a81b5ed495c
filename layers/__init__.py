"""Layers: one module per family, each a frozen dataclass implementing
`vmem.layers.base.Layer`. `LAYER_TYPES` maps a profile's `type` to its class."""

from __future__ import annotations

from vmem.layers.activation import ReLU
from vmem.layers.add import Add
from vmem.layers.base import DIRECT, Algorithm, Context, Keeps, Layer, Shape
from vmem.layers.batchnorm import BatchNorm
from vmem.layers.concat import Concat
from vmem.layers.conv import Conv
from vmem.layers.dropout import Dropout
from vmem.layers.flatten import Flatten
from vmem.layers.linear import Linear
from vmem.layers.lrn import LRN
from vmem.layers.pool import AvgPool, GlobalAvgPool, MaxPool
from vmem.layers.softmax import SoftmaxLoss

LAYER_TYPES: dict[str, type[Layer]] = {
    cls.TYPE: cls
    for cls in (Conv, MaxPool, AvgPool, GlobalAvgPool, ReLU, LRN, BatchNorm, Linear, Dropout,
                SoftmaxLoss, Concat, Add, Flatten)
}

__all__ = [
    "DIRECT", "LAYER_TYPES", "LRN", "Add", "Algorithm", "AvgPool", "BatchNorm", "Concat",
    "Context", "Conv", "Dropout", "Flatten", "GlobalAvgPool", "Keeps", "Layer", "Linear",
    "MaxPool", "ReLU", "Shape", "SoftmaxLoss",
]
