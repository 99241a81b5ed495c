"""Local response normalization across channels (AlexNet, GoogLeNet)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.checks import is_finite_number
from vmem.kernels import lrn as lrn_kernels
from vmem.layers._checks import config_error, inputs, require_int
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel


@dataclass(frozen=True, kw_only=True)
class LRN(Layer):
    """y = x / (k + alpha/size * sum over a window of `size` channels of x^2) ** beta,
    with alpha divided by size (Caffe/PyTorch) and PyTorch's window
    [c - size//2, c + (size-1)//2] (Caffe's too for odd sizes). Works on any input
    of rank >= 2 with channels on axis 1. Keeps only its input: backward recomputes
    the scale and the output from it."""

    TYPE: ClassVar[str] = "lrn"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0

    def __post_init__(self) -> None:
        require_int(self, "size", 1)
        for field in ("alpha", "beta", "k"):
            value = getattr(self, field)
            if not is_finite_number(value):
                raise config_error(self, f"{field} must be a finite number, got {value!r}")
        if self.k <= 0 or self.alpha < 0:
            raise config_error(self, f"needs k > 0 and alpha >= 0, got k={self.k}, "
                                     f"alpha={self.alpha}")

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes, min_rank=2)
        return shape

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """Per element: square, size-1 window additions, scale and shift, power, product."""
        return numel(self.output_shape(in_shapes)) * (self.size + 4)

    def _args(self) -> tuple[int, float, float, float]:
        return self.size, float(self.alpha), float(self.beta), float(self.k)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        return lrn_kernels.lrn_forward(xp, x, *self._args()), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        return [lrn_kernels.lrn_backward(xp, xs[0], dy, *self._args())], {}
