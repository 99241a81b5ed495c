"""Per-layer figures: each layer's forward and backward time (and, where a plan
drops its output and computes it again, that recomputation's), the compute
stream's stall before it, and the device memory of its passes.

Memory events belong to a kernel (see MemoryEvent.layer): a layer's forward
pass allocates its output, its saved state and its workspace, and frees what
it was the last to read; its backward pass allocates gradient maps, workspace
and the feature maps prefetched for it, and frees what it was the last to need.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from vmem.profiler.events import MemoryEvent, StepRecord

FORWARD, BACKWARD, RECOMPUTE = "forward", "backward", "recompute"


@dataclass(frozen=True)
class LayerStats:
    name: str
    forward_ms: float
    backward_ms: float
    stall_ms: float  # the compute stream waited for prefetches just before this layer
    forward_allocated_bytes: int  # output, saved state, workspace
    backward_allocated_bytes: int  # gradient maps, workspace, prefetched feature maps
    peak_bytes: int  # most device bytes in use while its forward or backward pass ran
    after_forward_bytes: int  # device bytes in use once its forward pass had freed
    offloaded_bytes: int  # of its output, copied to the host during the forward pass
    recompute_ms: float = 0.0  # its forward pass run again in the backward pass


def layer_stats(record: StepRecord) -> tuple[LayerStats, ...]:
    """One entry per layer, in forward order (the optimizer update is left out)."""
    kernels = [s for s in record.spans if s.kind == "kernel"]
    events: dict[tuple[str, str], list[MemoryEvent]] = defaultdict(list)
    for event in record.memory:
        events[(event.layer, event.phase)].append(event)
    ms: dict[tuple[str, str], float] = defaultdict(float)
    stall: dict[str, float] = defaultdict(float)
    waited = 0.0
    for span in record.spans:  # a wait is recorded just before the kernel it holds up
        if span.kind == "wait":
            waited += span.ms
        elif span.kind == "kernel":
            ms[(span.name, span.phase)] += span.ms
            stall[span.name] += waited
            waited = 0.0
    offloaded: dict[str, int] = defaultdict(int)
    for span in record.spans:
        if span.kind == "copy_d2h":
            offloaded[span.name] += span.nbytes
    allocated: dict[tuple[str, str], int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    after_forward: dict[str, int] = {}
    in_use = record.start_in_use
    for span in kernels:  # events of one kernel come between its neighbours'
        key = (span.name, span.phase)
        peak[span.name] = max(peak[span.name], in_use)
        for event in events.pop(key, ()):
            if event.op == "alloc":
                allocated[key] += event.nbytes
            peak[span.name] = max(peak[span.name], event.in_use)
            in_use = event.in_use
        if span.phase == FORWARD:
            after_forward[span.name] = in_use
    names = [s.name for s in kernels if s.phase == FORWARD]
    return tuple(LayerStats(name, ms[(name, FORWARD)], ms[(name, BACKWARD)], stall[name],
                            allocated[(name, FORWARD)], allocated[(name, BACKWARD)], peak[name],
                            after_forward[name], offloaded[name], ms[(name, RECOMPUTE)])
                 for name in dict.fromkeys(names))


def layer_table(records: Sequence[StepRecord]) -> tuple[LayerStats, ...]:
    """Per-layer figures of a trial: times are medians over the timed steps (the
    first, a warm-up, is left out where there are more), memory is the last
    step's (every step allocates the same)."""
    timed = records[1:] or records
    if not timed:
        return ()
    per_step = [layer_stats(r) for r in timed]
    last = per_step[-1]
    rows = []
    for i, layer in enumerate(last):
        same = [s[i] for s in per_step if i < len(s) and s[i].name == layer.name]
        rows.append(LayerStats(
            layer.name, statistics.median(s.forward_ms for s in same),
            statistics.median(s.backward_ms for s in same),
            statistics.median(s.stall_ms for s in same), layer.forward_allocated_bytes,
            layer.backward_allocated_bytes, layer.peak_bytes, layer.after_forward_bytes,
            layer.offloaded_bytes, statistics.median(s.recompute_ms for s in same)))
    return tuple(rows)


def offloads_outside_layers(records: Sequence[StepRecord]) -> dict[str, int]:
    """Bytes offloaded in the last timed step of tensors that are no layer's
    output (the network input, `data`): the per-layer table has no row for them,
    and with them its offloaded column adds up to the step's offloaded bytes."""
    timed = records[1:] or records
    if not timed:
        return {}
    record = timed[-1]
    layers = {s.name for s in record.spans if s.kind == "kernel"}
    offloaded: dict[str, int] = defaultdict(int)
    for span in record.spans:
        if span.kind == "copy_d2h" and span.name not in layers:
            offloaded[span.name] += span.nbytes
    return dict(offloaded)


def update_ms(record: StepRecord) -> float:
    """The optimizer's time in a step."""
    return sum(s.ms for s in record.spans if s.kind == "kernel" and s.phase == "update")
