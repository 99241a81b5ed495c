"""Pure functions over step records."""

from __future__ import annotations

from collections import defaultdict

from vmem.profiler.events import StepRecord


def peak_bytes(record: StepRecord) -> int:
    return max((e.in_use for e in record.memory), default=record.start_in_use)


def average_bytes(record: StepRecord) -> float:
    """Device bytes in use, averaged over the step's time: in use is constant
    between two memory events and weighs by how long it lasted."""
    if record.duration_ms <= 0:
        return float(peak_bytes(record))
    area, in_use, last_t = 0.0, record.start_in_use, 0.0
    for event in record.memory:
        t = min(max(event.t_ms, last_t), record.duration_ms)
        area += in_use * (t - last_t)
        in_use, last_t = event.in_use, t
    area += in_use * (record.duration_ms - last_t)
    return area / record.duration_ms


def time_by_layer(record: StepRecord) -> dict[tuple[str, str], float]:
    """Milliseconds of compute per (layer, phase)."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for span in record.spans:
        if span.kind == "kernel":
            totals[(span.name, span.phase)] += span.ms
    return dict(totals)


def copied_bytes(record: StepRecord, kind: str) -> int:
    """Bytes moved by copies of one kind: "copy_d2h" (offloaded) or "copy_h2d"
    (prefetched)."""
    return sum(span.nbytes for span in record.spans if span.kind == kind)


def stall_ms(record: StepRecord) -> float:
    """Time the compute stream waited for prefetches."""
    return sum(span.ms for span in record.spans if span.kind == "wait")


def compute_ms(record: StepRecord) -> float:
    """Time of the layers' kernels alone: the step as if every copy were free."""
    return sum(span.ms for span in record.spans if span.kind == "kernel")
