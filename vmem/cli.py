"""The command line: `vmem profiles`, `vmem run`.

Every error a user can cause prints one line (what is wrong, what is accepted)
and exits with code 2; `--json` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from vmem.errors import VmemError
from vmem.units import format_bytes

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vmem", description="GPU memory virtualization runtime and profiler "
                     "for DNN training.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    profiles = commands.add_parser("profiles", help="list the shipped network profiles")
    profiles.add_argument("--json", action="store_true", help="print JSON for programs")

    run = commands.add_parser("run", help="train a profile for a few steps and report memory "
                              "and time", description="Train a network profile on seeded "
                              "synthetic data and report per-step time and loss, and peak and "
                              "time-averaged device memory.")
    run.add_argument("profile", help="a profile name (see `vmem profiles`) or a TOML file")
    run.add_argument("--batch", type=positive_int, help="batch size (default: the profile's "
                     "batch on cuda, its smaller cpu_batch on cpu, so a run ends in seconds)")
    run.add_argument("--steps", type=positive_int, default=4, help="training steps; the first "
                     "is a warm-up left out of the timing (default: 4)")
    run.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), "
                     "cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--policy", default="none", help="memory policy (default: none)")
    run.add_argument("--memory-limit", help="device memory capacity to emulate, e.g. 4GiB or "
                     "512MB (B, KB/MB/GB, KiB/MiB/GiB)")
    run.add_argument("--lr", type=positive_float, default=0.001, help="SGD learning rate "
                     "(momentum 0.9, weight decay 5e-4; default: 0.001)")
    run.add_argument("--seed", type=int, default=0, help="seed for weights and data (default: 0)")
    run.add_argument("--json", action="store_true", help="print one JSON object for programs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "profiles":
            return cmd_profiles(args)
        return cmd_run(args)
    except VmemError as exc:
        print(f"vmem {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _console() -> Any:
    from rich.console import Console

    return Console(no_color="NO_COLOR" in os.environ)


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


# -- vmem run -------------------------------------------------------------------


def synthetic_batch(input_shape: Sequence[int], classes: int, batch: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded inputs N(0, 1) and uniform labels: the same batch every step, so
    the loss falls as the network fits it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
    return x, rng.integers(0, classes, size=batch)


def cmd_run(args: argparse.Namespace) -> int:
    from vmem.optim import SGD
    from vmem.profile import load_profile
    from vmem.profiler.analysis import average_bytes, peak_bytes
    from vmem.runtime import Runtime

    profile = load_profile(args.profile)
    with Runtime(profile.network, device=args.device, policy=args.policy,
                 memory_limit=args.memory_limit, optimizer=SGD(lr=args.lr),
                 seed=args.seed) as runtime:
        on_cpu = runtime.backend.name == "cpu"
        batch = args.batch or (profile.cpu_batch if on_cpu else profile.batch)
        x, y = synthetic_batch(profile.network.input_shape, runtime.num_classes, batch, args.seed)
        losses, records = [], []
        for _ in range(args.steps):
            losses.append(runtime.train_step(x, y))
            records.append(runtime.last_record)
        timed = records[1:] or records
        result = {
            "profile": profile.network.name, "batch": batch, "device": runtime.backend.name,
            "policy": args.policy, "memory_limit_bytes": runtime.memory_limit,
            "steps": args.steps,
            "peak_bytes": max(peak_bytes(r) for r in records),
            "average_bytes": statistics.fmean(average_bytes(r) for r in timed),
            "step_ms": statistics.median(r.duration_ms for r in timed),
            "steps_ms": [r.duration_ms for r in records],
            "losses": losses,
            "pool_reserved_bytes": runtime.backend.pool_reserved_bytes(),
            "device_facts": runtime.backend.facts(),
        }
    if args.json:
        print(json.dumps(result))
    else:
        _render_run(result)
    return 0


def _render_run(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    steps = Table(title=f"vmem run {result['profile']} · batch {result['batch']} · "
                  f"{result['device']} · policy {result['policy']}")
    steps.add_column("step", justify="right")
    steps.add_column("loss", justify="right")
    steps.add_column("time (ms)", justify="right")
    for i, (loss, ms) in enumerate(zip(result["losses"], result["steps_ms"], strict=True)):
        steps.add_row(str(i + 1) + (" (warm-up)" if i == 0 and len(result["losses"]) > 1 else ""),
                      f"{loss:.4f}", f"{ms:,.1f}")
    console.print(steps)
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    limit = result["memory_limit_bytes"]
    summary.add_row("step time (median)", f"{result['step_ms']:,.1f} ms")
    summary.add_row("peak device memory", format_bytes(result["peak_bytes"]))
    summary.add_row("average device memory", format_bytes(result["average_bytes"]))
    summary.add_row("memory limit", format_bytes(limit) if limit else "none")
    if result["pool_reserved_bytes"] is not None:
        summary.add_row("CuPy pool reserved", format_bytes(result["pool_reserved_bytes"]))
    console.print(summary)


if __name__ == "__main__":
    sys.exit(main())
