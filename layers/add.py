"""Element-wise sum of two or more inputs of one shape (residual joins)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.kernels import elementwise
from vmem.layers._checks import inputs, shape_error
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel


@dataclass(frozen=True, kw_only=True)
class Add(Layer):
    """y = sum of the inputs, all of one shape. Keeps nothing. Backward returns
    dx_i = dy as a new copy for every input that needs one (none aliases dy or
    another dx), since the executor accounts each returned dx as its own buffer; an
    executor that wants to hand dy itself to one input may do so as an accounting
    choice, the values being equal."""

    TYPE: ClassVar[str] = "add"
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING
    ARITY: ClassVar[int | None] = None

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        shapes = inputs(self, in_shapes)
        if any(s != shapes[0] for s in shapes):
            raise shape_error(self, f"inputs of different shapes: {shapes}")
        return shapes[0]

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        return numel(self.output_shape(in_shapes)) * (len(in_shapes) - 1)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        y = elementwise.add(xp, xs[0], xs[1])
        for x in xs[2:]:
            elementwise.add_into(xp, y, x)
        return y, ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        return [elementwise.copy(xp, dy) if needed else None for needed in needs_dx], {}
