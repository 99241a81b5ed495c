"""Fully connected layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vmem.kernels.gemm import matmul
from vmem.layers._checks import config_error, inputs, require_int
from vmem.layers.base import (
    Algorithm,
    Array,
    Context,
    Keeps,
    Layer,
    Shape,
    SharedParam,
    numel,
)
from vmem.layers.init import Init, check_init, initial_weights


@dataclass(frozen=True, kw_only=True)
class Linear(Layer):
    """y = x @ weight.T + bias, weight (out_features, in_features).

    On a token sequence (N, T, C) it maps the last dimension: y is (N, T,
    out_features) and in_features is C. On anything else, (N, F) or an image map
    (N, C, H, W), it reads x as (N, prod(rest)) by a reshape (no copy when x is
    contiguous): y is (N, out_features). Keeps its input; dx comes back in the
    input's shape.

    `tied_to` names a layer whose weight this one uses as its own (GPT-2's head
    reads the token embedding's (vocab, C) weight): the weight is then that
    layer's parameter, held and counted once, and this layer owns only its bias."""

    TYPE: ClassVar[str] = "linear"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    out_features: int
    bias: bool = True
    tied_to: str = ""
    init: Init = "uniform_fan_in"
    init_std: float = 0.01  # of init "normal"

    def __post_init__(self) -> None:
        check_init(self)
        require_int(self, "out_features", 1)
        if not isinstance(self.bias, bool):
            raise config_error(self, f"bias must be true or false, got {self.bias!r}")
        if not isinstance(self.tied_to, str):
            raise config_error(self, f"tied_to must be a layer name, got {self.tied_to!r}")

    def _rows(self, in_shapes: Sequence[Shape]) -> tuple[Shape, int]:
        """The leading dimensions each row of x is indexed by, and in_features."""
        (shape,) = inputs(self, in_shapes, min_rank=2)
        if len(shape) == 3:
            return shape[:2], shape[2]
        return shape[:1], numel(shape[1:])

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        lead, _ = self._rows(in_shapes)
        return (*lead, self.out_features)

    def weight_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        return (self.out_features, self._rows(in_shapes)[1])

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        shapes = {} if self.tied_to else {"weight": self.weight_shape(in_shapes)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def shared_params(self, in_shapes: Sequence[Shape]) -> dict[str, SharedParam]:
        if not self.tied_to:
            return {}
        return {"weight": SharedParam(self.tied_to, "weight", self.weight_shape(in_shapes))}

    def init_params(self, in_shapes: Sequence[Shape], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        """Drawn as `init` says (vmem.layers.init); a tied layer draws only its bias,
        zero."""
        if self.tied_to:
            return ({"bias": np.zeros((self.out_features,), np.float32)} if self.bias else {})
        return initial_weights(self.init, self.init_std, self.param_shapes(in_shapes), rng)

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        lead, features = self._rows(in_shapes)
        rows = numel(lead)
        return 2 * rows * features * self.out_features + (rows * self.out_features
                                                          if self.bias else 0)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        lead, features = self._rows([tuple(x.shape)])
        y = matmul(xp, x.reshape(-1, features), params["weight"].T)
        if self.bias:
            y += params["bias"]
        return y.reshape(*lead, self.out_features), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        (x,) = xs
        features = self._rows([tuple(x.shape)])[1]
        rows, dy_rows = x.reshape(-1, features), dy.reshape(-1, self.out_features)
        grads = {"weight": matmul(xp, dy_rows.T, rows)}
        if self.bias:
            grads["bias"] = dy_rows.sum(axis=0)
        dx = matmul(xp, dy_rows, params["weight"]).reshape(x.shape) if needs_dx[0] else None
        return [dx], grads
