"""A memory-over-time plot (PNG, with matplotlib, the optional extra `plot`):
device bytes in use through one training step, a line per policy, the oracle
dashed, the memory limit dotted."""

from __future__ import annotations

import importlib.util
import io

from vmem.errors import UsageError
from vmem.profiler.analysis import memory_timeline
from vmem.profiler.facts import device_memory_bytes
from vmem.profiler.session import Session

GIB = 2**30


def check_plot_available(flag: str = "--plot") -> None:
    """Refuse before a long job, not after it, where matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"{flag}: matplotlib is not installed; install it with "
                         "pip install 'vmem-dnn[plot]'")


def memory_plot_png(session: Session) -> bytes:
    check_plot_available()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    meta = session.meta
    figure = Figure(figsize=(10, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    lines = [(t.result.policy, t, "-") for t in session.trials if t.records]
    if session.oracle is not None and session.oracle.records:
        lines.append(("oracle (none, no limit)", session.oracle, "--"))
    step = None
    for label, trial, style in lines:
        record = trial.records[-1]  # a timed step: the warm-up is left out where there are more
        step = record.step + 1
        points = memory_timeline(record)
        times = [t for t, _ in points] + [record.duration_ms]
        gib = [b / GIB for _, b in points] + [points[-1][1] / GIB]
        axes.step(times, gib, where="post", linestyle=style, linewidth=1.4,
                  label=f"{label} (peak {max(gib):.2f} GiB)")
    total = device_memory_bytes(meta.device_facts)
    capacity, what = ((meta.memory_limit_bytes, "memory limit") if meta.memory_limit_bytes else
                      (total, "device memory") if total is not None else (None, ""))
    if capacity:
        axes.axhline(capacity / GIB, color="gray", linestyle=":", linewidth=1,
                     label=f"{what} {capacity / GIB:.2f} GiB")
    axes.set_xlabel(f"time in training step {step} (ms)" if step else "time (ms)")
    axes.set_ylabel("device memory in use (GiB)")
    axes.set_title(f"{meta.profile} · batch {meta.batch} · {meta.device} · "
                   f"allocation {meta.allocation}")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    if lines:
        axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
