"""Batch normalization over the channels (axis 1) of NCHW maps (or (N, C, ...)),
with PyTorch's conventions.

Training: each channel is normalized by the batch's mean and biased variance
over every axis but 1, y = (x - mean) / sqrt(var + eps) * weight + bias, and the
running statistics move by `momentum`: running_mean = (1 - m) * running_mean +
m * mean, running_var = (1 - m) * running_var + m * var * n / (n - 1), with the
unbiased variance (n values per channel; where n is 1 the unbiased variance is
undefined and the biased one, zero, is used, where PyTorch refuses the batch).
Evaluation: the running statistics instead of the batch's.

The running statistics are state, not parameters: on the device beside the
weights, in `state_dict`, never trained. The forward pass updates them in place,
and only where `ctx.update_state` is set, so an output computed again in the
backward pass moves them once a step.

The layer keeps its input and saves nothing: backward computes the batch's mean
and variance again from the input (a reduction: the same bits as forward's), so
the planner may drop the output and compute it again (as SuperNeurons does for
BN). The passes are `vmem.kernels.batchnorm`'s. Forward works in its output's
buffer; backward needs one map-sized scratch buffer (the normalized input) beside
the input gradient, declared as the algorithm's workspace so the arena counts it
(on the cpu backend the kernel goes channel block by channel block and needs far
less: the declaration covers the whole-map passes that CuPy runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vmem.kernels import batchnorm
from vmem.layers._checks import config_error, inputs
from vmem.layers.base import Algorithm, Array, Context, Keeps, Layer, Shape, numel


@dataclass(frozen=True, kw_only=True)
class BatchNorm(Layer):
    TYPE: ClassVar[str] = "batchnorm"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    eps: float = 1e-5
    momentum: float = 0.1

    def __post_init__(self) -> None:
        for field, low in (("eps", 0.0), ("momentum", 0.0)):
            value = getattr(self, field)
            if (not isinstance(value, int | float) or isinstance(value, bool)
                    or not low < value or (field == "momentum" and value > 1)):
                accepted = "in (0, 1]" if field == "momentum" else "> 0"
                raise config_error(self, f"{field} must be a number {accepted}, got {value!r}")

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes, min_rank=2)
        return shape

    def _channels(self, in_shapes: Sequence[Shape]) -> Shape:
        return (self.output_shape(in_shapes)[1],)

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        channels = self._channels(in_shapes)
        return {"weight": channels, "bias": channels}

    def init_params(self, in_shapes: Sequence[Shape], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        """Weight 1, bias 0 (PyTorch's and torchvision's)."""
        channels = self._channels(in_shapes)
        return {"weight": np.ones(channels, np.float32), "bias": np.zeros(channels, np.float32)}

    def state_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        channels = self._channels(in_shapes)
        return {"running_mean": channels, "running_var": channels}

    def init_state(self, in_shapes: Sequence[Shape]) -> dict[str, np.ndarray]:
        """Mean 0, variance 1 (PyTorch's)."""
        channels = self._channels(in_shapes)
        return {"running_mean": np.zeros(channels, np.float32),
                "running_var": np.ones(channels, np.float32)}

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """Per element: the mean's addition, centring, squaring and its sum, the
        scale's multiplication and the shift's addition."""
        return 6 * numel(self.output_shape(in_shapes))

    def algorithms(self, in_shapes: Sequence[Shape], itemsize: int) -> tuple[Algorithm, ...]:
        return (Algorithm("direct", numel(self.output_shape(in_shapes)) * itemsize),)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        shape = _broadcast_shape(x)
        if not ctx.train:
            scale = params["weight"] / xp.sqrt(params["running_var"] + self.eps)
            y = x - params["running_mean"].reshape(shape)
            y *= scale.reshape(shape)
            y += params["bias"].reshape(shape)
            return y, ()
        y, mean, var = batchnorm.train_forward(xp, x, params["weight"], params["bias"],
                                               self.eps)
        if ctx.update_state:
            n = x.size // x.shape[1]
            unbiased = var * (n / (n - 1)) if n > 1 else var
            for name, value in (("running_mean", mean), ("running_var", unbiased)):
                running = params[name]
                running *= 1 - self.momentum
                running += self.momentum * value
        return y, ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        (x,) = xs
        dx, dweight, dbias = batchnorm.train_backward(xp, x, dy, params["weight"], self.eps,
                                                      needs_dx[0])
        return [dx], {"weight": dweight, "bias": dbias}


def _broadcast_shape(x: Array) -> tuple[int, ...]:
    return (1, x.shape[1], *([1] * (x.ndim - 2)))
