"""The examples run as a user would run them, on real data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):  # noqa: ANN201 - the example's module
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_digits_example_reaches_95_percent() -> None:
    """scikit-learn's handwritten digits, a held-out quarter as the test split."""
    accuracy = load_example("train_digits").train(device="cpu", seed=0)
    assert accuracy >= 0.95
