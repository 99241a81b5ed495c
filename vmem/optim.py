"""Optimizers: the update rule as a frozen dataclass; state lives in the
parameter store, on the device, accounted as optimizer memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmem.errors import UsageError


@dataclass(frozen=True)
class SGD:
    """SGD with momentum and weight decay (Caffe's rule): v <- m*v + (g + wd*w);
    w <- w - lr*v. Weight decay applies to weights, not biases."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise UsageError(f"weight decay must be >= 0, got {self.weight_decay}")

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    def update(self, xp: Any, param: Any, grad: Any, state: dict[str, Any],
               decay: bool) -> None:
        """Update `param` (and the velocity) in place. `grad` serves as scratch --
        nothing reads a weight gradient after the update -- so the update allocates
        no device buffer: the device holds what the arena counts."""
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
