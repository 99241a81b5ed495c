"""`vmem calibrate`: measure a profile's costs on a real device and write the
file the `sim` backend reads (`--device sim:FILE.json`), so predictions for
another batch size, policy or memory limit come from measured costs (see
`vmem.costs.CalibratedCosts` for how they are scaled).

What is measured, on the device the run names (cuda by default; `--device cpu`
exercises the pipeline on the CPU, and the sim then predicts the CPU):
- a few training steps with policy none and no memory limit on seeded
  synthetic data; each layer's forward and backward kernel time and the
  optimizer update's are the medians over the steps after the first (a warm-up);
- pinned copies each way: a large device buffer copied to a pinned host buffer
  and back on the memory stream, between marks on that stream;
- the device bandwidth (a device-to-device copy, bytes read + written), the
  cost of one launch (many launches of a one-element fill, between marks), and
  the float32 throughput the convolutions and fully connected layers reached.
The file is written whole or not at all (a temporary file, then a rename).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vmem.backends.base import Backend
from vmem.cliargs import add_threads_option, positive_int
from vmem.costs import CALIBRATION_FORMAT, CALIBRATION_VERSION, load_calibration
from vmem.errors import DeviceUnavailable, UsageError
from vmem.graph import Network
from vmem.memory import MemoryKind, PinnedHostPool
from vmem.optim import update_traffic
from vmem.profiler.events import StepRecord

DEVICES = "cuda, cuda:N or cpu"
_CUDA = re.compile(r"^cuda(?::\d+)?$")
GEMM_LAYERS = ("conv", "linear")  # the layers whose FLOP rate is the device's throughput
COPY_BYTES = {"cuda": 256 * 2**20, "cpu": 64 * 2**20}
LAUNCHES = 200  # one-element fills timed to estimate the cost of one launch
REPEATS = 3  # timed repetitions of each copy, after one untimed


def add_calibrate_parser(commands: Any) -> None:
    """Add `vmem calibrate` to the CLI's subparsers."""
    parser = commands.add_parser(
        "calibrate", help="measure a profile's layer and copy costs on a device for the sim",
        description="Train a profile for a few steps on a real device (policy none, no limit, "
        "synthetic data), time every layer forward and backward, the update, and pinned copies "
        "each way, and write a file the sim backend reads: --device sim:FILE.json predicts "
        "other batch sizes, policies and memory limits from these measured costs.")
    parser.add_argument("profile", help="a profile name (see `vmem profiles`) or a TOML file")
    parser.add_argument("--batch", type=positive_int, help="batch size to calibrate at "
                        "(default: the profile's batch on cuda, its cpu_batch on cpu)")
    parser.add_argument("--device", default="cuda", help=f"the device to measure: {DEVICES} "
                        "(cpu tries the pipeline without a GPU; the sim then predicts the CPU) "
                        "(default: cuda)")
    parser.add_argument("--steps", type=positive_int, default=5, help="training steps, at "
                        "least 2; the first is a warm-up left out (default: 5)")
    add_threads_option(parser)
    parser.add_argument("-o", "--output", required=True, metavar="FILE.json",
                        help="where to write the calibration")
    parser.add_argument("--json", action="store_true", help="print the calibration as JSON "
                        "instead of a table")




def cmd_calibrate(args: argparse.Namespace) -> int:
    from vmem.profile import load_profile

    device = _check_device(args.device)
    if args.steps < 2:
        raise UsageError(f"--steps: calibrate needs at least 2 (the first is a warm-up), "
                         f"got {args.steps}")
    output = _check_output(args.output)
    profile = load_profile(args.profile)
    batch = args.batch or (profile.cpu_batch if device == "cpu" else profile.batch)
    from vmem.profiler.progress import StepProgress

    # the training steps, then the copies, the device's own copy and the launches
    with StepProgress(args.steps + len(PROBES), enabled=not args.json,
                      description="calibrate: training steps") as progress:
        document = calibrate(profile.network, device, batch, args.steps,
                             threads=args.threads, progress=progress)
    write_calibration(document, output)
    if args.json:
        print(json.dumps(document))
    else:
        _render(document, output)
    return 0


def _check_device(text: str) -> str:
    from vmem.backends import cuda

    device = text.strip().lower()
    if device != "cpu" and not _CUDA.match(device):
        raise UsageError(f"--device: calibrate measures a real device: {DEVICES}; got '{text}'")
    if device != "cpu" and not cuda.available():
        raise DeviceUnavailable(f"--device {device}: {cuda.unavailable_reason()}; calibrate "
                                "measures a GPU (--device cpu tries the pipeline on the CPU)")
    return device


def _check_output(text: str) -> Path:
    """Refuse, before measuring anything, a path that cannot be written."""
    from vmem.profiler.output import check_writable

    if Path(text).suffix != ".json":
        raise UsageError(f"-o: the file must end in .json (the sim reads --device "
                         f"sim:FILE.json), got '{text}'")
    return check_writable(text, "-o")


def write_calibration(document: dict[str, Any], path: Path) -> None:
    """Write whole or not at all (as sessions and traces are), once the sim has read
    it back."""
    from vmem.profiler.output import write_atomic

    text = json.dumps(document, indent=1, default=str) + "\n"
    write_atomic(path, text, "-o", check=lambda written: load_calibration(str(written)))


# -- the measurements ---------------------------------------------------------------


#: what is measured after the training steps, in order (each a step of a progress bar)
PROBES = ("pinned copies", "device copy", "kernel launches")


def calibrate(network: Network, device: str, batch: int, steps: int, seed: int = 0,
              threads: int | None = None, progress: Any = None) -> dict[str, Any]:
    """Measure `network` at `batch` on `device` (the cpu kernels on `threads` threads,
    None: the Runtime's default); the calibration as a JSON-ready dict. `progress`
    (a vmem.profiler.progress.StepProgress) hears of each step and probe."""
    return measure(network, device, batch, steps, seed, threads, progress)[0]


def measure(network: Network, device: str, batch: int, steps: int, seed: int = 0,
            threads: int | None = None, progress: Any = None
            ) -> tuple[dict[str, Any], list[StepRecord]]:
    """The calibration, and the records of the steps it was measured from."""
    from vmem.profiler.progress import StepProgress

    progress = progress or StepProgress(None, enabled=False)
    from vmem.runtime import Runtime
    from vmem.trial import staged_for_upload, synthetic_data

    with Runtime(network, device=device, policy="none", seed=seed, threads=threads) as runtime:
        x, y = synthetic_data(network, batch, seed)
        x = staged_for_upload(runtime.backend, x)
        records = []
        for _ in range(steps):
            runtime.train_step(x, y)
            assert runtime.last_record is not None
            records.append(runtime.last_record)
            progress.step()
        kernels = _median_kernels(records[1:])
        executor = runtime.executor(batch)
        backend = runtime.backend
        copy_bytes = COPY_BYTES["cpu" if device == "cpu" else "cuda"]
        progress.describe(f"calibrate: {PROBES[0]}")
        d2h_gbps, h2d_gbps = measure_copies(backend, runtime.host_pool, copy_bytes)
        progress.step()
        progress.describe(f"calibrate: {PROBES[1]}")
        bandwidth_gbps = measure_bandwidth(backend, copy_bytes)
        progress.step()
        progress.describe(f"calibrate: {PROBES[2]}")
        launch_us = measure_launch_us(backend)
        progress.step()
        facts = backend.facts()
        param_bytes = sum(b.nbytes for b in runtime.params.blocks
                          if b.kind == MemoryKind.WEIGHTS)
    shapes = network.shapes(batch)
    layers, flops, gemm_ms = [], 0, 0.0
    for node in network.nodes:
        in_shapes = network.in_shapes(node, shapes)
        algorithm = executor.algorithms[node.name]
        forward_ms, backward_ms = kernels[(node.name, "forward")], kernels[(node.name, "backward")]
        layers.append({"name": node.name, "type": node.layer.TYPE,
                       "in_shapes": [list(s[1:]) for s in in_shapes],
                       "out_shape": list(shapes[node.name][1:]), "algorithm": algorithm.name,
                       "workspace_bytes": algorithm.workspace_bytes, "chunk": algorithm.chunk,
                       "forward_ms": forward_ms, "backward_ms": backward_ms})
        if node.layer.TYPE in GEMM_LAYERS:
            flops += node.layer.flops(in_shapes) + node.layer.backward_flops(in_shapes)
            gemm_ms += forward_ms + backward_ms
    return {
        "format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "vmem": _version(), "device": facts, "memory_bytes": _device_memory(facts),
        "profile": network.name, "batch": batch, "dtype": "float32", "steps": steps,
        "timed_steps": steps - 1, "seed": seed,
        "tflops": flops / (gemm_ms * 1e9) if flops and gemm_ms > 0 else 1e-3,
        "bandwidth_gbps": bandwidth_gbps, "d2h_gbps": d2h_gbps, "h2d_gbps": h2d_gbps,
        "copy_bytes": copy_bytes, "launch_us": launch_us,
        "update_ms": kernels.get((runtime.optimizer.name, "update"), 0.0),
        "param_bytes": param_bytes, "update_traffic": update_traffic(runtime.optimizer),
        "layers": layers,
    }, records


def _median_kernels(records: list[StepRecord]) -> dict[tuple[str, str], float]:
    """Median over steps of each (layer, phase)'s kernel time in the step."""
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        per_step: dict[tuple[str, str], float] = defaultdict(float)
        for span in record.spans:
            if span.kind == "kernel":
                per_step[(span.name, span.phase)] += span.ms
        for key, ms in per_step.items():
            samples[key].append(ms)
    return {key: statistics.median(values) for key, values in samples.items()}


def _timed(backend: Backend, stream: Any, op: Any) -> float:
    """Milliseconds of `op` (which enqueues work on `stream`), between marks."""
    backend.synchronize()
    start = backend.mark(stream)
    op()
    end = backend.mark(stream)
    backend.synchronize()
    return backend.elapsed_ms(start, end)


def _median_ms(backend: Backend, stream: Any, op: Any) -> float:
    _timed(backend, stream, op)  # untimed: first touches, pool growth
    return statistics.median(_timed(backend, stream, op) for _ in range(REPEATS))


def measure_copies(backend: Backend, host_pool: PinnedHostPool, nbytes: int
                   ) -> tuple[float, float]:
    """Pinned copy bandwidth (GB/s) device->host and host->device on the memory
    stream, with a device buffer accounted in the arena while it lives."""
    block = backend.arena.allocate(nbytes, MemoryKind.OTHER, "calibration copies")
    buffer = host_pool.acquire(nbytes, "calibration copies")
    try:
        assert buffer.array is not None
        host = buffer.array.view(np.float32)
        device = backend.asarray(np.zeros(nbytes // 4, dtype=np.float32))
        memory = backend.memory
        d2h = _median_ms(backend, memory,
                         lambda: backend.copy_to_host(memory, device, host))
        h2d = _median_ms(backend, memory, lambda: backend.copy_to_device(memory, host))
    finally:
        host_pool.release(buffer)
        backend.arena.free(block)
    return nbytes / (d2h * 1e6), nbytes / (h2d * 1e6)


def measure_bandwidth(backend: Backend, nbytes: int) -> float:
    """Device memory bandwidth (GB/s, read + write) of a device-to-device copy."""
    xp = backend.xp
    block = backend.arena.allocate(2 * nbytes, MemoryKind.OTHER, "calibration bandwidth")
    try:
        src = backend.asarray(np.zeros(nbytes // 4, dtype=np.float32))
        dst = xp.empty_like(src)
        compute = backend.compute
        ms = _median_ms(backend, compute,
                        lambda: backend.launch(compute, lambda: xp.copyto(dst, src)))
    finally:
        backend.arena.free(block)
    return 2 * nbytes / (ms * 1e6)


def measure_launch_us(backend: Backend) -> float:
    """The cost of one launch of a trivial op on the compute stream (µs)."""
    tiny = backend.asarray(np.zeros(1, dtype=np.float32))
    compute = backend.compute

    def launches() -> None:
        for _ in range(LAUNCHES):
            backend.launch(compute, lambda: tiny.fill(0))

    return max(_median_ms(backend, compute, launches) * 1e3 / LAUNCHES, 1e-3)


def _device_memory(facts: dict[str, Any]) -> int:
    """The device's memory: the GPU's, or on the cpu the machine's."""
    for key in ("total_memory_bytes", "memory_bytes"):
        total = facts.get(key)
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            return total
    if facts.get("backend") == "cpu":
        with contextlib.suppress(ValueError, OSError, AttributeError):
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        return 2**40
    raise DeviceUnavailable(f"calibrate: cannot read the memory of {facts.get('backend')}")


def _version() -> str:
    from vmem import __version__

    return __version__


def _render(document: dict[str, Any], output: Path) -> None:
    from vmem.profiler.tables import Column, console, print_table
    from vmem.units import format_bytes

    facts = document["device"]
    device = facts.get("device") or facts.get("processor") or facts.get("backend")
    out = console()
    print_table(out, [Column("layer", "left"), Column("type", "left"),
                      Column("algorithm", "left"), Column("forward"), Column("backward")],
                [(row["name"], row["type"], row["algorithm"], f"{row['forward_ms']:.3f} ms",
                  f"{row['backward_ms']:.3f} ms") for row in document["layers"]],
                title=f"vmem calibrate {document['profile']} · batch {document['batch']} · "
                f"{facts.get('backend')} ({device})")
    out.print(
        f"update {document['update_ms']:.3f} ms · copies {document['d2h_gbps']:.1f} GB/s to "
        f"host, {document['h2d_gbps']:.1f} GB/s to device · device copy "
        f"{document['bandwidth_gbps']:.1f} GB/s · launch {document['launch_us']:.1f} µs · "
        f"conv/fc {document['tflops']:.3f} TFLOP/s · memory "
        f"{format_bytes(document['memory_bytes'])}", highlight=False)
    out.print(f"wrote {output}: predict with --device sim:{output}", highlight=False)
