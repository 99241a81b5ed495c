"""Layer normalisation over the last dimension (Ba, Kiros & Hinton 2016)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vmem.layers._checks import config_error, inputs
from vmem.layers.base import DIRECT, Algorithm, Array, Context, Keeps, Layer, Shape, numel


@dataclass(frozen=True, kw_only=True)
class LayerNorm(Layer):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension C of
    x (..., C), the variance biased (divided by C), as torch.nn.LayerNorm. weight
    starts at ones, bias at zeros. Keeps its input and saves each row's mean and
    1/sqrt(var + eps), two values a row (x.shape[:-1] each)."""

    TYPE: ClassVar[str] = "layernorm"
    KEEPS: ClassVar[Keeps] = Keeps.INPUT

    eps: float = 1e-5

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or not self.eps > 0:
            raise config_error(self, f"eps must be a positive number, got {self.eps!r}")

    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = inputs(self, in_shapes, min_rank=2)
        return shape

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        features = self.output_shape(in_shapes)[-1:]
        return {"weight": features, "bias": features}

    def init_params(self, in_shapes: Sequence[Shape], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        shapes = self.param_shapes(in_shapes)
        return {"weight": np.ones(shapes["weight"], np.float32),
                "bias": np.zeros(shapes["bias"], np.float32)}

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """Mean, centre, variance, scale, weight and bias: about 8 per element."""
        return 8 * numel(self.output_shape(in_shapes))

    def saved_bytes(self, in_shapes: Sequence[Shape], itemsize: int,
                    algo: Algorithm = DIRECT) -> int:
        rows = numel(self.output_shape(in_shapes)[:-1])
        return 2 * rows * itemsize

    def algorithms(self, in_shapes: Sequence[Shape], itemsize: int) -> tuple[Algorithm, ...]:
        """The backward pass builds the normalised input once, beside the input
        gradient it returns: one input-sized buffer of scratch."""
        return (Algorithm("direct", numel(self.output_shape(in_shapes)) * itemsize),)

    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        (x,) = xs
        mean = x.mean(axis=-1)
        y = x - mean[..., None]  # the output's own buffer from here on
        var = xp.einsum("...c,...c->...", y, y) / x.shape[-1]
        rstd = 1.0 / xp.sqrt(var + self.eps)
        y *= rstd[..., None]
        y *= params["weight"]
        y += params["bias"]
        return y, ((mean, rstd.astype(x.dtype, copy=False)) if ctx.train else ())

    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        """With xhat the normalised input and g = dy * weight:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) over each row."""
        (x,), (mean, rstd) = xs, saved
        c = x.shape[-1]
        xhat = x - mean[..., None]
        xhat *= rstd[..., None]
        flat_dy, flat_xhat = dy.reshape(-1, c), xhat.reshape(-1, c)
        grads = {"weight": xp.einsum("nc,nc->c", flat_dy, flat_xhat),
                 "bias": flat_dy.sum(axis=0)}
        if not needs_dx[0]:
            return [None], grads
        g = dy * params["weight"]  # becomes dx
        projection = xp.einsum("...c,...c->...", g, xhat) / c
        g -= g.mean(axis=-1, keepdims=True)
        xhat *= projection[..., None]
        g -= xhat
        g *= rstd[..., None]
        return [g], grads
