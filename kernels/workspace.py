"""Scratch buffers lent again and again within a training step on NumPy.

A fresh NumPy array of many megabytes is fresh memory from the operating system:
every page of it faults in, zeroed by the kernel, the first time it is written, and
goes back when the array is freed. A convolution's column buffer is the largest
scratch of a CNN's step (VGG-16 at batch 2 lowers 1.5 GB of columns a step), and
lowering into a buffer already faulted in is faster: VGG-16's conv1_2 at batch 2,
47 ms against 69 on one thread, 28 against 54 on two (page faults of a process's
threads contend in the kernel).

Inside `lending()` (the runtime holds it around each step), `borrowed` hands out one
buffer per thread, grown to the largest size asked so far, to whichever pass asks
while no other holds it, and drops it when the block ends: memory past what the
arena counts is only that one buffer, between the passes that use it, for the
step's length. Outside the block, off NumPy, or while the buffer is out,
`borrowed` gives a new array. The contents are never read before they are written:
a borrowed buffer holds garbage, as `xp.empty`'s does.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from vmem.kernels.threads import on_threads

Array = Any


class _Lender(threading.local):
    depth = 0  # how many `lending` blocks this thread is in
    buffer: np.ndarray | None = None
    lent = False


_LENDER = _Lender()


@contextlib.contextmanager
def lending() -> Iterator[None]:
    """A block in which `borrowed` on NumPy reuses one buffer; it is dropped at the
    end of the outermost block."""
    _LENDER.depth += 1
    try:
        yield
    finally:
        _LENDER.depth -= 1
        if not _LENDER.depth:
            _LENDER.buffer = None


@contextlib.contextmanager
def borrowed(xp: Any, shape: tuple[int, ...], dtype: Any) -> Iterator[Array]:
    """An uninitialized array of `shape` and `dtype` for the block's length: inside
    `lending` on NumPy a view of the thread's lent buffer where it is free, else a
    new array. The caller must not keep a view of it past the block."""
    if not (_LENDER.depth and not _LENDER.lent and on_threads(xp)):
        yield xp.empty(shape, dtype=dtype)
        return
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if _LENDER.buffer is None or _LENDER.buffer.nbytes < size:
        _LENDER.buffer = None  # the smaller one goes before the larger one comes
        _LENDER.buffer = np.empty(max(size, 1), dtype=np.uint8)
    _LENDER.lent = True
    try:
        yield _LENDER.buffer[:size].view(dtype).reshape(shape)
    finally:
        _LENDER.lent = False
