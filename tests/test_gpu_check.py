"""scripts/gpu-check on a machine without a GPU: the preflight stops it at once with one
line saying why, and the summary it writes says what was skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmem.backends import cuda

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check"
# the steps the script runs after the preflight, most valuable first
STEPS = ("nvidia-smi", "gpu-tests-cuda", "alexnet-run", "alexnet-compare", "gpu-tests-kernels",
         "offload-vgg16-b128", "gpu-tests-attention", "gpu-tests-softmax", "bench-kernels",
         "bench-attention")


@pytest.mark.skipif(cuda.available(), reason="this machine has a GPU: gpu-check would run")
def test_gpu_check_without_a_gpu_stops_at_the_preflight(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # the timeout only keeps a hang from stalling the suite: it stops in seconds
    done = subprocess.run([str(SCRIPT), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 3 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("gpu-check: stopped at the preflight: ")
    assert "cupy" in line or "CUDA" in line, line
    assert line.endswith(f"every step skipped ({out}/summary.md)")
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# vmem GPU check: stopped at the preflight")
    skipped = summary.split("Skipped, nothing measured: ")[1]
    positions = [skipped.index(step) for step in STEPS]
    assert positions == sorted(positions)  # in the order they would have run
    # nothing else written: no empty result files over a real run's
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.log", "summary.md"]
    log = (out / "gpu-check.log").read_text()
    assert log.startswith("== preflight: ") and log.count("skipped (stopped at the preflight)") >= 8
