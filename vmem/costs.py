"""Cost model: how long a layer or a copy takes on a named GPU.

A layer's time is the larger of its FLOPs over the GPU's sustained throughput
and the bytes it moves over the memory bandwidth (a roofline), plus a launch
cost per kernel; a copy's time is its bytes over the PCIe bandwidth of its
direction. The `sim` backend advances its stream clocks by these times, and
policies use them to weigh their choices.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vmem.errors import UsageError
from vmem.layers.base import Algorithm, Layer, Shape, numel
from vmem.units import parse_size

GPU_KEYS = ("memory", "tflops", "bandwidth_gbps", "d2h_gbps", "h2d_gbps", "launch_us")


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int
    tflops: float
    bandwidth_gbps: float
    d2h_gbps: float
    h2d_gbps: float
    launch_us: float = 5.0
    description: str = ""


def gpu_presets() -> dict[str, GpuSpec]:
    text = resources.files("vmem").joinpath("gpus.toml").read_text()
    return {name: _spec(name, table, "vmem/gpus.toml") for name, table in
            tomllib.loads(text).items()}


def load_gpu(name_or_path: str) -> GpuSpec:
    """A preset by name, or a TOML file with the preset keys at top level."""
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        try:
            table = tomllib.loads(path.read_text())
        except OSError as exc:
            raise UsageError(f"--device sim:{name_or_path}: cannot read it ({exc.strerror})"
                             ) from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"--device sim:{name_or_path}: not valid TOML ({exc})") from None
        return _spec(path.stem, table, str(path))
    presets = gpu_presets()
    if name_or_path not in presets:
        raise UsageError(f"--device: unknown GPU preset '{name_or_path}'; known: "
                         f"{', '.join(sorted(presets))}, or sim:FILE.toml")
    return presets[name_or_path]


def _spec(name: str, table: dict, where: str) -> GpuSpec:
    missing = [k for k in GPU_KEYS if k not in table and k != "launch_us"]
    unknown = sorted(set(table) - set(GPU_KEYS) - {"description"})
    if missing or unknown:
        problem = (f"missing {', '.join(missing)}" if missing else
                   f"unknown key(s) {', '.join(unknown)}")
        raise UsageError(f"GPU file {where}: {problem}; keys: {', '.join(GPU_KEYS)}, "
                         "description")
    try:
        numbers = {k: float(table[k]) for k in GPU_KEYS[1:] if k in table}
    except (TypeError, ValueError):
        raise UsageError(f"GPU file {where}: {', '.join(GPU_KEYS[1:])} must be numbers"
                         ) from None
    if any(v <= 0 for v in numbers.values()):
        raise UsageError(f"GPU file {where}: rates must be positive")
    return GpuSpec(name, parse_size(str(table["memory"]), f"GPU file {where}: memory"),
                   description=str(table.get("description", "")), **numbers)


@dataclass(frozen=True)
class CostModel:
    gpu: GpuSpec
    itemsize: int = 4

    def layer_ms(self, layer: Layer, in_shapes: Sequence[Shape], out_shape: Shape,
                 algo: Algorithm, phase: str) -> float:
        forward = phase == "forward"
        flops = layer.flops(in_shapes) if forward else layer.backward_flops(in_shapes)
        params = sum(numel(s) for s in layer.param_shapes(in_shapes).values())
        activations = sum(numel(s) for s in in_shapes) + numel(out_shape)
        # Forward reads inputs and parameters and writes the output; backward
        # reads those and the output gradient, and writes input and parameter
        # gradients: about twice the traffic. im2col writes and reads its columns.
        nbytes = (activations + params) * self.itemsize * (1 if forward else 2)
        launches = 1
        if algo.chunk:
            chunks = -(-in_shapes[0][0] // algo.chunk)
            launches = 2 * chunks  # im2col and a GEMM per chunk
            # im2col writes its columns and the GEMM reads them, chunk by chunk
            nbytes += 2 * algo.workspace_bytes * chunks * (1 if forward else 2)
        seconds = max(flops / (self.gpu.tflops * 1e12), nbytes / (self.gpu.bandwidth_gbps * 1e9))
        return seconds * 1e3 + launches * self.gpu.launch_us * 1e-3

    def copy_ms(self, nbytes: int, to_host: bool) -> float:
        gbps = self.gpu.d2h_gbps if to_host else self.gpu.h2d_gbps
        return nbytes / (gbps * 1e9) * 1e3 + self.gpu.launch_us * 1e-3

    def update_ms(self, param_bytes: int) -> float:
        """SGD reads weight, gradient and velocity and writes two of them."""
        return 5 * param_bytes / (self.gpu.bandwidth_gbps * 1e9) * 1e3
