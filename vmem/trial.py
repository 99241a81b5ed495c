"""A trial: train a network for a few steps under one policy and measure it.
`vmem run` prints one trial, `vmem compare` one per policy beside the oracular
reference (policy `none`, no memory limit, same network and batch)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from vmem.backends import resolve_device
from vmem.backends.base import Backend
from vmem.errors import VmemError
from vmem.executor import LIVENESS
from vmem.graph import Network
from vmem.optim import LearningRate, make_optimizer
from vmem.profiler import analysis
from vmem.profiler.events import StepRecord
from vmem.profiler.peak import live_at_peak
from vmem.profiler.session import TrialResult
from vmem.roles import describe
from vmem.runtime import Runtime

__all__ = ["TrialResult", "TrialRun", "TrialSpec", "failed_trial", "run_trial", "staged_for_upload",
           "synthetic_batch", "synthetic_data", "with_slowdown"]


@dataclass(frozen=True)
class TrialSpec:
    network: Network
    batch: int | None  # None: the caller's default for the device
    steps: int = 4
    device: str = "auto"
    policy: str = "none"
    memory_limit: int | None = None
    host_memory_limit: int | None = None
    seed: int = 0
    lr: float | None = None  # None: for sgd the profile's rule at the batch, else the default
    default_batch: int = 32
    default_cpu_batch: int = 8
    oracular: bool = False  # a device with memory for everything (see Runtime)
    allocation: str = LIVENESS  # or "network-wide", the vDNN paper's baseline
    optimizer: str = "sgd"  # a name in vmem.optim.OPTIMIZERS
    threads: int | None = None  # the NumPy kernels' threads (None: Runtime's default)
    learning_rate: LearningRate = LearningRate()  # the profile's SGD learning rate


def synthetic_batch(input_shape: tuple[int, ...], classes: int, batch: int,
                    seed: int, data: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Seeded inputs N(0, 1) and uniform labels: the same batch every step, so
    the loss falls as the network fits it. Without `data` (a backend that runs no
    kernels, `sim`), zeros of the right shapes that take no memory: read-only
    broadcast views, so a full-size batch costs no host memory."""
    if not data:
        return (np.broadcast_to(np.float32(0), (batch, *input_shape)),
                np.broadcast_to(np.int64(0), (batch,)))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
    return x, rng.integers(0, classes, size=batch)


def synthetic_data(network: Network, batch: int, seed: int, data: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded batch for any network: `synthetic_batch` for a classifier; for a
    language model, uniform random tokens, a sequence of T + 1 a sample whose first
    T are the input and last T the next-token labels (zeros taking no memory
    without `data`)."""
    if not network.takes_tokens:
        return synthetic_batch(network.input_shape, network.classes, batch, seed, data)
    (length,) = network.input_shape
    if not data:
        return (np.broadcast_to(np.int32(0), (batch, length)),
                np.broadcast_to(np.int64(0), (batch, length)))
    tokens = np.random.default_rng(seed).integers(0, network.vocab, size=(batch, length + 1))
    return tokens[:, :-1], tokens[:, 1:]


def staged_for_upload(backend: Backend, x: np.ndarray) -> np.ndarray:
    """The batch copied into the host memory the device reads fastest: page-locked on
    cuda, as a data loader with pinned memory hands batches over. Each step still
    uploads it, as training does, but without a pageable copy's staging (about 7 GB/s
    against 55, DESIGN.md). The buffer is the data's, not vmem's host pool: it is not
    in `pinned_bytes` nor under a host memory limit."""
    buffer = backend.pinned_empty(x.nbytes)
    if buffer is None:
        return x
    staged = buffer.view(x.dtype).reshape(x.shape)
    staged[...] = x
    return staged


class TrialRun:
    """One trial opened and stepped a step at a time, so that several trials' steps
    can take turns (`vmem compare` interleaves them on a measured clock: a shared
    CPU's slow moments then fall on every policy alike). Opening it builds the
    runtime and its data; `result()` summarizes the steps taken. A VmemError (the
    policy does not fit, ...) propagates from opening or from a step."""

    def __init__(self, spec: TrialSpec) -> None:
        self.spec = spec
        self.batch = spec.batch or (spec.default_cpu_batch if resolve_device(spec.device)
                                    == "cpu" else spec.default_batch)
        self.runtime = Runtime(spec.network, device=spec.device, policy=spec.policy,
                               memory_limit=spec.memory_limit,
                               host_memory_limit=spec.host_memory_limit,
                               optimizer=make_optimizer(spec.optimizer,
                                                        trial_lr(spec, self.batch)),
                               seed=spec.seed, oracular=spec.oracular,
                               allocation=spec.allocation, batch=self.batch,
                               threads=spec.threads)
        try:
            backend = self.runtime.backend
            x, self._y = synthetic_data(spec.network, self.batch, spec.seed,
                                        data=backend.runs_kernels)
            self._x = staged_for_upload(backend, x) if backend.runs_kernels else x
        except BaseException:
            self.runtime.close()
            raise
        self.losses: list[float | None] = []
        self.records: list[StepRecord] = []

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.runtime.close()

    @property
    def done(self) -> bool:
        return len(self.records) >= self.spec.steps

    def step(self) -> None:
        loss = self.runtime.train_step(self._x, self._y)
        self.losses.append(loss if math.isfinite(loss) else None)
        assert self.runtime.last_record is not None
        self.records.append(self.runtime.last_record)

    def result(self) -> TrialResult:
        """The steps taken so far, summarized (at least one): the first is a warm-up
        left out of the timing unless it is the only one."""
        spec, runtime, records = self.spec, self.runtime, self.records
        timed = records[1:] or records
        peak_record = max(records, key=analysis.peak_bytes)
        by_kind = [analysis.average_bytes_by_kind(r) for r in timed]
        at_peak = describe(live_at_peak(peak_record), spec.network,
                           runtime.executor(self.batch).plan, runtime.dtype.itemsize)
        return TrialResult(
            profile=spec.network.name, batch=self.batch, device=runtime.backend.name,
            policy=spec.policy, memory_limit_bytes=runtime.memory_limit, steps=len(records),
            allocation=spec.allocation, optimizer=spec.optimizer, lr=runtime.optimizer.lr,
            peak_bytes=analysis.peak_bytes(peak_record),
            average_bytes=statistics.fmean(analysis.average_bytes(r) for r in timed),
            peak_by_kind=analysis.bytes_by_kind_at_peak(peak_record),
            at_peak=at_peak,
            average_by_kind={kind: statistics.fmean(b.get(kind, 0.0) for b in by_kind)
                             for kind in by_kind[0]},
            step_ms=statistics.median(r.duration_ms for r in timed),
            steps_ms=tuple(r.duration_ms for r in records),
            host_ms=_median_or_none([r.host_ms for r in timed]),
            losses=tuple(self.losses),
            offloaded_bytes=analysis.copied_bytes(timed[-1], "copy_d2h"),
            prefetched_bytes=analysis.copied_bytes(timed[-1], "copy_h2d"),
            recomputed_bytes=analysis.recomputed_bytes(timed[-1]),
            stall_ms=statistics.median(analysis.stall_ms(r) for r in timed),
            pinned_bytes=runtime.host_pool.reserved,
            pool_reserved_bytes=runtime.backend.pool_reserved_bytes(),
            pool_peak_bytes=runtime.backend.pool_peak_bytes(),
            device_facts=runtime.backend.facts())


def run_trial(spec: TrialSpec, on_step: Callable[[], None] | None = None
              ) -> tuple[TrialResult, list[StepRecord]]:
    """Train `spec.steps` steps; the first is a warm-up left out of the timing.
    `on_step` is called after each step (a progress bar). A VmemError (the
    policy does not fit, ...) propagates."""
    with TrialRun(spec) as run:
        while not run.done:
            run.step()
            if on_step is not None:
                on_step()
        return run.result(), run.records


def trial_lr(spec: TrialSpec, batch: int) -> float | None:
    """The learning rate a trial trains at: `--lr` where given; for SGD the
    profile's rule at the batch; None (the optimizer's default) for another."""
    if spec.lr is not None:
        return spec.lr
    return spec.learning_rate.at(batch) if spec.optimizer == "sgd" else None


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def failed_trial(spec: TrialSpec, error: VmemError, batch: int, device: str) -> TrialResult:
    return TrialResult(profile=spec.network.name, batch=batch, device=device,
                       policy=spec.policy, memory_limit_bytes=spec.memory_limit,
                       steps=spec.steps, allocation=spec.allocation,
                       optimizer=spec.optimizer, error=str(error))


def with_slowdown(result: TrialResult, records: list[StepRecord],
                  oracle: TrialResult | None) -> TrialResult:
    """Slowdown against the oracular step: measured with policy `none` and no
    memory limit where that ran, else the sum of this run's layer times, each
    measured on its own (the step as if no copy had to be waited for)."""
    if result.step_ms is None:
        return result
    if oracle is not None and oracle.step_ms:
        return replace(result, slowdown=result.step_ms / oracle.step_ms,
                       oracle="none with memory for everything")
    timed = records[1:] or records
    layers_ms = statistics.median(analysis.compute_ms(r) for r in timed)
    return replace(result, slowdown=result.step_ms / layers_ms if layers_ms else None,
                   oracle="sum of per-layer times")
