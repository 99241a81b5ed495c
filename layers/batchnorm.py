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
BN). Forward works in its output's buffer; backward needs one map-sized scratch
buffer (the normalized input) beside the input gradient, declared as the
algorithm's workspace so the arena counts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

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
        mean, var, y = _batch_statistics(xp, x)  # y: the centred input
        if ctx.update_state:
            n = x.size // x.shape[1]
            unbiased = var * (n / (n - 1)) if n > 1 else var
            for name, value in (("running_mean", mean), ("running_var", unbiased)):
                running = params[name]
                running *= 1 - self.momentum
                running += self.momentum * value
        y *= (params["weight"] / xp.sqrt(var + self.eps)).reshape(shape)
        y += params["bias"].reshape(shape)
        return y, ()

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        (x,) = xs
        axes, shape = _axes(x), _broadcast_shape(x)
        n = x.size // x.shape[1]
        _, var, x_hat = _batch_statistics(xp, x)
        inv_std = 1 / xp.sqrt(var + self.eps)
        x_hat *= inv_std.reshape(shape)  # the normalized input, in the scratch buffer
        dbias = dy.sum(axis=axes)
        dx = dy * x_hat
        dweight = dx.sum(axis=axes)
        grads = {"weight": dweight, "bias": dbias}
        if not needs_dx[0]:
            return [None], grads
        # dx = weight / std * (dy - mean(dy) - x_hat * mean(dy * x_hat))
        x_hat *= (dweight / n).reshape(shape)
        xp.subtract(dy, x_hat, out=dx)
        dx -= (dbias / n).reshape(shape)
        dx *= (params["weight"] * inv_std).reshape(shape)
        return [dx], grads


def _axes(x: Array) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def _broadcast_shape(x: Array) -> tuple[int, ...]:
    return (1, x.shape[1], *([1] * (x.ndim - 2)))


def _batch_statistics(xp: Any, x: Array) -> tuple[Array, Array, Array]:
    """Per channel: the batch's mean and biased variance, and the centred input (a
    new map-sized array). The same operations in forward and backward, so both see
    the same bits."""
    axes, shape = _axes(x), _broadcast_shape(x)
    mean = x.mean(axis=axes)
    centred = x - mean.reshape(shape)
    var = xp.square(centred, out=centred).mean(axis=axes)
    xp.subtract(x, mean.reshape(shape), out=centred)  # centred again: no second map
    return mean, var, centred
