"""Max and average pooling over NCHW, forward and backward.

Geometry follows `windows`: output size by the floor rule or, with `ceil_mode`,
the Caffe/PyTorch ceil rule. Every function loops over the k*k window offsets
in row-major order and moves one strided slice per offset; padding is never
materialized.

Max pooling treats padding as -inf. Its backward recomputes the maxima from the
input and routes each output gradient to the first maximum of its window in
row-major order (as Caffe and PyTorch do), so no index tensor is kept.

Average pooling divides by the window area counting padding
(count_include_pad=True), except that a window which ceil_mode lets run past the
padded edge is clipped there and divides by the clipped area (PyTorch's rule).

On CuPy, float32 and float64 calls on C-contiguous arrays go to the CUDA kernels of
`vmem.kernels.cuda_pooling` instead -- one launch per pass, no scratch, the same sums
in the same order, so the same bits -- unless `VMEM_CUDA_POOLING` is set to
something other than "1".
"""

from __future__ import annotations

from typing import Any

from vmem.kernels.cuda_module import kernel_module
from vmem.kernels.threads import for_ranges, on_threads
from vmem.kernels.windows import offsets_2d, pool_output_size

Array = Any


def _check_gradient(dy: Array, expected: tuple[int, ...]) -> None:
    """The output gradient must have the output's shape: a kernel would read past it."""
    if tuple(dy.shape) != tuple(expected):
        raise ValueError(f"pooling backward: dy has shape {tuple(dy.shape)}, expected "
                         f"{tuple(expected)}")


def output_hw(x_shape: tuple[int, ...], k: int, stride: int, pad: int, ceil_mode: bool
              ) -> tuple[int, int]:
    h, w = x_shape[-2:]
    return (pool_output_size(h, k, stride, pad, ceil_mode),
            pool_output_size(w, k, stride, pad, ceil_mode))


def max_pool_forward(xp: Any, x: Array, k: int, stride: int, pad: int, ceil_mode: bool
                     ) -> Array:
    n, c, h, w = x.shape
    ho, wo = output_hw(x.shape, k, stride, pad, ceil_mode)
    kernels = kernel_module(xp, "pooling", x)
    if kernels is not None:
        return kernels.max_pool_forward(x, xp.empty((n, c, ho, wo), dtype=x.dtype), k, stride,
                                        pad)
    y = xp.empty((n, c, ho, wo), dtype=x.dtype)
    for_ranges(xp, n, lambda lo, hi: _window_maxima(xp, x[lo:hi], y[lo:hi], k, stride,
                                                           pad))
    return y


def _window_maxima(xp: Any, x: Array, y: Array, k: int, stride: int, pad: int) -> None:
    """y (written over) = the maximum of each window of x, padding as -inf."""
    h, w = x.shape[-2:]
    ho, wo = y.shape[-2:]
    y.fill(-xp.inf)
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        view = y[:, :, orow, ocol]
        xp.maximum(view, x[:, :, irow, icol], out=view)


# Scratch of max pooling's backward pass, whatever the batch: the recomputed maxima,
# the pending windows and one offset's hits and routed gradients, about 10 bytes an
# output element, for as many samples at once as fit in this (at least one sample).
MAX_POOL_SCRATCH_BYTES = 64 * 2**20


def max_pool_backward(xp: Any, x: Array, dy: Array, k: int, stride: int, pad: int,
                      ceil_mode: bool) -> Array:
    """dx for max pooling: each dy goes to the first maximum of its window. Runs over
    groups of samples, as many at once as there are threads, so that their scratch
    together stays within MAX_POOL_SCRATCH_BYTES; samples are independent, so the
    grouping changes no result."""
    n, c, h, w = x.shape
    ho, wo = output_hw(x.shape, k, stride, pad, ceil_mode)
    _check_gradient(dy, (n, c, ho, wo))
    kernels = kernel_module(xp, "pooling", x, dy)
    if kernels is not None:  # no scratch at all
        return kernels.max_pool_backward(x, dy, xp.empty(x.shape, dtype=dy.dtype), k, stride,
                                         pad)
    per_sample = c * ho * wo * (x.dtype.itemsize + dy.dtype.itemsize + 2)
    dx = xp.empty(x.shape, dtype=dy.dtype)

    def route(lo: int, hi: int) -> None:
        xs, dys, dxs = x[lo:hi], dy[lo:hi], dx[lo:hi]
        dxs.fill(0)
        y = xp.empty(dys.shape, dtype=x.dtype)
        _window_maxima(xp, xs, y, k, stride, pad)
        pending = xp.ones(y.shape, dtype=bool)  # windows whose maximum is not yet found
        hits = xp.empty(y.shape, dtype=bool)  # one offset's hits, in a view of this
        for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
            hit = xp.equal(xs[:, :, irow, icol], y[:, :, orow, ocol],
                           out=hits[:, :, :orow.stop - orow.start, :ocol.stop - ocol.start])
            still = pending[:, :, orow, ocol]
            hit &= still
            still ^= hit  # hit is a subset of still: clears the windows found here
            view = dxs[:, :, irow, icol]
            if on_threads(xp):  # adding only where hit: dx never holds -0, so the same bits
                xp.add(view, dys[:, :, orow, ocol], out=view, where=hit)
            else:
                view += xp.where(hit, dys[:, :, orow, ocol], 0)

    for_ranges(xp, n, route, per_sample, MAX_POOL_SCRATCH_BYTES)
    return dx


def avg_pool_divisor(xp: Any, x_shape: tuple[int, ...], k: int, stride: int, pad: int,
                     ceil_mode: bool, dtype: Any) -> Array:
    """(Ho, Wo) window areas: the part of each window inside the padded input."""
    h, w = x_shape[-2:]
    ho, wo = output_hw(x_shape, k, stride, pad, ceil_mode)

    def extent(out: int, size: int) -> Array:
        start = xp.arange(out) * stride - pad
        return xp.minimum(start + k, size + pad) - start

    area = extent(ho, h)[:, None] * extent(wo, w)[None, :]
    return area.astype(dtype)


def avg_pool_forward(xp: Any, x: Array, k: int, stride: int, pad: int, ceil_mode: bool
                     ) -> Array:
    n, c, h, w = x.shape
    ho, wo = output_hw(x.shape, k, stride, pad, ceil_mode)
    kernels = kernel_module(xp, "pooling", x)
    if kernels is not None:
        return kernels.avg_pool_forward(x, xp.empty((n, c, ho, wo), dtype=x.dtype), k, stride,
                                        pad)
    y = xp.zeros((n, c, ho, wo), dtype=x.dtype)
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        view = y[:, :, orow, ocol]
        view += x[:, :, irow, icol]
    y /= avg_pool_divisor(xp, x.shape, k, stride, pad, ceil_mode, x.dtype)
    return y


def avg_pool_backward(xp: Any, dy: Array, x_shape: tuple[int, ...], k: int, stride: int,
                      pad: int, ceil_mode: bool) -> Array:
    h, w = x_shape[-2:]
    ho, wo = output_hw(x_shape, k, stride, pad, ceil_mode)
    _check_gradient(dy, (*x_shape[:2], ho, wo))
    kernels = kernel_module(xp, "pooling", dy)
    if kernels is not None:
        return kernels.avg_pool_backward(dy, xp.empty(tuple(x_shape), dtype=dy.dtype), k,
                                         stride, pad)
    g = dy / avg_pool_divisor(xp, x_shape, k, stride, pad, ceil_mode, dy.dtype)
    dx = xp.zeros(tuple(x_shape), dtype=dy.dtype)
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        view = dx[:, :, irow, icol]
        view += g[:, :, orow, ocol]
    return dx
