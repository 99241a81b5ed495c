"""Element-wise passes over whole maps (a residual sum, a gradient added into the one
already there, a gradient passed on as a copy, ReLU; and a weight's transposed
copy), split over the threads of
`kernels.threads` on NumPy. Each element stands alone, so every split gives the
same bits as one pass; off NumPy, or where the arrays are not C-contiguous of one
shape and dtype, each call is one plain array operation.
"""

from __future__ import annotations

from typing import Any

from vmem.kernels.threads import for_ranges, makes_tasks, on_threads

Array = Any


def _splits(xp: Any, *arrays: Array) -> bool:
    first = arrays[0]
    return (on_threads(xp) and makes_tasks(first.size)
            and all(a.shape == first.shape and a.dtype == first.dtype
                    and a.flags.c_contiguous for a in arrays))


def add(xp: Any, a: Array, b: Array) -> Array:
    """a + b, a new array."""
    if not _splits(xp, a, b):
        return a + b
    out = xp.empty(a.shape, dtype=a.dtype)
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    for_ranges(xp, fo.size, lambda lo, hi: xp.add(fa[lo:hi], fb[lo:hi], out=fo[lo:hi]),
               item_elements=1)
    return out


def add_into(xp: Any, target: Array, source: Array) -> Array:
    """target += source; returns target."""
    if not _splits(xp, target, source):
        target += source
        return target
    ft, fs = target.reshape(-1), source.reshape(-1)
    for_ranges(xp, ft.size, lambda lo, hi: xp.add(ft[lo:hi], fs[lo:hi], out=ft[lo:hi]),
               item_elements=1)
    return target


def copy(xp: Any, a: Array) -> Array:
    """A copy of a."""
    if not _splits(xp, a):
        return a.copy()
    out = xp.empty(a.shape, dtype=a.dtype)
    fa, fo = a.reshape(-1), out.reshape(-1)
    for_ranges(xp, fo.size, lambda lo, hi: xp.copyto(fo[lo:hi], fa[lo:hi]),
               item_elements=1)
    return out


def transposed(xp: Any, a: Array) -> Array:
    """a (G, M, K) transposed to a new C-contiguous (G, K, M) array, on NumPy its
    rows copied in ranges over the threads."""
    if not (on_threads(xp) and makes_tasks(a.size)):
        return xp.ascontiguousarray(a.transpose(0, 2, 1))
    out = xp.empty((a.shape[0], a.shape[2], a.shape[1]), dtype=a.dtype)

    def rows(lo: int, hi: int) -> None:
        for g in range(a.shape[0]):
            out[g, lo:hi] = a[g, :, lo:hi].T

    for_ranges(xp, a.shape[2], rows, item_elements=a.shape[0] * a.shape[1])
    return out


def relu(xp: Any, x: Array, inplace: bool) -> Array:
    """max(x, 0), written over x where `inplace`, else a new array."""
    if not _splits(xp, x):
        return xp.maximum(x, 0, out=x if inplace else None)
    out = x if inplace else xp.empty(x.shape, dtype=x.dtype)
    fx, fo = x.reshape(-1), out.reshape(-1)
    for_ranges(xp, fo.size, lambda lo, hi: xp.maximum(fx[lo:hi], 0, out=fo[lo:hi]),
               item_elements=1)
    return out
