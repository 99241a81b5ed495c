"""Causal multi-head attention: a materialized reference and the flash algorithm.

Shapes: queries, keys and values are (N, heads, T, D); the output is the same.
Query t attends to keys 0..t, scaled by 1/sqrt(D).

The materialized algorithm holds the (N, heads, T, T) probabilities. The flash
algorithm (FlashAttention, Dao et al. 2022; its backward pass as
FlashAttention-2, Dao 2023) walks key tiles and merges each tile's scores into
a running maximum m and sum d of each row (the online softmax's (m, d) merge,
as `vmem.kernels.softmax` does along a row), so it never holds more than one
tile of scores: (N, heads, T, tile). It saves only the output and each row's
log-sum-exp (N, heads, T). Its backward pass computes the probabilities again,
tile by tile, from the saved log-sum-exp, with D = rowsum(dO * O) standing for
rowsum(dP * P). Every pass is array code over whole tiles (all batches, heads
and queries of a tile at once), so it runs on the CPU at NumPy speed as well as
on `xp` = cupy. On CuPy float32 or float16 arrays with heads of up to 128, the flash
functions run on the CUDA kernels of `vmem.kernels.cuda_attention` when
`VMEM_CUDA_ATTENTION=1` (off by default until those kernels have run on a GPU; they
use their own tiles, not `tile`, and give the log-sum-exp in float32).
"""

from __future__ import annotations

import math
from typing import Any

from vmem.kernels.cuda_module import kernel_module

Array = Any  # a numpy.ndarray or a cupy.ndarray
TILE = 128  # keys per tile: the flash algorithm's scores are (N, heads, T, TILE)


def _scale(d: int) -> float:
    return 1.0 / math.sqrt(d)


def _causal_mask(xp: Any, queries: int, key_start: int, keys: int, query_start: int = 0
                 ) -> Array:
    """True where key (key_start + j) comes after query (query_start + i)."""
    rows = xp.arange(query_start, query_start + queries)[:, None]
    cols = xp.arange(key_start, key_start + keys)[None, :]
    return cols > rows


def attention_forward(xp: Any, q: Array, k: Array, v: Array) -> tuple[Array, Array]:
    """Materialized: the output and the probabilities (N, heads, T, T)."""
    t = q.shape[-2]
    scores = (q @ xp.swapaxes(k, -1, -2)) * q.dtype.type(_scale(q.shape[-1]))
    scores = xp.where(_causal_mask(xp, t, 0, t), -xp.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = xp.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v, p


def attention_backward(xp: Any, d_out: Array, q: Array, k: Array, v: Array, p: Array
                       ) -> tuple[Array, Array, Array]:
    """Materialized: dQ, dK, dV from the saved probabilities."""
    scale = q.dtype.type(_scale(q.shape[-1]))
    dv = xp.swapaxes(p, -1, -2) @ d_out
    dp = d_out @ xp.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    return (ds @ k) * scale, (xp.swapaxes(ds, -1, -2) @ q) * scale, dv


def flash_forward(xp: Any, q: Array, k: Array, v: Array, tile: int = TILE
                  ) -> tuple[Array, Array]:
    """The output and each row's log-sum-exp of scaled scores (N, heads, T),
    walking key tiles: only the queries at or after a tile's first key see it."""
    kernels = kernel_module(xp, "attention", q, k, v)
    if kernels is not None:
        return kernels.flash_forward(*(xp.ascontiguousarray(a) for a in (q, k, v)))
    n, h, t, d = q.shape
    scale = q.dtype.type(_scale(d))
    m = xp.full((n, h, t), -xp.inf, dtype=q.dtype)  # each row's running maximum
    total = xp.zeros((n, h, t), dtype=q.dtype)  # its running sum of exp(score - m)
    acc = xp.zeros_like(q)  # its running sum of exp(score - m) * value
    for start in range(0, t, tile):
        stop = min(start + tile, t)
        rows = slice(start, t)  # queries before `start` see none of these keys
        s = (q[:, :, rows] @ xp.swapaxes(k[:, :, start:stop], -1, -2)) * scale
        s = xp.where(_causal_mask(xp, t - start, start, stop - start, start), -xp.inf, s)
        # every row here sees its tile's first key or an earlier one: m stays finite
        m_new = xp.maximum(m[:, :, rows], s.max(axis=-1))
        p = xp.exp(s - m_new[..., None])
        correction = xp.exp(m[:, :, rows] - m_new)
        total[:, :, rows] = total[:, :, rows] * correction + p.sum(axis=-1)
        acc[:, :, rows] = acc[:, :, rows] * correction[..., None] + p @ v[:, :, start:stop]
        m[:, :, rows] = m_new
    return acc / total[..., None], m + xp.log(total)


def flash_backward(xp: Any, d_out: Array, q: Array, k: Array, v: Array, out: Array,
                   lse: Array, tile: int = TILE) -> tuple[Array, Array, Array]:
    """dQ, dK, dV from the output and log-sum-exp alone: each key tile's
    probabilities computed again as exp(score - lse), and
    rowsum(dP * P) = rowsum(dO * O) (FlashAttention-2)."""
    kernels = kernel_module(xp, "attention", d_out, q, k, v, out)
    if kernels is not None:
        return kernels.flash_backward(*(xp.ascontiguousarray(a) for a in (d_out, q, k, v, out)),
                                      lse)
    t, d = q.shape[-2], q.shape[-1]
    scale = q.dtype.type(_scale(d))
    delta = (d_out * out).sum(axis=-1)  # (N, heads, T)
    dq, dk, dv = xp.zeros_like(q), xp.zeros_like(k), xp.zeros_like(v)
    for start in range(0, t, tile):
        stop = min(start + tile, t)
        rows, keys = slice(start, t), slice(start, stop)
        s = (q[:, :, rows] @ xp.swapaxes(k[:, :, keys], -1, -2)) * scale
        s = xp.where(_causal_mask(xp, t - start, start, stop - start, start), -xp.inf, s)
        p = xp.exp(s - lse[:, :, rows, None])
        dv[:, :, keys] = xp.swapaxes(p, -1, -2) @ d_out[:, :, rows]
        dp = d_out[:, :, rows] @ xp.swapaxes(v[:, :, keys], -1, -2)
        ds = p * (dp - delta[:, :, rows, None])
        dq[:, :, rows] += (ds @ k[:, :, keys]) * scale
        dk[:, :, keys] = (xp.swapaxes(ds, -1, -2) @ q[:, :, rows]) * scale
    return dq, dk, dv


__all__ = ["TILE", "attention_backward", "attention_forward", "flash_backward",
           "flash_forward"]
