"""The examples run as a user would run them, on real data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from networks import pointwise_network

import vmem

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):  # noqa: ANN201 - the example's module
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_digits_example_reaches_95_percent(optimizer: str) -> None:
    """scikit-learn's handwritten digits, a held-out quarter as the test split."""
    accuracy = load_example("train_digits").train(device="cpu", seed=0, optimizer=optimizer)
    assert accuracy >= 0.95


def test_policy_comparison_example_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """Under a limit between vdnn-all's peak and none's, none runs out of memory, and
    every policy that fits stays within the limit with the oracle's losses, bit for bit."""
    example = load_example("compare_policies")
    network = pointwise_network()
    with vmem.Runtime(network, device="cpu") as probe:
        none_peak = probe.peak_bytes(probe.plan(4, "none"))
        all_peak = probe.peak_bytes(probe.plan(4, "vdnn-all"))
    limit = (none_peak + all_peak) // 2
    oracle, rows = example.compare(network, "cpu", 4, f"{limit}B")
    by_policy = {row.policy: row for row in rows}
    assert oracle.error is None and oracle.peak_bytes == none_peak
    assert "out of device memory" in by_policy["none"].error
    fitted = [row for row in rows if row.error is None]
    assert {"vdnn-all", "vdnn-dyn", "budget"} <= {row.policy for row in fitted}
    for row in fitted:
        assert row.peak_bytes <= limit and row.losses == oracle.losses, row.policy
        assert example.same_losses(row, oracle) == "yes"
    example.print_table(oracle, rows)
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[1:]] == [*by_policy, "oracle"]


def test_tiny_gpt_example_learns_python_source(capsys: pytest.CaptureFixture[str]) -> None:
    """Sixty steps take the byte-level loss from about ln(256) = 5.55 to well below
    it (the full 300-step run reaches about 2.1 on the held-out text)."""
    example = load_example("train_tiny_gpt")
    losses = example.train(device="cpu", steps=60, batch=8, report_every=20, samples=1)
    assert abs(losses[0] - example.UNIFORM_LOSS) < 0.3
    assert np.mean(losses[-10:]) < 3.5
    out = capsys.readouterr().out
    assert "step   60: training loss" in out and "held-out" in out and "---" in out
