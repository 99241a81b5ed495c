"""vmem: a GPU memory virtualization runtime and profiler for DNN training."""

from vmem.errors import (
    DeviceUnavailable,
    NetworkError,
    OutOfDeviceMemory,
    ProfileError,
    ShapeError,
    UsageError,
    VmemError,
)
from vmem.graph import Network, Node
from vmem.optim import SGD, AdamW
from vmem.runtime import Runtime

__version__ = "0.1.0"

__all__ = ["SGD", "AdamW", "DeviceUnavailable", "Network", "NetworkError", "Node",
           "OutOfDeviceMemory", "ProfileError", "Runtime", "ShapeError", "UsageError", "VmemError"]
