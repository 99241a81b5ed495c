"""`vmem bench cpu-step`: vmem's training step on the `cpu` backend against PyTorch's
CPU build, the same network built layer for layer from vmem's profile.

Each measurement is a fresh process (`python -m vmem.bench.cpu_step --worker ...`)
that builds its network, runs warm-up steps and times the rest; vmem and PyTorch
processes alternate (the order flips every round), so a machine whose load drifts
slows both alike. The report gives, per network, the ratio vmem / PyTorch of the
fastest steps (min) and of the median steps over all rounds, with the machine's
load averages before and after.

PyTorch is an optional dependency of this benchmark only: without it the command
says so in one line (exit 2).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from vmem.bench.timing import markdown_table
from vmem.errors import UsageError, VmemError


@dataclass(frozen=True)
class Case:
    profile: str
    batch: int


#: The networks and batches of the default run.
DEFAULT_CASES = (Case("alexnet", 32), Case("vgg16", 2), Case("googlenet", 8))
IMPLEMENTATIONS = ("vmem", "torch")
LR = 0.001


def parse_cases(text: str) -> list[Case]:
    """'alexnet:32,vgg16:2' -> cases; a bad item raises ValueError naming it."""
    cases = []
    for item in (part.strip() for part in text.split(",")):
        name, _, batch = item.partition(":")
        if not name or not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"expected PROFILE:BATCH,... (e.g. alexnet:32), got '{item}'")
        cases.append(Case(name, int(batch)))
    return cases


# -- the network in PyTorch ----------------------------------------------------------


def torch_module(torch: Any, network: Any) -> Any:
    """An nn.Module computing `network` (a vmem Network) layer for layer: its forward
    takes the batch and the labels and returns the mean loss."""
    nn = torch.nn
    shapes = network.shapes(1)

    def module(node: Any) -> Any:
        layer = node.layer
        kind = layer.TYPE
        in_shape = shapes[node.inputs[0]]
        if kind == "conv":
            return nn.Conv2d(in_shape[1], layer.out_channels, layer.kernel, layer.stride,
                             layer.pad, groups=layer.groups, bias=layer.bias)
        if kind == "relu":
            return nn.ReLU()
        if kind == "lrn":
            return nn.LocalResponseNorm(layer.size, float(layer.alpha), float(layer.beta),
                                        float(layer.k))
        if kind == "maxpool":
            return nn.MaxPool2d(layer.kernel, layer.step, layer.pad, ceil_mode=layer.ceil_mode)
        if kind == "avgpool":
            return nn.AvgPool2d(layer.kernel, layer.step, layer.pad, ceil_mode=layer.ceil_mode,
                                count_include_pad=True)
        if kind == "global_avgpool":
            return nn.AdaptiveAvgPool2d(1)
        if kind == "linear":
            features = int(np.prod(in_shape[1:]))
            return nn.Sequential(nn.Flatten(), nn.Linear(features, layer.out_features,
                                                         bias=layer.bias))
        if kind == "batchnorm":
            norm = nn.BatchNorm2d if len(in_shape) == 4 else nn.BatchNorm1d
            return norm(in_shape[1], eps=float(layer.eps), momentum=float(layer.momentum))
        if kind == "dropout":
            return nn.Dropout(float(layer.p))
        if kind == "flatten":
            return nn.Flatten()
        if kind in ("concat", "add", "softmax_loss"):
            return None  # functional: see forward
        raise UsageError(f"bench cpu-step: no PyTorch counterpart for layer "
                         f"'{node.name}' ({kind})")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.steps = nn.ModuleDict()
            self.nodes = network.nodes
            for i, node in enumerate(self.nodes):
                m = module(node)
                if m is not None:
                    self.steps[str(i)] = m

        def forward(self, x: Any, labels: Any) -> Any:
            values = {"data": x}
            for i, node in enumerate(self.nodes):
                xs = [values[name] for name in node.inputs]
                kind = node.layer.TYPE
                if kind == "concat":
                    values[node.name] = torch.cat(xs, dim=node.layer.axis)
                elif kind == "add":
                    values[node.name] = sum(xs[1:], xs[0])
                elif kind == "softmax_loss":
                    return nn.functional.cross_entropy(xs[0].flatten(1), labels)
                else:
                    values[node.name] = self.steps[str(i)](xs[0])
            raise AssertionError("a vmem network ends in its loss")

    return Net()


# -- one process: one implementation, one case ----------------------------------------


def _inputs(network: Any, batch: int) -> tuple[np.ndarray, np.ndarray, int]:
    from vmem.layers.base import numel

    classes = numel(network.shapes(1)[network.logits][1:])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *network.input_shape), dtype=np.float32)
    return x, rng.integers(0, classes, size=batch), classes


def run_vmem(case: Case, steps: int, threads: int | None) -> dict[str, Any]:
    from vmem.optim import SGD
    from vmem.runtime import Runtime

    with Runtime(case.profile, device="cpu", optimizer=SGD(lr=LR), seed=0, batch=case.batch,
                 threads=threads) as rt:
        x, y, _ = _inputs(rt.network, case.batch)
        times = _timed(steps, lambda: rt.train_step(x, y))
        info = {"threads": rt.threads, "params": rt.network.num_params()}
    return {**times, **info, **_blas()}


def run_torch(case: Case, steps: int, threads: int | None) -> dict[str, Any]:
    import torch

    from vmem.profile import load_profile

    if threads is not None:
        torch.set_num_threads(threads)
    network = load_profile(case.profile).network
    x, y, _ = _inputs(network, case.batch)
    model = torch_module(torch, network)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(tx, ty).backward()
        opt.step()

    return {**_timed(steps, step), "threads": torch.get_num_threads(), "params": params,
            "torch": torch.__version__}


def _timed(steps: int, step: Callable[[], Any]) -> dict[str, list[float]]:
    """Wall-clock and CPU milliseconds (this process, all its threads) of each step."""
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return {"step_ms": wall, "cpu_ms": cpu}


def _blas() -> dict[str, Any]:
    """What BLAS NumPy runs: OpenBLAS's kernel and thread count, as threadpoolctl sees."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"blas": [f"{i.get('internal_api')} {i.get('version')} "
                     f"{i.get('architecture', '')}".strip() for i in blas]}


def worker_main(argv: Sequence[str]) -> int:
    """`python -m vmem.bench.cpu_step --worker IMPL PROFILE BATCH STEPS THREADS`: time
    one implementation in this process; one JSON line on stdout."""
    impl, profile, batch, steps, threads = argv
    case, nthreads = Case(profile, int(batch)), (int(threads) or None)
    run = run_vmem if impl == "vmem" else run_torch
    print(json.dumps(run(case, int(steps), nthreads)))
    return 0


# -- the driver ---------------------------------------------------------------------


def _spawn(impl: str, case: Case, steps: int, threads: int | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "vmem.bench.cpu_step", "--worker", impl, case.profile,
               str(case.batch), str(steps), str(threads or 0)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise VmemError(f"bench cpu-step: the {impl} process for {case.profile} batch "
                           f"{case.batch} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def require_torch() -> None:
    from vmem.errors import DeviceUnavailable

    try:
        import torch  # noqa: F401
    except Exception as exc:
        raise DeviceUnavailable(f"cpu-step needs PyTorch (pip install torch) to compare "
                                f"with: {type(exc).__name__}: {exc}") from None


def bench_cpu_step(cases: Sequence[Case], *, rounds: int = 3, steps: int = 3,
                   threads: int | None = None, torch_threads: int | None = None) -> str:
    """The markdown report: per case, `rounds` rounds of one vmem and one PyTorch
    process (order alternating), each timing `steps` steps after one warm-up step."""
    from vmem.profile import load_profile

    require_torch()
    for case in cases:  # a bad profile is refused before anything runs
        load_profile(case.profile)
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    rows, details = [], []
    for case in cases:
        samples: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
        cpu: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
        meta: dict[str, dict[str, Any]] = {}
        for r in range(rounds):
            order = IMPLEMENTATIONS if r % 2 == 0 else IMPLEMENTATIONS[::-1]
            for impl in order:
                result = _spawn(impl, case, steps + 1,
                                threads if impl == "vmem" else torch_threads)
                samples[impl] += result.pop("step_ms")[1:]  # the first step warms up
                cpu[impl] += result.pop("cpu_ms")[1:]
                meta[impl] = result
        vm, th = samples["vmem"], samples["torch"]
        rows.append([case.profile, case.batch, min(vm), statistics.median(vm), min(th),
                     statistics.median(th), min(vm) / min(th),
                     statistics.median(vm) / statistics.median(th),
                     statistics.median(cpu["vmem"]) / statistics.median(cpu["torch"])])
        if meta["vmem"]["params"] != meta["torch"]["params"]:
            details.append(f"WARNING {case.profile}: vmem has {meta['vmem']['params']:,} "
                           f"parameters, the PyTorch network {meta['torch']['params']:,}.")
        details.append(f"{case.profile} batch {case.batch}: vmem threads "
                       f"{meta['vmem']['threads']}, BLAS {', '.join(meta['vmem'].get('blas', []))}"
                       f"; PyTorch {meta['torch']['torch']} threads {meta['torch']['threads']}; "
                       f"{meta['vmem']['params']:,} parameters in both; CPU ms per step "
                       f"(median) vmem {statistics.median(cpu['vmem']):,.0f}, PyTorch "
                       f"{statistics.median(cpu['torch']):,.0f}.")
    load_after = os.getloadavg()
    headers = ["profile", "batch", "vmem min ms", "vmem median ms", "torch min ms",
               "torch median ms", "ratio (min)", "ratio (median)", "CPU-time ratio"]
    openblas = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if k in os.environ}
    lines = [
        "# vmem bench cpu-step", "",
        f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores "
        f"available, Python {platform.python_version()}, NumPy {np.__version__}; "
        f"{started:%Y-%m-%d %H:%M} UTC.",
        f"Load averages (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)}.",
        f"OpenBLAS environment: {openblas or 'none set'}.",
        f"{rounds} rounds per network, each one vmem and one PyTorch process (order "
        f"alternating), {steps} timed steps per process after a warm-up step; SGD with "
        f"momentum 0.9, weight decay 5e-4, lr {LR}; float32. Ratios are vmem / PyTorch "
        f"wall-clock step times; the CPU-time ratio compares the median CPU time of a step "
        f"(every thread of the process), which other load on the machine inflates less.", "",
        markdown_table(headers, rows), "", *details]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit("usage: vmem bench cpu-step (this module's --worker form is internal)")
