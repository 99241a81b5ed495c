"""A CPU emulator for vmem's CUDA C: one std::thread per CUDA thread, real block
barriers, emulated warp shuffles, blocks run one after another. It compiles a kernel
module's source with g++ (C++20) and stands in for the module's CuPy launcher, so the
same CUDA C runs on NumPy arrays against the NumPy references. It checks indexing,
barriers and merges, not speed nor the device's memory model.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

#: Why an emulator test cannot run here, or None.
UNAVAILABLE = None if shutil.which("g++") else "the CUDA emulator needs g++ (C++20)"


class RecordingLauncher:
    """Stands in for CuPy: NumPy arrays, a made-up multiprocessor count; records the
    kernels asked for and launches nothing."""

    xp = np

    def __init__(self, sms: int) -> None:
        self.names: set[str] = set()
        self.sms = sms

    def launch(self, name: str, grid: int, block: int, args: tuple) -> None:
        self.names.add(name)

    def sm_count(self) -> int:
        return self.sms

    def pointer(self, a: np.ndarray) -> int:
        return int(a.ctypes.data)

    def is_array(self, a: object) -> bool:
        return isinstance(a, np.ndarray)


class EmulatorLauncher(RecordingLauncher):
    def __init__(self, lib: ctypes.CDLL, sms: int) -> None:
        super().__init__(sms)
        self.lib = lib
        lib.vmem_emu_launch.restype = ctypes.c_int
        lib.vmem_emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                        ctypes.POINTER(ctypes.c_void_p)]

    def launch(self, name: str, grid: int, block: int, args: tuple) -> None:
        keep: list[object] = []
        slots = (ctypes.c_void_p * len(args))()
        for i, a in enumerate(args):  # kernelParams: a pointer to each argument's value
            if isinstance(a, np.ndarray):
                holder = ctypes.c_void_p(a.ctypes.data)
                keep.append(holder)
                slots[i] = ctypes.addressof(holder)
            elif isinstance(a, np.generic):
                box = np.array(a)
                keep.append(box)
                slots[i] = box.ctypes.data
            else:
                raise TypeError(f"{name} argument {i}: {type(a).__name__}; kernel scalars "
                                "must be NumPy scalars of an explicit dtype")
        rc = self.lib.vmem_emu_launch(name.encode(), int(grid), int(block), slots)
        assert rc == 0, f"emulator could not launch {name} ({rc})"


EMULATOR_HEADER = r"""
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct emu_uint3 { unsigned x, y, z; };
thread_local emu_uint3 threadIdx;
thread_local emu_uint3 blockIdx;
emu_uint3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __expf(float x) { return std::exp(x); }
inline double __longlong_as_double(long long u) { double d; std::memcpy(&d, &u, 8); return d; }
// Round-to-nearest arithmetic: plain IEEE operations here (x86-64 without FMA
// contraction at the emulator's flags).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __ddiv_rn(double a, double b) { return a / b; }

struct EmuWarp {
    std::barrier<> bar{32};
    uint64_t slot[32];
    std::atomic<bool> exited[32];
    EmuWarp() { for (auto& e : exited) e = false; }
};
static std::barrier<>* emu_block_bar = nullptr;
static std::vector<std::unique_ptr<EmuWarp>> emu_warps;
thread_local int emu_lane;
thread_local EmuWarp* emu_warp;
static std::atomic<long long> emu_progress{0};

[[noreturn]] static void emu_fail(const char* what) {
    std::fprintf(stderr, "cuda emulator: %s (block %u, thread %u)\n", what, blockIdx.x,
                 threadIdx.x);
    std::fflush(stderr);
    std::abort();
}

inline void __syncthreads() { ++emu_progress; emu_block_bar->arrive_and_wait(); }

template <class T>
T emu_shfl(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    if (mask != 0xffffffffu) emu_fail("shuffle with a partial mask");
    ++emu_progress;
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    emu_warp->slot[emu_lane] = u;
    emu_warp->bar.arrive_and_wait();
    if (emu_warp->exited[src & 31]) emu_fail("shuffle reads a lane that has exited");
    const uint64_t r = emu_warp->slot[src & 31];
    emu_warp->bar.arrive_and_wait();
    T out;
    std::memcpy(&out, &r, sizeof(T));
    return out;
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int m) {
    return emu_shfl(mask, v, emu_lane ^ m);
}
template <class T> T __shfl_sync(unsigned mask, T v, int src) { return emu_shfl(mask, v, src); }
"""

EMULATOR_LAUNCH = r"""
template <class... A, std::size_t... I>
static void emu_call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

// Blocks run one after another on `block` threads; a thread that returns drops out of
// its block's and warp's barriers, as an exited CUDA thread stops counting.
template <class... A>
static int emu_launch(void (*k)(A...), unsigned grid, unsigned block, void** args) {
    if (block == 0 || block % 32 != 0 || block > 1024) return -2;
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    std::barrier<> start(block + 1), end(block + 1);
    std::atomic<bool> done{false}, finished{false};
    unsigned current = 0;
    std::thread watchdog([&] {
        long long last = -1; int still = 0;
        while (!finished) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            const long long now = emu_progress.load();
            still = (now == last) ? still + 1 : 0;
            last = now;
            if (still > 6000) emu_fail("no progress for 30 s (a deadlock?)");
        }
    });
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            emu_lane = int(t & 31);
            for (;;) {
                start.arrive_and_wait();
                if (done) break;
                blockIdx = {current, 0, 0};
                emu_warp = emu_warps[t / 32].get();
                emu_call(k, args, std::index_sequence_for<A...>{});
                emu_warp->exited[emu_lane] = true;
                emu_warp->bar.arrive_and_drop();
                emu_block_bar->arrive_and_drop();
                end.arrive_and_wait();
            }
        });
    }
    for (unsigned b = 0; b < grid; ++b) {
        std::barrier<> block_bar(block);
        emu_block_bar = &block_bar;
        emu_warps.clear();
        for (unsigned w = 0; w < block / 32; ++w) emu_warps.emplace_back(new EmuWarp());
        current = b;
        ++emu_progress;
        start.arrive_and_wait();
        end.arrive_and_wait();
    }
    done = true;
    start.arrive_and_wait();
    for (auto& th : threads) th.join();
    finished = true;
    watchdog.join();
    emu_warps.clear();
    return 0;
}
"""


def build_emulator(source: str, names: set[str]) -> ctypes.CDLL:
    """Compile `source` with the emulator around it (cached by content) and load it;
    `names` are the kernel instantiations `vmem_emu_launch` can start."""
    table = "\n".join(f'    if (!std::strcmp(name, "{n}")) '
                      f'return emu_launch(&{n}, grid, block, args);' for n in sorted(names))
    code = (EMULATOR_HEADER + source + EMULATOR_LAUNCH
            + 'extern "C" int vmem_emu_launch(const char* name, unsigned grid, unsigned block, '
              'void** args) {\n' + table + "\n    return -1;\n}\n")
    cache = Path(tempfile.gettempdir()) / "vmem-cuda-emulator"
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"emu-{hashlib.sha256(code.encode()).hexdigest()[:16]}.so"
    if not lib.exists():
        src = lib.with_suffix(".cpp")
        src.write_text(code)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["g++", "-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-shared",
                        "-fPIC", "-w", str(src), "-o", str(tmp)], check=True)
        tmp.rename(lib)
    return ctypes.CDLL(str(lib))


@contextlib.contextmanager
def emulated(module: ModuleType, sms: int = 2) -> Iterator[None]:
    """Run a kernel module's (`SOURCE`, `all_name_expressions()`, `_use_launcher`) CUDA
    C on the emulator inside the block."""
    lib = build_emulator(module.SOURCE, set(module.all_name_expressions()))
    previous = module._use_launcher(EmulatorLauncher(lib, sms=sms))
    try:
        yield
    finally:
        module._use_launcher(previous)


def numpy_as_cupy() -> ModuleType:
    """NumPy under CuPy's name: array code that dispatches on the module's name takes
    its CUDA path (kernels on the emulator, cuBLAS calls where a test stands in for
    them) with NumPy arrays."""
    module = ModuleType("cupy")
    module.__getattr__ = lambda name: getattr(np, name)  # type: ignore[attr-defined]
    return module


def emulator_fixture(module: ModuleType) -> Any:
    """A module-scoped pytest fixture that runs `module`'s kernels on the emulator while
    a test file uses it (skipped where g++ is missing): `emulator = emulator_fixture(m)`."""
    @pytest.fixture(scope="module")
    def emulator() -> Iterator[None]:
        if UNAVAILABLE is not None:
            pytest.skip(UNAVAILABLE)
        with emulated(module):
            yield

    return emulator
