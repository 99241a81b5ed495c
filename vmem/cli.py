"""The command line: `vmem profiles`, `vmem run`, `vmem compare`, `vmem report`,
`vmem plan`.

Every error a user can cause prints one line (what is wrong, what is accepted)
and exits with code 2; `--json` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from vmem.bench import add_bench_parser, run_bench
from vmem.calibrate import add_calibrate_parser, cmd_calibrate
from vmem.cliargs import (
    EXIT_USAGE,
    OneLineParser,
    add_threads_option,
    non_negative_int,
    one_line,
    positive_float,
    positive_int,
)
from vmem.errors import UsageError, VmemError
from vmem.optim import OPTIMIZERS
from vmem.units import format_bytes, format_ms, parse_size

# vmem.executor.ALLOCATIONS, named here so that building the parser imports nothing heavy
ALLOCATIONS = ("liveness", "network-wide")
# vmem.costs.DEFAULT_COST_MODEL: the GPU `vmem profiles FILE` weighs a peak against
DEFAULT_SIM_GPU = "h100-pcie5"


def _add_network_options(parser: argparse.ArgumentParser, *, training: bool) -> None:
    parser.add_argument("profile", help="a profile name (see `vmem profiles`) or a TOML file")
    parser.add_argument("--batch", type=positive_int, help="batch size (default: the profile's "
                        "batch on cuda and sim, its smaller cpu_batch on cpu" +
                        (", so a run ends in seconds)" if training else ")"))
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else "
                        "cpu), cpu, cuda, cuda:N, or sim:GPU to model a GPU you do not have "
                        "(presets: `vmem gpus`; or sim:FILE.toml) (default: auto)")
    parser.add_argument("--memory-limit", help="device memory capacity to emulate, e.g. 4GiB "
                        "or 512MB (B, KB/MB/GB, KiB/MiB/GiB), at most the device's own memory")
    parser.add_argument("--allocation", choices=ALLOCATIONS, default=ALLOCATIONS[0],
                        help="liveness: free each feature and gradient map when no later step "
                        "needs it; network-wide: keep every map to the step's end, as Torch did "
                        "for the vDNN paper's baseline (default: liveness)")
    if training:
        parser.add_argument("--host-memory-limit", help="pinned host memory the offloaded "
                            "feature maps may use (same units)")
        parser.add_argument("--steps", type=positive_int, default=4, help="training steps; "
                            "the first is a warm-up left out of the timing (default: 4)")
        parser.add_argument("--lr", type=positive_float, help="learning rate (default: for "
                            "sgd the profile's, scaled linearly to the batch: its lr for "
                            "lr_batch samples, see `vmem profiles PROFILE`, 0.01 where it "
                            "gives none; for adamw 0.001)")
        parser.add_argument("--seed", type=non_negative_int, default=0, help="seed for "
                            "weights and data, an integer >= 0 (default: 0)")
        add_threads_option(parser)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd: with "
                        "momentum 0.9 and weight decay 5e-4, one state buffer per parameter; "
                        "adamw: betas 0.9, 0.999, weight decay 0.01, two state buffers per "
                        "parameter, so more device memory (default: sgd)")
    parser.add_argument("--json", action="store_true", help="print JSON for programs")
    if training:
        _add_output_options(parser, live=True)


def _add_peak_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--peak-tensors", type=non_negative_int, metavar="N", help="how many "
                        "of the tensors on the device at the peak to show, biggest first, "
                        "with their kind, layer, size and whether the plan offloads or "
                        f"recomputes them, the others summed in a line (default: {default}; "
                        "0: none; --json has them all)")


def _add_output_options(parser: argparse.ArgumentParser, *, live: bool) -> None:
    _add_peak_option(parser, "10, or 5 a policy in a comparison")
    parser.add_argument("--layers", action="store_true", help="also show per-layer forward and "
                        "backward time, stalls and device memory (in JSON: a \"layers\" list)")
    parser.add_argument("--trace", metavar="FILE", help="write a Chrome trace (JSON) of every "
                        "step: a track per stream and device memory in use; open it in "
                        "Perfetto or chrome://tracing")
    parser.add_argument("--plot", metavar="FILE", help="write a plot of device memory over a "
                        "training step, stacked by kind, a panel per policy: PNG or SVG by "
                        "the suffix (.png, .svg; '-' is PNG on standard output; needs "
                        "matplotlib: pip install 'vmem-dnn[plot]')")
    if live:
        parser.add_argument("--save-session", metavar="FILE", help="save what was measured "
                            "(results, every step's events, device facts) as JSON; `vmem "
                            "report FILE` renders it again without rerunning")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vmem", description="GPU memory virtualization runtime and "
                           "profiler for DNN training.")
    from vmem import __version__

    parser.add_argument("--version", action="version", version=f"vmem {__version__}")
    # not required: a bare `vmem` prints this help and exits 0 (see main)
    commands = parser.add_subparsers(dest="command", parser_class=OneLineParser)

    profiles = commands.add_parser(
        "profiles", help="list the shipped network profiles, or check and summarise one",
        description="Without PROFILE: the shipped profiles, with their input, parameters, "
        "GFLOPs per sample, layers and batch. With PROFILE (a TOML file of your own, or a "
        "shipped name): check it (a bad file gets one line naming the file, the line and "
        "the layer) and summarise it: parameters, GFLOPs per sample, and the peak device "
        "memory of a training step under policy none at its batch on --device, from a dry "
        "run, and whether that fits the device's memory.")
    profiles.add_argument("profile", nargs="?", help="a TOML file (or a shipped name) to "
                          "check and summarise")
    profiles.add_argument("--device", help="with PROFILE: the device whose memory the peak "
                          "is weighed against: sim:GPU (presets: `vmem gpus`), cpu, cuda, "
                          f"cuda:N (default: sim:{DEFAULT_SIM_GPU})")
    profiles.add_argument("--batch", type=positive_int, help="with PROFILE: the batch of the "
                          "peak (default: the profile's batch, its cpu_batch on cpu)")
    profiles.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="with "
                          "PROFILE: the optimizer whose state the peak holds (default: sgd)")
    profiles.add_argument("--json", action="store_true", help="print JSON for programs")

    gpus = commands.add_parser("gpus", help="list the GPU presets --device sim:NAME models",
                               description="The presets of vmem/gpus.toml: memory, float32 "
                               "throughput, memory bandwidth, pinned copy rates and the CUDA "
                               "device names each models (where their figures come from: "
                               "--json, or the file's comments).")
    gpus.add_argument("--json", action="store_true", help="print JSON for programs")

    run = commands.add_parser("run", help="train a profile for a few steps and report memory "
                              "and time", description="Train a network profile on seeded "
                              "synthetic data and report per-step time and loss, peak and "
                              "time-averaged device memory, copies, the slowdown against "
                              "the oracular step (policy none, no memory limit), and the "
                              "tensors on the device at the peak.")
    _add_network_options(run, training=True)
    run.add_argument("--policy", default="none", help="memory policy: none, vdnn-all, "
                     "vdnn-conv, vdnn-dyn, budget (default: none)")

    compare = commands.add_parser("compare", help="run several policies side by side",
                                  description="One row per policy: peak and average device "
                                  "memory, step time, slowdown against the oracular step, "
                                  "bytes offloaded and prefetched, and compute-stream stalls; then "
                                  "each policy's tensors on the device at its peak.")
    _add_network_options(compare, training=True)
    compare.add_argument("--policies", default="none,vdnn-all,vdnn-conv,vdnn-dyn,budget",
                         help="comma-separated policies (default: all five)")
    compare.add_argument("--one-after-another", action="store_true", help="on the cpu, run "
                         "each policy's steps in one go, holding one policy's runtime at a "
                         "time (default there: the policies' steps in turn, a step of each a "
                         "round, so load from elsewhere on a shared machine falls on every "
                         "policy alike; it holds every policy's weights at once). On cuda "
                         "and sim the policies always run one after another")

    report = commands.add_parser("report", help="render a saved session again",
                                 description="Render a session saved with --save-session "
                                 "exactly as the run that saved it printed it, or as JSON, a "
                                 "trace or a plot, without rerunning anything.")
    report.add_argument("session", metavar="FILE", help="a session file (--save-session)")
    report.add_argument("--json", action="store_true", help="print JSON for programs")
    _add_output_options(report, live=False)

    plan = commands.add_parser(
        "plan", help="print the plan a policy makes, without training",
        description="The plan a policy makes for a profile on a device, without training: "
        "each layer's algorithm and workspace, which inputs leave the device and which "
        "outputs are computed again, and, from a dry run of the step on the device's cost "
        "model, its exact peak, its modeled step and slowdown against the oracular step "
        "(policy none with memory for everything), for vdnn-dyn which configuration "
        "it chose, and the tensors on the device at the peak.")
    _add_network_options(plan, training=False)
    plan.add_argument("--policy", default="vdnn-dyn", help="memory policy (default: vdnn-dyn)")
    _add_peak_option(plan, "10")

    fit = commands.add_parser(
        "fit", help="the largest batch each policy trains on a device, or which devices fit "
        "a batch, without training", description="Without --batch: the largest batch each "
        "policy trains within the device's memory (or --memory-limit), found by a search over "
        "dry runs (exact peaks), with its modeled step, samples per second and slowdown "
        "against the oracular step. With --batch: whether each policy fits that batch on "
        "each of --devices (or on --device), and how fast.")
    _add_network_options(fit, training=False)
    fit.add_argument("--devices", help="with --batch: 'all' (every GPU preset) or a "
                     "comma-separated list of presets or devices, e.g. titan-x,h100-pcie5")
    fit.add_argument("--policies", default="none,vdnn-all,vdnn-conv,vdnn-dyn,budget",
                     help="comma-separated policies (default: all five)")

    add_calibrate_parser(commands)
    add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:  # a bare `vmem`: what it can do, not an error
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)} (see vmem --help)")
        parser.print_help()
        return 0
    if unknown:  # argparse would name only "vmem"; name the command they were given to
        print(one_line(f"vmem {args.command}: error: unrecognized arguments: "
                       f"{' '.join(unknown)} (see vmem {args.command} --help)"),
              file=sys.stderr)
        return EXIT_USAGE
    args.argv = argv
    commands = {"profiles": cmd_profiles, "gpus": cmd_gpus, "run": cmd_run, "compare": cmd_compare,
                "report": cmd_report, "plan": cmd_plan, "fit": cmd_fit, "calibrate": cmd_calibrate,
                "bench": run_bench}
    try:
        return commands[args.command](args)
    except VmemError as exc:
        print(one_line(f"vmem {args.command}: error: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as exc:  # a batch too big for this machine's own memory
        detail = f" ({exc})" if str(exc) else ""
        print(one_line(f"vmem {args.command}: error: out of host memory{detail}; try a "
                       "smaller --batch"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _console(stderr: bool = False) -> Any:
    """Rich output as wide as the terminal or COLUMNS, else 120 columns where the
    stream is no terminal (vmem.profiler.tables.console)."""
    from vmem.profiler.tables import console

    return console(stderr=stderr)


def _size(text: str | None, flag: str) -> int | None:
    return None if text is None else parse_size(text, flag)


# -- vmem profiles ------------------------------------------------------------


def cmd_gpus(args: argparse.Namespace) -> int:
    from vmem.costs import gpu_presets

    rows = [{"name": gpu.name, "memory_bytes": gpu.memory_bytes, "tflops": gpu.tflops,
             "bandwidth_gbps": gpu.bandwidth_gbps, "d2h_gbps": gpu.d2h_gbps,
             "h2d_gbps": gpu.h2d_gbps, "launch_us": gpu.launch_us, "match": list(gpu.match),
             "description": gpu.description} for gpu in gpu_presets().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from vmem.profiler.tables import Column, print_table

    columns = [Column("preset", "left"), Column("memory"), Column("TFLOPS"), Column("GB/s"),
               Column("copies GB/s"), Column("CUDA names", "left", wrap=True)]
    print_table(_console(), columns, [
        (row["name"], format_bytes(row["memory_bytes"]), f"{row['tflops']:g}",
         f"{row['bandwidth_gbps']:g}", f"{row['d2h_gbps']:g} / {row['h2d_gbps']:g}",
         ", ".join(row["match"]) or "-") for row in rows],
        title="vmem gpus (--device sim:NAME)",
        caption="descriptions: vmem gpus --json; sources: vmem/gpus.toml")
    return 0


def _profile_row(name: str, profile: Any) -> dict[str, Any]:
    network = profile.network
    per_sample = network.flops(1) / 1e9
    return {"name": name, "input": list(network.input_shape),
            "vocab": network.vocab or None,
            "parameters": network.num_params(),
            "gflops_per_sample": per_sample,
            # a language model's sample is a sequence of input_shape[0] tokens
            "gflops_per_token": (per_sample / network.input_shape[0]
                                 if network.takes_tokens else None),
            "layers": len(network.nodes), "batch": profile.batch,
            "cpu_batch": profile.cpu_batch, "lr": profile.learning_rate.lr,
            "lr_batch": profile.learning_rate.batch, "description": network.description}


def cmd_profiles(args: argparse.Namespace) -> int:
    from vmem.profile import list_profiles, load_profile

    if args.profile is not None:
        return _profile_summary(args)
    for flag in ("device", "batch"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag}: give a profile too (vmem profiles FILE.toml "
                             f"--{flag} ...); the list takes none")
    rows = [_profile_row(name, load_profile(name)) for name in list_profiles()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from vmem.profiler.tables import Column, print_table

    columns = [Column("profile", "left"), Column("input", "left"), Column("parameters"),
               Column("GFLOPs/sample"), Column("GFLOPs/token"), Column("layers"),
               Column("batch")]
    cells = []
    for row in rows:
        shown = "×".join(map(str, row["input"]))
        if row["vocab"]:
            shown = f"{shown} tokens of {row['vocab']:,}"
        per_token = row["gflops_per_token"]
        cells.append((row["name"], shown, f"{row['parameters']:,}",
                      f"{row['gflops_per_sample']:.3f}",
                      "-" if per_token is None else f"{per_token:.4f}", str(row["layers"]),
                      f"{row['batch']} (cpu {row['cpu_batch']})"))
    print_table(_console(), columns, cells, title="vmem profiles",
                caption="descriptions: vmem profiles --json")
    return 0


def _gflops(value: float) -> str:
    """Three decimals, or three significant figures below one (a small network's
    0.000241 GFLOPs is no 0.000)."""
    return f"{value:,.3f}" if value >= 1 else f"{value:.3g}"


def _profile_summary(args: argparse.Namespace) -> int:
    """`vmem profiles FILE`: the file checked (loading it is the check), summarised,
    and policy none's exact peak at its batch on the device, weighed against the
    device's memory."""
    from vmem.planning import oracle_plan, peak_oracle, resolve_target
    from vmem.profile import load_profile

    profile = load_profile(args.profile)
    target = resolve_target(args.device or f"sim:{DEFAULT_SIM_GPU}", None)
    batch = args.batch or target.default_batch(profile)
    peak = oracle_plan(profile.network, batch,
                       peak_oracle(profile.network, target, optimizer=args.optimizer)).peak
    row = {**_profile_row(profile.network.name, profile), "path": str(profile.path),
           "device": target.name, "device_memory_bytes": target.capacity,
           "peak_batch": batch, "optimizer": args.optimizer, "none_peak_bytes": peak,
           "fits": target.capacity is None or peak <= target.capacity}
    if args.json:
        print(json.dumps(row))
        return 0
    network = profile.network
    shown = "×".join(map(str, network.input_shape))
    if network.vocab:
        shown = f"{shown} tokens of {network.vocab:,}"
    per_token = row["gflops_per_token"]
    lines = [f"{row['name']} ({row['path']}): a valid profile",
             *([network.description] if network.description else []),
             f"input {shown} · {row['layers']} layers · {row['parameters']:,} parameters · "
             f"{_gflops(row['gflops_per_sample'])} GFLOPs per sample" +
             (f" ({_gflops(per_token)} per token)" if per_token is not None else "") +
             f" · batch {profile.batch} (cpu {profile.cpu_batch})"]
    capacity = target.capacity
    room = ("" if capacity is None else
            f"; fits the device's {format_bytes(capacity)}" if row["fits"] else
            f"; more than the device's {format_bytes(capacity)}: `vmem fit` finds the batch "
            "each policy trains there")
    rate = profile.learning_rate
    lines.append(f"SGD learning rate {rate.words()}: {rate.at(profile.batch):.3g} at batch "
                 f"{profile.batch}, {rate.at(profile.cpu_batch):.3g} at cpu batch "
                 f"{profile.cpu_batch}" if rate.batch is not None else
                 f"SGD learning rate {rate.words()}")
    lines.append(f"peak device memory of a training step under policy none at batch {batch} "
                 f"on {target.name} ({args.optimizer}): {format_bytes(peak)} ({peak:,} "
                 f"bytes){room}")
    console = _console()
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    return 0


# -- vmem run, vmem compare and vmem report ------------------------------------------


OUTPUT_FLAGS = ("--trace", "--plot", "--save-session")


def _outputs(args: argparse.Namespace) -> dict[str, str]:
    """The output files asked for, by flag."""
    given = {flag: getattr(args, flag.lstrip("-").replace("-", "_"), None)
             for flag in OUTPUT_FLAGS}
    return {flag: path for flag, path in given.items() if path is not None}


def _to_stdout(args: argparse.Namespace) -> str | None:
    """The flag whose output goes to standard output ('-'), if one does."""
    from vmem.profiler.output import STDOUT

    return next((flag for flag, path in _outputs(args).items() if path == STDOUT), None)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output that cannot be written before a long job starts, and two
    outputs to one file (the second would overwrite the first) or to standard
    output."""
    from vmem.profiler.output import STDOUT, check_writable
    from vmem.profiler.plot import check_plot_available, plot_format

    written: dict[str, str] = {}
    for flag, path in _outputs(args).items():
        target = str(check_writable(path, flag, stdout=True))
        if target in written:
            what = "standard output" if target == STDOUT else "file"
            raise UsageError(f"{flag}: '{path}' is also the {written[target]} {what}; give "
                             "each output its own file")
        written[target] = flag
    stdout = _to_stdout(args)
    if stdout is not None and args.json:
        raise UsageError(f"--json: standard output already carries the {stdout} output "
                         f"('-'); give {stdout} a file")
    if args.plot is not None:
        if args.plot == STDOUT and sys.stdout.isatty():
            raise UsageError("--plot: '-' would write a PNG to a terminal; give a file path, "
                             "or pipe standard output")
        plot_format(args.plot)
        check_plot_available()


def _emit(session: Any, args: argparse.Namespace) -> None:
    """Write the files asked for (the session first: from it, `vmem report`
    prints everything again), then print the session (a table, or JSON; the
    table goes to standard error where an output took standard output)."""
    from vmem.profiler.output import write_atomic
    from vmem.profiler.render import json_output, render
    from vmem.profiler.session import finite_json

    if getattr(args, "save_session", None) is not None:
        session.save(args.save_session, "--save-session", stdout=True)
    if args.trace is not None:
        from vmem.profiler.trace import chrome_trace

        write_atomic(args.trace, json.dumps(chrome_trace(session), allow_nan=False), "--trace",
                     stdout=True)
    if args.plot is not None:
        from vmem.profiler.plot import memory_plot, plot_format

        write_atomic(args.plot, memory_plot(session, plot_format(args.plot)), "--plot",
                     stdout=True)
    if args.json:
        print(json.dumps(finite_json(json_output(session, args.layers)), allow_nan=False))
    else:
        render(session, _console(stderr=_to_stdout(args) is not None), args.layers,
               args.peak_tensors)
    _say_written(args)


def _say_written(args: argparse.Namespace) -> None:
    """A line for each file written, below the tables (on standard error where
    standard output carries JSON or an output); none for an output sent to
    standard output."""
    import shlex

    from vmem.profiler.output import STDOUT

    notes = {"--save-session": "the session to {}: `vmem report {}` prints these tables "
             "again", "--trace": "the trace to {}: open it in Perfetto (ui.perfetto.dev) or "
             "chrome://tracing", "--plot": "the plot to {}"}
    lines = [f"wrote {notes[flag].format(path, shlex.quote(path))}"
             for flag, path in _outputs(args).items() if path != STDOUT]
    if lines:
        console = _console(stderr=args.json or _to_stdout(args) is not None)
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True, markup=False)


def _trial_spec(args: argparse.Namespace, policy: str) -> Any:
    from vmem.profile import load_profile
    from vmem.trial import TrialSpec

    profile = load_profile(args.profile)
    return TrialSpec(profile.network, args.batch, args.steps, args.device, policy,
                     _size(args.memory_limit, "--memory-limit"),
                     _size(args.host_memory_limit, "--host-memory-limit"), args.seed, args.lr,
                     profile.batch, profile.cpu_batch, allocation=args.allocation,
                     optimizer=args.optimizer, threads=args.threads,
                     learning_rate=profile.learning_rate)


def _progress(args: argparse.Namespace, total: int) -> Any:
    from vmem.profiler.progress import StepProgress

    return StepProgress(total, enabled=not args.json)


def _oracle(spec: Any, progress: Any) -> Any:
    """The oracular trial (policy none, no memory limit) with its records; None
    where it cannot run (a real GPU too small for it)."""
    from dataclasses import replace

    from vmem.errors import OutOfDeviceMemory
    from vmem.profiler.session import Trial
    from vmem.trial import run_trial

    progress.describe("oracle (none, no limit)")
    try:
        result, records = run_trial(replace(spec, policy="none", memory_limit=None,
                                            host_memory_limit=None, oracular=True),
                                    progress.step)
    except OutOfDeviceMemory:
        return None
    return Trial(result, tuple(records))


def _session(args: argparse.Namespace, spec: Any, policies: list[str], trials: list[Any],
             oracle: Any, in_turn: bool = False) -> Any:
    from datetime import UTC, datetime

    from vmem import __version__
    from vmem.profiler.session import Session, SessionMeta

    ran = [t.result for t in trials if t.result.error is None]
    if oracle is not None:
        ran.append(oracle.result)
    first = ran[0] if ran else trials[0].result
    meta = SessionMeta(
        command=args.command, profile=spec.network.name, batch=first.batch or spec.batch,
        device=first.device, policies=tuple(policies), allocation=spec.allocation,
        memory_limit_bytes=spec.memory_limit, steps=spec.steps,
        device_facts=next((r.device_facts for r in ran if r.device_facts), {}),
        vmem_version=__version__,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), argv=tuple(args.argv),
        optimizer=spec.optimizer, in_turn=in_turn)
    return Session(meta, tuple(trials), oracle)


def cmd_run(args: argparse.Namespace) -> int:
    from vmem.policies import check_policy
    from vmem.profiler.session import Trial
    from vmem.trial import run_trial, with_slowdown

    check_policy(args.policy)
    _check_outputs(args)
    spec = _trial_spec(args, args.policy)
    oracular = spec.policy == "none" and spec.memory_limit is None
    with _progress(args, spec.steps * (1 if oracular else 2)) as progress:
        progress.describe(f"policy {spec.policy}")
        result, records = run_trial(spec, progress.step)
        oracle = None if oracular else _oracle(spec, progress)
    result = with_slowdown(result, records, result if oracular else
                           oracle.result if oracle else None)
    _emit(_session(args, spec, [spec.policy], [Trial(result, tuple(records))], oracle), args)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vmem.comparison import in_turn_by_default, run_trials
    from vmem.profiler.session import Trial
    from vmem.trial import failed_trial, with_slowdown

    policies = _policies(args.policies)
    _check_outputs(args)
    base = _trial_spec(args, policies[0])
    if base.memory_limit is not None:  # one above the device's memory: refused before any trial
        from vmem.backends import get_backend

        get_backend(base.device, base.memory_limit).close()
    in_turn = not args.one_after_another and in_turn_by_default(base)
    with _progress(args, base.steps * (len(policies) + 1)) as progress:
        ran = run_trials(base, policies, progress, in_turn)
    oracle = ran.oracle
    oracle_result = oracle.result if oracle else None
    if oracle is not None:
        oracle = Trial(with_slowdown(oracle.result, list(oracle.records), oracle_result),
                       oracle.records)
    trials = []
    for policy in policies:
        outcome = ran.outcomes[policy]
        if isinstance(outcome, VmemError):
            spec = replace(base, policy=policy)
            batch = oracle_result.batch if oracle_result else (spec.batch or 0)
            device = oracle_result.device if oracle_result else spec.device
            trials.append(Trial(failed_trial(spec, outcome, batch, device)))
        else:
            result, records = outcome
            trials.append(Trial(with_slowdown(result, records, oracle_result), tuple(records)))
    _emit(_session(args, base, policies, trials, oracle, in_turn=in_turn), args)
    return 0


def _policies(text: str) -> list[str]:
    """--policies: known names, each once, in the order given."""
    from vmem.policies import POLICIES

    policies = [p.strip() for p in text.split(",") if p.strip()]
    if not policies:
        raise UsageError("--policies: give at least one policy, e.g. none,vdnn-all")
    for policy in policies:
        if policy not in POLICIES:
            raise UsageError(f"--policies: unknown policy '{policy}'; known: "
                             f"{', '.join(POLICIES)}")
        if policies.count(policy) > 1:
            raise UsageError(f"--policies: '{policy}' is given twice; name each policy once")
    return policies


def cmd_report(args: argparse.Namespace) -> int:
    from vmem.profiler.session import load_session

    _check_outputs(args)
    _emit(load_session(args.session), args)
    return 0


# -- vmem plan -------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    from vmem.planning import plan_with_oracle
    from vmem.policies import check_policy
    from vmem.policies.vdnn import vdnn_configuration
    from vmem.profile import load_profile
    from vmem.profiler.progress import StepProgress

    check_policy(args.policy)
    profile = load_profile(args.profile)
    # a count of dry runs, not a bar: how many a planner makes is not known ahead
    with StepProgress(None, enabled=not args.json,
                      description=f"plan {args.policy}: dry runs") as progress:
        report = plan_with_oracle(profile, args.policy, args.device, args.batch,
                                  _size(args.memory_limit, "--memory-limit"),
                                  allocation=args.allocation, optimizer=args.optimizer,
                                  on_dry_run=progress.step)
    planned = report.planned
    plan, peak, capacity, bound = planned.plan, planned.peak, planned.capacity, planned.bound
    configuration = vdnn_configuration(profile.network, plan, report.itemsize)
    costs = report.target.costs
    model = costs.gpu.name if costs is not None else None
    slowdown = report.slowdown
    from vmem.profiler.peak import live_at_peak
    from vmem.roles import describe

    at_peak = describe(live_at_peak(planned.run.record), profile.network, plan,
                       report.itemsize)
    if args.json:
        from dataclasses import asdict

        print(json.dumps({**json.loads(plan.to_json()), "peak_bytes": peak,
                          "allocation": args.allocation, "optimizer": args.optimizer,
                          "capacity_bytes": capacity, "fits": planned.fits,
                          "device": report.target.name, "cost_model": model,
                          "step_ms": planned.step_ms, "oracle_step_ms": report.oracle.step_ms,
                          "slowdown": slowdown, "configuration": configuration,
                          "at_peak": asdict(at_peak)}))
        return 0
    from vmem.profiler.render_peak import DEFAULT_COUNT, print_peak
    from vmem.profiler.render_plan import print_plan

    console = _console()
    print_plan(console, plan)
    console.print(f"peak device memory of a step under this plan ({args.allocation} "
                  f"allocation, {args.optimizer}): {format_bytes(peak)} ({peak:,} bytes)",
                  highlight=False, soft_wrap=True)
    if slowdown is not None:
        console.print(f"modeled step {format_ms(planned.step_ms)} on {report.target.name} "
                      f"({model} cost model); the oracular step (none, memory for "
                      f"everything) {format_ms(report.oracle.step_ms)}: slowdown "
                      f"{slowdown:.3f}×",
                      highlight=False, soft_wrap=True)
    if args.policy == "vdnn-dyn" and configuration is not None:
        console.print(f"vdnn-dyn chose {configuration}", highlight=False, soft_wrap=True)
    if not planned.fits:
        hint = "" if args.policy == "vdnn-dyn" else "; --policy vdnn-dyn makes a plan that fits"
        console.print(f"this plan does not fit: its peak exceeds the {format_bytes(capacity)} "
                      f"({capacity:,} bytes) of {bound}, so a step would run out of device "
                      f"memory{hint}", highlight=False, soft_wrap=True)
    print_peak(console, at_peak, DEFAULT_COUNT if args.peak_tensors is None else
               args.peak_tensors)
    return 0


# -- vmem fit --------------------------------------------------------------------------


def cmd_fit(args: argparse.Namespace) -> int:
    from vmem.fit import fit_device, fit_devices, parse_devices
    from vmem.profile import load_profile
    from vmem.profiler.render_fit import render_fit

    policies = _policies(args.policies)
    network = load_profile(args.profile).network
    limit = _size(args.memory_limit, "--memory-limit")
    if args.devices is not None:
        if args.batch is None:
            raise UsageError("--devices: give --batch too (the batch each device must fit)")
        if limit is not None:
            raise UsageError("--memory-limit: give it with --device, not --devices (each "
                             "GPU fits within its own memory)")
        report = fit_devices(network, parse_devices(args.devices), args.batch, None, policies,
                             args.allocation, args.optimizer)
    elif args.batch is not None:
        report = fit_devices(network, [args.device], args.batch, limit, policies,
                             args.allocation, args.optimizer)
    else:
        report = fit_device(network, args.device, limit, policies, args.allocation,
                            args.optimizer)
    if args.json:
        from vmem.profiler.session import finite_json

        print(json.dumps(finite_json(report.to_json()), allow_nan=False))
    else:
        render_fit(report, _console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
