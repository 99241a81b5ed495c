"""Compare vmem's memory policies from a training loop of one's own: the same network,
batch and memory limit under each policy, beside the oracular step (policy none with
memory for everything).

    python examples/compare_policies.py       # VGG-16, batch 256, a modeled Titan X in 12 GiB
    python examples/compare_policies.py --device cpu --profile alexnet --batch 8 \\
        --memory-limit 780MiB

On a device that computes (cpu, cuda), it also checks what every policy promises: the
same losses as the oracle, bit for bit, since moving feature maps never changes the
arithmetic. On sim, time and memory come from the model and there are no losses.
`vmem compare` prints the same comparison from the command line.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import vmem
from vmem.policies import POLICIES
from vmem.profiler import analysis
from vmem.trial import synthetic_data
from vmem.units import format_bytes


@dataclass(frozen=True)
class Row:
    """One policy's steps, or why it could not train."""

    policy: str
    losses: tuple[float, ...] = ()
    peak_bytes: int = 0
    average_bytes: float = 0.0
    step_ms: float = 0.0  # median over the steps after the first (a warm-up)
    offloaded_bytes: int = 0
    stall_ms: float = 0.0
    error: str | None = None


def train(profile: str | vmem.Network, policy: str, device: str, batch: int, steps: int,
          memory_limit: str | None, oracular: bool = False) -> Row:
    """Train `steps` steps of one policy on a seeded synthetic batch."""
    try:
        with vmem.Runtime(profile, device=device, policy=policy, memory_limit=memory_limit,
                          oracular=oracular, batch=batch, seed=0) as runtime:
            x, y = synthetic_data(runtime.network, batch, seed=0,
                                  data=runtime.backend.runs_kernels)
            losses, records = [], []
            for _ in range(steps):
                losses.append(runtime.train_step(x, y))
                records.append(runtime.last_record)
    except vmem.VmemError as exc:  # the policy cannot fit the limit: say why, go on
        return Row(policy, error=str(exc).splitlines()[0])
    timed = records[1:] or records
    last = timed[-1]
    return Row(policy, tuple(losses), max(analysis.peak_bytes(r) for r in records),
               statistics.fmean(analysis.average_bytes(r) for r in timed),
               statistics.median(r.duration_ms for r in timed),
               analysis.copied_bytes(last, "copy_d2h"), analysis.stall_ms(last))


def compare(profile: str | vmem.Network, device: str, batch: int, memory_limit: str | None,
            policies: tuple[str, ...] = POLICIES, steps: int = 3) -> tuple[Row, list[Row]]:
    """The oracle's row and one row per policy."""
    oracle = train(profile, "none", device, batch, steps, None, oracular=True)
    return oracle, [train(profile, p, device, batch, steps, memory_limit) for p in policies]


def same_losses(row: Row, oracle: Row) -> str:
    if row.error or not oracle.losses or any(loss != loss for loss in oracle.losses):
        return "-"  # no losses to compare (sim computes none)
    return "yes" if row.losses == oracle.losses else "NO"


def print_table(oracle: Row, rows: list[Row]) -> None:
    print(f"{'policy':<10} {'peak':>11} {'average':>11} {'step':>11} {'slowdown':>9} "
          f"{'offloaded':>11} {'stall':>10}  same losses as the oracle")
    for row in [*rows, oracle]:
        name = "oracle" if row is oracle else row.policy
        if row.error:
            print(f"{name:<10} {row.error}")
            continue
        slowdown = row.step_ms / oracle.step_ms if oracle.step_ms else float("nan")
        print(f"{name:<10} {format_bytes(row.peak_bytes):>11} "
              f"{format_bytes(int(row.average_bytes)):>11} {row.step_ms:>8,.1f} ms "
              f"{slowdown:>8.3f}× {format_bytes(row.offloaded_bytes):>11} "
              f"{row.stall_ms:>7,.1f} ms  {same_losses(row, oracle)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="vgg16")
    parser.add_argument("--device", default="sim:titan-x")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--memory-limit", default="12GiB")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    oracle, rows = compare(args.profile, args.device, args.batch, args.memory_limit,
                           steps=args.steps)
    print(f"{args.profile}, batch {args.batch}, {args.device}, memory limit "
          f"{args.memory_limit}")
    print_table(oracle, rows)


if __name__ == "__main__":
    main()
