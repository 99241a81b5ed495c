"""im2col / col2im for NCHW convolution.

Layout: `cols` has shape (N, C*k*k, Ho*Wo), row index c*k*k + ki*k + kj. With C
split into G groups of Cg channels, `cols.reshape(N, G, Cg*k*k, Ho*Wo)` is a view,
so a grouped convolution is one broadcast batched matmul:
weight (G, Og, Cg*k*k) @ cols (N, G, Cg*k*k, Ho*Wo) -> (N, G, Og, Ho*Wo).

On NumPy, im2col lowers a sample (or a few small ones) at a time in one strided copy
(a window view made with `as_strided`, over a zero-padded copy of the samples where
there is padding), samples spread over the threads of `kernels.threads`. Elsewhere
(CuPy with its kernels switched off) the array code loops over the k*k kernel offsets
and moves one strided slice per offset (no padded copy of the input). Both copy the
same values.

col2im loops over the k*k offsets, adding one strided slice per offset (no
scatter-add), on NumPy for groups of samples over the threads. Within one offset the
strided positions are distinct, so `+=` accumulates exactly; each input pixel
receives its contributions in row-major offset order, starting from zero, whatever
the grouping.

On CuPy, float32 and float64 calls on C-contiguous arrays go to the CUDA kernels of
`vmem.kernels.cuda_im2col` instead -- one launch each way, no zero fill, a gather
for col2im in the same order, so the results have the same bits -- unless
`VMEM_CUDA_IM2COL` is set to something other than "1".
"""

from __future__ import annotations

from typing import Any

from numpy.lib.stride_tricks import as_strided

from vmem.kernels.cuda_module import kernel_module
from vmem.kernels.threads import for_ranges, on_threads
from vmem.kernels.windows import conv_output_size, offsets_2d

Array = Any


def cols_shape(x_shape: tuple[int, ...], k: int, stride: int, pad: int) -> tuple[int, int, int]:
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
    return n, c * k * k, ho * wo


def im2col(xp: Any, x: Array, k: int, stride: int, pad: int, out: Array | None = None
           ) -> Array:
    """Lower x (N, C, H, W) to columns (N, C*k*k, Ho*Wo); zero where a window reads
    padding. `out`, when given, must be C-contiguous of that shape and x's dtype;
    it is overwritten and returned."""
    n, c, h, w = x.shape
    shape = cols_shape(x.shape, k, stride, pad)
    ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
    if out is None:
        out = xp.empty(shape, dtype=x.dtype)
    elif tuple(out.shape) != shape:
        raise ValueError(f"im2col: out has shape {tuple(out.shape)}, expected {shape}")
    kernels = kernel_module(xp, "im2col", x, out, tuple(x.shape), k, pad)
    if kernels is not None:
        return kernels.im2col(x, k, stride, pad, out)
    cols6 = out.reshape(n, c, k, k, ho, wo)  # a view: out is contiguous
    if on_threads(xp):
        for_ranges(xp, n, lambda lo, hi: _lower_windows(xp, x[lo:hi], cols6[lo:hi],
                                                               stride, pad),
                   item_elements=shape[1] * shape[2])
        return out
    if pad > 0:
        out.fill(0)  # positions that read padding are never written below
    for ki, kj, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        cols6[:, :, ki, kj, orow, ocol] = x[:, :, irow, icol]
    return out


#: Input elements of the samples `_lower_windows` lowers in one strided copy: small
#: samples go several at a time (a copy's setup, the window view, costs about as long
#: as lowering a few thousand elements), large ones one at a time, so the padded
#: scratch stays one sample's.
LOWER_GROUP_ELEMENTS = 1 << 16


def _lower_windows(xp: Any, x: Array, cols6: Array, stride: int, pad: int) -> None:
    """cols6 (N, C, k, k, Ho, Wo) = every window of x, a group of samples at a time
    (`LOWER_GROUP_ELEMENTS`), each group one strided copy: a view whose axes walk the
    windows (`as_strided`) over the samples, or over a zero-padded copy of them
    (scratch of one group, its border zeroed once)."""
    n, c, h, w = x.shape
    k, ho, wo = cols6.shape[2], cols6.shape[4], cols6.shape[5]
    group = max(1, min(n, LOWER_GROUP_ELEMENTS // max(1, c * h * w)))
    padded = (xp.zeros((group, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype) if pad > 0
              else None)
    for lo in range(0, n, group):
        hi = min(n, lo + group)
        samples = x[lo:hi]
        if padded is not None:
            samples = padded[:hi - lo]
            samples[:, :, pad:pad + h, pad:pad + w] = x[lo:hi]
        sn, sc, sh, sw = samples.strides
        windows = as_strided(samples, shape=(hi - lo, c, k, k, ho, wo),
                             strides=(sn, sc, sh, sw, sh * stride, sw * stride),
                             writeable=False)
        cols6[lo:hi] = windows


def col2im(xp: Any, cols: Array, x_shape: tuple[int, ...], k: int, stride: int, pad: int,
           out: Array | None = None) -> Array:
    """Adjoint of im2col: sum columns (N, C*k*k, Ho*Wo) back into an (N, C, H, W)
    array; contributions that fall on padding are dropped. `out`, when given, is
    overwritten (it may be a slice of a larger array) and returned."""
    n, c, h, w = x_shape
    if tuple(cols.shape) != cols_shape(x_shape, k, stride, pad):
        raise ValueError(f"col2im: cols has shape {tuple(cols.shape)}, "
                         f"expected {cols_shape(x_shape, k, stride, pad)} for {tuple(x_shape)}")
    ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
    if out is None:
        out = xp.empty(tuple(x_shape), dtype=cols.dtype)
    kernels = kernel_module(xp, "im2col", cols, out, tuple(x_shape), k, pad)
    if kernels is not None:
        return kernels.col2im(cols, x_shape, k, stride, pad, out)
    cols6 = cols.reshape(n, c, k, k, ho, wo)

    def gather(lo: int, hi: int) -> None:
        part = out[lo:hi]
        part.fill(0)
        for ki, kj, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
            view = part[:, :, irow, icol]
            view += cols6[lo:hi, :, ki, kj, orow, ocol]

    for_ranges(xp, n, gather, item_elements=c * k * k * ho * wo)
    return out
