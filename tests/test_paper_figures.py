"""scripts/paper-figures --resnet, on a tiny ResNet within a small limit: the largest
batch it prints for `none` trains on the sim and the next does not (a training step,
not the search's dry runs); the slowdowns it prints at 2x and 4x that batch are the
plans' modeled steps over the oracular step's; bad input stops in one line (exit 2).
The default tables are run by tests/test_docs.py, as docs/paper.md shows them."""

from __future__ import annotations

import io
import re
import runpy
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from vmem.errors import MemoryLimitTooSmall, VmemError
from vmem.planning import oracle_plan, peak_oracle, plan_on_target, resolve_target
from vmem.profile import load_profile
from vmem.trial import TrialSpec, run_trial

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper-figures"
NAME, GPU, LIMIT = "resnet18-tiny", "v100", 32 * 2**20


def _run(*argv: str) -> tuple[int, str, str]:
    out, err, saved = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = [str(SCRIPT), *argv]
    try:
        with redirect_stdout(out), redirect_stderr(err):
            runpy.run_path(str(SCRIPT), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def _rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under the heading that starts with `heading`."""
    block = text[text.index(f"### {heading}"):].split("\n\n")[1]
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in block.splitlines()[2:]]


def _trains(batch: int) -> bool:
    spec = TrialSpec(load_profile(NAME).network, batch, steps=1, device=f"sim:{GPU}",
                     policy="none", memory_limit=LIMIT)
    try:
        run_trial(spec)
    except VmemError:
        return False
    return True


@pytest.fixture(scope="module")
def printed() -> str:
    code, out, err = _run("--resnet", "--networks", NAME, "--memory-limit", "32MiB")
    assert code == 0, err
    return out


def test_the_largest_batch_of_none_is_the_last_that_trains(printed: str) -> None:
    rows = _rows(printed, "The largest batch")
    assert [row[1] for row in rows] == ["none", "vdnn-all", "vdnn-conv", "vdnn-dyn", "budget"]
    batch = int(rows[0][2].replace(",", ""))
    assert batch > 0 and _trains(batch) and not _trains(batch + 1)
    for row in rows:  # batches as multiples of none's, and nothing trains fewer samples
        largest = int(row[2].replace(",", ""))
        assert largest >= batch and row[3] == f"{largest / batch:.2f}×"


def test_the_slowdowns_are_the_plans_steps_over_the_oracles(printed: str) -> None:
    none_batch = int(_rows(printed, "The largest batch")[0][2].replace(",", ""))
    network = load_profile(NAME).network
    target = resolve_target(f"sim:{GPU}", LIMIT)
    peak = peak_oracle(network, target)
    rows = _rows(printed, "Slowdown at")
    assert len(rows) == 2
    fitted = 0
    for row, multiple in zip(rows, (2, 4), strict=True):
        batch = int(re.match(r".*, ([\d,]+) \(", row[0]).group(1).replace(",", ""))
        assert batch == multiple * none_batch
        oracle_ms = oracle_plan(network, batch, peak).step_ms
        for policy, cell in zip(("vdnn-all", "vdnn-conv", "vdnn-dyn", "budget"), row[1:5],
                                strict=True):
            try:
                planned = plan_on_target(network, policy, target, batch, peak)
            except MemoryLimitTooSmall:  # not even the memory-optimal floor fits
                planned = None
            fits = planned is not None and planned.fits
            expected = f"{planned.step_ms / oracle_ms:.3f}×" if fits else "does not fit"
            assert cell == expected, (batch, policy)
            fitted += fits
    assert fitted  # the check above weighed at least one plan that fits


@pytest.mark.parametrize("argv, says", [
    (("--resnet", "--networks", "nope"), "unknown profile 'nope'"),
    (("--resnet", "--networks", ","), "--networks"),
    (("--resnet", "--memory-limit", "4XB"), "--memory-limit"),
    (("--resnet", "--gpu", "nope"), "unknown GPU preset 'nope'"),
    (("--networks", "resnet50"), "only with --resnet"),
])
def test_bad_input_stops_in_one_line(argv: tuple[str, ...], says: str) -> None:
    code, out, err = _run(*argv)
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert "Traceback" not in err and not out
