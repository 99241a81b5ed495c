"""Max and average pooling over NCHW (square windows).

Output size by the floor rule or, with `ceil_mode`, the Caffe/GoogLeNet ceil rule
with PyTorch's check that the last window starts inside the input or the left
padding. Padding is at most half the kernel (PyTorch's limit), so every window
holds at least one input element.

maxpool keeps its input: backward recomputes the window maxima and routes each
gradient to the first maximum of its window (row-major), keeping no index tensor.
Padding counts as -inf.

avgpool keeps nothing (backward needs only the input shape). It divides by the
window area including padding (count_include_pad=True); a window that ceil_mode
lets run past the padded edge is clipped there and divides by the clipped area,
as PyTorch does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.kernels import pooling
from vmem.kernels.windows import pool_output_size
from vmem.layers._checks import config_error, inputs, require_int, shape_error
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel


@dataclass(frozen=True, kw_only=True)
class _Pool(Layer):
    kernel: int
    stride: int | None = None  # None: equal to kernel
    pad: int = 0
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        require_int(self, "kernel", 1)
        if self.stride is not None:
            require_int(self, "stride", 1)
        require_int(self, "pad", 0)
        if 2 * self.pad > self.kernel:
            raise config_error(self, f"pad {self.pad} is more than half the kernel "
                                     f"{self.kernel}")
        if not isinstance(self.ceil_mode, bool):
            raise config_error(self, f"ceil_mode must be true or false, got {self.ceil_mode!r}")

    @property
    def step(self) -> int:
        """The effective stride."""
        return self.kernel if self.stride is None else self.stride

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes, rank=4)
        n, c, h, w = shape
        k, p = self.kernel, self.pad
        if k > h + 2 * p or k > w + 2 * p:
            raise shape_error(self, f"kernel {k} is larger than the input {h}x{w} padded "
                                    f"by {p} (shape {shape})")
        return (n, c, pool_output_size(h, k, self.step, p, self.ceil_mode),
                pool_output_size(w, k, self.step, p, self.ceil_mode))

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """One comparison or addition per window element."""
        return numel(self.output_shape(in_shapes)) * self.kernel * self.kernel

    def _args(self) -> tuple[int, int, int, bool]:
        return self.kernel, self.step, self.pad, self.ceil_mode


@dataclass(frozen=True, kw_only=True)
class MaxPool(_Pool):
    TYPE: ClassVar[str] = "maxpool"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        return pooling.max_pool_forward(xp, x, *self._args()), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        return [pooling.max_pool_backward(xp, xs[0], dy, *self._args())], {}


@dataclass(frozen=True, kw_only=True)
class AvgPool(_Pool):
    TYPE: ClassVar[str] = "avgpool"
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """Window additions plus one division per output."""
        return super().flops(in_shapes) + numel(self.output_shape(in_shapes))

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        return pooling.avg_pool_forward(xp, x, *self._args()), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        x_shape = tuple(in_shapes[0])
        return [pooling.avg_pool_backward(xp, dy, x_shape, *self._args())], {}


@dataclass(frozen=True, kw_only=True)
class GlobalAvgPool(Layer):
    """The mean of each channel's map, whatever its size: (N, C, H, W) to
    (N, C, 1, 1), as PyTorch's AdaptiveAvgPool2d(1). Keeps nothing: backward
    spreads dy / (H * W) over the map."""

    TYPE: ClassVar[str] = "global_avgpool"
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes, rank=4)
        return (shape[0], shape[1], 1, 1)

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """One addition per input element, one division per output."""
        return numel(in_shapes[0]) + numel(self.output_shape(in_shapes))

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        return x.mean(axis=(2, 3), keepdims=True), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        if not needs_dx[0]:
            return [None], {}
        n, c, h, w = in_shapes[0]
        dx = xp.empty((n, c, h, w), dtype=dy.dtype)
        dx[...] = dy / (h * w)
        return [dx], {}
