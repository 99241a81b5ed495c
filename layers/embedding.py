"""Token and position embeddings: the start of a language model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vmem.layers._checks import inputs, require_int, shape_error
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel

#: GPT-2's initialisation of embeddings (and of its linear layers): N(0, 0.02²).
EMBEDDING_STD = 0.02


def normal(shape: Shape, std: float, rng: np.random.Generator) -> np.ndarray:
    """float32 N(0, std²) of a shape."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def segment_sum(xp: Any, ids: Array, rows: Array, segments: int) -> Array:
    """out[v] = the sum of rows[i] over every i with ids[i] == v, for flat integer ids
    (M,) in [0, segments) and rows (M, C); zeros where no id falls. Deterministic on
    every backend, unlike atomic scatter-adds, whose order of addition varies from
    run to run: the rows are ordered by (id, position) (a key unique to each row, so
    any sort gives the one order), and each run of equal ids is summed by one
    reduceat, a fixed reduction."""
    count = ids.shape[0]
    out = xp.zeros((segments, rows.shape[1]), dtype=rows.dtype)
    if count == 0:
        return out
    order = xp.argsort(ids.astype(np.int64) * count + xp.arange(count, dtype=np.int64))
    ordered = ids[order]
    starts = xp.concatenate([xp.zeros(1, dtype=np.int64),
                             xp.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    out[ordered[starts]] = xp.add.reduceat(rows[order], starts, axis=0)
    return out


@dataclass(frozen=True, kw_only=True)
class Embedding(Layer):
    """Token ids (N, T), integers in [0, vocab), to vectors (N, T, features):
    y[n, t] = weight[ids[n, t]], weight (vocab, features) drawn from N(0, 0.02²) as
    GPT-2's are. Keeps its input (the ids); its backward pass gives no input
    gradient (ids are not differentiable) and sums each token's output gradients
    into its weight row with `segment_sum`, deterministically."""

    TYPE: ClassVar[str] = "embedding"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT
    TAKES_TOKENS: ClassVar[bool] = True

    vocab: int
    features: int

    def __post_init__(self) -> None:
        require_int(self, "vocab", 1)
        require_int(self, "features", 1)

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes)
        if len(shape) != 2:
            raise shape_error(self, f"needs token ids (N, T), got shape {shape}")
        return (*shape, self.features)

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        self.output_shape(in_shapes)
        return {"weight": (self.vocab, self.features)}

    def init_params(self, in_shapes: Sequence[Shape], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        return {"weight": normal(self.param_shapes(in_shapes)["weight"], EMBEDDING_STD, rng)}

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        return 0  # a gather

    def backward_flops(self, in_shapes: Sequence[Shape]) -> int:
        return numel(self.output_shape(in_shapes))  # one add per output element

    def algorithms(self, in_shapes: Sequence[Shape], itemsize: int) -> tuple[Algorithm, ...]:
        """The backward pass orders the output gradient by token (a copy) and sums it
        per token (at most another): two output-sized buffers of scratch."""
        return (Algorithm("direct", 2 * numel(self.output_shape(in_shapes)) * itemsize),)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (ids,) = xs
        return xp.take(params["weight"], ids, axis=0), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        (ids,) = xs
        rows = dy.reshape(-1, self.features)
        return [None], {"weight": segment_sum(xp, ids.reshape(-1), rows, self.vocab)}


@dataclass(frozen=True, kw_only=True)
class PositionEmbedding(Layer):
    """A learned position embedding added to a sequence (N, T, C): y[n, t] = x[n, t] +
    weight[t], weight (T, C) drawn from N(0, 0.02²), one row per position of the
    profile's sequence length. Keeps nothing; runs in place when nothing else needs
    its input (the executor's `ctx.inplace`), and its input gradient is the output
    gradient itself."""

    TYPE: ClassVar[str] = "position_embedding"
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING
    INPLACE: ClassVar[bool] = True

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes)
        if len(shape) != 3:
            raise shape_error(self, f"needs a sequence (N, T, C), got shape {shape}")
        return shape

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        return {"weight": self.output_shape(in_shapes)[1:]}

    def init_params(self, in_shapes: Sequence[Shape], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        return {"weight": normal(self.param_shapes(in_shapes)["weight"], EMBEDDING_STD, rng)}

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        return numel(self.output_shape(in_shapes))

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        return xp.add(x, params["weight"], out=x if ctx.inplace else None), ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        grads = {"weight": dy.sum(axis=0)}
        return [dy if needs_dx[0] else None], grads  # nothing reads dy after this layer
