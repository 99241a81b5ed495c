"""A session as a Chrome trace (the JSON trace event format that Perfetto and
chrome://tracing open): one process per trial, one thread (track) per stream
with the layers' kernels, the copies and the waits as complete ("X") events in
microseconds, and counter ("C") tracks of device bytes in use, in all and by
kind. A trial's steps are laid out one after another."""

from __future__ import annotations

from typing import Any

from vmem.profiler.analysis import KINDS
from vmem.profiler.events import StepRecord
from vmem.profiler.session import Session

STREAMS = {"compute": 1, "memory": 2}  # tid by stream
MEMORY_COUNTER = "device memory in use (bytes)"
KIND_COUNTER = "device memory by kind (bytes)"
_SPAN_TITLES = {"copy_d2h": "offload {}", "copy_h2d": "prefetch {}", "wait": "wait for {}"}


def _us(ms: float) -> float:
    # Rounding is monotonic: spans disjoint or nested in ms stay so in µs.
    return round(ms * 1000.0, 3)


def chrome_trace(session: Session) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    trials = [(t.result.policy, t) for t in session.trials if t.records]
    if session.oracle is not None and session.oracle.records:
        trials.append(("oracle (none, no limit)", session.oracle))
    for pid, (label, trial) in enumerate(trials, start=1):
        events += _metadata(pid, label)
        offset_ms = 0.0
        for record in trial.records:
            events += _step_events(pid, record, offset_ms)
            offset_ms += max(record.duration_ms,
                             max((s.end_ms for s in record.spans), default=0.0))
    meta = session.meta
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"vmem": meta.vmem_version, "command": meta.command,
                          "profile": meta.profile, "batch": meta.batch, "device": meta.device,
                          "allocation": meta.allocation, "recorded": meta.created}}


def _metadata(pid: int, label: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
         "args": {"sort_index": pid}}]
    for stream, tid in STREAMS.items():
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                       "args": {"name": f"{stream} stream"}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                       "args": {"sort_index": tid}})
    return events


def _step_events(pid: int, record: StepRecord, offset_ms: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for span in record.spans:
        start, end = _us(offset_ms + span.start_ms), _us(offset_ms + span.end_ms)
        args: dict[str, Any] = {"step": record.step + 1, "phase": span.phase}
        if span.nbytes:
            args["bytes"] = span.nbytes
        events.append({"ph": "X", "name": _SPAN_TITLES.get(span.kind, "{}").format(span.name),
                       "cat": span.kind if span.kind != "kernel" else span.phase,
                       "pid": pid, "tid": STREAMS.get(span.stream, len(STREAMS) + 1),
                       "ts": start, "dur": max(round(end - start, 3), 0.0), "args": args})
    by_kind = {kind: 0 for kind in KINDS}
    for kind, nbytes in record.start_by_kind:
        by_kind[kind] = by_kind.get(kind, 0) + nbytes
    events.append(_counter(pid, MEMORY_COUNTER, offset_ms, {"in use": record.start_in_use}))
    events.append(_counter(pid, KIND_COUNTER, offset_ms, dict(by_kind)))
    for event in record.memory:
        sign = 1 if event.op == "alloc" else -1
        by_kind[event.kind] = by_kind.get(event.kind, 0) + sign * event.nbytes
        t_ms = offset_ms + event.t_ms
        events.append(_counter(pid, MEMORY_COUNTER, t_ms, {"in use": event.in_use}))
        events.append(_counter(pid, KIND_COUNTER, t_ms, dict(by_kind)))
    return events


def _counter(pid: int, name: str, t_ms: float, values: dict[str, int]) -> dict[str, Any]:
    return {"ph": "C", "name": name, "pid": pid, "tid": 0, "ts": _us(t_ms), "args": values}
