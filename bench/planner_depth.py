"""Planning time against depth: `budget` and `vdnn-dyn` on plain convolution
stacks (conv + relu pairs, then a pool, a linear layer and the loss) at batch
256 on sim:h100-pcie5, within half of `none`'s peak. Prints one markdown row
per depth: nodes, planning times (wall; CPU for budget), each plan's modeled
step.

    python bench/planner_depth.py [--pairs 32 64 128 256] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

import vmem
from vmem.costs import load_costs
from vmem.dryrun import PeakOracle
from vmem.optim import make_optimizer
from vmem.planning import make_budget, plan_with

DEVICE, BATCH = "h100-pcie5", 256


def conv_stack(pairs: int, channels: int = 32, size: int = 32) -> vmem.Network:
    """`pairs` 3x3 convolutions, each followed by a ReLU: 2 * pairs + 3 nodes."""
    t = vmem.layers.LAYER_TYPES
    layers = []
    for i in range(pairs):
        layers += [t["conv"](name=f"conv{i}", out_channels=channels, kernel=3, pad=1),
                   t["relu"](name=f"relu{i}")]
    layers += [t["avgpool"](name="pool", kernel=size), t["linear"](name="fc", out_features=10),
               t["softmax_loss"](name="loss")]
    return vmem.Network.sequential(f"conv-stack-{pairs}", (channels, size, size), layers)


def oracle(network: vmem.Network) -> PeakOracle:
    return PeakOracle(network, np.dtype("float32"), make_optimizer("sgd"),
                      costs=load_costs(DEVICE, 4))


def none_peak(network: vmem.Network, batch: int = BATCH) -> int:
    peak = oracle(network)
    return peak(plan_with(network, "none", batch, 4, make_budget(network, None, peak)))


@dataclass(frozen=True)
class Planned:
    seconds: float  # to plan, on this machine: wall-clock
    cpu_s: float  # to plan: this process's CPU time (less swayed by other work on the machine)
    dry_runs: int  # steps the planner ran, whole or stopped past the capacity (any machine's)
    step_ms: float  # the plan's modeled step
    peak: int  # the plan's peak, bytes


def plan_timed(network: vmem.Network, policy: str, limit: int, batch: int = BATCH) -> Planned:
    """Planning within `limit` bytes, with a fresh oracle, as `vmem plan` has."""
    peak = oracle(network)
    started, cpu = time.perf_counter(), time.process_time()
    plan = plan_with(network, policy, batch, 4, make_budget(network, limit, peak))
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    dry_runs = peak.dry_runs
    run = peak.run(plan)
    return Planned(seconds, cpu_s, dry_runs, run.record.duration_ms, run.peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the budget planner at the deepest stack")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; sim:{DEVICE}, batch {BATCH}, "
          "limit half of none's peak")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} cores")
    print("| nodes | budget s | budget cpu s | budget dry runs | budget step ms | vdnn-dyn s | "
          "vdnn-dyn step ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for pairs in args.pairs:
        network = conv_stack(pairs)
        limit = none_peak(network) // 2
        b, d = plan_timed(network, "budget", limit), plan_timed(network, "vdnn-dyn", limit)
        print(f"| {len(network.nodes)} | {b.seconds:.2f} | {b.cpu_s:.2f} | {b.dry_runs} | "
              f"{b.step_ms:.2f} | "
              f"{d.seconds:.2f} | {d.step_ms:.2f} |", flush=True)
    if args.profile:
        profiler = cProfile.Profile()
        network = conv_stack(max(args.pairs))
        profiler.runcall(plan_timed, network, "budget", none_peak(network) // 2)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
