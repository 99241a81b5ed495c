"""Loading a profile that must fail: the error's message, checked to be one line
that names the file and the line marked in the text."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmem.errors import ProfileError
from vmem.profile import load_profile

MARK = "  # <- here"  # ends the line an error must name


def profile_error(tmp_path: Path, text: str) -> tuple[str, int]:
    """Load `text` from a file; return the error message and the line marked MARK."""
    lines = text.splitlines()
    marked = [i for i, line in enumerate(lines, start=1) if line.endswith(MARK)]
    assert len(marked) == 1, "mark exactly one line"
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.path == str(path) and info.value.line == marked[0], message
    return message, marked[0]
