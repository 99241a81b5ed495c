"""Backends behind one contract: `get_backend("auto" | "cpu" | "cuda[:N]")`."""

from __future__ import annotations

import re

from vmem.backends.base import COMPUTE, MEMORY, Backend, Event, Mark, Stream
from vmem.errors import UsageError

ACCEPTED_DEVICES = "auto, cpu, cuda, cuda:N"
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def get_backend(spec: str = "auto", capacity: int | None = None) -> Backend:
    """Make the backend a --device value names; `capacity` bounds its arena."""
    spec = spec.strip().lower()
    if spec == "auto":
        from vmem.backends import cuda

        spec = "cuda" if cuda.available() else "cpu"
    if spec == "cpu":
        from vmem.backends.cpu import CpuBackend

        return CpuBackend(capacity)
    match = _CUDA.match(spec)
    if match:
        from vmem.backends.cuda import CudaBackend

        return CudaBackend(int(match.group(1) or 0), capacity)
    raise UsageError(f"--device: unknown device '{spec}'; accepted: {ACCEPTED_DEVICES}")


__all__ = ["COMPUTE", "MEMORY", "Backend", "Event", "Mark", "Stream", "get_backend"]
