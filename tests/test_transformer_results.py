"""docs/transformers.md's Results against dry runs: the peaks the page prints for
gpt2-medium at batch 8 are those of the plans scripts/transformer-results builds,
and selective recomputation frees what it is counted by hand to free."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from vmem.plan import recomputed_tensors
from vmem.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = runpy.run_path(str(ROOT / "scripts" / "transformer-results"))  # not as __main__
DOC = (ROOT / "docs" / "transformers.md").read_text()


def _medium_row(label: str) -> list[str]:
    """The cells of a row of the page's gpt2-medium table at batch 8."""
    table = DOC[DOC.index("gpt2-medium at batch 8, T = 1024"):]
    match = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", table, re.MULTILINE)
    assert match, f"docs/transformers.md has no gpt2-medium row '{label}'"
    return [cell.strip() for cell in match.group(1).split("|")]


@pytest.fixture(scope="module")
def medium():
    network = load_profile("gpt2-medium").network
    return network, SCRIPT["Device"](network, "sim:a100-80gb")


@pytest.mark.parametrize("index", [0, 2, 3])  # none, whole blocks, selective
def test_the_pages_gpt2_medium_peaks_are_the_dry_runs(medium, index: int) -> None:
    network, device = medium
    config = SCRIPT["FIXED"][index]
    plan = config.plan(network, 8)
    assert _medium_row(config.label)[0] == SCRIPT["gib"](device.peak(plan))
    assert _medium_row(config.label)[1] == SCRIPT["times"](device.slowdown(plan))


def test_selective_recomputation_frees_each_blocks_probabilities_and_attention_output(
        medium) -> None:
    """Computing attention again drops, per block, its (N, a, T, T) probabilities and
    its (N, T, C) output, float32: 4·a·s²·b + 4·s·b·h bytes, 24 blocks, the peak
    lower by exactly that."""
    network, device = medium
    s, b, h, a, blocks = 1024, 8, 1024, 16, 24
    selective = SCRIPT["plan_selective"](network, b)
    assert len(recomputed_tensors(network, selective, 4)) == blocks
    freed = device.peak(SCRIPT["plan_none"](network, b)) - device.peak(selective)
    assert freed == blocks * (4 * a * s * s * b + 4 * s * b * h)
