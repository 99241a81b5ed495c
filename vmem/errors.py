"""Named errors a user meets. Each renders as one line that says what is wrong
and what is accepted; the CLI prints that line and exits with code 2."""

from __future__ import annotations


class VmemError(Exception):
    """Base of every error vmem reports to a user (never a bare traceback)."""


class UsageError(VmemError):
    """A bad value given by the user: a flag, an argument, a name."""


class ProfileError(VmemError):
    """A network profile that cannot be read: names the file, line and layer, and for
    a layer of a repeated block the instance (`within`)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 layer: str | None = None, within: str | None = None) -> None:
        where = ":".join(str(p) for p in (path, line) if p is not None)
        parts = [p for p in (where, f"layer '{layer}'" if layer else None, within) if p]
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.line, self.layer, self.within = path, line, layer, within


class NetworkError(VmemError):
    """A network whose layers do not form a valid graph; `layer` names the culprit
    so a profile loader can point at its line."""

    def __init__(self, message: str, layer: str | None = None) -> None:
        super().__init__(message)
        self.layer = layer


class ShapeError(NetworkError):
    """Layers whose shapes do not connect: names the layers and the shapes."""


class DeviceUnavailable(VmemError):
    """A device was asked for that this machine cannot provide."""


class OutOfDeviceMemory(VmemError):
    """The device arena cannot satisfy an allocation within its capacity."""

    def __init__(self, *, requested: int, in_use: int, capacity: int, what: str,
                 layer: str | None = None, phase: str | None = None,
                 hint: str | None = None) -> None:
        from vmem.units import format_bytes

        where = f"in {phase} of layer '{layer}'" if layer else "outside any layer"
        msg = (f"out of device memory {where}: asked for {format_bytes(requested)} ({what}) "
               f"with {format_bytes(in_use)} in use of a {format_bytes(capacity)} capacity")
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)
        self.requested, self.in_use, self.capacity = requested, in_use, capacity
        self.layer, self.phase, self.what = layer, phase, what

        self.hint = hint

    def at(self, layer: str, phase: str) -> OutOfDeviceMemory:
        """The same error, placed in a layer and phase."""
        return OutOfDeviceMemory(requested=self.requested, in_use=self.in_use,
                                 capacity=self.capacity, what=self.what, layer=layer, phase=phase)

    def with_hint(self, hint: str) -> OutOfDeviceMemory:
        """The same error, saying what would fit."""
        return OutOfDeviceMemory(requested=self.requested, in_use=self.in_use,
                                 capacity=self.capacity, what=self.what, layer=self.layer,
                                 phase=self.phase, hint=hint)


class OutOfHostMemory(VmemError):
    """The pinned host pool cannot hold what a plan offloads within its capacity."""

    def __init__(self, *, requested: int, reserved: int, capacity: int, what: str) -> None:
        from vmem.units import format_bytes

        super().__init__(
            f"out of pinned host memory: {what} needs {format_bytes(requested)} more with "
            f"{format_bytes(reserved)} pinned of a {format_bytes(capacity)} host-memory limit")
        self.requested, self.reserved, self.capacity = requested, reserved, capacity


class MemoryLimitTooSmall(VmemError):
    """A memory limit no policy can meet, refused before the first step."""


class RuntimeClosed(UsageError):
    """A call on a Runtime after `close()`: nothing it held is there any more."""


class NonFiniteError(VmemError):
    """A step whose loss or a gradient is NaN or infinite: its update is not applied,
    so the weights stay those after the last good step. `step` is the step's number,
    counting from 1 (the runtime's `steps` + 1); None for `evaluate`."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


class UpdateInterrupted(VmemError):
    """The optimizer's update stopped part way (an exception inside it, Ctrl-C): some
    parameters hold the new values and some the old, so the runtime refuses to go on
    until a state dict with the optimizer's state is loaded."""
