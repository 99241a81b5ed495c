"""Planning GPT-2 XL: `budget` and `vdnn-dyn` at batch 8 on sim:h100-pcie5 within a
few limits (`vmem plan gpt2-xl --batch 8 --device sim:h100-pcie5 --memory-limit 40GiB
--policy budget` is the first row), with `none`'s figures on either attention
algorithm beside them. Prints markdown rows: planning time (wall, CPU), dry runs, the plan's
modeled step and peak, how many attention layers run flash and how many layers
offload their inputs.

    python bench/planner_gpt2.py [--limits 40GiB 70GiB] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import time
from datetime import UTC, datetime

from planner_depth import oracle

from vmem.planning import make_budget, plan_with
from vmem.policies.vdnn import build_plan, offload_kept_inputs, offload_nothing
from vmem.profile import load_profile
from vmem.units import parse_size

NETWORK, BATCH = "gpt2-xl", 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", nargs="+", default=["40GiB", "70GiB"])
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the budget planner within the first limit")
    args = parser.parse_args()
    network = load_profile(NETWORK).network
    print(f"{platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {NETWORK}, sim:h100-pcie5, batch {BATCH}")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} cores")
    flash = {n.name: -1 for n in network.nodes if n.layer.TYPE == "attention"}
    peak = oracle(network)
    for label, offload, choice in (("none, materialized", offload_nothing, {}),
                                   ("none, flash", offload_nothing, flash),
                                   ("vdnn-all, flash", offload_kept_inputs, flash)):
        run = peak.run(build_plan("x", network, BATCH, 4, offload, choice))
        print(f"{label}: peak {run.peak / 2**30:.2f} GiB, step {run.record.duration_ms:.1f} ms")
    print("| limit | policy | s | cpu s | dry runs | step ms | peak GiB | flash | offloading |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for text in args.limits:
        for policy in ("budget", "vdnn-dyn"):
            peak = oracle(network)  # a fresh one, as `vmem plan` has
            started, cpu = time.perf_counter(), time.process_time()
            plan = plan_with(network, policy, BATCH, 4,
                             make_budget(network, parse_size(text), peak))
            seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
            dry_runs = peak.dry_runs
            run = peak.run(plan)
            flashed = sum(plan.for_layer(name).algorithm == "flash" for name in flash)
            offloading = sum(entry.offload_input for entry in plan.layers)
            print(f"| {text} | {policy} | {seconds:.2f} | {cpu_s:.2f} | {dry_runs} | "
                  f"{run.record.duration_ms:.1f} | {run.peak / 2**30:.2f} | {flashed} | "
                  f"{offloading} |", flush=True)
    if args.profile:
        profiler = cProfile.Profile()
        peak = oracle(network)
        profiler.runcall(plan_with, network, "budget", BATCH, 4,
                         make_budget(network, parse_size(args.limits[0]), peak))
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
