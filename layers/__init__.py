"""Layers: one module per family, each a frozen dataclass implementing
`vmem.layers.base.Layer`. `LAYER_TYPES` maps a profile's `type` to its class."""

from __future__ import annotations

from vmem.layers.activation import GELU, ReLU
from vmem.layers.add import Add
from vmem.layers.attention import Attention
from vmem.layers.base import DIRECT, Algorithm, Context, Keeps, Layer, Shape, SharedParam
from vmem.layers.batchnorm import BatchNorm
from vmem.layers.concat import Concat
from vmem.layers.conv import Conv
from vmem.layers.dropout import Dropout
from vmem.layers.embedding import Embedding, PositionEmbedding
from vmem.layers.flatten import Flatten
from vmem.layers.layernorm import LayerNorm
from vmem.layers.linear import Linear
from vmem.layers.lrn import LRN
from vmem.layers.pool import AvgPool, GlobalAvgPool, MaxPool
from vmem.layers.softmax import SoftmaxLoss

LAYER_TYPES: dict[str, type[Layer]] = {
    cls.TYPE: cls
    for cls in (Conv, MaxPool, AvgPool, GlobalAvgPool, ReLU, LRN, BatchNorm, Linear, Dropout,
                SoftmaxLoss, Concat, Add, Flatten, Embedding, PositionEmbedding, LayerNorm, GELU,
                Attention)
}

__all__ = [
    "DIRECT", "GELU", "LAYER_TYPES", "LRN", "Add", "Algorithm", "Attention", "AvgPool",
    "BatchNorm", "Concat", "Context", "Conv", "Dropout", "Embedding", "Flatten",
    "GlobalAvgPool", "Keeps", "Layer", "LayerNorm", "Linear", "MaxPool", "PositionEmbedding",
    "ReLU", "Shape", "SharedParam", "SoftmaxLoss",
]
