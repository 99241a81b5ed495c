"""The cuda backend on a machine without CUDA (as in CI): it imports, says it is
unavailable, and asking for it is a one-line DeviceUnavailable naming why and
what --device accepts."""

from __future__ import annotations

import importlib

import pytest

from vmem.backends import ACCEPTED_DEVICES, get_backend
from vmem.errors import DeviceUnavailable, VmemError

cuda = importlib.import_module("vmem.backends.cuda")

needs_no_cuda = pytest.mark.skipif(cuda.available(),
                                   reason="this machine has CUDA; tests/gpu covers it")


def test_module_imports_without_cupy() -> None:
    assert callable(cuda.available) and callable(cuda.unavailable_reason)
    assert issubclass(cuda.CudaBackend, object)


def test_available_never_raises_and_agrees_with_reason() -> None:
    usable = cuda.available()
    assert isinstance(usable, bool)
    reason = cuda.unavailable_reason()
    assert (reason == "") == usable
    assert "\n" not in reason


@needs_no_cuda
def test_available_is_false_here() -> None:
    assert cuda.available() is False
    reason = cuda.unavailable_reason()
    assert reason.startswith(("cupy is not installed", "cupy cannot be imported",
                              "no CUDA device"))
    if reason.startswith("cupy is not installed"):
        assert "vmem-dnn[cuda12]" in reason


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3", " CUDA:1 "])
def test_get_backend_cuda_is_device_unavailable(spec: str) -> None:
    with pytest.raises(DeviceUnavailable) as info:
        get_backend(spec)
    message = str(info.value)
    assert isinstance(info.value, VmemError)
    assert "\n" not in message
    assert cuda.unavailable_reason() in message
    assert ACCEPTED_DEVICES in message


@needs_no_cuda
def test_constructing_the_backend_directly_is_device_unavailable() -> None:
    with pytest.raises(DeviceUnavailable, match="--device accepts"):
        cuda.CudaBackend(0, capacity=2**20)


@needs_no_cuda
def test_auto_falls_back_to_cpu() -> None:
    backend = get_backend("auto")
    try:
        assert backend.name == "cpu"
    finally:
        backend.close()
