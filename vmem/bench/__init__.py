"""`vmem bench softmax|topk|conv|attention|step|cpu-step`: benchmarks of vmem's kernels and
training step against PyTorch, written as markdown tables; all but cpu-step on a GPU.

    vmem bench softmax [--shapes 8192x1024,16x1048576] [--no-sweep] [--runs 50] [--out FILE]
    vmem bench topk    [--k 5,10] ...
    vmem bench conv    [--batch 64] [--no-backward] [--every-algorithm] ...
    vmem bench attention [--shapes 8x12x1024x64,1x16x4096x64] [--no-backward] [--runs 20] ...
    vmem bench step    [--profile vgg16] [--batch 64] [--steps 6] [--policy none] ...
    vmem bench cpu-step [--cases alexnet:32,vgg16:2,googlenet:8] [--rounds 3] [--steps 3]

Wiring (vmem/cli.py): `add_bench_parser(commands)` on the `add_subparsers` object of
`build_parser`, and `if args.command == "bench": return run_bench(args)` in `main`.
Without a GPU every kind but cpu-step raises `DeviceUnavailable` (one line, exit 2
through `main`); cpu-step does without PyTorch.
Modules are imported when a benchmark runs, so `vmem --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vmem.cliargs import add_threads_option, positive_int, thread_count

KINDS = ("softmax", "topk", "conv", "attention", "step", "cpu-step")




def _cases(text: str) -> list[Any]:
    from vmem.bench.cpu_step import parse_cases

    try:
        return parse_cases(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shapes(text: str) -> list[tuple[int, int]]:
    from vmem.bench.softmax import parse_shape

    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [parse_shape(part) for part in parts or [text]]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _attention_shapes(text: str) -> list[tuple[int, int, int, int]]:
    from vmem.bench.attention import parse_shape

    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [parse_shape(part) for part in parts or [text]]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",")]
    except ValueError:
        ks = []
    if not ks or any(not 1 <= k <= 32 for k in ks):
        raise argparse.ArgumentTypeError(f"takes integers from 1 to 32, comma-separated, "
                                         f"got '{text}'")
    return ks


def _common(parser: argparse.ArgumentParser, runs: int, warmup: int) -> None:
    parser.add_argument("--runs", type=positive_int, default=runs,
                        help=f"timed calls per case; the median is reported (default: {runs})")
    parser.add_argument("--warmup", type=positive_int, default=warmup,
                        help=f"untimed calls first (default: {warmup})")
    parser.add_argument("--out", metavar="FILE", help="also write the markdown report here")


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `bench` and its four kinds to the CLI's subparsers; returns the bench parser.
    The kinds use the bench parser's own class (the CLI's one-line-error parser)."""
    bench = subparsers.add_parser(
        "bench", help="time vmem's kernels and training step against PyTorch (needs CUDA)",
        description="GPU benchmarks: CUDA-event timings (warm-up, median, rotated inputs), "
                    "ms and GB/s, PyTorch alongside when importable; markdown tables.")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND",
                                 parser_class=type(bench))
    softmax = kinds.add_parser("softmax", help="online and safe softmax vs torch.softmax")
    softmax.add_argument("--shapes", type=_shapes, help="ROWSxCOLS,... instead of the five "
                         "shapes of issue 5 (drops the batch 4000 / 10 sweeps)")
    softmax.add_argument("--no-sweep", action="store_true",
                         help="skip the batch 4000 and batch 10 column sweeps")
    softmax.add_argument("--no-check", action="store_true",
                         help="skip the float64 check of the outputs")
    _common(softmax, 50, 10)
    topk = kinds.add_parser("topk", help="fused softmax + top-k vs torch.softmax + torch.topk")
    topk.add_argument("--shapes", type=_shapes, help="ROWSxCOLS,... instead of the five shapes")
    topk.add_argument("--k", type=_ks, default=[5], help="k, or several comma-separated, "
                      "from 1 to 32 (default: 5)")
    topk.add_argument("--no-sweep", action="store_true",
                      help="skip the k sweep and the batch 4000 / 10 column sweeps")
    topk.add_argument("--no-check", action="store_true",
                      help="skip the check of indices and values")
    _common(topk, 50, 10)
    conv = kinds.add_parser("conv", help="vmem's conv layer vs torch conv2d (DESIGN.md's "
                            "four VGG-16 layers)")
    conv.add_argument("--batch", type=positive_int, default=64, help="batch (default: 64)")
    conv.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    conv.add_argument("--every-algorithm", action="store_true",
                      help="time every algorithm the layer offers, not the first of each family")
    _common(conv, 10, 3)
    attention = kinds.add_parser("attention", help="causal flash attention kernels vs torch "
                                 "scaled_dot_product_attention (float32 and float16)")
    attention.add_argument("--shapes", type=_attention_shapes, help="NxHEADSxTxD,... instead "
                           "of the five default shapes (GPT-2 small and medium at T = 1024, "
                           "T = 2048 and 4096, a head of 128)")
    attention.add_argument("--no-backward", action="store_true",
                           help="time the forward pass only")
    _common(attention, 20, 3)
    step = kinds.add_parser("step", help="a training step through vmem.Runtime vs PyTorch")
    step.add_argument("--profile", default="vgg16", help="a profile name (default: vgg16)")
    step.add_argument("--batch", type=positive_int, default=64, help="batch (default: 64)")
    step.add_argument("--steps", type=positive_int, default=6,
                      help="steps; the first is a warm-up left out (default: 6)")
    step.add_argument("--policy", default="none", help="memory policy (default: none)")
    step.add_argument("--out", metavar="FILE", help="also write the markdown report here")
    cpu = kinds.add_parser("cpu-step", help="vmem's cpu training step vs PyTorch's CPU step, "
                           "in alternating processes (needs PyTorch)")
    cpu.add_argument("--cases", type=_cases, default=None, metavar="PROFILE:BATCH,...",
                     help="networks and batches (default: alexnet:32,vgg16:2,googlenet:8)")
    cpu.add_argument("--rounds", type=positive_int, default=3,
                     help="rounds of one vmem and one PyTorch process each (default: 3)")
    cpu.add_argument("--steps", type=positive_int, default=3,
                     help="timed steps per process, after one warm-up step (default: 3)")
    add_threads_option(cpu)
    cpu.add_argument("--torch-threads", type=thread_count, help="PyTorch's threads "
                     "(default: PyTorch's own)")
    cpu.add_argument("--out", metavar="FILE", help="also write the markdown report here")
    return bench


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark `args.bench_kind` names, print its markdown report and write it
    to --out. Raises DeviceUnavailable without a GPU (the CLI prints one line, exit 2)."""
    from vmem.profiler.output import check_writable, write_atomic

    kind = args.bench_kind
    # what the user gave is checked before the GPU is asked for, not after a benchmark
    out = getattr(args, "out", None)
    if out is not None:
        check_writable(out, "--out")
    if kind == "cpu-step":
        from vmem.bench.cpu_step import DEFAULT_CASES, bench_cpu_step

        report = bench_cpu_step(args.cases or DEFAULT_CASES, rounds=args.rounds,
                                steps=args.steps, threads=args.threads,
                                torch_threads=args.torch_threads)
        sys.stdout.write(report)
        if out is not None:
            write_atomic(out, report, "--out")
        return 0
    if kind == "step":
        from vmem.policies import check_policy
        from vmem.profile import load_profile

        load_profile(args.profile)
        check_policy(args.policy)
    if kind == "softmax":
        from vmem.bench.softmax import bench_softmax

        report = bench_softmax(args.shapes, sweep=not args.no_sweep, runs=args.runs,
                               warmup=args.warmup, check=not args.no_check)
    elif kind == "topk":
        from vmem.bench.softmax import bench_topk

        report = bench_topk(args.shapes, ks=args.k, sweep=not args.no_sweep, runs=args.runs,
                            warmup=args.warmup, check=not args.no_check)
    elif kind == "conv":
        from vmem.bench.conv import bench_conv

        report = bench_conv(batch=args.batch, runs=args.runs, warmup=args.warmup,
                            backward=not args.no_backward, every_algorithm=args.every_algorithm)
    elif kind == "attention":
        from vmem.bench.attention import bench_attention

        report = bench_attention(args.shapes, runs=args.runs, warmup=args.warmup,
                                 backward=not args.no_backward)
    elif kind == "step":
        from vmem.bench.step import bench_step

        report = bench_step(profile=args.profile, batch=args.batch, steps=args.steps,
                            policy=args.policy)
    else:  # argparse only lets KINDS through
        raise ValueError(f"unknown bench kind {kind!r}; accepted: {', '.join(KINDS)}")
    sys.stdout.write(report)
    if out is not None:
        write_atomic(out, report, "--out")
    return 0


__all__ = ["KINDS", "add_bench_parser", "run_bench"]
