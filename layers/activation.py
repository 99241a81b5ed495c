"""Element-wise activations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.layers._checks import inputs
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel


@dataclass(frozen=True, kw_only=True)
class ReLU(Layer):
    """y = max(x, 0). Keeps its output (dx = dy * (y > 0)), so the executor may write
    y over x's block when nothing else needs x; the arithmetic never writes over x."""

    TYPE: ClassVar[str] = "relu"
    KEEPS: ClassVar[Keeps] = Keeps.OUTPUT
    INPLACE: ClassVar[bool] = True

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes)
        return shape

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        return numel(self.output_shape(in_shapes))

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        return xp.maximum(x, 0), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        return [xp.where(y > 0, dy, 0)], {}
