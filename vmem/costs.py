"""Cost models: how long a layer, a copy or an update takes on a device.

`CostModel` is a roofline of a named GPU: a layer's time is the larger of its
FLOPs over the GPU's sustained throughput and the bytes it moves over the
memory bandwidth, plus a launch cost per kernel; a copy's time is its bytes
over the PCIe bandwidth of its direction, plus a launch. `CalibratedCosts`
(`--device sim:FILE.json`) replaces the roofline's layer times by times
measured with `vmem calibrate` (see its docstring for how they scale). The
`sim` backend advances its stream clocks by these times, and policies use them
to weigh their choices.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from vmem.errors import UsageError
from vmem.files import parse_json, parse_toml, read_text
from vmem.layers.base import Algorithm, Layer, Shape, numel
from vmem.schema import (
    Bytes,
    Count,
    Millis,
    Name,
    NonEmpty,
    Positive,
    PositiveCount,
    SchemaError,
    build,
)
from vmem.units import parse_size

if TYPE_CHECKING:
    from vmem.graph import Network

GPU_KEYS = ("memory", "tflops", "bandwidth_gbps", "d2h_gbps", "h2d_gbps", "launch_us")
GPU_FILE_KEYS = f"{', '.join(GPU_KEYS)} (launch_us optional), description, match"
#: The cost model the cpu backend plans with, and an uncalibrated CUDA device that no
#: preset's `match` names: the roofline of the GPU vmem's reference figures come from.
#: A plan made on the cpu is then the plan `sim:h100-pcie5` predicts and an H100 runs,
#: so a cpu run checks, with real arithmetic, the plan a GPU would carry out.
DEFAULT_COST_MODEL = "h100-pcie5"
CALIBRATION_FORMAT = "vmem-calibration"
CALIBRATION_VERSION = 1
#: `vmem.optim.update_traffic(SGD())`: what a calibration that does not name its
#: optimizer's traffic measured (vmem calibrate trains with SGD with momentum).
SGD_TRAFFIC = 5
FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class GpuSpec:
    """A GPU as the roofline sees it. Rates are sustained, not datasheet peaks
    (see vmem/gpus.toml for where each preset's figures come from).

    memory_bytes    device memory, the sim arena's capacity
    tflops          float32 throughput of large GEMM-bound layers (10^12 FLOP/s)
    bandwidth_gbps  device memory bandwidth, bytes read + written (10^9 B/s)
    d2h_gbps        pinned device-to-host copy bandwidth (10^9 B/s)
    h2d_gbps        pinned host-to-device copy bandwidth (10^9 B/s)
    launch_us       fixed cost of one kernel launch or copy (microseconds; 0 models none)
    match           names of CUDA devices this preset models: an uncalibrated `cuda`
                    device plans with the preset whose match is in its name
    """

    name: str
    memory_bytes: int
    tflops: float
    bandwidth_gbps: float
    d2h_gbps: float
    h2d_gbps: float
    launch_us: float = 5.0
    description: str = ""
    match: tuple[str, ...] = ()


def gpu_presets() -> dict[str, GpuSpec]:
    text = resources.files("vmem").joinpath("gpus.toml").read_text()
    return {name: _spec(name, table, "vmem/gpus.toml") for name, table in
            tomllib.loads(text).items()}


def preset_for_device(device_name: str) -> GpuSpec | None:
    """The preset that models a CUDA device of this name (as the driver reports it,
    "NVIDIA H100 PCIe"): the one with a `match` entry in the name, ignoring case; the
    longest entry wins, so "H100 SXM" beats "H100". None where no preset matches."""
    name = device_name.casefold()
    found = [(len(pattern), spec) for spec in gpu_presets().values() for pattern in spec.match
             if pattern.casefold() in name]
    return max(found, key=lambda item: item[0])[1] if found else None


def load_gpu(name_or_path: str) -> GpuSpec:
    """A preset by name, a TOML file with the preset keys (at top level, or in
    the one table of a section copied from gpus.toml), or a calibration file
    (its device, as measured)."""
    where = f"--device sim:{name_or_path}"
    if name_or_path.endswith(".json"):
        return load_calibration(name_or_path).gpu
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        try:
            table = parse_toml(read_text(path, where), where)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{where}: not valid TOML ({exc})") from None
        sections = [k for k, v in table.items() if isinstance(v, dict)]
        if len(sections) > 1:
            raise UsageError(f"GPU file {path}: {len(sections)} sections "
                             f"({', '.join(f'[{k}]' for k in sections)}); a GPU file describes "
                             "one GPU: its keys at top level, or in one section")
        if len(table) == 1 and len(sections) == 1:
            table = table[sections[0]]
        return _spec(path.stem, table, str(path))
    presets = gpu_presets()
    if name_or_path not in presets:
        raise UsageError(f"--device: unknown GPU preset '{name_or_path}'; known: "
                         f"{', '.join(sorted(presets))}, or sim:FILE.toml (a GPU of one's own)"
                         " or sim:FILE.json (from vmem calibrate)")
    return presets[name_or_path]


def load_costs(name_or_path: str, itemsize: int = 4) -> CostModel:
    """The cost model a `sim:` device names: a preset's or a GPU file's roofline,
    or a calibration file's measured costs."""
    if name_or_path.endswith(".json"):
        return CalibratedCosts(calibration=load_calibration(name_or_path))
    return CostModel(load_gpu(name_or_path), itemsize)


def _number(value: Any, least: float = 0.0, *, inclusive: bool = False) -> float | None:
    """A finite number above `least` (or equal to it, if `inclusive`), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < least or (value == least and not inclusive):
        return None
    return float(value)


def _toml(value: Any) -> str:
    """A value as TOML writes it (true, "text", nan, [1, 2]), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if hasattr(value, "isoformat"):  # TOML dates and times
        return value.isoformat()
    return repr(value)


def _spec(name: str, table: dict, where: str) -> GpuSpec:
    missing = [k for k in GPU_KEYS if k not in table and k != "launch_us"]
    unknown = sorted(set(table) - set(GPU_KEYS) - {"description", "match"})
    if missing or unknown:
        problem = (f"missing {', '.join(missing)}" if missing else
                   f"unknown key(s) {', '.join(unknown)}")
        raise UsageError(f"GPU file {where}: {problem}; keys: {GPU_FILE_KEYS}")
    # zero launch latency is a model of its own; zero throughput or bandwidth is not
    numbers = {k: _number(table[k], inclusive=k == "launch_us")
               for k in GPU_KEYS[1:] if k in table}
    problems = [f"{k} must be {'a number >= 0' if k == 'launch_us' else 'a positive number'}, "
                f"got {_toml(table[k])}" for k, v in numbers.items() if v is None]
    memory = table["memory"]
    if isinstance(memory, bool) or not isinstance(memory, str | int):
        problems.insert(0, "memory must be a size such as \"12GiB\" or a number of bytes, "
                           f"got {_toml(memory)}")
    description = table.get("description", "")
    if not isinstance(description, str):
        problems.append(f"description must be a string, got {_toml(description)}")
    match = table.get("match", [])
    if not isinstance(match, list) or not all(isinstance(m, str) and m.strip() for m in match):
        problems.append("match must be a list of device names such as [\"H100 PCIe\"], "
                        f"got {_toml(match)}")
    if problems:
        raise UsageError(f"GPU file {where}: {'; '.join(problems)}")
    return GpuSpec(name, parse_size(str(memory), f"GPU file {where}: memory"),
                   description=description, match=tuple(m.strip() for m in match), **numbers)


@dataclass(frozen=True)
class CostModel:
    gpu: GpuSpec
    itemsize: int = 4
    # layer times already modeled, by (layer, input shapes, output shape, algorithm,
    # phase): a planner's dry runs ask for the same ones again and again
    _known_ms: dict[tuple, float] = field(default_factory=dict, init=False, repr=False,
                                          compare=False)

    def layer_ms(self, layer: Layer, in_shapes: Sequence[Shape], out_shape: Shape,
                 algo: Algorithm, phase: str) -> float:
        key = (layer, tuple(in_shapes), out_shape, algo, phase)
        known = self._known_ms.get(key)
        if known is None:
            known = self._known_ms[key] = self.modeled_ms(layer, in_shapes, out_shape, algo,
                                                          phase)
        return known

    def modeled_ms(self, layer: Layer, in_shapes: Sequence[Shape], out_shape: Shape,
                   algo: Algorithm, phase: str) -> float:
        """The roofline: a launch cost plus max(FLOPs / throughput, bytes / bandwidth)."""
        return self.roofline_ms(layer, in_shapes, out_shape, algo, phase)

    def roofline_ms(self, layer: Layer, in_shapes: Sequence[Shape], out_shape: Shape,
                    algo: Algorithm, phase: str) -> float:
        forward = phase == FORWARD
        cost = layer.pass_cost(in_shapes, algo, forward)
        if cost is not None:
            flops = cost.flops
        else:
            flops = layer.flops(in_shapes) if forward else layer.backward_flops(in_shapes)
        params = sum(numel(s) for s in layer.param_shapes(in_shapes).values())
        activations = sum(numel(s) for s in in_shapes) + numel(out_shape)
        # Forward reads inputs and parameters and writes the output; backward
        # reads those and the output gradient, and writes input and parameter
        # gradients: about twice the traffic. im2col writes and reads its columns.
        nbytes = (activations + params) * self.itemsize * (1 if forward else 2)
        launches = 1 if cost is None else cost.launches
        if algo.chunk and cost is None:
            samples = in_shapes[0][0]
            chunks = -(-samples // algo.chunk)
            # forward: im2col and one batched GEMM per chunk; backward: im2col, the
            # batched dcol GEMM and col2im per chunk, and dW's GEMM per sample (each
            # adds into dW, which keeps dW's bits the same for every chunk size)
            launches = 2 * chunks if forward else 3 * chunks + samples
            # im2col writes its columns and the GEMM reads them, chunk by chunk
            nbytes += 2 * algo.workspace_bytes * chunks * (1 if forward else 2)
        seconds = max(flops / (self.gpu.tflops * 1e12), nbytes / (self.gpu.bandwidth_gbps * 1e9))
        return seconds * 1e3 + launches * self.gpu.launch_us * 1e-3

    def copy_ms(self, nbytes: int, to_host: bool) -> float:
        gbps = self.gpu.d2h_gbps if to_host else self.gpu.h2d_gbps
        return nbytes / (gbps * 1e9) * 1e3 + self.gpu.launch_us * 1e-3

    def update_ms(self, param_bytes: int, traffic: int) -> float:
        """The optimizer's update: `traffic` weight-sized passes over memory
        (`vmem.optim.update_traffic`; SGD with momentum reads weight, gradient and
        velocity and writes two of them: 5)."""
        return traffic * param_bytes / (self.gpu.bandwidth_gbps * 1e9) * 1e3


# -- measured costs ------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTiming:
    """One layer as `vmem calibrate` ran it: per-sample input shapes (no batch),
    the algorithm it ran with, and the median kernel time of each phase."""

    name: Name
    type: Name
    in_shapes: tuple[tuple[PositiveCount, ...], ...]
    algorithm: Name
    workspace_bytes: Bytes
    chunk: Count
    forward_ms: Millis
    backward_ms: Millis


@dataclass(frozen=True)
class CalibrationFile:
    """The fields of a calibration file that the sim reads (vmem calibrate writes
    more), with the types and ranges a file is checked against."""

    device: dict[str, Any]  # the measured device's facts
    memory_bytes: PositiveCount
    profile: Name
    batch: PositiveCount
    dtype: Literal["float32"]  # the only dtype vmem trains in
    tflops: Positive
    bandwidth_gbps: Positive
    d2h_gbps: Positive
    h2d_gbps: Positive
    launch_us: Positive
    update_ms: Millis
    param_bytes: Bytes
    layers: Annotated[tuple[LayerTiming, ...], NonEmpty()]
    update_traffic: PositiveCount = SGD_TRAFFIC  # files from before it was written: SGD's
    created: str = "undated"


@dataclass(frozen=True)
class Calibration:
    """What a calibration file holds, checked. `gpu` is the device as measured:
    its memory, copy rates, launch cost and device bandwidth, and the float32
    throughput its GEMM-bound layers reached."""

    path: str
    gpu: GpuSpec
    profile: str
    batch: int
    dtype: str
    layers: dict[str, LayerTiming]
    update_ms: float
    param_bytes: int
    device: dict[str, Any]
    update_traffic: int = SGD_TRAFFIC  # the measured optimizer's (`vmem.optim.update_traffic`)


@dataclass(frozen=True)
class CalibratedCosts(CostModel):
    """Measured costs (`--device sim:FILE.json`).

    A layer at batch b with algorithm a takes its measured time at the
    calibrated batch b0 and algorithm a0, scaled by the roofline of the
    calibrated device (`CostModel(calibration.gpu)`):

        t(b, a) = t_measured(b0, a0) * model(b, a) / model(b0, a0)

    The model is a launch cost plus max(FLOPs / throughput, bytes / bandwidth).
    Feature-map FLOPs and bytes grow with the batch (and so do a convolution's
    backward launches: one dW GEMM per sample) and weight traffic and other
    launches do not, so the scaling is proportional to the batch for
    convolutions and closer to constant for a fully connected layer at a small
    batch; another convolution algorithm (im2col chunk) than the calibrated one
    changes the time by the model's ratio of the two. Copies take the measured
    bandwidth of their direction plus a launch; the update scales the measured
    one by the parameter bytes. Layers the file does not calibrate are an error:
    a file calibrates one network.
    """

    gpu: GpuSpec = field(init=False)
    calibration: Calibration = field(kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu", self.calibration.gpu)

    def timing(self, layer: Layer, in_shapes: Sequence[Shape]) -> LayerTiming:
        cal = self.calibration
        timing = cal.layers.get(layer.name)
        if timing is None:
            raise UsageError(f"--device sim:{cal.path}: no timing for layer '{layer.name}'; "
                             f"the file calibrates profile {cal.profile} (run vmem calibrate "
                             "on this network)")
        per_sample = tuple(tuple(s[1:]) for s in in_shapes)
        if timing.type != layer.TYPE or timing.in_shapes != per_sample:
            raise UsageError(
                f"--device sim:{cal.path}: layer '{layer.name}' was calibrated as "
                f"{timing.type} with input {_dims(timing.in_shapes)} (profile {cal.profile}); "
                f"here it is {layer.TYPE} with input {_dims(per_sample)}: calibrate this network")
        return timing

    def check_network(self, network: Network) -> None:
        """Refuse, naming them all, layers of `network` the file has no timing for
        (or timed with other shapes): call before the first step."""
        missing = [n.name for n in network.nodes if n.name not in self.calibration.layers]
        if missing:
            raise UsageError(f"--device sim:{self.calibration.path}: no timing for layer(s) "
                             f"{', '.join(missing)}; the file calibrates profile "
                             f"{self.calibration.profile} (run vmem calibrate on "
                             f"{network.name})")
        shapes = network.shapes(1)
        for node in network.nodes:
            self.timing(node.layer, network.in_shapes(node, shapes))

    def modeled_ms(self, layer: Layer, in_shapes: Sequence[Shape], out_shape: Shape,
                   algo: Algorithm, phase: str) -> float:
        timing = self.timing(layer, in_shapes)
        measured = timing.forward_ms if phase == FORWARD else timing.backward_ms
        b0 = self.calibration.batch
        out_then = (b0, *out_shape[1:]) if out_shape else ()  # a loss's output is a scalar
        then = (tuple((b0, *s) for s in timing.in_shapes), out_then,
                Algorithm(timing.algorithm, timing.workspace_bytes, timing.chunk))
        model = self.roofline_ms
        return measured * model(layer, in_shapes, out_shape, algo, phase) / model(
            layer, *then, phase)

    def update_ms(self, param_bytes: int, traffic: int) -> float:
        """The measured update, scaled by the weights and by the optimizer's passes
        over memory against those of the optimizer that was measured."""
        cal = self.calibration
        if cal.param_bytes <= 0:
            return super().update_ms(param_bytes, traffic)
        return cal.update_ms * param_bytes / cal.param_bytes * traffic / cal.update_traffic


def _dims(shapes: Sequence[Shape]) -> str:
    return ", ".join("×".join(map(str, s)) for s in shapes)


# -- calibration files -----------------------------------------------------------------


def load_calibration(path_text: str) -> Calibration:
    """Read and check a file written by `vmem calibrate` (vmem.schema: every
    field's type and range); every problem is one UsageError line."""
    where = f"--device sim:{path_text}"
    try:
        data = parse_json(read_text(Path(path_text), where), where)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise UsageError(f"{where}: not a vmem calibration file (no \"format\": "
                         f"\"{CALIBRATION_FORMAT}\"; write one with vmem calibrate)")
    if data.get("version") != CALIBRATION_VERSION:
        raise UsageError(f"{where}: calibration format version {data.get('version')!r:.40}; "
                         f"this vmem reads version {CALIBRATION_VERSION} (calibrate again)")
    try:
        file = build(CalibrationFile, data)
    except SchemaError as exc:
        raise UsageError(f"{where}: {exc}") from None
    layers: dict[str, LayerTiming] = {}
    for i, timing in enumerate(file.layers):
        if timing.name in layers:
            raise UsageError(f"{where}: 'layers[{i}]': layer '{timing.name}' is given twice; "
                             "a calibration times each layer once")
        layers[timing.name] = timing
    device = file.device
    described = str(device.get("device") or device.get("processor") or device.get("backend"))
    gpu = GpuSpec(Path(path_text).name, file.memory_bytes, file.tflops, file.bandwidth_gbps,
                  file.d2h_gbps, file.h2d_gbps, file.launch_us,
                  f"calibrated on {described:.80} ({file.profile:.80}, batch {file.batch}, "
                  f"{file.created:.40})")
    return Calibration(path_text, gpu, file.profile, file.batch, file.dtype, layers,
                       file.update_ms, file.param_bytes, device, file.update_traffic)
