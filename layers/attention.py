"""Causal multi-head self-attention on a fused QKV projection (GPT-2's), by two
algorithms: materialized (the (N, heads, T, T) probabilities kept) and flash (key
tiles and the online softmax, `vmem.kernels.attention`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.kernels.attention import TILE, flash_backward, flash_forward
from vmem.layers._checks import config_error, inputs, require_int, shape_error
from vmem.layers.base import (
    DIRECT,
    Algorithm,
    Array,
    Context,
    Keeps,
    Layer,
    PassCost,
    Shape,
    numel,
)

#: The algorithm that materializes the (N, heads, T, T) attention probabilities and
#: keeps them for the backward pass, as a plain implementation does.
MATERIALIZED = "materialized"
#: FlashAttention's: key tiles merged by the online softmax; a log-sum-exp a row kept,
#: the probabilities computed again, tile by tile, in the backward pass.
FLASH = "flash"
ALGORITHMS = (MATERIALIZED, FLASH)

# Kernel launches of the flash passes as `vmem.kernels.attention` runs them in xp
# array code (counted from its loops: each array operation is one launch): per key
# tile, and once a pass (the running statistics, the head-major copies, dx).
FLASH_FORWARD_LAUNCHES_PER_TILE = 21
FLASH_BACKWARD_LAUNCHES_PER_TILE = 19
FLASH_LAUNCHES_PER_PASS = 8
# Elementwise FLOPs a score, beside the two products: forward the scale, mask,
# maximum, exponential and sum (the materialized pass's 7, less the division, which
# flash does once a row, plus the running maximum); backward the exponential again
# and dS = P (dP - D) and its scale.
FLASH_FORWARD_PER_SCORE = 7
FLASH_BACKWARD_PER_SCORE = 7


def _heads(x: Array, heads: int) -> Array:
    """(N, T, C) -> (N, heads, T, C/heads), a view."""
    n, t, c = x.shape
    return x.reshape(n, t, heads, c // heads).transpose(0, 2, 1, 3)


def visited_scores(t: int, tile: int) -> int:
    """Scores a flash pass computes for one (sample, head): each key tile's, for the
    queries at or after its first key (those before it see none of its keys)."""
    return sum((t - start) * (min(start + tile, t) - start) for start in range(0, t, tile))


@dataclass(frozen=True, kw_only=True)
class Attention(Layer):
    """Causal multi-head self-attention. The input (N, T, 3C) is the output of a
    fused QKV projection: queries, keys and values are its three C-wide thirds, in
    that order, each split into `heads` heads of d = C/heads. Per head,
    P = softmax(Q K^T / sqrt(d) + M), M = -inf above the diagonal (a position
    attends to itself and earlier ones), and the output is P V, heads joined back
    into (N, T, C): torch's scaled_dot_product_attention(is_causal=True) on the
    three thirds. No dropout on P.

    Algorithms (`algorithm` = "" offers both, materialized first; a name offers
    that one alone):

    - `materialized` computes P whole and keeps it, (N, heads, T, T), for the
      backward pass. Its scratch is P's gradient, one more (N, heads, T, T), and
      four (N, T, C) buffers (head-major copies of the gradients and the output).
    - `flash` walks key tiles of `tile` keys (FlashAttention, Dao et al. 2022; the
      backward pass as FlashAttention-2) and keeps each row's log-sum-exp,
      (N, heads, T); its backward pass computes each tile's probabilities again.
      It needs the output in the backward pass (rowsum(dO * O)), which is why the
      layer keeps its output as well as its input, for both algorithms: the next
      layer (the output projection) keeps it anyway, so the output costs memory
      only from that layer's backward pass to this one's. Its scratch is a few
      tiles of scores, (N, heads, T, tile), and (N, T, C) buffers.

    Both give the same results to float32 rounding (tests/test_attention_layer.py
    states the bound). Where the key tiles skip the masked half, flash computes
    fewer scores, but in xp array code it launches some twenty kernels a tile:
    the cost model (`pass_cost`) counts both, so at GPT-2's T = 1024 on a GPU the
    materialized algorithm is modeled faster, as vDNN's performance-optimal choice
    against its memory-optimal one."""

    TYPE: ClassVar[str] = "attention"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT | Keeps.OUTPUT

    heads: int
    algorithm: str = ""
    tile: int = TILE

    def __post_init__(self) -> None:
        require_int(self, "heads", 1)
        require_int(self, "tile", 1)
        if self.algorithm not in ("", *ALGORITHMS):
            raise config_error(self, f"algorithm must be {' or '.join(ALGORITHMS)} (or left "
                                     f"out: both), got {self.algorithm!r}")

    def _dims(self, in_shapes: Sequence[Shape]) -> tuple[int, int, int]:
        """(N, T, C) of the output."""
        (shape,) = inputs(self, in_shapes)
        if len(shape) != 3 or shape[2] % 3:
            raise shape_error(self, f"needs a fused QKV projection (N, T, 3C), got shape "
                                    f"{shape}")
        n, t, c = shape[0], shape[1], shape[2] // 3
        if c % self.heads:
            raise shape_error(self, f"width C = {c} does not split into {self.heads} heads")
        return n, t, c

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        return self._dims(in_shapes)

    def _scores(self, in_shapes: Sequence[Shape]) -> int:
        n, t, _ = self._dims(in_shapes)
        return n * self.heads * t * t

    def _rows(self, in_shapes: Sequence[Shape]) -> int:
        """(N, heads, T): one statistic a query row."""
        n, t, _ = self._dims(in_shapes)
        return n * self.heads * t

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """Materialized: Q K^T and P V (2 N T^2 C each), the scale, mask and softmax
        (about 7 per score); the masked half is computed too."""
        n, t, c = self._dims(in_shapes)
        return 4 * n * t * t * c + 7 * self._scores(in_shapes)

    def is_flash(self, algo: Algorithm) -> bool:
        """Whether `algo` runs the flash algorithm: by name, or, for an algorithm not
        of this layer (vmem.layers.DIRECT), where the layer offers flash alone."""
        return algo.name == FLASH or (algo.name != MATERIALIZED and self.algorithm == FLASH)

    def pass_cost(self, in_shapes: Sequence[Shape], algo: Algorithm, forward: bool
                  ) -> PassCost | None:
        """Flash: both products over the visited tiles only, forward; backward, the
        scores again (Q K^T) and four products (dV, dP, dQ, dK), and D = rowsum(dO O)."""
        if not self.is_flash(algo):
            return None
        n, t, c = self._dims(in_shapes)
        d = c // self.heads
        scores = n * self.heads * visited_scores(t, self.tile)
        tiles = -(-t // self.tile)
        if forward:
            return PassCost(4 * scores * d + FLASH_FORWARD_PER_SCORE * scores,
                            FLASH_FORWARD_LAUNCHES_PER_TILE * tiles + FLASH_LAUNCHES_PER_PASS)
        return PassCost(10 * scores * d + FLASH_BACKWARD_PER_SCORE * scores + 2 * n * t * c,
                        FLASH_BACKWARD_LAUNCHES_PER_TILE * tiles + FLASH_LAUNCHES_PER_PASS)

    def saved_bytes(self, in_shapes: Sequence[Shape], itemsize: int,
                    algo: Algorithm = DIRECT) -> int:
        if self.is_flash(algo):
            return self._rows(in_shapes) * itemsize  # the log-sum-exp
        return self._scores(in_shapes) * itemsize  # the probabilities

    def flash_workspace(self, in_shapes: Sequence[Shape], itemsize: int) -> int:
        """The flash passes' scratch, the larger pass's (backward): five tiles of
        scores (S, P, dP, dS and one temporary), the running row statistics and D,
        and five (N, T, C) buffers (dQ, dK, dV, and dQ's tile update and its scale;
        forward: the running output, its two updates and the output in head-major
        order, fewer)."""
        n, t, c = self._dims(in_shapes)
        tile = min(self.tile, t)
        tiles = 5 * n * self.heads * t * tile
        return (tiles + 3 * self._rows(in_shapes) + 5 * n * t * c) * itemsize

    def algorithms(self, in_shapes: Sequence[Shape], itemsize: int) -> tuple[Algorithm, ...]:
        """Materialized first (the fastest where the model counts launches), flash
        last (the least memory)."""
        materialized = Algorithm(MATERIALIZED, (self._scores(in_shapes) + 4 * numel(
            self.output_shape(in_shapes))) * itemsize)
        flash = Algorithm(FLASH, self.flash_workspace(in_shapes, itemsize))
        offered = {MATERIALIZED: (materialized,), FLASH: (flash,)}
        return offered.get(self.algorithm, (materialized, flash))

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        n, t, c = self._dims([tuple(x.shape)])
        q, k, v = (_heads(x[..., i * c:(i + 1) * c], self.heads) for i in range(3))
        if self.is_flash(algo):
            out, lse = flash_forward(xp, q, k, v, self.tile)
            return out.transpose(0, 2, 1, 3).reshape(n, t, c), ((lse,) if ctx.train else ())
        p = q @ k.transpose(0, 1, 3, 2)  # the scores, then P in place
        p *= 1.0 / math.sqrt(c // self.heads)
        p += xp.triu(xp.full((t, t), -xp.inf, dtype=x.dtype), k=1)
        p -= p.max(axis=-1, keepdims=True)  # the diagonal is finite: no row is all -inf
        xp.exp(p, out=p)
        p /= p.sum(axis=-1, keepdims=True)
        y = (p @ v).transpose(0, 2, 1, 3).reshape(n, t, c)
        return y, ((p,) if ctx.train else ())

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        """dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(dP P)) / sqrt(d);
        dQ = dS K; dK = dS^T Q. Flash computes P again from the saved log-sum-exp,
        tile by tile, with rowsum(dP P) = rowsum(dO O)."""
        if not needs_dx[0]:
            return [None], {}
        (x,) = xs
        n, t, c = self._dims([tuple(x.shape)])
        q, k, v = (_heads(x[..., i * c:(i + 1) * c], self.heads) for i in range(3))
        d_out = _heads(dy, self.heads)
        dx = xp.empty_like(x)
        d_heads = dx.reshape(n, t, 3, self.heads, c // self.heads)
        if self.is_flash(algo):
            (lse,) = saved
            grads = flash_backward(xp, d_out, q, k, v, _heads(y, self.heads), lse, self.tile)
            for i, grad in enumerate(grads):
                d_heads[:, :, i] = grad.transpose(0, 2, 1, 3)
            return [dx], {}
        (p,) = saved
        d_heads[:, :, 2] = (p.transpose(0, 1, 3, 2) @ d_out).transpose(0, 2, 1, 3)
        ds = d_out @ v.transpose(0, 1, 3, 2)  # dP, then dS in place
        ds -= xp.einsum("nhij,nhij->nhi", ds, p)[..., None]
        ds *= p
        ds *= 1.0 / math.sqrt(c // self.heads)
        d_heads[:, :, 0] = (ds @ k).transpose(0, 2, 1, 3)
        d_heads[:, :, 1] = (ds.transpose(0, 1, 3, 2) @ q).transpose(0, 2, 1, 3)
        return [dx], {}
