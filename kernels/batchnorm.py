"""Batch normalization's training passes over the channels (axis 1) of (N, C, ...)
maps: the batch's statistics, the normalized output, and the gradients.

Per channel, with m = N * (the product of the axes after 1) values:
mean = sum(x) / m, var = sum((x - mean)^2) / m (biased),
y = (x - mean) * (weight / sqrt(var + eps)) + bias; backward, with
x_hat = (x - mean) / sqrt(var + eps): dbias = sum(dy), dweight = sum(dy * x_hat),
dx = (dy - x_hat * dweight / m - dbias / m) * (weight / sqrt(var + eps)).

On NumPy the channels go in blocks (`channel_blocks`), each block's passes one after
another while it sits in the cache, the blocks spread over the threads of
`kernels.threads`. A block's sums are each row's sum over its contiguous values
(NumPy's pairwise sum), then the rows' sums over the batch; the blocks are fixed by
the map's shape alone, so the bits are the same for every thread count. A block's
scratch is its output's block wherever that is not yet written (the squares, and
backward's dy * x_hat): two block-sized buffers fewer in the cache. Elsewhere
(CuPy) the same formulas run over the whole map at once (`*_whole`), in the same
order of operations per element; only the order of each sum differs.

Backward computes the statistics again from x exactly as forward does, so both see
the same bits (the layer keeps only its input).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from vmem.kernels.threads import on_threads, run_tasks, split

Array = Any

#: Bytes of one channel block of a map (at least one channel a block): its passes run
#: while it and its temporaries sit in the cache. Of 256 KiB to 8 MiB, 1-2 MiB were
#: the fastest for ResNet-50's maps on a 1 MiB-L2 core (a quarter faster than the
#: whole map at once; bench/results/cpu-step.md).
BN_BLOCK_BYTES = 1 << 20


def channel_blocks(shape: tuple[int, ...], itemsize: int) -> list[tuple[int, int]]:
    """The (start, stop) channel blocks of a map of `shape`: fixed by the shape alone."""
    n, c = shape[0], shape[1]
    per_channel = max(1, n * _inner(shape) * itemsize)
    return split(c, max(1, BN_BLOCK_BYTES // per_channel))


def _inner(shape: tuple[int, ...]) -> int:
    size = 1
    for extent in shape[2:]:
        size *= extent
    return size


def _as_rows(a: Array) -> Array:
    """(N, C, ...) as (N, C, L): a view of a C-contiguous map."""
    return a.reshape(a.shape[0], a.shape[1], _inner(tuple(a.shape)))


def _broadcast(v: Array) -> Array:
    return v.reshape(1, -1, 1)


def _channel_sums(a: Array) -> Array:
    """Per channel of a (N, cb, L) block: each row's sum over L, then over N."""
    return a.sum(axis=2).sum(axis=0)


def _block_statistics(xp: Any, x: Array, centred: Array, squares: Array
                      ) -> tuple[Array, Array]:
    """Mean and biased variance of a (N, cb, L) block; `centred` is left holding
    x - mean, `squares` (block-sized scratch, written over) its squares."""
    count = x.shape[0] * x.shape[2]
    mean = _channel_sums(x) / count
    xp.subtract(x, _broadcast(mean), out=centred)
    xp.square(centred, out=squares)
    var = _channel_sums(squares) / count
    return mean, var


def train_forward(xp: Any, x: Array, weight: Array, bias: Array, eps: float
                  ) -> tuple[Array, Array, Array]:
    """(y, mean, var) of a training pass: y a new map, mean and the biased variance
    per channel."""
    if not on_threads(xp):
        return _forward_whole(xp, x, weight, bias, eps)
    x = xp.ascontiguousarray(x)
    y = xp.empty(x.shape, dtype=x.dtype)
    c = x.shape[1]
    mean, var = xp.empty(c, dtype=x.dtype), xp.empty(c, dtype=x.dtype)
    x3, y3 = _as_rows(x), _as_rows(y)

    def block(lo: int, hi: int) -> None:
        xb, yb = x3[:, lo:hi], y3[:, lo:hi]
        centred = xp.empty(xb.shape, dtype=x.dtype)
        # y's block is scratch until y is written: the squares
        mean[lo:hi], var[lo:hi] = _block_statistics(xp, xb, centred, yb)
        scale = weight[lo:hi] / xp.sqrt(var[lo:hi] + eps)
        xp.multiply(centred, _broadcast(scale), out=yb)
        yb += _broadcast(bias[lo:hi])

    run_tasks(xp, [partial(block, lo, hi) for lo, hi in channel_blocks(x.shape, x.itemsize)])
    return y, mean, var


def train_backward(xp: Any, x: Array, dy: Array, weight: Array, eps: float, needs_dx: bool
                   ) -> tuple[Array | None, Array, Array]:
    """(dx or None, dweight, dbias) of a training pass, its statistics computed again
    from x as `train_forward` computes them."""
    if not on_threads(xp):
        return _backward_whole(xp, x, dy, weight, eps, needs_dx)
    x, dy = xp.ascontiguousarray(x), xp.ascontiguousarray(dy)
    c = x.shape[1]
    dweight, dbias = xp.empty(c, dtype=dy.dtype), xp.empty(c, dtype=dy.dtype)
    dx = xp.empty(x.shape, dtype=dy.dtype) if needs_dx else None
    x3, dy3 = _as_rows(x), _as_rows(dy)
    dx3 = _as_rows(dx) if dx is not None else None

    def block(lo: int, hi: int) -> None:
        xb, dyb = x3[:, lo:hi], dy3[:, lo:hi]
        count = xb.shape[0] * xb.shape[2]
        x_hat = xp.empty(xb.shape, dtype=x.dtype)
        # dx's block is scratch until dx is written: the squares, then dy * x_hat
        scratch = dx3[:, lo:hi] if dx3 is not None else xp.empty(xb.shape, dtype=dy.dtype)
        _, var = _block_statistics(xp, xb, x_hat, scratch)
        inv_std = 1 / xp.sqrt(var + eps)
        x_hat *= _broadcast(inv_std)
        dbias[lo:hi] = _channel_sums(dyb)
        xp.multiply(dyb, x_hat, out=scratch)
        dweight[lo:hi] = _channel_sums(scratch)
        if dx3 is None:
            return
        dxb = scratch
        x_hat *= _broadcast(dweight[lo:hi] / count)
        xp.subtract(dyb, x_hat, out=dxb)
        dxb -= _broadcast(dbias[lo:hi] / count)
        dxb *= _broadcast(weight[lo:hi] * inv_std)

    run_tasks(xp, [partial(block, lo, hi) for lo, hi in channel_blocks(x.shape, x.itemsize)])
    return dx, dweight, dbias


# -- the whole map at once (off NumPy) -------------------------------------------------


def _axes(x: Array) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def _shape(x: Array) -> tuple[int, ...]:
    return (1, x.shape[1], *([1] * (x.ndim - 2)))


def _statistics_whole(xp: Any, x: Array) -> tuple[Array, Array, Array]:
    """Mean, biased variance and the centred input (a new map-sized array)."""
    axes, shape = _axes(x), _shape(x)
    mean = x.mean(axis=axes)
    centred = x - mean.reshape(shape)
    var = xp.square(centred, out=centred).mean(axis=axes)
    xp.subtract(x, mean.reshape(shape), out=centred)  # centred again: no second map
    return mean, var, centred


def _forward_whole(xp: Any, x: Array, weight: Array, bias: Array, eps: float
                   ) -> tuple[Array, Array, Array]:
    shape = _shape(x)
    mean, var, y = _statistics_whole(xp, x)  # y: the centred input
    y *= (weight / xp.sqrt(var + eps)).reshape(shape)
    y += bias.reshape(shape)
    return y, mean, var


def _backward_whole(xp: Any, x: Array, dy: Array, weight: Array, eps: float, needs_dx: bool
                    ) -> tuple[Array | None, Array, Array]:
    axes, shape = _axes(x), _shape(x)
    n = x.size // x.shape[1]
    _, var, x_hat = _statistics_whole(xp, x)
    inv_std = 1 / xp.sqrt(var + eps)
    x_hat *= inv_std.reshape(shape)  # the normalized input, in the scratch buffer
    dbias = dy.sum(axis=axes)
    dx = dy * x_hat
    dweight = dx.sum(axis=axes)
    if not needs_dx:
        return None, dweight, dbias
    x_hat *= (dweight / n).reshape(shape)
    xp.subtract(dy, x_hat, out=dx)
    dx -= (dbias / n).reshape(shape)
    dx *= (weight * inv_std).reshape(shape)
    return dx, dweight, dbias
