"""`vmem fit` for people: a table of the largest batch per policy on one device, or
of each device's fit at one batch."""

from __future__ import annotations

from rich.console import Console

from vmem.fit import Fit, FitReport
from vmem.profiler.tables import Column, print_table
from vmem.units import format_bytes


def _cells(fit: Fit) -> list[str]:
    if not fit.fits:
        least = f"needs {format_bytes(fit.floor)}" if fit.floor else "does not fit"
        return ["[red]does not fit[/red]", least, "-", "-", "-"]
    return [f"{fit.batch:,}", format_bytes(fit.peak or 0), f"{fit.step_ms or 0:,.1f} ms",
            f"{fit.samples_per_s or 0:,.0f}", f"{fit.slowdown:.3f}×" if fit.slowdown else "-"]


def _capacity(report: FitReport, capacity: int) -> str:
    if report.bound == "--memory-limit":
        return f"memory limit {format_bytes(capacity)}"
    return f"device memory {format_bytes(capacity)} (no --memory-limit)"


def render_fit(report: FitReport, console: Console) -> None:
    caption = (f"step: modeled on {report.modeled_on}; slowdown: against the oracular step "
               "(none, memory for everything) at the same batch")
    if report.batch is None:
        first = report.fits[0]
        title = (f"vmem fit {report.profile} · {first.device} · "
                 f"{_capacity(report, first.capacity)} · allocation {report.allocation} · "
                 f"optimizer {report.optimizer}")
        columns = [Column(c, "left" if c == "policy" else "right") for c in
                   ("policy", "largest batch", "peak", "step", "samples/s", "slowdown")]
        print_table(console, columns, [(fit.policy, *_cells(fit)) for fit in report.fits],
                    title=title, caption=caption)
        return
    title = (f"vmem fit {report.profile} · batch {report.batch:,} · allocation "
             f"{report.allocation} · optimizer {report.optimizer}")
    columns = [Column(c, "left" if c in {"device", "policy"} else "right") for c in
               ("device", "memory", "policy", "fit", "peak", "step", "samples/s", "slowdown")]
    rows = []
    devices = dict.fromkeys(fit.device for fit in report.fits)
    for device in devices:
        fits = [fit for fit in report.fits if fit.device == device]
        fitting = [fit for fit in fits if fit.fits]
        capacity = format_bytes(fits[0].capacity)
        if not fitting:
            least = min((f.floor for f in fits if f.floor), default=None)
            rows.append((device, capacity, "-", f"0/{len(fits)}",
                         f"needs {format_bytes(least)}" if least else "-", "-", "-", "-"))
            continue
        best = min(fitting, key=lambda f: f.step_ms or float("inf"))
        peak, step, rate, slowdown = _cells(best)[1:]
        rows.append((device, capacity, best.policy, f"{len(fitting)}/{len(fits)}", peak, step,
                     rate, slowdown))
    print_table(console, columns, rows, title=title,
                caption=caption + "; each row: the fastest policy that fits")
