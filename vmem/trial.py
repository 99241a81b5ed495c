"""A trial: train a network for a few steps under one policy and measure it.
`vmem run` prints one trial, `vmem compare` one per policy beside the oracular
reference (policy `none`, no memory limit, same network and batch)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from vmem.errors import VmemError
from vmem.graph import Network
from vmem.optim import SGD
from vmem.profiler import analysis
from vmem.profiler.events import StepRecord
from vmem.runtime import Runtime


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
    lr: float = 0.001
    default_batch: int = 32
    default_cpu_batch: int = 8
    oracular: bool = False  # a device with memory for everything (see Runtime)


@dataclass(frozen=True)
class TrialResult:
    profile: str
    batch: int
    device: str
    policy: str
    memory_limit_bytes: int | None
    steps: int
    peak_bytes: int | None = None
    average_bytes: float | None = None
    step_ms: float | None = None
    steps_ms: tuple[float, ...] = ()
    losses: tuple[float, ...] = ()
    offloaded_bytes: int | None = None
    prefetched_bytes: int | None = None
    stall_ms: float | None = None
    pinned_bytes: int | None = None
    slowdown: float | None = None
    oracle: str | None = None  # how the oracular step time was obtained
    pool_reserved_bytes: int | None = None
    device_facts: dict[str, Any] | None = None
    error: str | None = None  # why this policy could not train, if it could not

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps_ms"], data["losses"] = list(self.steps_ms), list(self.losses)
        return data


def synthetic_batch(input_shape: tuple[int, ...], classes: int, batch: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded inputs N(0, 1) and uniform labels: the same batch every step, so
    the loss falls as the network fits it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
    return x, rng.integers(0, classes, size=batch)


def run_trial(spec: TrialSpec) -> tuple[TrialResult, list[StepRecord]]:
    """Train `spec.steps` steps; the first is a warm-up left out of the timing.
    A VmemError (the policy does not fit, ...) propagates."""
    with Runtime(spec.network, device=spec.device, policy=spec.policy,
                 memory_limit=spec.memory_limit, host_memory_limit=spec.host_memory_limit,
                 optimizer=SGD(lr=spec.lr), seed=spec.seed,
                 oracular=spec.oracular) as runtime:
        batch = spec.batch or (spec.default_cpu_batch if runtime.backend.name == "cpu"
                               else spec.default_batch)
        x, y = synthetic_batch(spec.network.input_shape, runtime.num_classes, batch, spec.seed)
        losses, records = [], []
        for _ in range(spec.steps):
            losses.append(runtime.train_step(x, y))
            assert runtime.last_record is not None
            records.append(runtime.last_record)
        timed = records[1:] or records
        result = TrialResult(
            profile=spec.network.name, batch=batch, device=runtime.backend.name,
            policy=spec.policy, memory_limit_bytes=runtime.memory_limit, steps=spec.steps,
            peak_bytes=max(analysis.peak_bytes(r) for r in records),
            average_bytes=statistics.fmean(analysis.average_bytes(r) for r in timed),
            step_ms=statistics.median(r.duration_ms for r in timed),
            steps_ms=tuple(r.duration_ms for r in records),
            losses=tuple(float(v) for v in losses),
            offloaded_bytes=analysis.copied_bytes(timed[-1], "copy_d2h"),
            prefetched_bytes=analysis.copied_bytes(timed[-1], "copy_h2d"),
            stall_ms=statistics.median(analysis.stall_ms(r) for r in timed),
            pinned_bytes=runtime.host_pool.reserved,
            pool_reserved_bytes=runtime.backend.pool_reserved_bytes(),
            device_facts=runtime.backend.facts())
    return result, records


def failed_trial(spec: TrialSpec, error: VmemError, batch: int, device: str) -> TrialResult:
    return TrialResult(profile=spec.network.name, batch=batch, device=device,
                       policy=spec.policy, memory_limit_bytes=spec.memory_limit,
                       steps=spec.steps, error=str(error))


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
