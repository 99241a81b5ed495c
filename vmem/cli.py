"""The command line: `vmem profiles`, `vmem run`, `vmem compare`, `vmem plan`.

Every error a user can cause prints one line (what is wrong, what is accepted)
and exits with code 2; `--json` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from vmem.errors import UsageError, VmemError
from vmem.units import format_bytes, parse_size

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got '{text}'")
    return value


def _add_network_options(parser: argparse.ArgumentParser, *, training: bool) -> None:
    parser.add_argument("profile", help="a profile name (see `vmem profiles`) or a TOML file")
    parser.add_argument("--batch", type=positive_int, help="batch size (default: the profile's "
                        "batch on cuda and sim, its smaller cpu_batch on cpu, so a run ends in "
                        "seconds)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else "
                        "cpu), cpu, cuda, cuda:N, or sim:GPU to model a GPU you do not have "
                        "(presets: titan-x, h100-pcie5; or sim:FILE.toml) (default: auto)")
    parser.add_argument("--memory-limit", help="device memory capacity to emulate, e.g. 4GiB "
                        "or 512MB (B, KB/MB/GB, KiB/MiB/GiB)")
    if training:
        parser.add_argument("--host-memory-limit", help="pinned host memory the offloaded "
                            "feature maps may use (same units)")
        parser.add_argument("--steps", type=positive_int, default=4, help="training steps; "
                            "the first is a warm-up left out of the timing (default: 4)")
        parser.add_argument("--lr", type=positive_float, default=0.001, help="SGD learning "
                            "rate (momentum 0.9, weight decay 5e-4; default: 0.001)")
        parser.add_argument("--seed", type=int, default=0, help="seed for weights and data "
                            "(default: 0)")
    parser.add_argument("--json", action="store_true", help="print JSON for programs")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vmem", description="GPU memory virtualization runtime and profiler "
                     "for DNN training.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    profiles = commands.add_parser("profiles", help="list the shipped network profiles")
    profiles.add_argument("--json", action="store_true", help="print JSON for programs")

    run = commands.add_parser("run", help="train a profile for a few steps and report memory "
                              "and time", description="Train a network profile on seeded "
                              "synthetic data and report per-step time and loss, peak and "
                              "time-averaged device memory, copies, and the slowdown against "
                              "the oracular step (policy none, no memory limit).")
    _add_network_options(run, training=True)
    run.add_argument("--policy", default="none", help="memory policy: none, vdnn-all, "
                     "vdnn-conv, vdnn-dyn (default: none)")

    compare = commands.add_parser("compare", help="run several policies side by side",
                                  description="One row per policy: peak and average device "
                                  "memory, step time, slowdown against the oracular step, "
                                  "bytes offloaded and prefetched, and compute-stream stalls.")
    _add_network_options(compare, training=True)
    compare.add_argument("--policies", default="none,vdnn-all,vdnn-conv,vdnn-dyn",
                         help="comma-separated policies (default: all four)")

    plan = commands.add_parser("plan", help="print the plan a policy makes, without training")
    _add_network_options(plan, training=False)
    plan.add_argument("--policy", default="vdnn-dyn", help="memory policy (default: vdnn-dyn)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"profiles": cmd_profiles, "run": cmd_run, "compare": cmd_compare,
                "plan": cmd_plan}
    try:
        return commands[args.command](args)
    except VmemError as exc:
        print(f"vmem {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _console() -> Any:
    """Rich output; 120 columns where stdout is no terminal (a pipe, a file), so
    tables are not cut to the 80 columns rich assumes there."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else 120
    return Console(no_color="NO_COLOR" in os.environ, width=width)


def _size(text: str | None, flag: str) -> int | None:
    return None if text is None else parse_size(text, flag)


# -- vmem profiles ------------------------------------------------------------


def cmd_profiles(args: argparse.Namespace) -> int:
    from vmem.profile import list_profiles, load_profile

    rows = []
    for name in list_profiles():
        profile = load_profile(name)
        network = profile.network
        rows.append({"name": name, "input": list(network.input_shape),
                     "parameters": network.num_params(),
                     "gflops_per_sample": network.flops(1) / 1e9,
                     "layers": len(network.nodes), "batch": profile.batch,
                     "cpu_batch": profile.cpu_batch, "description": network.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title="vmem profiles", caption="descriptions: vmem profiles --json")
    for column in ("profile", "input", "parameters", "GFLOPs/sample", "layers", "batch"):
        table.add_column(column, no_wrap=True, justify="left" if column in {"profile", "input"}
                         else "right")
    for row in rows:
        table.add_row(row["name"], "×".join(map(str, row["input"])), f"{row['parameters']:,}",
                      f"{row['gflops_per_sample']:.3f}", str(row["layers"]),
                      f"{row['batch']} (cpu {row['cpu_batch']})")
    _console().print(table)
    return 0


# -- vmem run and vmem compare ----------------------------------------------------


def _trial_spec(args: argparse.Namespace, policy: str) -> Any:
    from vmem.profile import load_profile
    from vmem.trial import TrialSpec

    profile = load_profile(args.profile)
    return TrialSpec(profile.network, args.batch, args.steps, args.device, policy,
                     _size(args.memory_limit, "--memory-limit"),
                     _size(args.host_memory_limit, "--host-memory-limit"), args.seed, args.lr,
                     profile.batch, profile.cpu_batch)


def _oracle(spec: Any) -> Any:
    """The oracular trial: policy none, no memory limit; None where it cannot run
    (a real GPU too small for it)."""
    from dataclasses import replace

    from vmem.errors import OutOfDeviceMemory
    from vmem.trial import run_trial

    try:
        return run_trial(replace(spec, policy="none", memory_limit=None,
                                 host_memory_limit=None, oracular=True))[0]
    except OutOfDeviceMemory:
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from vmem.policies import check_policy
    from vmem.trial import run_trial, with_slowdown

    check_policy(args.policy)
    spec = _trial_spec(args, args.policy)
    result, records = run_trial(spec)
    oracular = spec.policy == "none" and spec.memory_limit is None
    result = with_slowdown(result, records, result if oracular else _oracle(spec))
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        _render_run(result)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vmem.policies import check_policy
    from vmem.trial import failed_trial, run_trial, with_slowdown

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise UsageError("--policies: give at least one policy, e.g. none,vdnn-all")
    for policy in policies:
        check_policy(policy)
    base = _trial_spec(args, policies[0])
    oracle = _oracle(base)
    rows = []
    for policy in policies:
        spec = replace(base, policy=policy)
        try:
            result, records = run_trial(spec)
            rows.append(with_slowdown(result, records, oracle))
        except VmemError as exc:  # a policy that cannot fit says so in its row
            batch = oracle.batch if oracle else (spec.batch or 0)
            device = oracle.device if oracle else spec.device
            rows.append(failed_trial(spec, exc, batch, device))
    if args.json:
        print(json.dumps([row.to_json() for row in rows]))
    else:
        _render_compare(rows, oracle)
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _render_run(result: Any) -> None:
    from rich.table import Table

    console = _console()
    steps = Table(title=f"vmem run {result.profile} · batch {result.batch} · "
                  f"{result.device} · policy {result.policy}")
    steps.add_column("step", justify="right")
    steps.add_column("loss", justify="right")
    steps.add_column("time (ms)", justify="right")
    for i, (loss, ms) in enumerate(zip(result.losses, result.steps_ms, strict=True)):
        warmup = " (warm-up)" if i == 0 and len(result.losses) > 1 else ""
        loss_text = "-" if loss != loss else f"{loss:.4f}"  # NaN where no data (sim)
        steps.add_row(f"{i + 1}{warmup}", loss_text, f"{ms:,.1f}")
    console.print(steps)
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    limit = result.memory_limit_bytes
    summary.add_row("step time (median)", _ms(result.step_ms))
    if result.slowdown is not None:
        summary.add_row("slowdown vs oracular", f"{result.slowdown:.3f}× ({result.oracle})")
    summary.add_row("peak device memory", format_bytes(result.peak_bytes))
    summary.add_row("average device memory", format_bytes(result.average_bytes))
    summary.add_row("memory limit", format_bytes(limit) if limit else "none")
    summary.add_row("offloaded / prefetched per step", f"{format_bytes(result.offloaded_bytes)}"
                    f" / {format_bytes(result.prefetched_bytes)}")
    summary.add_row("compute stalled for copies", _ms(result.stall_ms))
    summary.add_row("pinned host memory", format_bytes(result.pinned_bytes))
    if result.pool_reserved_bytes is not None:
        summary.add_row("CuPy pool reserved", format_bytes(result.pool_reserved_bytes))
    console.print(summary)


def _render_compare(rows: list[Any], oracle: Any) -> None:
    from rich.table import Table

    first = next((r for r in rows if r.error is None), rows[0])
    limit = first.memory_limit_bytes
    title = (f"vmem compare {first.profile} · batch {first.batch} · {first.device} · "
             f"memory limit {format_bytes(limit) if limit else 'none'}")
    table = Table(title=title, caption="slowdown: step time over the oracular step's, "
                  + ("policy none with memory for everything" if oracle else
                     "the sum of per-layer times (none does not fit this device)"))
    for column in ("policy", "peak", "average", "step", "slowdown", "offloaded", "prefetched",
                   "stall"):
        table.add_column(column, no_wrap=True, justify="left" if column == "policy" else "right")
    failures = []
    for row in rows:
        if row.error is not None:
            table.add_row(row.policy, "[red]does not fit[/red]", *["-"] * 6)
            failures.append(f"{row.policy}: {row.error}")
            continue
        table.add_row(row.policy, format_bytes(row.peak_bytes), format_bytes(row.average_bytes),
                      _ms(row.step_ms), f"{row.slowdown:.3f}×" if row.slowdown else "-",
                      format_bytes(row.offloaded_bytes), format_bytes(row.prefetched_bytes),
                      _ms(row.stall_ms))
    console = _console()
    console.print(table)
    for failure in failures:
        console.print(failure, highlight=False, soft_wrap=True)


# -- vmem plan -------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    from vmem.planning import plan_for
    from vmem.profile import load_profile

    profile = load_profile(args.profile)
    plan, peak = plan_for(profile, args.policy, args.device, args.batch,
                          _size(args.memory_limit, "--memory-limit"))
    if args.json:
        print(json.dumps({**json.loads(plan.to_json()), "peak_bytes": peak}))
        return 0
    _console().print(plan.explain(), highlight=False)
    _console().print(f"peak device memory of a step under this plan: {format_bytes(peak)} "
                     f"({peak:,} bytes)", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
