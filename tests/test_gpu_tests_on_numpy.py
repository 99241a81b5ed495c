"""tests/gpu's kernel tests, run here on the NumPy stand-in (tests/gpu_on_numpy.py), so
that a mistake in a GPU test itself shows before a GPU session spends its minutes on
it. Needs g++ for the emulator (skipped without)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cuda_emulator import UNAVAILABLE

TESTS = Path(__file__).parent
FILES = ["gpu/test_conv_cuda.py", "gpu/test_pooling_cuda.py", "gpu/test_lrn_cuda.py",
         "gpu/test_attention_cuda.py"]


@pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
def test_gpu_kernel_tests_pass_on_the_numpy_stand_in():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for name in ("VMEM_CUDA_IM2COL", "VMEM_CUDA_GEMM", "VMEM_CUDA_POOLING", "VMEM_CUDA_LRN",
                 "VMEM_CUDA_ATTENTION"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, "-m", "pytest", "--noconftest", "-p", "gpu_on_numpy",
                          "-p", "no:cacheprovider", "-q", "-rs", *(str(TESTS / f) for f in FILES)],
                         capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout, run.stdout[-3000:]
    # The comparisons with PyTorch skip where it is not installed; nothing else may skip.
    skips = re.findall(r"^SKIPPED \[\d+\] (.*)$", run.stdout, flags=re.MULTILINE)
    allowed = [] if importlib.util.find_spec("torch") else ["could not import 'torch'"]
    assert all(any(reason in skip for reason in allowed) for skip in skips), skips
