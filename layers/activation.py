"""Element-wise activations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.layers._checks import inputs
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel

# Elements of ReLU's backward per pass: its boolean mask, all the scratch the pass
# needs besides dy, stays within 16 MiB however large the feature map.
RELU_MASK_ELEMENTS = 1 << 24


def relu_backward_into(xp: Any, dy: Array, y: Array) -> Array:
    """dx = dy where y > 0, else 0 (also where y is NaN), written over dy and returned.
    Pass by pass over the flat arrays, so the device holds one bounded mask beyond
    the gradient map the arena counts."""
    if not (dy.flags.c_contiguous and y.flags.c_contiguous):  # no flat views: one pass
        dy[...] = xp.where(y > 0, dy, 0)
        return dy
    flat_dy, flat_y = dy.reshape(-1), y.reshape(-1)
    mask = xp.empty(min(flat_dy.size, RELU_MASK_ELEMENTS), dtype=bool)
    for start in range(0, flat_dy.size, mask.size):
        dy_part, y_part = flat_dy[start:start + mask.size], flat_y[start:start + mask.size]
        zero = mask[:dy_part.size]
        xp.greater(y_part, 0, out=zero)
        xp.logical_not(zero, out=zero)  # where dx is 0
        xp.copyto(dy_part, 0, where=zero)
    return dy


@dataclass(frozen=True, kw_only=True)
class ReLU(Layer):
    """y = max(x, 0). Keeps its output (dx = dy where y > 0, else 0), so the executor
    may put y in x's block when nothing else needs x (`ctx.inplace`): then y is
    written over x. dx is written over dy, which nothing reads after this layer."""

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
        return xp.maximum(x, 0, out=x if ctx.inplace else None), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        return [relu_backward_into(xp, dy, y)], {}
