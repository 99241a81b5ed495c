"""One CUDA C source, compiled by NVRTC through CuPy's RawModule on first use, and the
launcher its kernels go through.

Kernel modules (`cuda_softmax`, `cuda_im2col`, `cuda_pooling`, `cuda_lrn`,
`cuda_attention`) hold a
`LauncherSlot`: it builds the
CuPy launcher when a kernel first runs (or says in one line why it cannot), and tests
swap in a stand-in with the same methods (`launch`, `sm_count`, `pointer`,
`is_array`) and `xp` -- the CPU emulator, which runs the same CUDA C on NumPy arrays.

CuPy is imported lazily: this module imports on a machine without CuPy.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vmem.errors import DeviceUnavailable

Array = Any

#: float16 as bits and its conversions to and from float32, the CUDA C the softmax and
#: attention sources begin with.
HALF_SOURCE = (Path(__file__).resolve().parent / "cuda_half.cuh").read_text()

#: The C++ type each array dtype instantiates a `template <typename T>` kernel with.
TEMPLATE_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


#: vmem's CUDA kernel families, each with the environment variable that switches it
#: ("1": on, anything else: off) and its default when unset. Softmax and attention
#: (the flash algorithm's kernels) stay off until their kernels have run on a GPU; the
#: others replace array code known to be slow ("gemm": the convolution's GEMMs as direct
#: cuBLAS calls, `kernels.gemm`).
KERNEL_SWITCHES: dict[str, tuple[str, bool]] = {
    "im2col": ("VMEM_CUDA_IM2COL", True),
    "gemm": ("VMEM_CUDA_GEMM", True),
    "pooling": ("VMEM_CUDA_POOLING", True),
    "lrn": ("VMEM_CUDA_LRN", True),
    "softmax": ("VMEM_CUDA_SOFTMAX", False),
    "attention": ("VMEM_CUDA_ATTENTION", False),
}


def kernels_on(xp: Any, family: str) -> bool:
    """Whether calls on array module `xp` take the CUDA kernels of `family`: only on
    CuPy, and then as its switch says."""
    if getattr(xp, "__name__", "") != "cupy":
        return False
    env, default = KERNEL_SWITCHES[family]
    flag = os.environ.get(env)
    return flag == "1" if flag is not None else default


def kernel_module(xp: Any, family: str, *args: Any) -> Any:
    """The module `vmem.kernels.cuda_<family>` when a call on `xp` with these arguments
    should take its kernels (the family switched on, and the module's `supports(*args)`),
    else None: the caller runs its array code."""
    if not kernels_on(xp, family):
        return None
    module = importlib.import_module(f"vmem.kernels.cuda_{family}")
    return module if module.supports(*args) else None


def families_on(xp: Any) -> list[str]:
    """The kernel families calls on `xp` take (for device facts)."""
    return [family for family in KERNEL_SWITCHES if kernels_on(xp, family)]


class CupyLauncher:
    """Compiles each kernel instantiation of `source` on first use (one RawModule per
    name expression, so a process compiles only what it runs; CuPy caches the binaries
    on disk unless CUPY_CACHE_IN_MEMORY=1), or a list of them in one NVRTC run
    (`precompile`), and launches kernels on CuPy's current stream."""

    def __init__(self, source: str, options: tuple[str, ...]) -> None:
        import cupy

        self.xp = cupy
        self.source = source
        self.options = options
        self._kernels: dict[tuple[int, str], Any] = {}
        self._sms: dict[int, int] = {}
        self._lock = threading.Lock()

    def kernel(self, name: str) -> Any:
        device = self.xp.cuda.runtime.getDevice()
        key = (device, name)
        fn = self._kernels.get(key)
        if fn is None:
            with self._lock:
                fn = self._kernels.get(key)
                if fn is None:
                    module = self.xp.RawModule(code=self.source, options=self.options,
                                               name_expressions=[name])
                    fn = module.get_function(name)
                    self._kernels[key] = fn
        return fn

    def precompile(self, names: list[str]) -> None:
        """Compile `names` in one RawModule (one NVRTC run instead of one per kernel)."""
        device = self.xp.cuda.runtime.getDevice()
        todo = [n for n in names if (device, n) not in self._kernels]
        if not todo:
            return
        with self._lock:
            module = self.xp.RawModule(code=self.source, options=self.options,
                                       name_expressions=todo)
            for name in todo:
                self._kernels[(device, name)] = module.get_function(name)

    def launch(self, name: str, grid: int, block: int, args: tuple[Any, ...]) -> None:
        self.kernel(name)((int(grid),), (int(block),), args)

    def sm_count(self) -> int:
        device = self.xp.cuda.runtime.getDevice()
        if device not in self._sms:
            self._sms[device] = int(self.xp.cuda.Device(device).attributes["MultiProcessorCount"])
        return self._sms[device]

    def pointer(self, a: Array) -> int:
        return int(a.data.ptr)

    def is_array(self, a: Any) -> bool:
        return isinstance(a, self.xp.ndarray)


class LauncherSlot:
    """The launcher of one kernel module: a CupyLauncher built on first use, or
    whatever a test put there."""

    def __init__(self, owner: str, source: str, options: tuple[str, ...]) -> None:
        self.owner = owner
        self.source = source
        self.options = options
        self._launcher: Any = None

    def get(self) -> Any:
        if self._launcher is None:
            from vmem.backends import cuda

            if not cuda.available():
                raise DeviceUnavailable(f"{self.owner} needs CuPy and a CUDA device: "
                                        f"{cuda.unavailable_reason()}")
            self._launcher = CupyLauncher(self.source, self.options)
        return self._launcher

    def swap(self, launcher: Any) -> Any:
        """Put `launcher` in (None: build the CuPy one on next use); returns the previous."""
        previous, self._launcher = self._launcher, launcher
        return previous


def template_arrays(*arrays: Array) -> bool:
    """Whether template kernels take these arrays: one dtype of TEMPLATE_TYPES, all
    C-contiguous."""
    dtype = np.dtype(arrays[0].dtype)
    return dtype in TEMPLATE_TYPES and all(a.dtype == dtype and a.flags.c_contiguous
                                           for a in arrays)


class TemplateKernels(LauncherSlot):
    """A source of `template <typename T> __global__ void vmem_<kernel>(...)` kernels,
    each instantiated for every dtype of TEMPLATE_TYPES: their name expressions, and
    launches by kernel and dtype."""

    def __init__(self, owner: str, source: str, options: tuple[str, ...],
                 kernels: tuple[str, ...]) -> None:
        super().__init__(owner, source, options)
        self.kernels = kernels

    def name(self, kernel: str, dtype: Any) -> str:
        return f"vmem_{kernel}<{TEMPLATE_TYPES[np.dtype(dtype)]}>"

    def names(self) -> list[str]:
        return [f"vmem_{kernel}<{t}>" for kernel in self.kernels
                for t in TEMPLATE_TYPES.values()]

    def launch(self, kernel: str, dtype: Any, grid: int, block: int,
               args: tuple[Any, ...]) -> None:
        self.get().launch(self.name(kernel, dtype), grid, block, args)
