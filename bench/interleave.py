"""Does interleaving two trials' steps make their ratio less noisy on a shared CPU?

Two trials of identical work (the same profile, policy none, the same seed) whose
true ratio is 1: run one after the other (A's steps, then B's: how `vmem compare`
ran before) or interleaved (A, B, A, B, ...), `--repeats` times each, the two modes
alternating. For each, the ratio of B's median timed step to A's; printed: the
median and largest |ratio - 1| of each mode, and how often the two trials' ranges
of step times overlap (what `compare` marks as within the noise).

    python bench/interleave.py alexnet-tiny --steps 4 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

from vmem.profile import load_profile
from vmem.profiler.noise import step_range
from vmem.trial import TrialRun, TrialSpec


def one(spec: TrialSpec, interleaved: bool) -> tuple[float, bool]:
    with TrialRun(spec) as a, TrialRun(spec) as b:
        if interleaved:
            while not b.done:
                a.step()
                b.step()
        else:
            while not a.done:
                a.step()
            while not b.done:
                b.step()
        ra, rb = a.result(), b.result()
    assert ra.step_ms and rb.step_ms
    (lo_a, hi_a), (lo_b, hi_b) = step_range(ra) or (0, 0), step_range(rb) or (0, 0)
    return rb.step_ms / ra.step_ms, lo_a <= hi_b and lo_b <= hi_a


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int)
    args = parser.parse_args()
    profile = load_profile(args.profile)
    spec = TrialSpec(profile.network, args.batch, args.steps, "cpu", "none",
                     default_batch=profile.batch, default_cpu_batch=profile.cpu_batch)
    results: dict[bool, list[tuple[float, bool]]] = {False: [], True: []}
    start = time.perf_counter()
    for _ in range(args.repeats):
        for interleaved in (False, True):
            results[interleaved].append(one(spec, interleaved))
    print(f"{args.profile}, {args.steps} steps a trial (the first a warm-up), "
          f"{args.repeats} repeats a mode, {time.perf_counter() - start:.0f} s")
    print("| mode | median abs(ratio - 1) | largest abs(ratio - 1) | ratios | ranges overlap |")
    print("| --- | --- | --- | --- | --- |")
    for interleaved, rows in results.items():
        errors = [abs(r - 1) for r, _ in rows]
        ratios = sorted(r for r, _ in rows)
        print(f"| {'interleaved' if interleaved else 'one after the other'} | "
              f"{statistics.median(errors):.3f} | {max(errors):.3f} | "
              f"{ratios[0]:.3f}–{ratios[-1]:.3f} | {sum(o for _, o in rows)}/{len(rows)} |")


if __name__ == "__main__":
    main()
