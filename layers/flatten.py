"""(N, ...) -> (N, prod(...))."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.layers._checks import inputs
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel


@dataclass(frozen=True, kw_only=True)
class Flatten(Layer):
    """Keeps nothing; backward reshapes dy to the input shape. Both passes return
    new C-contiguous arrays (copies), never views of their inputs, so every output
    the executor accounts owns its memory."""

    TYPE: ClassVar[str] = "flatten"
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes, min_rank=2)
        return (shape[0], numel(shape[1:]))

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        return x.reshape(x.shape[0], -1).copy(), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        return [dy.reshape(tuple(in_shapes[0])).copy()], {}
