"""Optimizers: the update rule as a frozen dataclass; state lives in the
parameter store, on the device, accounted as optimizer memory.

An update works in place and allocates no device buffer: the weight gradient,
which nothing reads after the update, is its scratch. So the device holds what
the arena counts, and an optimizer's memory is its state: one weight-sized buffer
per parameter for SGD with momentum, two for AdamW (which is why AdamW needs more
memory to train the same network)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from vmem.errors import UsageError


@dataclass(frozen=True)
class SGD:
    """SGD with momentum and weight decay (Caffe's rule): v <- m*v + (g + wd*w);
    w <- w - lr*v. Weight decay applies to weights, not biases."""

    name: ClassVar[str] = "sgd"

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), got {self.momentum}")
        _check_weight_decay(self.weight_decay)

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    def update(self, xp: Any, param: Any, grad: Any, state: dict[str, Any],
               decay: bool, *, step: int) -> None:
        """Update `param` (and the velocity) in place; `grad` is scratch. `step`
        (1 for the first update) is not needed by this rule."""
        wd = self.weight_decay if decay else 0.0
        if self.momentum:
            velocity = state["velocity"]
            velocity *= self.momentum
            velocity += grad
            if wd:
                xp.multiply(param, wd, out=grad)
                velocity += grad
            xp.multiply(velocity, self.lr, out=grad)
            param -= grad
        else:  # w <- w (1 - lr wd) - lr g
            if wd:
                param *= 1.0 - self.lr * wd
            grad *= self.lr
            param -= grad


@dataclass(frozen=True)
class AdamW:
    """Adam (Kingma & Ba 2015) with decoupled weight decay (Loshchilov & Hutter
    2019), as torch.optim.AdamW computes it at step t:
    w <- w (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    w <- w - lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps).
    Weight decay applies to weights, not biases."""

    name: ClassVar[str] = "adamw"

    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        for label, beta in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= beta < 1:
                raise UsageError(f"AdamW {label} must be in [0, 1), got {beta}")
        if not self.eps > 0:
            raise UsageError(f"AdamW eps must be positive, got {self.eps}")
        _check_weight_decay(self.weight_decay)

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def update(self, xp: Any, param: Any, grad: Any, state: dict[str, Any],
               decay: bool, *, step: int) -> None:
        """Update `param` and both moments in place at step `step` (1 for the first
        update); `grad` is scratch. Each moment moves by
        a <- b (a - x) + x = b a + (1 - b) x, so no temporary is made."""
        if step < 1:
            raise ValueError(f"AdamW steps count from 1, got {step}")
        if decay and self.weight_decay:
            param *= 1.0 - self.lr * self.weight_decay
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg -= grad
        exp_avg *= self.beta1
        exp_avg += grad
        xp.multiply(grad, grad, out=grad)  # g^2; g itself is no longer needed
        exp_avg_sq -= grad
        exp_avg_sq *= self.beta2
        exp_avg_sq += grad
        xp.sqrt(exp_avg_sq, out=grad)  # the denominator, built in the scratch
        grad /= math.sqrt(1.0 - self.beta2 ** step)
        grad += self.eps
        xp.divide(exp_avg, grad, out=grad)
        grad *= self.lr / (1.0 - self.beta1 ** step)
        param -= grad


Optimizer = SGD | AdamW

#: The optimizers `--optimizer` accepts, by name.
OPTIMIZERS: dict[str, type[SGD] | type[AdamW]] = {cls.name: cls for cls in (SGD, AdamW)}


def make_optimizer(name: str, lr: float | None = None) -> Optimizer:
    """The named optimizer with learning rate `lr` (None: its default) and its other
    defaults."""
    if name not in OPTIMIZERS:
        raise UsageError(f"optimizer: unknown {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]() if lr is None else OPTIMIZERS[name](lr=lr)


def update_traffic(optimizer: Optimizer) -> int:
    """Weight-sized passes over device memory that a fused update makes: it reads the
    weight and its gradient, writes the weight, and reads and writes each state
    buffer (SGD with momentum: 5; AdamW: 7)."""
    return 3 + 2 * len(optimizer.state_names)


def _check_lr(lr: float) -> None:
    if not lr > 0:
        raise UsageError(f"learning rate must be positive, got {lr}")


def _check_weight_decay(weight_decay: float) -> None:
    if weight_decay < 0:
        raise UsageError(f"weight decay must be >= 0, got {weight_decay}")
