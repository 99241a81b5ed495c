"""2-D convolution (NCHW, square kernel, grouped) by im2col + GEMM over batch chunks.

Algorithms: one per chunk size, N first, then the powers of two below N down to
1. A chunk of `chunk` samples is lowered into one column buffer of shape
(chunk, C*k*k, Ho*Wo) -- all groups at once -- and multiplied by the weight,
viewed as (G, O/G, C/G*k*k), in one broadcast batched matmul. A pointwise
convolution (1x1, stride 1, no padding) has one algorithm, "gemm": its input,
viewed as (N, C, H*W), already is its columns, so nothing is lowered and the
whole batch is one batched matmul.

Workspace (what `Algorithm.workspace_bytes` counts, and all the scratch that
forward and backward allocate besides their outputs and gradients):

    chunk * C * k * k * Ho * Wo * itemsize          the column buffer (none pointwise)
  + O * (C/G) * k * k * itemsize   (when N > 1)     backward's weight-gradient temp

Backward per chunk: lower x into the column buffer, accumulate dW sample by
sample, then, when dx is needed, write dcol over the same buffer in one batched
matmul and col2im it into dx. Sample 0 writes dW; each later sample's product goes
through the temp and is added (NumPy), or is added by its own GEMM with beta = 1
(CuPy, `kernels.gemm`), which needs no temp: the arena still counts it, so on a
GPU the count is one weight's size high. Because dW is accumulated in sample
order and every other value is computed per sample, the results are the same for
every chunk size (bit-identical where the GEMM library gives each matrix of a
batch the bits it gives it alone: on NumPy every product is cut into column tiles
fixed by its shape, one single-threaded BLAS call each (`kernels.gemm`), so also
for every thread count; cuBLAS may pick another kernel for another batch count, so
on a GPU chunk sizes agree to rounding).

dW's GEMMs are 2-D, one per (sample, group), with the columns transposed as a
flag, not a copy. The batched matmuls (forward; dcol) have contiguous operands,
since CuPy's batched matmul copies any non-contiguous one: the weight broadcast
over the chunk, and for dcol W transposed once per backward call (a weight-sized
temporary, not counted as workspace). On CuPy, im2col and col2im are one CUDA
kernel each (`kernels.cuda_im2col`), and each batched matmul is one strided-batched
cuBLAS GEMM per group with the weight's stride 0 (`kernels.gemm`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vmem.kernels import channels, elementwise
from vmem.kernels.gemm import (
    accumulates_in_place,
    matmul_nt_sum,
    matmul_shared_left,
    pointwise_gradients,
)
from vmem.kernels.im2col import col2im, im2col
from vmem.kernels.windows import conv_output_size
from vmem.kernels.workspace import borrowed
from vmem.layers._checks import config_error, inputs, require_int, shape_error
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape
from vmem.layers.init import Init, check_init, initial_weights

# A GEMM of this many FLOPs keeps a large GPU busy for tens of microseconds, far
# past its launch cost (about 40 us on an H100 at 100 TFLOP/s against ~5 us).
GEMM_SATURATION_FLOPS = 4e9


def chunk_sizes(n: int) -> list[int]:
    """n, then the powers of two below n, descending to 1."""
    sizes = [n]
    p = 1 << (n - 1).bit_length() - 1 if n > 1 else 0  # the largest power of two < n
    while p >= 1:
        sizes.append(p)
        p //= 2
    return sizes


@dataclass(frozen=True, kw_only=True)
class Conv(Layer):
    TYPE: ClassVar[str] = "conv"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    out_channels: int
    kernel: int
    stride: int = 1
    pad: int = 0
    groups: int = 1
    bias: bool = True
    init: Init = "kaiming_fan_out"
    init_std: float = 0.01  # of init "normal"

    def __post_init__(self) -> None:
        check_init(self)
        require_int(self, "out_channels", 1)
        require_int(self, "kernel", 1)
        require_int(self, "stride", 1)
        require_int(self, "pad", 0)
        require_int(self, "groups", 1)
        if self.out_channels % self.groups:
            raise config_error(self, f"out_channels {self.out_channels} is not divisible "
                                     f"by groups {self.groups}")
        if not isinstance(self.bias, bool):
            raise config_error(self, f"bias must be true or false, got {self.bias!r}")

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes, rank=4)
        n, c, h, w = shape
        if c % self.groups:
            raise shape_error(self, f"input channels {c} (shape {shape}) are not divisible "
                                    f"by groups {self.groups}")
        k, p = self.kernel, self.pad
        if k > h + 2 * p or k > w + 2 * p:
            raise shape_error(self, f"kernel {k} is larger than the input {h}x{w} padded "
                                    f"by {p} (shape {shape})")
        ho = conv_output_size(h, k, self.stride, p)
        wo = conv_output_size(w, k, self.stride, p)
        return (n, self.out_channels, ho, wo)

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        self.output_shape(in_shapes)
        c = in_shapes[0][1]
        shapes = {"weight": (self.out_channels, c // self.groups, self.kernel, self.kernel)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def init_params(self, in_shapes: Sequence[Shape], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        """Drawn as `init` says (vmem.layers.init)."""
        return initial_weights(self.init, self.init_std, self.param_shapes(in_shapes), rng)

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        n, o, ho, wo = self.output_shape(in_shapes)
        c = in_shapes[0][1]
        macs = n * o * ho * wo * (c // self.groups) * self.kernel * self.kernel
        return 2 * macs + (n * o * ho * wo if self.bias else 0)

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, no padding: the input is its own column buffer (no im2col)."""
        return self.kernel == 1 and self.stride == 1 and self.pad == 0

    def workspace_bytes(self, in_shapes: Sequence[Shape], itemsize: int, chunk: int) -> int:
        n, o, ho, wo = self.output_shape(in_shapes)
        c, kk = in_shapes[0][1], self.kernel * self.kernel
        cols = 0 if self.pointwise else chunk * c * kk * ho * wo
        dw_temp = o * (c // self.groups) * kk if n > 1 else 0
        return (cols + dw_temp) * itemsize

    def saturating_chunk(self, in_shapes: Sequence[Shape]) -> int:
        """The fewest samples whose GEMM reaches GEMM_SATURATION_FLOPS (at most N):
        lowering more at once makes no GEMM faster, it only costs workspace."""
        n = self.output_shape(in_shapes)[0]
        per_sample = max(1, self.flops([(1, *in_shapes[0][1:])]))
        return max(1, min(n, -(-int(GEMM_SATURATION_FLOPS) // per_sample)))

    def algorithms(self, in_shapes: Sequence[Shape], itemsize: int) -> tuple[Algorithm, ...]:
        """Fastest first: the saturating chunk, then the powers of two below it,
        down to one sample (the least workspace). A pointwise convolution has one:
        the whole batch, its input read in place of columns."""
        if self.pointwise:
            return (Algorithm("gemm", self.workspace_bytes(in_shapes, itemsize, 0)),)
        return tuple(Algorithm(f"im2col:{chunk}", self.workspace_bytes(in_shapes, itemsize, chunk),
                               chunk) for chunk in chunk_sizes(self.saturating_chunk(in_shapes)))

    def _dims(self, x_shape: Shape) -> tuple[int, ...]:
        """(N, C, H, W, Ho, Wo, G, Og, K = C/G*k*k, L = Ho*Wo)."""
        n, c, h, w = x_shape
        _, o, ho, wo = self.output_shape([x_shape])
        g = self.groups
        return n, c, h, w, ho, wo, g, o // g, c // g * self.kernel**2, ho * wo

    @contextlib.contextmanager
    def _columns(self, xp: Any, x: Array, chunk: int) -> Iterator[Array | None]:
        """The column buffer of `chunk` samples (None for a pointwise convolution) for
        the block's length: scratch, so it may be one lent again (`borrowed`)."""
        if self.pointwise:
            yield None
            return
        _, c, _, _, _, _, _, _, _, hw = self._dims(tuple(x.shape))
        with borrowed(xp, (chunk, c * self.kernel**2, hw), x.dtype) as cols:
            yield cols

    def _lower(self, xp: Any, x: Array, n0: int, m: int, cols: Array | None) -> Array:
        """Samples n0 .. n0+m-1 as columns (m, G, K, L): lowered into `cols` by im2col,
        or, pointwise, the input itself (a view)."""
        *_, g, _, kdim, hw = self._dims(tuple(x.shape))
        if cols is None:
            return xp.ascontiguousarray(x[n0:n0 + m]).reshape(m, g, kdim, hw)
        lowered = im2col(xp, x[n0:n0 + m], self.kernel, self.stride, self.pad, out=cols[:m])
        return lowered.reshape(m, g, kdim, hw)

    @staticmethod
    def _chunk(algo: Algorithm, n: int) -> int:
        """The algorithm's chunk, capped at the batch; no chunk (e.g. DIRECT) means N."""
        return min(algo.chunk, n) if algo.chunk > 0 else n

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        n, _, _, _, ho, wo, g, og, kdim, hw = self._dims(tuple(x.shape))
        chunk = self._chunk(algo, n)
        weight = params["weight"].reshape(g, og, kdim)
        y = xp.empty((n, self.out_channels, ho, wo), dtype=x.dtype)
        y4 = y.reshape(n, g, og, hw)  # a view of y
        with self._columns(xp, x, chunk) as cols:
            for n0 in range(0, n, chunk):
                m = min(chunk, n - n0)
                lowered = self._lower(xp, x, n0, m, cols)
                matmul_shared_left(xp, weight, lowered, y4[n0:n0 + m])
        if self.bias:
            channels.add_bias(xp, y.reshape(n, self.out_channels, hw), params["bias"])
        return y, ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        (x,) = xs
        n, c, h, w, ho, wo, g, og, kdim, hw = self._dims(tuple(x.shape))
        k, s, p = self.kernel, self.stride, self.pad
        chunk = self._chunk(algo, n)
        weight = params["weight"].reshape(g, og, kdim)
        dy4 = xp.ascontiguousarray(dy).reshape(n, g, og, hw)
        dw = xp.empty((g, og, kdim), dtype=x.dtype)
        in_place = accumulates_in_place(xp, dy4, dw)  # cuBLAS adds into dW itself
        dw_temp = xp.empty_like(dw) if n > 1 and not in_place else None
        dx = xp.empty(x.shape, dtype=x.dtype) if needs_dx[0] else None
        # W[g].T, contiguous: the strided-batched GEMM takes contiguous operands only
        # (and CuPy's batched matmul would copy a transposed view per call)
        weight_t = elementwise.transposed(xp, weight) if dx is not None else None
        with self._columns(xp, x, chunk) as cols:
            for n0 in range(0, n, chunk):
                m = min(chunk, n - n0)
                lowered = self._lower(xp, x, n0, m, cols)
                if self.pointwise and dx is not None:  # dW and dx read only dy and x
                    pointwise_gradients(xp, dy4[n0:n0 + m], lowered, weight_t, dw, n0 == 0,
                                        dw_temp, dx[n0:n0 + m].reshape(m, g, kdim, hw))
                    continue
                # dW[g] (+)= dy[n, g] @ cols[n, g].T, sample after sample
                matmul_nt_sum(xp, dy4[n0:n0 + m], lowered, dw, start=n0 == 0, scratch=dw_temp)
                if dx is None:
                    continue
                # dcol[n, g] = W[g].T @ dy[n, g] for the whole chunk in one batched GEMM,
                # written over the columns (no sample's dcol depends on another's) and
                # summed back into dx (a pointwise convolution's dcol is its dx, above)
                matmul_shared_left(xp, weight_t, dy4[n0:n0 + m], lowered)
                col2im(xp, cols[:m], (m, c, h, w), k, s, p, out=dx[n0:n0 + m])
        grads = {"weight": dw.reshape(params["weight"].shape)}
        if self.bias:
            # over the contiguous pixels first: a reduction over axes (0, 2, 3) at once
            # would give CuPy only O outputs to spread over the GPU, one block each
            grads["bias"] = channels.channel_sums(xp, dy4.reshape(n, self.out_channels, hw))
        return [dx], grads
