"""Element-wise activations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.kernels import elementwise
from vmem.kernels.threads import for_ranges, on_threads
from vmem.layers._checks import inputs
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel

# Elements of ReLU's backward per pass: its boolean mask, all the scratch the pass
# needs besides dy, stays within 16 MiB however large the feature map.
RELU_MASK_ELEMENTS = 1 << 24


def relu_backward_into(xp: Any, dy: Array, y: Array) -> Array:
    """dx = dy where y > 0, else 0 (also where y is NaN), written over dy and returned.
    Pass by pass over the flat arrays, the passes spread over the threads (each
    element stands alone), so the device holds bounded masks, together at most
    RELU_MASK_ELEMENTS bytes, beyond the gradient map the arena counts."""
    if not (dy.flags.c_contiguous and y.flags.c_contiguous):  # no flat views: one pass
        dy[...] = xp.where(y > 0, dy, 0)
        return dy
    flat_dy, flat_y = dy.reshape(-1), y.reshape(-1)
    if on_threads(xp) and dy.dtype.kind == "f" and dy.dtype.itemsize in (2, 4, 8):
        # dy's bits as unsigned integers times the mask (0 or 1): dy's bits where y > 0,
        # else those of +0 -- NaN, infinities and -0 kept as they are, no -0 written --
        # in one branch-free pass, far faster than copying 0 where the mask says
        bits = flat_dy.view(f"u{dy.dtype.itemsize}")

        def zero_where_inactive(lo: int, hi: int) -> None:
            xp.multiply(bits[lo:hi], xp.greater(flat_y[lo:hi], 0), out=bits[lo:hi])
    else:
        def zero_where_inactive(lo: int, hi: int) -> None:
            zero = xp.greater(flat_y[lo:hi], 0)
            xp.logical_not(zero, out=zero)  # where dx is 0
            xp.copyto(flat_dy[lo:hi], 0, where=zero)

    for_ranges(xp, flat_dy.size, zero_where_inactive, 1, RELU_MASK_ELEMENTS, item_elements=1)
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
        return elementwise.relu(xp, x, ctx.inplace), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        return [relu_backward_into(xp, dy, y)], {}


#: GELU's tanh approximation (Hendrycks & Gimpel 2016), GPT-2's and
#: torch.nn.functional.gelu(approximate="tanh")'s: sqrt(2/pi) and the cubic's weight.
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def _gelu_tanh(xp: Any, x: Array) -> Array:
    """t = tanh(sqrt(2/pi) (x + 0.044715 x^3)), a new array."""
    t = x * x
    t *= x
    t *= GELU_CUBIC
    t += x
    t *= GELU_SCALE
    return xp.tanh(t, out=t)


@dataclass(frozen=True, kw_only=True)
class GELU(Layer):
    """GELU in its tanh approximation, as GPT-2 computes it (not the exact erf form):
    y = x/2 (1 + t), t = tanh(sqrt(2/pi) (x + 0.044715 x^3)). Keeps its input;
    the backward pass computes t again, in one input-sized buffer of scratch."""

    TYPE: ClassVar[str] = "gelu"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes)
        return shape

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """About 8 per element, the tanh counted as one."""
        return 8 * numel(self.output_shape(in_shapes))

    def algorithms(self, in_shapes: Sequence[Shape], itemsize: int) -> tuple[Algorithm, ...]:
        return (Algorithm("direct", numel(self.output_shape(in_shapes)) * itemsize),)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        y = _gelu_tanh(xp, x)  # the output's own buffer
        y += 1
        y *= x
        y *= 0.5
        return y, ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        """dy/dx = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        = (1 + t)/2 * (1 + (1 - t) x sqrt(2/pi) (1 + 3 * 0.044715 x^2))."""
        if not needs_dx[0]:
            return [None], {}
        (x,) = xs
        t = _gelu_tanh(xp, x)  # the scratch
        dx = x * x
        dx *= 3 * GELU_CUBIC
        dx += 1
        dx *= GELU_SCALE
        dx *= x
        xp.subtract(1, t, out=t)  # 1 - t
        dx *= t
        dx += 1
        xp.subtract(2, t, out=t)  # 1 + t
        dx *= t
        dx *= 0.5
        dx *= dy
        return [dx], {}
