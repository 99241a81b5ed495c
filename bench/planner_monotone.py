"""Whether a larger limit ever gives `budget` a slower plan: modeled steps over
a sweep of limits on a few networks (sim:h100-pcie5, batch 256), and every
place where one limit's plan is slower than a smaller limit's.

    python bench/planner_monotone.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from planner_depth import DEVICE, conv_stack, none_peak, plan_timed

from vmem.units import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from networks import resnet18_plain  # noqa: E402  (the tests' ResNet-18 without BatchNorm)


def main() -> None:
    print(f"sim:{DEVICE}, batch 256")
    resnet = resnet18_plain()
    stack = conv_stack(32)
    top = none_peak(stack)
    sweeps = [("resnet18-plain", resnet, [parse_size(f"{g:.2f}GiB")
                                          for g in np.arange(2.0, 2.61, 0.05)]),
              ("conv-stack-32", stack, [int(top * f) for f in np.arange(0.2, 0.96, 0.05)])]
    for name, network, limits in sweeps:
        steps = [plan_timed(network, "budget", limit).step_ms for limit in limits]
        print(name, " ".join(f"{s:.3f}" for s in steps), flush=True)
        for i in range(1, len(steps)):
            if steps[i] > min(steps[:i]) + 1e-9:
                print(f"  slower within {limits[i]} bytes: {steps[i]:.3f} ms against "
                      f"{min(steps[:i]):.3f}")


if __name__ == "__main__":
    main()
