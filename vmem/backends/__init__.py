"""Backends behind one contract:
`get_backend("auto" | "cpu" | "cuda[:N]" | "sim:GPU" | "sim:FILE.toml" | "sim:FILE.json")`."""

from __future__ import annotations

import re

from vmem.backends.base import COMPUTE, MEMORY, Backend, Event, Mark, Stream
from vmem.errors import UsageError

ACCEPTED_DEVICES = ("auto, cpu, cuda, cuda:N, sim:GPU (a preset), sim:FILE.toml (a GPU of "
                    "one's own) or sim:FILE.json (from vmem calibrate)")
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(spec: str) -> str:
    """A --device value as `get_backend` reads it, "auto" resolved to "cuda" or
    "cpu"; checks nothing else and makes no backend."""
    spec = spec.strip()
    if not spec.startswith("sim:"):
        spec = spec.lower()
    if spec == "auto":
        from vmem.backends import cuda

        spec = "cuda" if cuda.available() else "cpu"
    return spec


def get_backend(spec: str = "auto", capacity: int | None = None, bounded: bool = True
                ) -> Backend:
    """Make the backend a --device value names; `capacity` bounds its arena, and
    so, on sim and cuda unless `bounded` is False, does the device's memory. A
    capacity above the device's own memory (a sim GPU's, a CUDA device's total)
    cannot be honoured and is refused with a UsageError."""
    spec = resolve_device(spec)
    if spec == "cpu":
        from vmem.backends.cpu import CpuBackend

        return CpuBackend(capacity)
    if spec.startswith("sim:"):
        from vmem.backends.sim import SimBackend
        from vmem.costs import load_costs

        costs = load_costs(spec.removeprefix("sim:"))
        return SimBackend(costs.gpu, capacity, bounded, costs)
    match = _CUDA.match(spec)
    if match:
        from vmem.backends.cuda import CudaBackend

        backend = CudaBackend(int(match.group(1) or 0), capacity, bounded)
        try:
            backend.check_memory_limit(capacity)
        except BaseException:
            backend.close()
            raise
        return backend
    raise UsageError(f"--device: unknown device '{spec}'; accepted: {ACCEPTED_DEVICES}")


__all__ = ["COMPUTE", "MEMORY", "Backend", "Event", "Mark", "Stream", "get_backend",
           "resolve_device"]
