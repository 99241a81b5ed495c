"""`vmem bench step`: one training step of a profile through `vmem.Runtime` on CUDA
(what `vmem run vgg16 --batch 64 --device cuda` does), against the same network in
PyTorch (VGG-16 and AlexNet built here with torch.nn) when PyTorch is importable.

vmem's step time is the runtime's own (CUDA events on its compute stream); the
PyTorch step is timed with CUDA events around forward, loss, backward and SGD.
Both take the batch already on the device, so neither times a host-to-device copy.

Not yet run on a GPU (see bench/results/README.md).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np

from vmem.bench.timing import device_line, markdown_table, require_cuda, torch_cuda

#: DESIGN.md, H100: PyTorch VGG-16 SGD step, batch 64 / 128 / 256 (ms, GiB peak).
DESIGN_TORCH = {("vgg16", 64): (52, 5.6), ("vgg16", 128): (102, 10.1),
                ("vgg16", 256): (201, 19.0), ("alexnet", 128): (7.7, 1.0),
                ("alexnet", 256): (13.8, 1.5)}
VGG16_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
           512, 512, 512, "M"]


def torch_model(torch: Any, name: str, classes: int) -> Any | None:
    """VGG-16 (configuration D) or AlexNet (the one-tower variant) in torch.nn."""
    nn = torch.nn
    if name == "vgg16":
        layers: list[Any] = []
        c = 3
        for v in VGG16_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        head = [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True),
                nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                nn.Linear(4096, classes)]
        return nn.Sequential(*layers, *head)
    if name == "alexnet":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Flatten(), nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, classes))
    return None


def _vmem_steps(cp: Any, profile: str, batch: int, steps: int, policy: str, lr: float
                ) -> dict[str, Any]:
    from vmem.optim import SGD
    from vmem.profiler.analysis import peak_bytes
    from vmem.runtime import Runtime

    with Runtime(profile, device="cuda", policy=policy, optimizer=SGD(lr=lr), seed=0) as rt:
        shape = rt.network.input_shape
        rng = np.random.default_rng(0)
        x = cp.asarray(rng.standard_normal((batch, *shape), dtype=np.float32))
        y = rng.integers(0, rt.num_classes, size=batch)
        step_ms, wall_ms, peaks, losses = [], [], [], []
        for _ in range(steps):
            start = time.perf_counter()
            losses.append(rt.train_step(x, y))
            rt.backend.synchronize()
            wall_ms.append((time.perf_counter() - start) * 1e3)
            record = rt.last_record
            step_ms.append(record.duration_ms)
            peaks.append(peak_bytes(record))
        return {"step_ms": step_ms, "wall_ms": wall_ms, "peak": max(peaks), "losses": losses,
                "classes": rt.num_classes, "input": tuple(shape)}


def _torch_steps(torch: Any, profile: str, batch: int, steps: int, lr: float,
                 classes: int, shape: tuple[int, ...]) -> dict[str, Any] | None:
    model = torch_model(torch, profile, classes)
    if model is None:
        return None
    model = model.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((batch, *shape), device="cuda", generator=gen)
    y = torch.randint(0, classes, (batch,), device="cuda", generator=gen)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    peak = torch.cuda.max_memory_allocated()
    del model, opt, x, y
    torch.cuda.empty_cache()
    return {"step_ms": times, "peak": peak}


def bench_step(*, profile: str = "vgg16", batch: int = 64, steps: int = 6,
               policy: str = "none", lr: float = 0.001) -> str:
    """The markdown report of `vmem bench step`; the first step of each is a warm-up
    left out of the median."""
    cp = require_cuda("step")
    torch = torch_cuda()
    vm = _vmem_steps(cp, profile, batch, steps, policy, lr)
    cp.get_default_memory_pool().free_all_blocks()
    th = _torch_steps(torch, profile, batch, steps, lr, vm["classes"], vm["input"]) \
        if torch is not None else None

    def med(xs: list[float]) -> float:
        return statistics.median(xs[1:] or xs)

    vm_ms = med(vm["step_ms"])
    rows = [[f"vmem ({policy})", batch, vm_ms, med(vm["wall_ms"]), vm["peak"] / 2**30,
             None if th is None else vm_ms / med(th["step_ms"])]]
    if th is not None:
        rows.append(["PyTorch", batch, med(th["step_ms"]), None, th["peak"] / 2**30, 1.0])
    design = DESIGN_TORCH.get((profile, batch))
    notes = [f"`vmem run {profile} --batch {batch} --device cuda --policy {policy}` through "
             f"vmem.Runtime, {steps} steps, median of all but the first; losses "
             + ", ".join(f"{v:.4f}" for v in vm["losses"]) + ".",
             f"CUPY_TF32={os.environ.get('CUPY_TF32', '0')}."]
    if design:
        notes.append(f"DESIGN.md: PyTorch {profile} batch {batch} on an H100: {design[0]} ms, "
                     f"peak {design[1]} GiB; issue 5's target: vmem within 1.5x "
                     f"({1.5 * design[0]:.0f} ms).")
    if torch is None:
        notes.append("No PyTorch here: no PyTorch row.")
    elif th is None:
        notes.append(f"No PyTorch model for profile '{profile}' (vgg16 and alexnet only).")
    headers = ["implementation", "batch", "step ms (events)", "step ms (wall)", "peak GiB",
               "vs PyTorch"]
    return "\n".join(["# vmem bench step", "", device_line(cp), "", *notes, "",
                      markdown_table(headers, rows)]) + "\n"
