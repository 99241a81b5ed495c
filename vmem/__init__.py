"""vmem: a GPU memory virtualization runtime and profiler for DNN training.

The names below are imported on first use (PEP 562), so that `import vmem`
itself imports nothing heavy: the `vmem` command (vmem.entry) must be able to
catch a Ctrl-C while NumPy and the runtime are still importing."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DeviceUnavailable": "vmem.errors", "NetworkError": "vmem.errors",
    "OutOfDeviceMemory": "vmem.errors", "ProfileError": "vmem.errors",
    "ShapeError": "vmem.errors", "UsageError": "vmem.errors", "VmemError": "vmem.errors",
    "MemoryLimitTooSmall": "vmem.errors", "NonFiniteError": "vmem.errors",
    "OutOfHostMemory": "vmem.errors", "RuntimeClosed": "vmem.errors",
    "UpdateInterrupted": "vmem.errors",
    "Network": "vmem.graph", "Node": "vmem.graph",
    "SGD": "vmem.optim", "AdamW": "vmem.optim",
    "Runtime": "vmem.runtime",
}

if TYPE_CHECKING:
    from vmem.errors import (
        DeviceUnavailable,
        MemoryLimitTooSmall,
        NetworkError,
        NonFiniteError,
        OutOfDeviceMemory,
        OutOfHostMemory,
        ProfileError,
        RuntimeClosed,
        ShapeError,
        UpdateInterrupted,
        UsageError,
        VmemError,
    )
    from vmem.graph import Network, Node
    from vmem.optim import SGD, AdamW
    from vmem.runtime import Runtime


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vmem' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["SGD", "AdamW", "DeviceUnavailable", "MemoryLimitTooSmall", "Network", "NetworkError",
           "Node", "NonFiniteError", "OutOfDeviceMemory", "OutOfHostMemory", "ProfileError",
           "Runtime", "RuntimeClosed", "ShapeError", "UpdateInterrupted", "UsageError",
           "VmemError"]
