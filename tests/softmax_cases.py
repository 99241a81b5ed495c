"""What the softmax tests on the CPU (tests/test_softmax_kernels.py) and on the GPU
(tests/gpu/test_softmax_cuda.py) share: fresh random generators whose seed is in every
failure, the relative error against a float64 reference, and rows of special values."""

from __future__ import annotations

import numpy as np
import pytest


def fresh_rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator with a new seed each run, recorded in the test's report (rerun with it)."""
    seed = int(np.random.SeedSequence().entropy % 2**63)
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


def seed_of(rng: np.random.Generator) -> int:
    """The seed of a `fresh_rng` generator, for failure messages."""
    return int(rng.bit_generator.seed_seq.entropy)


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (the absolute error where ref is all zeros)."""
    out64 = np.asarray(out, dtype=np.float64)
    scale = np.linalg.norm(ref)
    return float(np.linalg.norm(out64 - ref) / (scale if scale > 0 else 1.0))


def special_rows(rng: np.random.Generator, cols: int) -> np.ndarray:
    """float32 rows: huge logits, very negative ones, all equal, half -inf, all -inf,
    one +inf, one NaN (the last three rows have no distribution: NaN throughout)."""
    rows = [rng.standard_normal(cols) * 1e4 + np.where(rng.random(cols) < 0.1, 3e30, 0.0),
            rng.standard_normal(cols) * 10 - 1e4, np.full(cols, 2.5)]
    r = rng.standard_normal(cols)
    r[rng.random(cols) < 0.5] = -np.inf
    r[0] = 0.5
    rows += [r, np.full(cols, -np.inf)]
    r = rng.standard_normal(cols)
    r[cols // 2] = np.inf
    rows.append(r)
    r = rng.standard_normal(cols)
    r[-1] = np.nan
    rows.append(r)
    return np.array(rows, dtype=np.float32)
