"""The modeled step of `budget`'s plans (and `vdnn-dyn`'s beside them) on
sim:h100-pcie5 at batch 256 for a fixed set of networks and limits, so that a
change to the planner can be weighed against the figures before it.

    python bench/planner_quality.py
"""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from planner_depth import DEVICE, conv_stack, none_peak, plan_timed

import vmem
from vmem.profile import load_profile
from vmem.units import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from networks import resnet18_plain  # noqa: E402  (the tests' ResNet-18 without BatchNorm)


def cases() -> list[tuple[str, vmem.Network, list[int]]]:
    profile = {name: load_profile(name).network for name in ("alexnet", "vgg16", "googlenet")}
    resnet = resnet18_plain()
    stacks = [conv_stack(pairs) for pairs in (32, 64)]
    return [*[(n.name, n, [none_peak(n) * f // 10 for f in (3, 5, 7)]) for n in stacks],
            ("alexnet", profile["alexnet"], [parse_size(s) for s in ("2GiB", "2.5GiB")]),
            ("vgg16", profile["vgg16"], [parse_size(s) for s in ("12GiB", "14GiB", "16GiB")]),
            ("googlenet", profile["googlenet"], [parse_size(s) for s in ("4GiB", "6GiB")]),
            ("resnet18-plain", resnet,
             [parse_size(s) for s in ("2GiB", "2.05GiB", "2.1GiB", "2.15GiB", "2.2GiB",
                                      "2.5GiB", "3GiB")])]


def main() -> None:
    print(f"{platform.machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; sim:{DEVICE}, "
          "batch 256")
    print("| network | limit bytes | budget step ms | budget s | budget cpu s | budget dry runs | "
          "vdnn-dyn step ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, network, limits in cases():
        for limit in limits:
            b, d = plan_timed(network, "budget", limit), plan_timed(network, "vdnn-dyn", limit)
            print(f"| {name} | {limit} | {b.step_ms:.3f} | {b.seconds:.2f} | {b.cpu_s:.2f} | "
                  f"{b.dry_runs} | "
                  f"{d.step_ms:.3f} |", flush=True)


if __name__ == "__main__":
    main()
