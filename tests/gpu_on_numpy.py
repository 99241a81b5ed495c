"""A pytest plugin that runs tests/gpu's kernel tests without a GPU: NumPy under CuPy's
name, vmem's CUDA C on the CPU emulator (tests/cuda_emulator.py), and the cuBLAS calls
of vmem.kernels.gemm by their definition in NumPy. It checks the GPU tests themselves
(their shapes, references and calls), not CuPy, cuBLAS or a device:

    PYTHONPATH=tests python -m pytest --noconftest -p gpu_on_numpy \\
        tests/gpu/test_conv_cuda.py tests/gpu/test_pooling_cuda.py tests/gpu/test_lrn_cuda.py \\
        tests/gpu/test_attention_cuda.py

(--noconftest: tests/gpu/conftest.py would skip everything where CUDA is missing.)
Only for these files: the others need CuPy's streams and memory pool.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import test_cuda_conv
from cuda_emulator import emulated, numpy_as_cupy

from vmem.kernels import cuda_attention, cuda_im2col, cuda_lrn, cuda_pooling, gemm

_cupy = numpy_as_cupy()
_cupy.asnumpy = np.asarray  # type: ignore[attr-defined]
_cupy.ndarray = np.ndarray  # type: ignore[attr-defined]
_cupy.vmem_stand_in = True  # type: ignore[attr-defined]  # GPU tests leave long runs out
_emulators = [emulated(module) for module in (cuda_im2col, cuda_pooling, cuda_lrn,
                                              cuda_attention)]


@pytest.fixture
def cp() -> Any:
    """The stand-in, as tests/gpu/conftest.py's fixture gives the cupy module."""
    return _cupy


def pytest_configure(config: object) -> None:
    sys.modules["cupy"] = _cupy
    for emulator in _emulators:
        emulator.__enter__()
    gemm._run_gemms = test_cuda_conv.run_gemms_on_numpy  # type: ignore[assignment]


def pytest_unconfigure(config: object) -> None:
    for emulator in reversed(_emulators):
        emulator.__exit__(None, None, None)
    sys.modules.pop("cupy", None)
