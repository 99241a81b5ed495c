"""tests/gpu runs only where CuPy sees a CUDA device; elsewhere every test in
this folder is skipped with one reason (why CUDA is unusable here). The `cp`
fixture is the cupy module (tests/gpu_on_numpy.py puts a NumPy stand-in there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmem.backends import cuda

HERE = Path(__file__).parent.resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda.available():
        return
    skip = pytest.mark.skip(reason=f"tests/gpu needs CUDA: {cuda.unavailable_reason()}")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture
def cp() -> Any:
    import cupy

    return cupy
