"""Concatenation of two or more inputs along one axis (GoogLeNet's inception joins)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.layers._checks import config_error, inputs, shape_error
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape


@dataclass(frozen=True, kw_only=True)
class Concat(Layer):
    """Joins inputs along `axis` (1, channels, by default; negative counts from the end;
    never the batch axis). Keeps nothing: backward splits dy by the input shapes into
    contiguous copies, one new array per input."""

    TYPE: ClassVar[str] = "concat"
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING
    ARITY: ClassVar[int | None] = None

    axis: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.axis, int) or isinstance(self.axis, bool) or self.axis == 0:
            raise config_error(self, f"axis must be a non-zero integer (0 is the batch), "
                                     f"got {self.axis!r}")

    def _axis(self, rank: int) -> int:
        axis = self.axis + rank if self.axis < 0 else self.axis
        if not 1 <= axis < rank:
            raise shape_error(self, f"axis {self.axis} is not a non-batch axis of rank-{rank} "
                                    f"inputs")
        return axis

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        shapes = inputs(self, in_shapes)
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise shape_error(self, f"inputs of different ranks: {shapes}")
        axis = self._axis(rank)
        rest = [s[:axis] + s[axis + 1:] for s in shapes]
        if any(r != rest[0] for r in rest):
            raise shape_error(self, f"inputs differ outside axis {axis}: {shapes}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        return xp.concatenate(list(xs), axis=self._axis(xs[0].ndim)), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        axis = self._axis(dy.ndim)
        dxs: list[Array | None] = []
        start = 0
        for shape, needed in zip(in_shapes, needs_dx, strict=True):
            stop = start + shape[axis]
            if needed:
                index = (slice(None),) * axis + (slice(start, stop),)
                dxs.append(dy[index].copy())  # copy(): C-contiguous, never a view of dy
            else:
                dxs.append(None)
            start = stop
        return dxs, {}
