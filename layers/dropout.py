"""Inverted dropout with masks that are a pure function of (step seed, layer name)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vmem.layers._checks import config_error, inputs
from vmem.layers.base import DIRECT, Algorithm, Array, Context, Keeps, Layer, Shape, numel


def keep_mask(seed: int, name: str, shape: Shape, p: float) -> np.ndarray:
    """Host boolean mask, True where an element is kept. Drawn on the host with
    default_rng([seed, crc32(name)]) in float64 whatever the compute dtype, so the
    cpu and cuda backends, and float32 and float64 runs, drop the same elements."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return rng.random(shape) >= p


@dataclass(frozen=True, kw_only=True)
class Dropout(Layer):
    """Training: y = x * mask, where mask is 1/(1-p) on kept elements and 0 on dropped
    ones, stored in the compute dtype (already scaled); saved = (mask,), and
    backward is dx = dy * mask. Evaluation: y is x itself and nothing is saved."""

    TYPE: ClassVar[str] = "dropout"
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING
    INPLACE: ClassVar[bool] = True

    p: float = 0.5

    def __post_init__(self) -> None:
        if (not isinstance(self.p, int | float) or isinstance(self.p, bool)
                or not 0 <= self.p < 1):
            raise config_error(self, f"p must be a number in [0, 1), got {self.p!r}")

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes)
        return shape

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        return numel(self.output_shape(in_shapes))

    def saved_bytes(self, in_shapes: Sequence[Shape], itemsize: int,
                    algo: Algorithm = DIRECT) -> int:
        """The scaled mask, one element per input element (training only)."""
        return numel(self.output_shape(in_shapes)) * itemsize

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        if not ctx.train:
            return x, ()
        keep = keep_mask(ctx.seed, self.name, tuple(x.shape), float(self.p))
        host = np.where(keep, 1.0 / (1.0 - self.p), 0.0).astype(x.dtype)
        mask = xp.asarray(host)
        return xp.multiply(x, mask, out=x if ctx.inplace else None), (mask,)

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        (mask,) = saved
        return [xp.multiply(dy, mask, out=dy)], {}  # nothing reads dy after this layer
