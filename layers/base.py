"""The layer contract.

A layer is a frozen dataclass of its configuration (what a profile's TOML table
gives) plus pure methods. It declares its output shape, parameters, FLOPs, what
it keeps for the backward pass, its algorithms with their workspace, and the
bytes of private state it saves for backward. `forward` and `backward` take the
array module `xp` and arrays; they never know where a tensor lived a moment ago,
and they work in whatever floating dtype they are given (float32 in training,
float64 in the gradient tests).

Shapes include the batch: NCHW for feature maps, (N, F) after a flatten, (N, T)
integer token ids and (N, T, C) activations for token sequences.

A layer may use another layer's parameter as one of its own (a language model's
head reads the token embedding's weight: weight tying). It declares it in
`shared_params`, not in `param_shapes`: the parameter is held and counted once, by
its owner; `forward` and `backward` find it in `params` under the local name, and
`backward` returns its gradient under that name too: the runtime sums the
gradients of every use.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

Shape = tuple[int, ...]
Array = Any  # a numpy.ndarray or a cupy.ndarray

#: Token ids on the device: 4 bytes a token (any vocabulary up to 2**31 fits).
TOKEN_DTYPE = np.dtype(np.int32)


class Keeps(enum.Flag):
    """What a layer needs from the forward pass to run its backward pass."""

    NOTHING = 0
    INPUT = enum.auto()
    OUTPUT = enum.auto()


@dataclass(frozen=True)
class Algorithm:
    """One way to run a layer. `workspace_bytes` is device scratch held only while
    the layer runs (forward or backward, whichever needs more). For convolution,
    `chunk` is the number of samples lowered by im2col at once."""

    name: str
    workspace_bytes: int = 0
    chunk: int = 0


DIRECT = Algorithm("direct")


@dataclass(frozen=True)
class PassCost:
    """What one pass of a layer does on an algorithm, where the algorithm changes
    it: floating-point operations and kernel launches (see `Layer.pass_cost`)."""

    flops: int
    launches: int = 1


@dataclass(frozen=True)
class SharedParam:
    """A parameter a layer uses but does not own: `owner`'s parameter `param`, which
    must have `shape` (the shape this layer needs it in)."""

    owner: str
    param: str
    shape: Shape


@dataclass(frozen=True)
class Context:
    """What a step tells every layer: training or inference, a per-step seed (dropout
    masks are a pure function of seed and layer name), and the labels (loss only).
    `inplace` is the executor's word, for one forward call of an INPLACE layer, that
    the input dies with this call: the layer writes its output over it, so the device
    really holds the one buffer the arena counts."""

    train: bool = True
    seed: int = 0
    labels: Array | None = None
    inplace: bool = False
    # Whether a training forward pass updates the layer's state (BatchNorm's running
    # statistics): False where the executor computes an output again in the backward
    # pass, so the state moves once a step.
    update_state: bool = True


def numel(shape: Shape) -> int:
    """The number of elements of a shape, exact: Python integers do not overflow
    (a NumPy int64 product wraps around silently past 2**63)."""
    return math.prod(int(d) for d in shape)


@dataclass(frozen=True, kw_only=True)
class Layer(ABC):
    TYPE: ClassVar[str]
    KEEPS: ClassVar[Keeps] = Keeps.NOTHING
    # May write its output over its input, and its input gradient over its output
    # gradient, when nothing else needs the input (ReLU, dropout).
    INPLACE: ClassVar[bool] = False
    # Number of inputs; None means two or more (concat, add).
    ARITY: ClassVar[int | None] = 1
    # A loss ends the graph: its output is a scalar and its backward starts the pass.
    IS_LOSS: ClassVar[bool] = False
    # Reads token ids (integers of TOKEN_DTYPE), not floating values (embedding).
    TAKES_TOKENS: ClassVar[bool] = False

    name: str

    @abstractmethod
    def output_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        """Raise vmem.errors.ShapeError (naming this layer and the shapes) when the
        inputs do not fit."""

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        return {}

    def init_params(self, in_shapes: Sequence[Shape], rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        """Initial parameters as float32 NumPy arrays, a pure function of rng."""
        return {}

    def state_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        """State that is not a parameter (BatchNorm's running statistics): kept on
        the device beside the parameters, in `state_dict`, never trained. `forward`
        and `backward` find it in `params` under these names; a training forward
        pass with `ctx.update_state` updates it in place."""
        return {}

    def init_state(self, in_shapes: Sequence[Shape]) -> dict[str, np.ndarray]:
        """Initial state as float32 NumPy arrays."""
        return {}

    def shared_params(self, in_shapes: Sequence[Shape]) -> dict[str, SharedParam]:
        """Parameters of other layers this layer uses, by local name (none by default)."""
        return {}

    def flops(self, in_shapes: Sequence[Shape]) -> int:
        """Forward floating-point operations (a multiply-add counts two)."""
        return 0

    def backward_flops(self, in_shapes: Sequence[Shape]) -> int:
        return 2 * self.flops(in_shapes)

    def algorithms(self, in_shapes: Sequence[Shape], itemsize: int) -> tuple[Algorithm, ...]:
        """Ways to run this layer, fastest first, least workspace last."""
        return (DIRECT,)

    def pass_cost(self, in_shapes: Sequence[Shape], algo: Algorithm, forward: bool
                  ) -> PassCost | None:
        """The FLOPs and launches of one pass on `algo` where they depend on it (a
        flash attention's tiles); None where the cost model counts them itself
        (`flops`, `backward_flops`, and a convolution's launches per chunk)."""
        return None

    def saved_bytes(self, in_shapes: Sequence[Shape], itemsize: int,
                    algo: Algorithm = DIRECT) -> int:
        """Bytes of private state (masks, scales) that forward returns for backward
        when it runs `algo` (attention's materialized algorithm keeps its
        probabilities, its flash algorithm a log-sum-exp a row)."""
        return 0

    @abstractmethod
    def forward(self, xp: Any, xs: Sequence[Array], params: dict[str, Array],
                algo: Algorithm, ctx: Context) -> tuple[Array, tuple[Array, ...]]:
        """Return (output, saved). `saved` holds exactly `saved_bytes` bytes (empty
        when ctx.train is False, where nothing is kept)."""

    @abstractmethod
    def backward(self, xp: Any, dy: Array | None, xs: Sequence[Array | None], y: Array | None,
                 params: dict[str, Array], saved: tuple[Array, ...], algo: Algorithm,
                 in_shapes: Sequence[Shape], needs_dx: Sequence[bool]
                 ) -> tuple[list[Array | None], dict[str, Array]]:
        """Return (input gradients, parameter gradients keyed like params). `xs[i]`
        is the input when KEEPS has INPUT, else None; `y` is the output when KEEPS
        has OUTPUT, else None. `dx[i]` is None where `needs_dx[i]` is False. For a
        loss, dy is None and the gradient is of the mean loss over the batch.

        Neither pass writes over its inputs: where the executor runs a layer in
        place it is an accounting choice (the output takes over the input's block,
        which is dropped at once), the arithmetic is the same."""
