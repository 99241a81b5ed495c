"""Optimizers: the update rule as a frozen dataclass; state lives in the
parameter store, on the device, accounted as optimizer memory.

An update works in place and allocates no device buffer: the weight gradient,
which nothing reads after the update, is its scratch. So the device holds what
the arena counts, and an optimizer's memory is its state: one weight-sized buffer
per parameter for SGD with momentum, two for AdamW (which is why AdamW needs more
memory to train the same network). On NumPy an update runs in cache-sized blocks
over the threads (`apply_updates`); the rules are element-wise, so the bits are those
of one pass over the whole arrays."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from vmem.checks import finite_number
from vmem.errors import UsageError
from vmem.kernels.threads import for_ranges, on_threads

#: Elements of each array an update handles at once on NumPy: the blocks of the
#: weight, its gradient and its state (up to four arrays, 1 MiB in float32) stay in
#: a core's cache across the rule's passes, so each array crosses memory once; and
#: each pass is long enough that taking the GIL back after it costs little on more
#: than one thread (an SGD update of 21.7 M parameters in ResNet-50's sizes, on 2
#: threads: 60 ms in blocks of 2**14, 32 ms in blocks of 2**16; 44-51 ms on one).
UPDATE_BLOCK_ELEMENTS = 1 << 16
#: The fewest blocks of a task: 2**18 elements, a pass long beside waking a thread.
UPDATE_TASK_BLOCKS = 4


@dataclass(frozen=True)
class Update:
    """One parameter's update: an element-wise rule and the arrays it runs on, in
    place (the weight, its gradient, the optimizer's state)."""

    rule: Callable[..., None]
    arrays: tuple[Any, ...]


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
        if not 0 <= finite_number(self.momentum, "momentum") < 1:
            raise UsageError(f"momentum must be in [0, 1), got {self.momentum}")
        _check_weight_decay(self.weight_decay)

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    def update(self, xp: Any, param: Any, grad: Any, state: dict[str, Any],
               decay: bool, *, step: int) -> None:
        """Update `param` (and the velocity) in place; `grad` is scratch. `step`
        (1 for the first update) is not needed by this rule."""
        apply_updates(xp, [self.update_of(xp, param, grad, state, decay, step=step)])

    def update_of(self, xp: Any, param: Any, grad: Any, state: dict[str, Any],
                  decay: bool, *, step: int) -> Update:
        """What `update` runs, for `apply_updates`."""
        wd = self.weight_decay if decay else 0.0
        if self.momentum:
            return Update(partial(self._momentum_rule, xp, wd),
                          (param, grad, state["velocity"]))
        return Update(partial(self._plain_rule, wd), (param, grad))

    def _momentum_rule(self, xp: Any, wd: float, param: Any, grad: Any, velocity: Any) -> None:
        velocity *= self.momentum
        velocity += grad
        if wd:
            xp.multiply(param, wd, out=grad)
            velocity += grad
        xp.multiply(velocity, self.lr, out=grad)
        param -= grad

    def _plain_rule(self, wd: float, param: Any, grad: Any) -> None:
        """w <- w (1 - lr wd) - lr g"""
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
            if not 0 <= finite_number(beta, f"AdamW {label}") < 1:
                raise UsageError(f"AdamW {label} must be in [0, 1), got {beta}")
        if not finite_number(self.eps, "AdamW eps") > 0:
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
        apply_updates(xp, [self.update_of(xp, param, grad, state, decay, step=step)])

    def update_of(self, xp: Any, param: Any, grad: Any, state: dict[str, Any],
                  decay: bool, *, step: int) -> Update:
        """What `update` runs, for `apply_updates`."""
        if step < 1:
            raise ValueError(f"AdamW steps count from 1, got {step}")
        return Update(partial(self._rule, xp, decay, step),
                      (param, grad, state["exp_avg"], state["exp_avg_sq"]))

    def _rule(self, xp: Any, decay: bool, step: int, param: Any, grad: Any, exp_avg: Any,
              exp_avg_sq: Any) -> None:
        if decay and self.weight_decay:
            param *= 1.0 - self.lr * self.weight_decay
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


#: Where no profile says otherwise, SGD's learning rate at every batch.
DEFAULT_SGD_LR = SGD.lr


@dataclass(frozen=True)
class LearningRate:
    """A profile's learning rate for SGD (with vmem's momentum 0.9): `lr` for a batch
    of `batch` samples, scaled linearly to the batch trained, lr * b / batch (the
    linear scaling rule of Goyal et al. 2017, by which torchvision's reference
    recipe sets 0.1 for a batch of 256); where `batch` is None, `lr` at every batch.
    A recipe made for hundreds of samples diverges at the one or two a CPU step
    takes (VGG-16 at batch 2 and 0.01); scaled, it does not."""

    lr: float = DEFAULT_SGD_LR
    batch: int | None = None

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        if self.batch is not None and (isinstance(self.batch, bool)
                                       or not isinstance(self.batch, int) or self.batch < 1):
            raise UsageError(f"a learning rate's batch must be a positive integer, got "
                             f"{self.batch!r:.40}")

    def at(self, batch: int) -> float:
        """The learning rate for a batch of `batch` samples."""
        return self.lr if self.batch is None else self.lr * batch / self.batch

    def words(self) -> str:
        """"0.1 for a batch of 256, scaled linearly" or "0.01 at every batch"."""
        if self.batch is None:
            return f"{self.lr:g} at every batch"
        return f"{self.lr:g} for a batch of {self.batch}, scaled linearly"


def make_optimizer(name: str, lr: float | None = None) -> Optimizer:
    """The named optimizer with learning rate `lr` (None: its default) and its other
    defaults."""
    if name not in OPTIMIZERS:
        raise UsageError(f"optimizer: unknown {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]() if lr is None else OPTIMIZERS[name](lr=lr)


def apply_updates(xp: Any, updates: Sequence[Update]) -> None:
    """Run every update. On NumPy, each update whose arrays are C-contiguous of one
    size runs over their flat blocks of UPDATE_BLOCK_ELEMENTS, and the blocks of all
    of them, one after another, are cut into ranges spread over the threads in one
    fan-out (`kernels.threads`), so a bias or a batch norm's weight shares a task with
    its neighbours instead of costing one; elsewhere each rule runs once on its whole
    arrays. The rules are element-wise: an element's arithmetic is the same whichever
    block holds it, so the results are the same bits for every block size and thread
    count."""
    blocks = []  # (rule, its flat arrays, a block's first element), update after update
    elements = 0  # the blocks' elements, all told
    for update in updates:
        size = update.arrays[0].size
        if not on_threads(xp) or not all(a.flags.c_contiguous and a.size == size
                                         for a in update.arrays):
            update.rule(*update.arrays)
            continue
        flats = tuple(a.reshape(-1) for a in update.arrays)
        blocks.extend((update.rule, flats, lo) for lo in range(0, size, UPDATE_BLOCK_ELEMENTS))
        elements += size

    def run(first: int, stop: int) -> None:
        for rule, flats, lo in blocks[first:stop]:
            rule(*(flat[lo:lo + UPDATE_BLOCK_ELEMENTS] for flat in flats))

    if blocks:  # a small network's blocks are short: tasks of TASK_ELEMENTS at least
        for_ranges(xp, len(blocks), run, min_items=UPDATE_TASK_BLOCKS,
                   item_elements=max(1, elements // len(blocks)))


def update_traffic(optimizer: Optimizer) -> int:
    """Weight-sized passes over device memory that a fused update makes: it reads the
    weight and its gradient, writes the weight, and reads and writes each state
    buffer (SGD with momentum: 5; AdamW: 7)."""
    return 3 + 2 * len(optimizer.state_names)


def _check_lr(lr: float) -> None:
    if not finite_number(lr, "learning rate") > 0:
        raise UsageError(f"learning rate must be positive, got {lr}")


def _check_weight_decay(weight_decay: float) -> None:
    if finite_number(weight_decay, "weight decay") < 0:
        raise UsageError(f"weight decay must be >= 0, got {weight_decay}")
