"""The memory plot (matplotlib, the optional extra `plot`): device memory through
one training step, stacked by kind (weights, their gradients, optimizer state,
layer state, feature maps, gradient maps, saved, workspace), one panel per
policy on shared axes, with the backward pass and the update marked, the memory
limit (or the device's memory) drawn where it is near the stack, and the oracle's
total dashed. PNG or SVG, chosen by the file's suffix.

Each panel shows the step whose peak the trial reports (vmem.profiler.timeline):
the top of its stack is that peak, to the byte."""

from __future__ import annotations

import importlib.util
import io
import os
import textwrap
from pathlib import Path
from typing import Any

from vmem.errors import UsageError
from vmem.profiler.facts import device_memory_bytes
from vmem.profiler.output import STDOUT
from vmem.profiler.session import Session, Trial
from vmem.profiler.timeline import BACKWARD, UPDATE, kind_series, peak_record, phase_starts
from vmem.units import format_bytes

FORMATS = {".png": "png", ".svg": "svg"}
ORACLE = "oracle (none, no limit)"
# what each kind is called on the plot, in the stack's order (bottom first)
KIND_LABELS = {
    "weights": "weights",
    "weight_grads": "weight gradients",
    "optimizer": "optimizer state",
    "state": "layer state (BatchNorm running statistics)",
    "feature_maps": "feature maps",
    "gradient_maps": "gradient maps",
    "saved": "saved by layers for backward (masks, attention scores)",
    "workspace": "workspace",
    "other": "other",
}
# one colour per kind, the same in every panel (matplotlib's tab10)
KIND_COLOURS = {
    "weights": "#1f77b4", "weight_grads": "#aec7e8", "optimizer": "#9467bd",
    "state": "#8c564b", "feature_maps": "#2ca02c", "gradient_maps": "#ff7f0e",
    "saved": "#e377c2", "workspace": "#bcbd22", "other": "#7f7f7f",
}
UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))
# the limit is drawn where it is at most this many times the highest stack; above,
# it would flatten every stack to the bottom of the panel, so the legend names it
LIMIT_DRAWN_WITHIN = 3.0


def check_plot_available(flag: str = "--plot") -> None:
    """Refuse before a long job, not after it, where matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"{flag}: matplotlib is not installed; install it with "
                         "pip install 'vmem-dnn[plot]'")


def plot_format(path: str | os.PathLike[str], flag: str = "--plot") -> str:
    """"png" or "svg", from the path's suffix (any case); '-' (standard output)
    is PNG. Anything else is refused in one line, before a job runs."""
    given = os.fsdecode(os.fspath(path))
    if given == STDOUT:
        return "png"
    suffix = Path(given).suffix.lower()
    if suffix not in FORMATS:
        shown = f"'{suffix}'" if suffix else "no suffix"
        raise UsageError(f"{flag}: cannot tell the format of '{given}' ({shown}); give a "
                         "file ending in .png or .svg")
    return FORMATS[suffix]


def _unit(nbytes: float) -> tuple[str, int]:
    return next((name, size) for name, size in UNITS if nbytes >= size or size == 1)


def _capacity(session: Session) -> tuple[int | None, str]:
    meta = session.meta
    if meta.memory_limit_bytes:
        return meta.memory_limit_bytes, "memory limit"
    return device_memory_bytes(meta.device_facts), "device memory"


def _panel_title(trial: Trial, step: int | None) -> str:
    result = trial.result
    parts = [result.policy]
    if step is not None:
        parts.append(f"step {step}")
    if result.peak_bytes is not None:
        parts.append(f"peak {format_bytes(result.peak_bytes)}")
    if result.step_ms is not None:
        parts.append(f"{result.step_ms:.1f} ms a step")
    if result.pinned_bytes:
        parts.append(f"pinned host {format_bytes(result.pinned_bytes)} (not device memory)")
    return " · ".join(parts)


def memory_figure(session: Session) -> Any:
    """The plot as a matplotlib Figure: `figure.axes` are the panels, one per
    policy of the session, in its order."""
    check_plot_available()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    meta = session.meta
    trials = list(session.trials)
    chosen = [peak_record(t.records) for t in trials]
    series = [None if r is None else kind_series(r) for r in chosen]
    oracle_record = peak_record(session.oracle.records) if session.oracle else None
    oracle = None if oracle_record is None else kind_series(oracle_record)

    top = max([max(s.totals()) for s in series if s is not None]
              + ([max(oracle.totals())] if oracle else []), default=0)
    capacity, capacity_what = _capacity(session)
    limit_drawn = capacity is not None and (top == 0 or capacity <= LIMIT_DRAWN_WITHIN * top)
    unit, scale = _unit(max(top, capacity if limit_drawn and capacity else 0))

    panel_in = 2.3 if len(trials) > 1 else 4.2
    figure = Figure(figsize=(11, 1.5 + panel_in * len(trials)), dpi=100,
                    layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(len(trials), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    present = [k for k in KIND_LABELS if any(s is not None and k in s.present() for s in series)]
    present += sorted({k for s in series if s is not None for k in s.present()} - set(present))
    ends = [s.end_ms for s in series if s is not None] + ([oracle.end_ms] if oracle else [])
    for axes, trial, record, kinds in zip(panels, trials, chosen, series, strict=True):
        axes.grid(True, alpha=0.3)
        axes.set_title(_panel_title(trial, None if record is None else record.step + 1),
                       loc="left", fontsize="medium")
        if oracle is not None:
            axes.step([*oracle.times_ms, oracle.end_ms], [*(v / scale for v in oracle.in_use),
                      oracle.in_use[-1] / scale], where="post", color="black", linewidth=0.8,
                      linestyle=":", zorder=3)  # over the stack
        if limit_drawn and capacity:
            axes.axhline(capacity / scale, color="red", linestyle="--", linewidth=1.2,
                         zorder=3)
        if record is None or kinds is None:  # could not train: say why where its stack would be
            why = trial.result.error or "no step was recorded"
            axes.text(0.5, 0.5, textwrap.fill(f"{trial.result.policy} could not train: {why}",
                                              110), transform=axes.transAxes, ha="center",
                      va="center", fontsize="small",
                      bbox={"facecolor": "white", "edgecolor": "gray", "alpha": 0.9})
            continue
        times = [*kinds.times_ms, kinds.end_ms]
        stacked = [0.0] * len(times)
        for kind in present:
            values = kinds.by_kind.get(kind)
            if values is None or not any(values):
                continue
            upper = [low + v / scale for low, v in zip(stacked, [*values, values[-1]],
                                                       strict=True)]
            axes.fill_between(times, stacked, upper, step="post", linewidth=0,
                              color=KIND_COLOURS.get(kind, "#17becf"), gid=kind)
            stacked = upper
        for phase, colour in ((BACKWARD, "black"), (UPDATE, "dimgray")):
            start = phase_starts(record).get(phase)
            if start is not None:
                axes.axvline(start, color=colour, linestyle="-." if phase == UPDATE else "--",
                             linewidth=1)
    panels[0].set_xlim(0, max(ends, default=1.0) or 1.0)
    panels[0].set_ylim(0, max(top, capacity if limit_drawn and capacity else 0) / scale * 1.08
                       or 1.0)
    step_texts = sorted({r.step + 1 for r in chosen if r is not None})
    panels[-1].set_xlabel("time from the step's start (ms)" if len(step_texts) != 1 else
                          f"time from the start of training step {step_texts[0]} (ms)")
    figure.supylabel(f"device memory in use ({unit})")
    # left-aligned: centred, a long title would run under the legend beside the panels
    figure.suptitle(f"{meta.profile} · batch {meta.batch} · {meta.device} · allocation "
                    f"{meta.allocation} · {meta.optimizer}", x=0.01, ha="left")

    handles: list[Any] = [Patch(color=KIND_COLOURS.get(k, "#17becf"),
                                label=KIND_LABELS.get(k, k)) for k in reversed(present)]
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1,
                          label="backward pass begins (the loss)"))
    handles.append(Line2D([], [], color="dimgray", linestyle="-.", linewidth=1,
                          label="update begins (optimizer)"))
    if oracle is not None:
        handles.append(Line2D([], [], color="black", linestyle=":", linewidth=0.8,
                              label=f"{ORACLE}: total"))
    if capacity:
        label = f"{capacity_what} {format_bytes(capacity)}"
        handles.append(Line2D([], [], color="red", linestyle="--", linewidth=1.2, label=label)
                       if limit_drawn else
                       Patch(color="none", label=f"{label} (far above; not drawn)"))
    figure.legend(handles=handles, loc="outside right upper", fontsize="small",
                  title="device memory by kind", title_fontsize="small")
    return figure


def memory_plot(session: Session, fmt: str = "png") -> bytes:
    """The plot as the bytes of a PNG or an SVG file."""
    import matplotlib

    figure = memory_figure(session)
    buffer = io.BytesIO()
    # no date, version or random ids in the file: the same session gives the same bytes
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": "vmem"}):
        figure.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()
