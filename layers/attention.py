"""Causal multi-head self-attention on a fused QKV projection (GPT-2's)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.layers._checks import inputs, require_int, shape_error
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel

#: The algorithm that materializes the (N, heads, T, T) attention probabilities and
#: keeps them for the backward pass, as a plain implementation does.
MATERIALIZED = "materialized"


def _heads(x: Array, heads: int) -> Array:
    """(N, T, C) -> (N, heads, T, C/heads), a view."""
    n, t, c = x.shape
    return x.reshape(n, t, heads, c // heads).transpose(0, 2, 1, 3)


@dataclass(frozen=True, kw_only=True)
class Attention(Layer):
    """Causal multi-head self-attention. The input (N, T, 3C) is the output of a
    fused QKV projection: queries, keys and values are its three C-wide thirds, in
    that order, each split into `heads` heads of d = C/heads. Per head,
    P = softmax(Q K^T / sqrt(d) + M), M = -inf above the diagonal (a position
    attends to itself and earlier ones), and the output is P V, heads joined back
    into (N, T, C): torch's scaled_dot_product_attention(is_causal=True) on the
    three thirds. No dropout on P.

    Algorithms: `materialized` computes P whole, and keeps its input and P,
    (N, heads, T, T), for the backward pass. Its scratch is P's gradient, one more
    (N, heads, T, T), and four (N, T, C) buffers (head-major copies of the
    gradients and of the output). A flash algorithm (no P kept, recomputed per
    block) would be declared beside it."""

    TYPE: ClassVar[str] = "attention"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    heads: int

    def __post_init__(self) -> None:
        require_int(self, "heads", 1)

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

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """Q K^T and P V (2 N T^2 C each), the scale, mask and softmax (about 7 per
        score); the masked half is computed too."""
        n, t, c = self._dims(in_shapes)
        return 4 * n * t * t * c + 7 * self._scores(in_shapes)

    def saved_bytes(self, in_shapes: Sequence[Shape], itemsize: int) -> int:
        return self._scores(in_shapes) * itemsize

    def algorithms(self, in_shapes: Sequence[Shape], itemsize: int) -> tuple[Algorithm, ...]:
        workspace = (self._scores(in_shapes) + 4 * numel(self.output_shape(in_shapes)))
        return (Algorithm(MATERIALIZED, workspace * itemsize),)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        n, t, c = self._dims([tuple(x.shape)])
        q, k, v = (_heads(x[..., i * c:(i + 1) * c], self.heads) for i in range(3))
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
        dQ = dS K; dK = dS^T Q."""
        if not needs_dx[0]:
            return [None], {}
        (x,), (p,) = xs, saved
        n, t, c = self._dims([tuple(x.shape)])
        q, k, v = (_heads(x[..., i * c:(i + 1) * c], self.heads) for i in range(3))
        d_out = _heads(dy, self.heads)
        dx = xp.empty_like(x)
        d_heads = dx.reshape(n, t, 3, self.heads, c // self.heads)
        d_heads[:, :, 2] = (p.transpose(0, 1, 3, 2) @ d_out).transpose(0, 2, 1, 3)
        ds = d_out @ v.transpose(0, 1, 3, 2)  # dP, then dS in place
        ds -= xp.einsum("nhij,nhij->nhi", ds, p)[..., None]
        ds *= p
        ds *= 1.0 / math.sqrt(c // self.heads)
        d_heads[:, :, 0] = (ds @ k).transpose(0, 2, 1, 3)
        d_heads[:, :, 1] = (ds.transpose(0, 1, 3, 2) @ q).transpose(0, 2, 1, 3)
        return [dx], {}
