"""The `cuda` backend: CuPy arrays on one GPU, two non-blocking CuPy streams
(compute and memory), CUDA events for ordering and timing.

CuPy is imported lazily: this module imports (and `available()` answers) on a
machine without CuPy or without a GPU.

Mechanism below the contract:
- CuPy sends array work to the *current* stream, so `launch` makes the named
  stream current around the op; the executor always names the stream.
- The compute stream is also this thread's current stream while the backend
  is open, so array work the caller does outside `launch` (a gradient added
  into another, a cast) stays in order with the compute stream instead of
  racing it on the legacy default stream, which non-blocking streams do not
  synchronize with.
- One backend drives one device from the thread that made it (CuPy's current
  stream and device are per thread).
- The arena enforces the capacity (a --memory-limit, else the device's memory)
  on what vmem declares, exactly. Under a memory limit the CuPy pool's limit is
  the capacity plus UNTRACKED_SLACK_BYTES (`pool_limit_for`): room for what CuPy
  holds beyond the arena (kernel temporaries, 512-byte rounding, blocks its
  best-fit pool cannot give back split), so the bytes CuPy really holds are
  bounded too, and a plan that fits the arena does not fail in the pool. The
  pool's peak reserved bytes are reported beside the arena's peak. A pool
  failure inside `launch` is reported as `OutOfDeviceMemory`, never as a bare
  CuPy error.
- Plans come from the cost model of the preset whose `match` names this device
  (vmem/gpus.toml), else from vmem's default model (`vmem.costs.DEFAULT_COST_MODEL`).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from vmem.backends import ACCEPTED_DEVICES
from vmem.backends.base import Backend, Event, Mark, Stream
from vmem.costs import DEFAULT_COST_MODEL, CostModel, load_gpu, preset_for_device
from vmem.errors import DeviceUnavailable, OutOfDeviceMemory
from vmem.kernels.cuda_module import families_on
from vmem.memory import DeviceArena

INSTALL_HINT = "pip install 'vmem-dnn[cuda12]' or [cuda13]"
POOL_WHAT = "CuPy pool (kernel temporaries beyond the declared workspace)"
DEVICE_FULL_WHAT = "CuPy pool (the device itself is full)"

_probe_result: tuple[bool, str] | None = None

#: What CuPy may hold beyond the arena under a memory limit: its kernel temporaries
#: (the largest bounded scratch is 64 MiB: max pooling's and LRN's sample groups),
#: 512-byte rounding of every allocation and pool fragmentation. The pool's limit is
#: the arena's capacity plus this. An estimate, not yet measured on a GPU: gpu-check's
#: "CuPy pool peak" beside the arena's peak is the figure to set it from.
UNTRACKED_SLACK_BYTES = 256 * 2**20


def pool_limit_for(capacity: int) -> int:
    """The CuPy pool's limit for an arena capacity: the capacity plus the bounded
    headroom UNTRACKED_SLACK_BYTES. So under `--memory-limit L` the arena holds at
    most L bytes and CuPy reserves at most L + UNTRACKED_SLACK_BYTES (and never more
    than the device has)."""
    return capacity + UNTRACKED_SLACK_BYTES


def costs_for_device(device_name: str) -> tuple[CostModel, str]:
    """The cost model an uncalibrated CUDA device plans with, and a line saying which
    it is and why: the preset matching its name, else the default model."""
    preset = preset_for_device(device_name)
    if preset is not None:
        return CostModel(preset), f"{preset.name} (the preset matching '{device_name}')"
    return CostModel(load_gpu(DEFAULT_COST_MODEL)), (
        f"{DEFAULT_COST_MODEL} (no preset of vmem/gpus.toml matches '{device_name}'; "
        "the default model)")

#: cublasMath_t's CUBLAS_TF32_TENSOR_OP_MATH (cublas_api.h), which CuPy does not export.
CUBLAS_TF32_TENSOR_OP_MATH = 3


def tf32_requested() -> bool:
    """Whether CUPY_TF32 asks for TF32, read as CuPy reads it: an integer above 0."""
    try:
        return int(os.environ.get("CUPY_TF32", "0")) > 0
    except ValueError:
        return False


def use_tf32_math_mode() -> tuple[int | None, str]:
    """With CUPY_TF32 set, put this thread's cuBLAS handle for the current device (the
    one CuPy uses) in TF32 math mode; returns (the mode it had, or None when unchanged,
    and what TF32 now covers, for the device facts). Never raises.

    CuPy applies CUPY_TF32 to its 2-D GEMMs only, as a compute type per call; its
    batched matmul calls cublasSgemmBatched or gemmStridedBatchedEx with a 32-bit
    compute type, and the convolution calls cublasSgemmStridedBatched itself
    (vmem.kernels.gemm): these follow the handle's math mode instead. PyTorch's
    allow_tf32 sets this same mode, so with it both libraries run every float32 GEMM
    in TF32. Not yet run on a GPU."""
    if not tf32_requested():
        return None, "off"
    try:
        import cupy
        from cupy_backends.cuda.libs import cublas

        handle = cupy.cuda.device.get_cublas_handle()
        previous = int(cublas.getMathMode(handle))
        cublas.setMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH)
    except Exception as exc:  # TF32 is a speed setting: report it, run in FP32
        return None, f"2-D GEMMs only (cuBLAS math mode not set: {_one_line(exc)})"
    return previous, "every float32 GEMM (CUPY_TF32 and cuBLAS TF32 math mode)"


def restore_math_mode(previous: int | None) -> None:
    """Put back the math mode `use_tf32_math_mode` found. Never raises."""
    if previous is None:
        return
    with contextlib.suppress(Exception):
        import cupy
        from cupy_backends.cuda.libs import cublas

        cublas.setMathMode(cupy.cuda.device.get_cublas_handle(), previous)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _probe() -> tuple[bool, str]:
    """(usable, reason); never raises. Cached: CuPy and the driver do not change
    under a running process."""
    global _probe_result
    if _probe_result is not None:
        return _probe_result
    try:
        import cupy
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "cupy":
            result = (False, f"cupy cannot be imported: {_one_line(exc)}")
        else:
            result = (False, f"cupy is not installed ({INSTALL_HINT})")
    except Exception as exc:  # a broken install: missing CUDA libraries, wrong wheel
        result = (False, f"cupy cannot be imported: {_one_line(exc)}")
    else:
        try:
            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as exc:  # no driver, no device, driver too old
            result = (False, f"no CUDA device: {_one_line(exc)}")
        else:
            result = (True, "") if count > 0 else (
                False, "no CUDA device: the CUDA runtime reports 0 devices")
    _probe_result = result
    return result


def available() -> bool:
    """True when CuPy imports and sees at least one CUDA device. Never raises."""
    return _probe()[0]


def unavailable_reason() -> str:
    """Why `available()` is False, in one line ("" when it is True)."""
    return _probe()[1]


def _format_cuda_version(version: int) -> str:
    """12040 -> '12.4' (CUDA encodes major * 1000 + minor * 10)."""
    return f"{version // 1000}.{(version % 1000) // 10}"


class CudaEvent(Event):
    def __init__(self, event: Any) -> None:
        self.event = event  # cupy.cuda.Event, recorded on a stream

    def done(self) -> bool:
        return bool(self.event.done)


class CudaMark(Mark):
    def __init__(self, event: Any) -> None:
        self.event = event  # cupy.cuda.Event with timing, recorded on a stream


class CudaBackend(Backend):
    def __init__(self, index: int = 0, capacity: int | None = None,
                 bounded: bool = True) -> None:
        """`capacity`: the memory limit (None: the device's memory bounds the arena,
        as a sim GPU's does, unless `bounded` is False)."""
        usable, reason = _probe()
        if not usable:
            raise DeviceUnavailable(f"--device cuda: {reason}; "
                                    f"--device accepts {ACCEPTED_DEVICES}")
        import cupy

        count = int(cupy.cuda.runtime.getDeviceCount())
        if not 0 <= index < count:
            devices = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise DeviceUnavailable(
                f"--device cuda:{index}: this machine has {count} CUDA "
                f"device{'s' if count != 1 else ''} ({devices}); "
                f"--device accepts {ACCEPTED_DEVICES}")
        self.name = f"cuda:{index}"
        self.index = index
        self.xp = cupy
        self.bounded = bounded
        self.arena = DeviceArena(capacity)
        self._cupy = cupy
        self._oom_error: type[BaseException] = cupy.cuda.memory.OutOfMemoryError
        self._closed = False
        self._limit_changed = False
        self._previous_math_mode: int | None = None
        self._tf32 = "off"
        try:
            self._device = cupy.cuda.Device(index)
            self._previous_device = cupy.cuda.runtime.getDevice()
            self._device.use()
            self._previous_math_mode, self._tf32 = use_tf32_math_mode()
            self._pool = cupy.get_default_memory_pool()
            self._previous_limit = int(self._pool.get_limit())
            # Cached blocks from earlier work in this process are not this backend's:
            # the pool's peak starts from what is really in use.
            self._pool.free_all_blocks()
            self._pool_peak = int(self._pool.total_bytes())
            self.set_capacity(capacity)
            self.costs, self._cost_model = costs_for_device(self._device_name())
            # Streams belong to the current device: create them after use().
            self._streams = {self.compute: cupy.cuda.Stream(non_blocking=True),
                             self.memory: cupy.cuda.Stream(non_blocking=True)}
            self._previous_stream = cupy.cuda.get_current_stream()
            self._streams[self.compute].use()
        except Exception as exc:
            self._restore_limit()
            restore_math_mode(self._previous_math_mode)
            with contextlib.suppress(Exception):
                cupy.cuda.runtime.setDevice(self._previous_device)
            raise DeviceUnavailable(f"--device cuda:{index}: cannot set up the device: "
                                    f"{_one_line(exc)}; --device accepts "
                                    f"{ACCEPTED_DEVICES}") from exc

    # -- capacity ----------------------------------------------------------------

    def set_capacity(self, capacity: int | None) -> None:
        """Change the emulated capacity: the arena's (None: the device's memory, where
        bounded) and the CuPy pool's limit (`pool_limit_for`; None: the limit found)."""
        self.arena.capacity = (capacity if capacity is not None or not self.bounded
                               else self._total_memory() or None)
        self._apply_pool_limit(None if capacity is None else pool_limit_for(capacity))

    def _apply_pool_limit(self, limit: int | None) -> None:
        """Limit the pool to `limit` bytes, or put back the limit found at start
        (CUPY_GPU_MEMORY_LIMIT, another user's, or none) when `limit` is None."""
        with self._device:
            if limit is None:
                if self._limit_changed:
                    self._pool.set_limit(size=self._previous_limit)
                    self._limit_changed = False
                return
            # Cached blocks from earlier work in this process count against the
            # limit: start from what is really in use.
            self._release_cached()
            self._pool.set_limit(size=int(limit))
            self._limit_changed = True

    def _note_pool(self) -> None:
        self._pool_peak = max(self._pool_peak, int(self._pool.total_bytes()))

    def _release_cached(self) -> None:
        """Give the pool's cached free blocks back to the driver, noting its peak
        first: its reserved bytes grow only in malloc and shrink only here."""
        self._note_pool()
        self._pool.free_all_blocks()

    # -- streams -----------------------------------------------------------------

    def _cupy_stream(self, stream: Stream) -> Any:
        try:
            return self._streams[stream]
        except KeyError:
            raise ValueError(f"unknown stream {stream!r}; this backend has "
                             f"{', '.join(s.name for s in self._streams)}") from None

    @contextlib.contextmanager
    def _on(self, stream: Stream) -> Iterator[Any]:
        """Make `stream` current, with the retrying allocator, then put back what
        was current. (Not `with cupy_stream:`: leaving such a block makes the
        thread's stream stack base current, not the compute stream made current
        with use() in __init__.)"""
        target = self._cupy_stream(stream)
        previous = self._cupy.cuda.get_current_stream()
        target.use()
        try:
            with self._cupy.cuda.using_allocator(self._malloc):
                yield target
        finally:
            previous.use()

    def _malloc(self, nbytes: int) -> Any:
        """The pool's malloc, retried after releasing cached blocks, then after
        collecting garbage too. The pool counts its cached free blocks (of every
        stream) against the limit; CuPy 14's own `_try_malloc` (cupy/cuda/memory.pyx)
        already releases them and collects garbage before raising at the limit, so
        there the retries only repeat that, on the failure path. The pool's peak is
        noted before each try (a try at the limit may release cached blocks) and
        after the one that succeeds."""
        self._note_pool()
        try:
            return self._noted(self._pool.malloc(nbytes))
        except self._oom_error:
            self._release_cached()
        try:
            return self._noted(self._pool.malloc(nbytes))
        except self._oom_error:
            gc.collect()  # arrays held only by reference cycles (tracebacks)
            self._release_cached()
        return self._noted(self._pool.malloc(nbytes))

    def _noted(self, memory: Any) -> Any:
        self._note_pool()
        return memory

    @contextlib.contextmanager
    def _translate_oom(self) -> Iterator[None]:
        """CuPy's OutOfMemoryError (over the pool limit, or the device full)
        becomes the OutOfDeviceMemory every backend raises."""
        try:
            yield
        except self._oom_error as exc:
            raise self._out_of_memory(exc) from exc

    def _out_of_memory(self, exc: BaseException) -> OutOfDeviceMemory:
        from vmem.units import format_bytes

        requested = int(getattr(exc, "_size", 0) or 0)
        pool_total = getattr(exc, "_total", None)
        if not isinstance(pool_total, int) or pool_total < 0:
            pool_total = self.pool_reserved_bytes() or 0
        limit = int(getattr(exc, "_limit", 0) or 0)
        if self._limit_changed and self.arena.capacity is not None:
            capacity, what = pool_limit_for(self.arena.capacity), POOL_WHAT
        else:
            capacity, what = limit or self._total_memory(), DEVICE_FULL_WHAT
        hint = (f"the arena accounts for {format_bytes(self.arena.in_use)}; give a larger "
                "--memory-limit or a policy that keeps less on the device")
        return OutOfDeviceMemory(requested=requested, in_use=pool_total, capacity=capacity,
                                 what=what, hint=hint)

    def _total_memory(self) -> int:
        try:
            props = self._cupy.cuda.runtime.getDeviceProperties(self.index)
            return int(props["totalGlobalMem"])
        except Exception:
            return 0

    # -- the contract --------------------------------------------------------------

    def launch(self, stream: Stream, op: Callable[[], Any], cost_ms: float = 0.0) -> None:
        with self._translate_oom(), self._on(stream):
            op()

    def record(self, stream: Stream) -> Event:
        event = self._cupy.cuda.Event(disable_timing=True)
        event.record(self._cupy_stream(stream))
        return CudaEvent(event)

    def wait(self, stream: Stream, event: Event) -> None:
        if not isinstance(event, CudaEvent):
            raise TypeError(f"cuda backend cannot wait for {type(event).__name__}")
        self._cupy_stream(stream).wait_event(event.event)

    def mark(self, stream: Stream) -> Mark:
        event = self._cupy.cuda.Event()  # timing enabled (the default)
        event.record(self._cupy_stream(stream))
        return CudaMark(event)

    def elapsed_ms(self, start: Mark, end: Mark) -> float:
        if not isinstance(start, CudaMark) or not isinstance(end, CudaMark):
            raise TypeError("elapsed_ms needs two marks made by the cuda backend")
        if not (start.event.done and end.event.done):
            raise RuntimeError("elapsed_ms on a mark its stream has not reached; "
                               "synchronize() first")
        return float(self._cupy.cuda.get_elapsed_time(start.event, end.event))

    def synchronize(self) -> None:
        # A failure in a stream's work surfaces here as a CUDARuntimeError.
        for cupy_stream in self._streams.values():
            cupy_stream.synchronize()
        self._device.synchronize()

    def asarray(self, host: np.ndarray) -> Any:
        """Copy a host array to the device on the compute stream; `host` may be
        reused on return. CuPy stages pageable data through a pinned buffer, but
        copies from pinned memory (a view of `pinned_empty`) directly and
        asynchronously (cupy/_core/core.pyx `_array_default`): then this waits
        for the copy."""
        with self._translate_oom(), self._on(self.compute) as compute:
            array = self._cupy.asarray(host)
        if isinstance(host, np.ndarray) and host.size and self._is_pinned(host):
            compute.synchronize()
        return array

    def _is_pinned(self, host: np.ndarray) -> bool:
        is_pinned = getattr(self._cupy.cuda.pinned_memory, "is_memory_pinned", None)
        try:
            return bool(is_pinned(host.ctypes.data)) if is_pinned is not None else True
        except Exception:
            return True  # unknown: wait rather than let the caller overwrite it

    def to_host(self, array: Any) -> np.ndarray:
        """A new host array (get() copies; so does a host array given here)."""
        if not isinstance(array, self._cupy.ndarray):
            return np.array(array, copy=True)
        # ndarray.get packs a non-contiguous array inside `with stream:`, whose exit
        # makes the thread's stream-stack base (the null stream) current instead of
        # the compute stream (cupy/_core/core.pyx `get`, cupy/cuda/stream.pyx
        # `pop_stream`): pack here, inside _on, so get() copies straight away.
        with self._translate_oom(), self._on(self.compute) as compute:
            packed = array if array.flags.c_contiguous else self._cupy.ascontiguousarray(array)
            host = packed.get(stream=compute)
        compute.synchronize()  # older CuPy copies asynchronously when given a stream
        return host

    def write_from_host(self, array: Any, host: np.ndarray) -> None:
        """Copy `host` over device array `array` (C-contiguous, as parameters are) on
        the compute stream, after the work already enqueued there; no device
        memory is allocated. Waits for the copy: `host` may be a temporary."""
        source = np.ascontiguousarray(host, dtype=array.dtype)
        if source.shape != array.shape or not array.flags.c_contiguous:
            raise ValueError(f"write_from_host: a C-contiguous device array of shape "
                             f"{source.shape} is needed, got {array.shape}")
        with self._translate_oom(), self._on(self.compute) as compute:
            array.data.copy_from_host_async(source.ctypes.data, source.nbytes, compute)
        compute.synchronize()

    def host_wait(self, event: Event) -> None:
        if not isinstance(event, CudaEvent):
            raise TypeError(f"cuda backend cannot wait for {type(event).__name__}")
        event.event.synchronize()

    # -- copies between device arrays and pinned host buffers ---------------------------

    def pinned_empty(self, nbytes: int) -> np.ndarray:
        """`nbytes` of page-locked host memory (cudaHostAlloc) as a uint8 array: the
        host memory cudaMemcpyAsync copies without staging. Not from CuPy's pinned
        pool, which would keep a dropped buffer pinned: here the memory is unpinned
        when the array and its views are gone, so vmem's host pool is the only
        cache and its `reserved` figure is what is really pinned."""
        cuda = self._cupy.cuda
        flags = int(getattr(cuda.runtime, "hostAllocPortable", 0))
        memory = cuda.PinnedMemory(int(nbytes), flags)
        return np.ndarray((int(nbytes),), dtype=np.uint8,
                          buffer=cuda.PinnedMemoryPointer(memory, 0))

    def copy_to_host(self, stream: Stream, src: Any, dst: np.ndarray | None,
                     cost_ms: float = 0.0) -> None:
        """Enqueue a byte copy of device array `src` into host array `dst` (same
        number of bytes, C-contiguous, pinned for the copy to be asynchronous) on
        `stream`; returns at once."""
        if dst is None:
            raise ValueError("copy_to_host needs a host buffer on the cuda backend")
        if not dst.flags.c_contiguous or dst.nbytes != src.nbytes:
            raise ValueError(f"copy_to_host: the host buffer ({dst.nbytes} bytes, "
                             f"contiguous={dst.flags.c_contiguous}) must be C-contiguous and "
                             f"as large as the device array ({src.nbytes} bytes)")
        with self._translate_oom(), self._on(stream) as cupy_stream:
            # A strided view is packed first, on the same stream; its temporary
            # goes back to this stream's pool, so no later work reuses it early.
            packed = src if src.flags.c_contiguous else self._cupy.ascontiguousarray(src)
            packed.data.copy_to_host_async(dst.ctypes.data, packed.nbytes, cupy_stream)

    def copy_to_device(self, stream: Stream, src: np.ndarray | None,
                       cost_ms: float = 0.0) -> Any:
        """A new device array holding `src`, filled on `stream`. It is allocated
        from the compute stream's pool, where it is used and later freed; a block
        from that pool may still be read by compute work already enqueued, so the
        copy first waits for the compute stream to pass this point."""
        if src is None:
            raise ValueError("copy_to_device needs a host array on the cuda backend")
        # vmem passes views of pinned buffers, already contiguous (ascontiguousarray
        # would also turn a 0-d array into a 1-d one)
        host = src if src.flags.c_contiguous else np.ascontiguousarray(src)
        with self._translate_oom():
            with self._on(self.compute):
                dst = self._cupy.empty(host.shape, dtype=host.dtype)
            target = self._cupy_stream(stream)
            if stream != self.compute:
                target.wait_event(self._cupy_stream(self.compute).record(
                    self._cupy.cuda.Event(disable_timing=True)))
            dst.data.copy_from_host_async(host.ctypes.data, host.nbytes, target)
        return dst

    # -- reporting -------------------------------------------------------------------

    def pool_reserved_bytes(self) -> int | None:
        with self._device:
            return int(self._pool.total_bytes())

    def pool_peak_bytes(self) -> int | None:
        with self._device:
            self._note_pool()
            return self._pool_peak

    def _device_name(self) -> str:
        try:
            name = self._cupy.cuda.runtime.getDeviceProperties(self.index)["name"]
        except Exception:
            return ""
        return name.decode() if isinstance(name, bytes) else str(name)

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"backend": self.name}
        runtime = self._cupy.cuda.runtime
        try:
            props = runtime.getDeviceProperties(self.index)
            name = props["name"]
            facts["device"] = name.decode() if isinstance(name, bytes) else str(name)
            facts["total_memory_bytes"] = int(props["totalGlobalMem"])
            facts["compute_capability"] = f"{props['major']}.{props['minor']}"
            facts["multiprocessors"] = int(props["multiProcessorCount"])
        except Exception as exc:
            facts["device"] = f"unavailable: {_one_line(exc)}"
        for key, read in (("cuda_runtime", runtime.runtimeGetVersion),
                          ("cuda_driver", runtime.driverGetVersion)):
            try:
                facts[key] = _format_cuda_version(int(read()))
            except Exception as exc:
                facts[key] = f"unavailable: {_one_line(exc)}"
        facts["cupy"] = getattr(self._cupy, "__version__", "unknown")
        facts["tf32"] = tf32_requested()
        facts["tf32_gemms"] = self._tf32
        facts["cuda_kernels"] = families_on(self._cupy)
        facts["cost_model"] = self._cost_model
        try:
            facts["pool_limit_bytes"] = int(self._pool.get_limit())
            facts["pool_reserved_bytes"] = self.pool_reserved_bytes()
            facts["pool_peak_bytes"] = self.pool_peak_bytes()
        except Exception as exc:
            facts["pool_limit_bytes"] = f"unavailable: {_one_line(exc)}"
        facts.update(self._nvml_facts())
        return facts

    def _nvml_facts(self) -> dict[str, Any]:
        try:
            import pynvml
        except Exception:
            return {"nvml": "unavailable: pynvml is not installed (pip install nvidia-ml-py)"}
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            return {"nvml": f"unavailable: {_one_line(exc)}"}
        facts: dict[str, Any] = {}
        try:
            try:
                bus_id = self._cupy.cuda.runtime.deviceGetPCIBusId(self.index)
                handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
            except Exception:  # NVML and CUDA agree on indices unless devices are masked
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            readers: dict[str, Callable[[], Any]] = {
                "nvml_driver": pynvml.nvmlSystemGetDriverVersion,
                "memory_used_bytes": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used,
                "pcie_generation": lambda: pynvml.nvmlDeviceGetCurrPcieLinkGeneration(handle),
                "pcie_generation_max": lambda: pynvml.nvmlDeviceGetMaxPcieLinkGeneration(
                    handle),
                "pcie_width": lambda: pynvml.nvmlDeviceGetCurrPcieLinkWidth(handle),
                "pcie_width_max": lambda: pynvml.nvmlDeviceGetMaxPcieLinkWidth(handle),
            }
            for key, read in readers.items():
                try:
                    value = read()
                    facts[key] = value.decode() if isinstance(value, bytes) else value
                except Exception as exc:
                    facts[key] = f"unavailable: {_one_line(exc)}"
        except Exception as exc:
            facts["nvml"] = f"unavailable: {_one_line(exc)}"
        finally:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
        return facts

    # -- teardown --------------------------------------------------------------------

    def close(self) -> None:
        """Wait for both streams, give the pool's cached blocks back to the driver
        and put back the pool limit, current stream and device found at start.
        Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.synchronize()
        finally:
            with contextlib.suppress(Exception):
                self._previous_stream.use()
            with contextlib.suppress(Exception), self._device:
                self._release_cached()
                # CuPy's own staging buffers (asarray), not vmem's host pool
                self._cupy.get_default_pinned_memory_pool().free_all_blocks()
            self._restore_limit()
            with contextlib.suppress(Exception), self._device:
                restore_math_mode(self._previous_math_mode)
            with contextlib.suppress(Exception):
                self._cupy.cuda.runtime.setDevice(self._previous_device)

    def _restore_limit(self) -> None:
        with contextlib.suppress(Exception):
            self._apply_pool_limit(None)

