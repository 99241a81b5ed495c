"""Softmax cross-entropy loss, the end of a classification network."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vmem.kernels.softmax import cross_entropy
from vmem.layers._checks import inputs, shape_error
from vmem.layers.base import DIRECT, Algorithm, Array, Context, Keeps, Layer, Shape


@dataclass(frozen=True, kw_only=True)
class SoftmaxLoss(Layer):
    """Mean cross-entropy of softmax(logits) against ctx.labels: for logits (N, C) or
    (N, C, 1, 1), integer labels (N,) in [0, C); for a language model's logits
    (N, T, V), the next-token ids (N, T) in [0, V) and the mean over all N T tokens.
    Each row of C (or V) logits is one distribution, computed by
    `vmem.kernels.softmax.cross_entropy` (its log-softmax, on CUDA the online
    kernels). The output is a 0-d array.

    The backward pass has no access to the labels (the contract passes none), so in
    training forward saves the finished gradient of the mean loss,
    (softmax(logits) - onehot(labels)) / rows, an array of the logits' size and
    dtype: the same bytes as the probabilities. Evaluation saves nothing;
    probabilities for evaluation come from `vmem.kernels.softmax.softmax`."""

    TYPE: ClassVar[str] = "softmax_loss"
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING
    IS_LOSS: ClassVar[bool] = True

    def label_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        """(N,) for a classifier's logits, (N, T) for a language model's."""
        (shape,) = inputs(self, in_shapes, min_rank=2)
        if len(shape) == 3:
            return shape[:2]
        if len(shape) != 2 and not (len(shape) == 4 and shape[2:] == (1, 1)):
            raise shape_error(self, f"needs logits (N, C), (N, C, 1, 1) or (N, T, V), got "
                                    f"shape {shape}")
        return shape[:1]

    def classes(self, in_shapes: Sequence[Shape]) -> int:
        """The length of each distribution: C classes, or V tokens."""
        rank = len(self.label_shape(in_shapes))
        return int(in_shapes[0][rank])

    def _logits_shape(self, in_shapes: Sequence[Shape]) -> tuple[int, int]:
        """(rows, classes): the distributions the loss averages over."""
        return math.prod(self.label_shape(in_shapes)), self.classes(in_shapes)

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        self._logits_shape(in_shapes)
        return ()

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """Max, subtract, exp, sum and log per logit, roughly."""
        n, c = self._logits_shape(in_shapes)
        return 5 * n * c

    def saved_bytes(self, in_shapes: Sequence[Shape], itemsize: int,
                    algo: Algorithm = DIRECT) -> int:
        n, c = self._logits_shape(in_shapes)
        return n * c * itemsize

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        in_shapes = [tuple(x.shape)]
        n, c = self._logits_shape(in_shapes)
        if ctx.labels is None:
            raise ValueError(f"layer '{self.name}' (softmax_loss): needs labels in ctx.labels")
        # Checked before the copy to the device: host labels cost no device sync here,
        # in the middle of a step; labels already on the device cost one (the caller's
        # choice).
        given = ctx.labels if hasattr(ctx.labels, "dtype") else np.asarray(ctx.labels)
        self._check_labels(given, self.label_shape(in_shapes), c)
        labels = xp.asarray(given).reshape(n)
        loss, probs = cross_entropy(xp, x.reshape(n, c), labels)
        if not ctx.train:
            return loss, ()
        grad = probs  # becomes (probs - onehot) / N in place
        grad[xp.arange(n), labels] -= 1
        grad /= n
        return loss, (grad,)

    def _check_labels(self, labels: Array, shape: Shape, c: int) -> None:
        if tuple(labels.shape) != tuple(shape) or labels.dtype.kind not in "iu":
            raise shape_error(self, f"needs integer labels of shape {tuple(shape)}, got "
                                    f"{labels.dtype} labels of shape {tuple(labels.shape)}")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= c:
            raise ValueError(f"layer '{self.name}' (softmax_loss): labels must lie in "
                             f"[0, {c}), got [{low}, {high}]")

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        """dlogits of the mean loss, a new array in the logits' original shape."""
        if not needs_dx[0]:
            return [None], {}
        (grad,) = saved
        return [grad.reshape(tuple(in_shapes[0])).copy()], {}
