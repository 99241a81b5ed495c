"""Sliding-window geometry shared by convolution and pooling.

A window of size k slides over one spatial axis of length `size` with `stride`,
starting `pad` elements before the first input element. Output position o reads
input index o*stride - pad + offset for offset in [0, k). Kernels loop over the
k offsets and move one strided slice per offset; `offset_slices` gives, for one
offset, the output positions whose input index lies inside [0, size) and the
matching input slice. Positions outside are padding and are never read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator


def conv_output_size(size: int, k: int, stride: int, pad: int) -> int:
    """Floor rule: the number of windows that fit in the padded axis."""
    return (size + 2 * pad - k) // stride + 1


def pool_output_size(size: int, k: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Floor rule, or with `ceil_mode` the Caffe/PyTorch ceil rule: one more window
    when the last one is partial, as long as that window starts inside the input
    or the left padding (PyTorch's rule; Caffe has the same check)."""
    if not ceil_mode:
        return conv_output_size(size, k, stride, pad)
    out = math.ceil((size + 2 * pad - k) / stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def offset_slices(out_size: int, size: int, offset: int, stride: int, pad: int
                  ) -> tuple[slice, slice] | None:
    """For kernel `offset`, the slice of output positions whose input index lies in
    [0, size) and the strided input slice they read (same length), or None when
    every output position reads padding at this offset."""
    first = offset - pad  # input index read by output position 0
    lo = max(0, -(first // stride))  # ceil(-first / stride)
    hi = min(out_size, max(0, (size - 1 - first) // stride + 1))
    if hi <= lo:
        return None
    start = lo * stride + first
    return slice(lo, hi), slice(start, start + (hi - lo - 1) * stride + 1, stride)


def offsets_2d(out_hw: tuple[int, int], in_hw: tuple[int, int], k: int, stride: int, pad: int
               ) -> Iterator[tuple[int, int, tuple[slice, slice], tuple[slice, slice]]]:
    """Yield (ki, kj, (out_rows, out_cols), (in_rows, in_cols)) for every kernel offset
    in row-major order that reads at least one input element."""
    rows = [offset_slices(out_hw[0], in_hw[0], ki, stride, pad) for ki in range(k)]
    cols = [offset_slices(out_hw[1], in_hw[1], kj, stride, pad) for kj in range(k)]
    for ki, r in enumerate(rows):
        if r is None:
            continue
        for kj, c in enumerate(cols):
            if c is None:
                continue
            yield ki, kj, (r[0], c[0]), (r[1], c[1])
