"""Renderers for people and programs: the rich tables of `vmem run`, `vmem
compare` and `vmem report`, and the JSON they print with `--json`. Everything
here reads a Session and nothing else, so a saved session renders exactly as
the live run did."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console

from vmem.profiler.analysis import KINDS
from vmem.profiler.facts import capacity_text, facts_lines
from vmem.profiler.noise import spread, step_range, timed_steps, within_noise
from vmem.profiler.per_layer import LayerStats, layer_table, offloads_outside_layers, update_ms
from vmem.profiler.render_peak import (
    DEFAULT_COUNT,
    DEFAULT_COUNT_EACH,
    kind_title,
    print_missing,
    print_peak,
)
from vmem.profiler.session import Session, Trial, TrialResult
from vmem.profiler.tables import Column, Row, print_table
from vmem.units import format_bytes

ORACLE_LABEL = "oracle"  # the caption says what it is: policy none, memory for everything
NOISE_MARK = "≈"  # a slowdown within the spread of the step times (vmem.profiler.noise)


def json_output(session: Session, layers: bool = False) -> Any:
    """What `--json` prints: a run's result as one object, a comparison's as a
    list with one object per policy, then the oracular run's (policy none, no
    limit) where no policy's row is that run; in a comparison, "oracular" says
    which object is the oracle, and "within_noise" whether the step differs from
    the oracle's by less than their spread of step times. With `layers`, each has
    its per-layer figures under "layers"."""
    def one(trial: Trial) -> dict[str, Any]:
        data = trial.result.to_json()
        if layers:
            data["layers"] = [asdict(row) for row in layer_table(trial.records)]
            # the network input's offload, which no layer's row holds
            data["offloaded_outside_layers"] = offloads_outside_layers(trial.records)
        return data

    oracle = session.oracle
    if session.meta.command == "run":
        return {**one(session.trials[0]), "within_noise": within_noise(
            session.trials[0].result, oracle.result if oracle else None)}
    rows = [{**one(trial), "oracular": oracle is not None and trial.result == oracle.result,
             "within_noise": within_noise(trial.result, oracle.result if oracle else None)}
            for trial in session.trials]
    if oracle is not None and not any(row["oracular"] for row in rows):
        rows.append({**one(oracle), "oracular": True, "within_noise": False})
    return rows


def render(session: Session, console: Console, layers: bool = False,
           peak_tensors: int | None = None) -> None:
    """The session's tables; `peak_tensors`: how many of the tensors on the device at
    the peak to show (None: DEFAULT_COUNT for a run, DEFAULT_COUNT_EACH a policy for
    a comparison; 0: none)."""
    if session.meta.command == "run":
        _render_run(session, console)
        _print_peaks(session, console, DEFAULT_COUNT if peak_tensors is None else peak_tensors)
    else:
        _render_compare(session, console)
        _print_peaks(session, console,
                     DEFAULT_COUNT_EACH if peak_tensors is None else peak_tensors)
    if layers:
        for trial in session.trials:
            if trial.records:
                _print_layer_table(trial, console)


def _print_peaks(session: Session, console: Console, count: int) -> None:
    """Each trial's tensors at its peak (the oracle's apart from the policies' is left
    out: its peak is in the main table); one line where the session predates them."""
    if count <= 0:
        return
    ran = [trial.result for trial in session.trials if trial.result.error is None]
    for result in ran:
        heading = ("on the device at the peak" if session.meta.command == "run" else
                   f"policy {result.policy}: on the device at the peak")
        if result.at_peak is not None:
            print_peak(console, result.at_peak, count, heading)
    if any(result.at_peak is None for result in ran):
        print_missing(console, session.meta.vmem_version)


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
    oracle = session.oracle.result if session.oracle else None
    _header(session, console, f"vmem run {result.profile} · batch {result.batch} · "
            f"{result.device} · policy {result.policy} · allocation {meta.allocation} · "
            f"optimizer {meta.optimizer}" + (f" (lr {result.lr:.3g})" if result.lr else ""))
    steps = [Row((f"{i + 1}{' (warm-up)' if i == 0 and len(result.losses) > 1 else ''}",
                  "-" if loss is None else f"{loss:.4f}", f"{ms:,.1f}"))
             for i, (loss, ms) in enumerate(zip(result.losses, result.steps_ms, strict=True))]
    print_table(console, [Column("step"), Column("loss"), Column("time (ms)")], steps)
    summary = [("step time (median)", _ms(result.step_ms) + _range_note(result))]
    if result.slowdown is not None:
        noise = (f"; {NOISE_MARK} within the noise: the step times' range overlaps the "
                 "oracle's") if within_noise(result, oracle) else ""
        summary.append(("slowdown vs oracular", f"{result.slowdown:.3f}× ({result.oracle})"
                        f"{noise}"))
    if oracle is not None:
        summary.append(("oracular step (none, no limit)",
                        f"{_ms(oracle.step_ms)}{_range_note(oracle)}, peak "
                        f"{_bytes(oracle.peak_bytes)}"))
    summary += [
        ("peak device memory (arena)", _bytes(result.peak_bytes)),
        ("average device memory", _bytes(result.average_bytes)),
        ("capacity", capacity_text(meta.memory_limit_bytes, meta.device_facts)),
        ("offloaded / prefetched per step",
         f"{_bytes(result.offloaded_bytes)} / {_bytes(result.prefetched_bytes)}")]
    if result.recomputed_bytes:
        summary.append(("recomputed per step", _bytes(result.recomputed_bytes)))
    summary += [("compute stalled for copies", _ms(result.stall_ms)),
                ("pinned host memory", _bytes(result.pinned_bytes))]
    if result.pool_reserved_bytes is not None:
        summary.append(("CuPy pool reserved (peak / at the end)", _pool(result)))
    used = (result.device_facts or {}).get("memory_used_bytes")
    if isinstance(used, int):
        summary.append(("used on the card (NVML)", _bytes(used)))
    print_table(console, [Column("", "left", style="bold"), Column("", "left", wrap=True)],
                summary, show_header=False, box=None)
    _print_kinds_table(result, console)


def _range_note(result: TrialResult) -> str:
    """The fastest and slowest timed step, where they differ (a measured clock)."""
    bounds = step_range(result)
    if bounds is None or bounds[0] == bounds[1]:
        return ""
    return (f" (range {bounds[0]:,.1f}–{bounds[1]:,.1f} ms over "
            f"{len(timed_steps(result))} steps)")


#: the main comparison's columns, in two groups a narrow terminal prints as two tables
MEMORY_COLUMNS = ("peak", "average", "offloaded", "prefetched", "recomputed")
TIME_COLUMNS = ("step", "range", "slowdown", "stall")


def _render_compare(session: Session, console: Console) -> None:
    meta = session.meta
    rows = [trial.result for trial in session.trials]
    oracle = session.oracle.result if session.oracle else None
    _header(session, console, f"vmem compare {meta.profile} · batch {meta.batch} · "
            f"{meta.device} · {capacity_text(meta.memory_limit_bytes, meta.device_facts)} · "
            f"allocation {meta.allocation} · optimizer {meta.optimizer}")
    shown = rows + ([oracle] if oracle else [])
    ranged = spread(shown)  # a measured clock: each row's range of step times
    noisy = any(within_noise(row, oracle) for row in rows)
    caption = "slowdown: step time over the oracular step's, " + (
        "the oracle's: policy none with memory for everything" if oracle else
        "the sum of per-layer times (none with no limit does not fit this device)")
    caption += "; recomputed: bytes dropped after the forward pass and computed again"
    if ranged:
        caption += "; range: fastest–slowest timed step" + (
            " (the policies' steps taken in turn)" if meta.in_turn else "")
    if noisy:
        caption += (f"; {NOISE_MARK}: within the noise, the step times' range overlaps the "
                    "oracle's")
    time_columns = tuple(c for c in TIME_COLUMNS if ranged or c != "range")
    columns = [Column("policy", "left"), *(Column(c) for c in MEMORY_COLUMNS + time_columns)]
    table: list[Row] = []
    failures = []
    for row in rows:
        if row.error is not None:
            table.append(Row((row.policy, "[red]does not fit[/red]",
                              *["-"] * (len(columns) - 2))))
            failures.append(f"{row.policy}: {row.error}")
        else:
            table.append(Row(_compare_cells(row, oracle, ranged, noisy)))
    if oracle is not None:
        table.append(Row(_compare_cells(oracle, oracle, ranged, noisy, ORACLE_LABEL),
                         style="italic", section=True))
    print_table(console, columns, table, caption=caption,
                groups=[("memory per step", MEMORY_COLUMNS), ("time per step", time_columns)])
    for failure in failures:
        console.print(failure, highlight=False, soft_wrap=True)
    fitted = [row for row in rows if row.error is None]
    kinds_rows = [(row.policy, row) for row in fitted]
    if oracle is not None:
        kinds_rows.append((ORACLE_LABEL, oracle))
    if kinds_rows:
        _print_kinds_at_peak_table(kinds_rows, console)
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


def _compare_cells(row: TrialResult, oracle: TrialResult | None, ranged: bool, noisy: bool,
                   label: str | None = None) -> tuple[str, ...]:
    slowdown = "-"
    if row.slowdown:
        # the mark's column is kept in every row, so the ratios stay aligned
        mark = NOISE_MARK if within_noise(row, oracle) else " " if noisy else ""
        slowdown = f"{row.slowdown:.3f}×{mark}"
    bounds = step_range(row)
    span = ["-" if bounds is None else f"{bounds[0]:,.1f}–{bounds[1]:,.1f} ms"] if ranged else []
    return (label or row.policy, _bytes(row.peak_bytes), _bytes(row.average_bytes),
            _bytes(row.offloaded_bytes), _bytes(row.prefetched_bytes),
            _bytes(row.recomputed_bytes), _ms(row.step_ms), *span, slowdown,
            _ms(row.stall_ms))


def _kinds(results: list[TrialResult], average: bool = True) -> list[str]:
    """The kinds that hold any bytes in these results, in the report's order."""
    return [k for k in KINDS if any((r.peak_by_kind or {}).get(k) or
                                    (average and (r.average_by_kind or {}).get(k))
                                    for r in results)]


def _print_kinds_table(result: TrialResult, console: Console) -> None:
    """One trial's device memory by kind, at the peak and time-averaged."""
    rows = [(kind_title(kind), _bytes((result.peak_by_kind or {}).get(kind)),
             _bytes((result.average_by_kind or {}).get(kind))) for kind in _kinds([result])]
    print_table(console, [Column("kind", "left"), Column("at peak"), Column("average")], rows,
                title="device memory by kind")


def _print_kinds_at_peak_table(rows: list[tuple[str, TrialResult]], console: Console) -> None:
    """Several trials' device memory at their peaks, one row each, a column a kind."""
    kinds = _kinds([result for _, result in rows], average=False)
    columns = [Column("policy", "left"), *(Column(kind_title(k, short=True)) for k in kinds)]
    cells = [(label, *(_bytes((result.peak_by_kind or {}).get(k)) for k in kinds))
             for label, result in rows]
    print_table(console, columns, cells, title="device memory at the peak, by kind")


#: the per-layer table's columns: times, then memory
LAYER_TIME_COLUMNS = ("forward", "backward", "recompute", "stall")
LAYER_MEMORY_COLUMNS = ("allocated fwd", "allocated bwd", "peak", "after forward", "offloaded")


def _print_layer_table(trial: Trial, console: Console) -> None:
    result, records = trial.result, trial.records
    timed = records[1:] or records
    steps = (f"step {timed[0].step + 1}" if len(timed) == 1 else
             f"steps {timed[0].step + 1}–{timed[-1].step + 1}")
    title = (f"per layer · policy {result.policy} · times: median of {steps}; "
             f"memory: step {timed[-1].step + 1}")
    caption = (f"optimizer update: {_ms(update_ms(timed[-1]))}; allocated: bytes the pass "
               "allocated; peak: most in use while it ran; after forward: in use once its "
               "forward pass freed" + _outside(trial))
    rows = layer_table(records)
    recomputed = any(row.recompute_ms for row in rows)
    times = tuple(c for c in LAYER_TIME_COLUMNS if recomputed or c != "recompute")
    columns = [Column("layer", "left"), *(Column(c) for c in times + LAYER_MEMORY_COLUMNS)]
    print_table(console, columns, [_layer_cells(row, recomputed) for row in rows], title=title,
                caption=caption, groups=[("time", times), ("memory", LAYER_MEMORY_COLUMNS)])


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
