"""Fully connected layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vmem.kernels.gemm import matmul
from vmem.layers._checks import config_error, inputs, require_int
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, he_normal, numel


@dataclass(frozen=True, kw_only=True)
class Linear(Layer):
    """y = x @ weight.T + bias for x of shape (N, ...), read as (N, prod(rest)) by a
    reshape (no copy when x is contiguous). weight is (out_features, in_features).
    Keeps its input; dx comes back in the input's original shape."""

    TYPE: ClassVar[str] = "linear"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    out_features: int
    bias: bool = True

    def __post_init__(self) -> None:
        require_int(self, "out_features", 1)
        if not isinstance(self.bias, bool):
            raise config_error(self, f"bias must be true or false, got {self.bias!r}")

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes, min_rank=2)
        return (shape[0], self.out_features)

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        self.output_shape(in_shapes)
        shapes = {"weight": (self.out_features, numel(in_shapes[0][1:]))}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, in_shapes: Sequence[Shape], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        """He normal weights, std = sqrt(2 / in_features); zero bias."""
        return he_normal(self.param_shapes(in_shapes), rng)

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        n, out = self.output_shape(in_shapes)
        return 2 * n * numel(in_shapes[0][1:]) * out + (n * out if self.bias else 0)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        y = matmul(xp, x.reshape(x.shape[0], -1), params["weight"].T)
        if self.bias:
            y += params["bias"]
        return y, ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        (x,) = xs
        x2 = x.reshape(x.shape[0], -1)
        grads = {"weight": matmul(xp, dy.T, x2)}
        if self.bias:
            grads["bias"] = dy.sum(axis=0)
        dx = matmul(xp, dy, params["weight"]).reshape(x.shape) if needs_dx[0] else None
        return [dx], grads
