"""Renderers for people and programs: the rich tables of `vmem run`, `vmem
compare` and `vmem report`, and the JSON they print with `--json`. Everything
here reads a Session and nothing else, so a saved session renders exactly as
the live run did."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from vmem.profiler.analysis import KINDS
from vmem.profiler.facts import capacity_text, facts_lines
from vmem.profiler.per_layer import LayerStats, layer_table, offloads_outside_layers, update_ms
from vmem.profiler.session import Session, Trial, TrialResult
from vmem.units import format_bytes

ORACLE_LABEL = "oracle (none, no limit)"


def json_output(session: Session, layers: bool = False) -> Any:
    """What `--json` prints: a run's result as one object, a comparison's as a
    list with one object per policy, then the oracular run's (policy none, no
    limit) where no policy's row is that run; in a comparison, "oracular" says
    which object is the oracle. With `layers`, each has its per-layer figures
    under "layers"."""
    def one(trial: Trial) -> dict[str, Any]:
        data = trial.result.to_json()
        if layers:
            data["layers"] = [asdict(row) for row in layer_table(trial.records)]
            # the network input's offload, which no layer's row holds
            data["offloaded_outside_layers"] = offloads_outside_layers(trial.records)
        return data

    if session.meta.command == "run":
        return one(session.trials[0])
    oracle = session.oracle
    rows = [{**one(trial), "oracular": oracle is not None and trial.result == oracle.result}
            for trial in session.trials]
    if oracle is not None and not any(row["oracular"] for row in rows):
        rows.append({**one(oracle), "oracular": True})
    return rows


def render(session: Session, console: Console, layers: bool = False) -> None:
    if session.meta.command == "run":
        _render_run(session, console)
    else:
        _render_compare(session, console)
    if layers:
        for trial in session.trials:
            if trial.records:
                console.print(_layer_table(trial))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _bytes(value: float | None) -> str:
    return "-" if value is None else format_bytes(value)


def _header(session: Session, console: Console, title: str) -> None:
    """The command's line, then what ran it: the device, vmem and when."""
    meta = session.meta
    console.print(title, style="bold", highlight=False, soft_wrap=True)
    for line in facts_lines(meta.device_facts):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"vmem {meta.vmem_version} · recorded {meta.created}", highlight=False,
                  soft_wrap=True)


def _render_run(session: Session, console: Console) -> None:
    meta, result = session.meta, session.trials[0].result
    _header(session, console, f"vmem run {result.profile} · batch {result.batch} · "
            f"{result.device} · policy {result.policy} · allocation {meta.allocation} · "
            f"optimizer {meta.optimizer}")
    steps = Table()
    steps.add_column("step", justify="right")
    steps.add_column("loss", justify="right")
    steps.add_column("time (ms)", justify="right")
    for i, (loss, ms) in enumerate(zip(result.losses, result.steps_ms, strict=True)):
        warmup = " (warm-up)" if i == 0 and len(result.losses) > 1 else ""
        steps.add_row(f"{i + 1}{warmup}", "-" if loss is None else f"{loss:.4f}", f"{ms:,.1f}")
    console.print(steps)
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("step time (median)", _ms(result.step_ms))
    if result.slowdown is not None:
        summary.add_row("slowdown vs oracular", f"{result.slowdown:.3f}× ({result.oracle})")
    if session.oracle is not None:
        oracle = session.oracle.result
        summary.add_row("oracular step (none, no limit)",
                        f"{_ms(oracle.step_ms)}, peak {_bytes(oracle.peak_bytes)}")
    summary.add_row("peak device memory (arena)", _bytes(result.peak_bytes))
    summary.add_row("average device memory", _bytes(result.average_bytes))
    summary.add_row("capacity", capacity_text(meta.memory_limit_bytes, meta.device_facts))
    summary.add_row("offloaded / prefetched per step",
                    f"{_bytes(result.offloaded_bytes)} / {_bytes(result.prefetched_bytes)}")
    summary.add_row("compute stalled for copies", _ms(result.stall_ms))
    summary.add_row("pinned host memory", _bytes(result.pinned_bytes))
    if result.pool_reserved_bytes is not None:
        summary.add_row("CuPy pool reserved (peak / at the end)", _pool(result))
    used = (result.device_facts or {}).get("memory_used_bytes")
    if isinstance(used, int):
        summary.add_row("used on the card (NVML)", _bytes(used))
    console.print(summary)
    console.print(_kinds_table(result))


def _render_compare(session: Session, console: Console) -> None:
    meta = session.meta
    rows = [trial.result for trial in session.trials]
    oracle = session.oracle.result if session.oracle else None
    _header(session, console, f"vmem compare {meta.profile} · batch {meta.batch} · "
            f"{meta.device} · {capacity_text(meta.memory_limit_bytes, meta.device_facts)} · "
            f"allocation {meta.allocation} · optimizer {meta.optimizer}")
    caption = "slowdown: step time over the oracular step's, " + (
        "policy none with memory for everything" if oracle else
        "the sum of per-layer times (none with no limit does not fit this device)")
    table = Table(caption=caption)
    for column in ("policy", "peak", "average", "step", "slowdown", "offloaded", "prefetched",
                   "stall"):
        table.add_column(column, no_wrap=True, justify="left" if column == "policy" else "right")
    failures = []
    for row in rows:
        if row.error is not None:
            table.add_row(row.policy, "[red]does not fit[/red]", *["-"] * 6)
            failures.append(f"{row.policy}: {row.error}")
        else:
            table.add_row(*_compare_cells(row))
    if oracle is not None:
        table.add_section()
        table.add_row(*_compare_cells(oracle, ORACLE_LABEL), style="italic")
    console.print(table)
    for failure in failures:
        console.print(failure, highlight=False, soft_wrap=True)
    fitted = [row for row in rows if row.error is None]
    kinds_rows = [(row.policy, row) for row in fitted]
    if oracle is not None:
        kinds_rows.append(("oracle", oracle))
    if kinds_rows:
        console.print(_kinds_at_peak_table(kinds_rows))
    for row in fitted:
        if row.pool_reserved_bytes is not None:
            used = (row.device_facts or {}).get("memory_used_bytes")
            nvml = f" · used on the card (NVML) {_bytes(used)}" if isinstance(used, int) else ""
            console.print(f"{row.policy}: arena peak {_bytes(row.peak_bytes)} · CuPy pool "
                          f"reserved (peak / at the end) {_pool(row)}{nvml}", highlight=False,
                          soft_wrap=True)


def _pool(row: TrialResult) -> str:
    """The CuPy pool's peak and final reserved bytes, and its limit where one is set."""
    limit = (row.device_facts or {}).get("pool_limit_bytes")
    bound = f" (limit {_bytes(limit)})" if isinstance(limit, int) and limit > 0 else ""
    return f"{_bytes(row.pool_peak_bytes)} / {_bytes(row.pool_reserved_bytes)}{bound}"


def _compare_cells(row: TrialResult, label: str | None = None) -> list[str]:
    return [label or row.policy, _bytes(row.peak_bytes), _bytes(row.average_bytes),
            _ms(row.step_ms), f"{row.slowdown:.3f}×" if row.slowdown else "-",
            _bytes(row.offloaded_bytes), _bytes(row.prefetched_bytes), _ms(row.stall_ms)]


_SHORT_KINDS = {"weight_grads": "weight grads", "gradient_maps": "grad maps"}


def _kind_title(kind: str, short: bool = False) -> str:
    if short and kind in _SHORT_KINDS:
        return _SHORT_KINDS[kind]
    return kind.replace("_", " ").replace("grads", "gradients")


def _kinds(results: list[TrialResult], average: bool = True) -> list[str]:
    """The kinds that hold any bytes in these results, in the report's order."""
    return [k for k in KINDS if any((r.peak_by_kind or {}).get(k) or
                                    (average and (r.average_by_kind or {}).get(k))
                                    for r in results)]


def _kinds_table(result: TrialResult) -> Table:
    """One trial's device memory by kind, at the peak and time-averaged."""
    table = Table(title="device memory by kind")
    for column in ("kind", "at peak", "average"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind in _kinds([result]):
        table.add_row(_kind_title(kind), _bytes((result.peak_by_kind or {}).get(kind)),
                      _bytes((result.average_by_kind or {}).get(kind)))
    return table


def _kinds_at_peak_table(rows: list[tuple[str, TrialResult]]) -> Table:
    """Several trials' device memory at their peaks, one row each, a column a kind."""
    kinds = _kinds([result for _, result in rows], average=False)
    table = Table(title="device memory at the peak, by kind")
    table.add_column("policy", no_wrap=True)
    for kind in kinds:
        table.add_column(_kind_title(kind, short=True), justify="right")
    for label, result in rows:
        table.add_row(label, *(_bytes((result.peak_by_kind or {}).get(k)) for k in kinds))
    return table


def _layer_table(trial: Trial) -> Table:
    result, records = trial.result, trial.records
    timed = records[1:] or records
    steps = (f"step {timed[0].step + 1}" if len(timed) == 1 else
             f"steps {timed[0].step + 1}–{timed[-1].step + 1}")
    table = Table(title=f"per layer · policy {result.policy} · times: median of {steps}; "
                  f"memory: step {timed[-1].step + 1}",
                  caption=f"optimizer update: {_ms(update_ms(timed[-1]))}; allocated: bytes "
                  "the pass allocated; peak: most in use while it ran; after forward: in use "
                  "once its forward pass freed" + _outside(trial))
    rows = layer_table(records)
    recomputed = any(row.recompute_ms for row in rows)
    columns = ("layer", "forward", "backward", *(("recompute",) if recomputed else ()), "stall",
               "allocated fwd", "allocated bwd", "peak", "after forward", "offloaded")
    for column in columns:
        table.add_column(column, no_wrap=True, justify="left" if column == "layer" else "right")
    for row in rows:
        table.add_row(*_layer_cells(row, recomputed))
    return table


def _outside(trial: Trial) -> str:
    """The caption's note of offloads no row holds (the network input's)."""
    outside = offloads_outside_layers(trial.records)
    if not outside:
        return ""
    return "; offloaded besides the layers' outputs: " + ", ".join(
        f"{name} {format_bytes(nbytes)}" for name, nbytes in outside.items())


def _layer_cells(row: LayerStats, recomputed: bool) -> list[str]:
    recompute = [f"{row.recompute_ms:,.2f} ms" if row.recompute_ms else "-"] if recomputed else []
    return [row.name, f"{row.forward_ms:,.2f} ms", f"{row.backward_ms:,.2f} ms", *recompute,
            f"{row.stall_ms:,.2f} ms", format_bytes(row.forward_allocated_bytes),
            format_bytes(row.backward_allocated_bytes), format_bytes(row.peak_bytes),
            format_bytes(row.after_forward_bytes),
            format_bytes(row.offloaded_bytes) if row.offloaded_bytes else "-"]
