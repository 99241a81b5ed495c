"""Per-channel passes over (N, C, L) maps (a convolution's bias): the bias added to
every channel, and each channel's sum, split over the threads of `kernels.threads`
on NumPy.

A channel's sum is each row's sum over its L contiguous values (NumPy's pairwise
sum), then the rows' sums added in sample order, one addition after another: what
`a.sum(axis=2).sum(axis=0)` gives on a C-contiguous map of more than one channel
(NumPy reduces the samples row after row there), in an order that never depends on
which other channels share the call. So every cut into channel ranges, and every
thread count, gives those bits. A map of one channel keeps that formula as it is
(NumPy sums a single channel's samples pairwise). Adding the bias is element-wise.
Off NumPy each pass is one array operation over the whole map.
"""

from __future__ import annotations

from typing import Any

from vmem.kernels.threads import for_ranges, makes_tasks, on_threads

Array = Any


def add_bias(xp: Any, y: Array, bias: Array) -> Array:
    """y += bias per channel, y (N, C, L) and bias (C,); returns y. On NumPy the
    samples go in ranges over the threads."""
    b = bias.reshape(1, -1, 1)
    if not on_threads(xp) or not makes_tasks(y.size):
        y += b
        return y
    sample = y[0].size

    def samples(lo: int, hi: int) -> None:
        part = y[lo:hi]
        part += b

    for_ranges(xp, y.shape[0], samples, item_elements=sample)
    return y


def channel_sums(xp: Any, a: Array) -> Array:
    """Each channel's sum of a C-contiguous (N, C, L): per (sample, channel) the sum
    over L, then those added in sample order. On NumPy the channels go in ranges over
    the threads; elsewhere, and for one channel, `a.sum(axis=2).sum(axis=0)`."""
    if not on_threads(xp) or a.shape[1] == 1:
        return a.sum(axis=2).sum(axis=0)
    out = xp.empty(a.shape[1], dtype=a.dtype)
    channel = a.shape[0] * a.shape[2]

    def channels(lo: int, hi: int) -> None:
        rows = a[:, lo:hi].sum(axis=2)
        total = out[lo:hi]
        total[...] = rows[0]
        for row in rows[1:]:
            total += row

    for_ranges(xp, a.shape[1], channels, item_elements=channel)
    return out
