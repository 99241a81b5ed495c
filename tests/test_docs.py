"""Every command the docs show runs verbatim: each `sh` block of README.md,
docs/*.md and profiles/README.md is parsed (line continuations joined, comments
dropped, `&&` chains split), the setup steps (venv, pip, the test suite itself)
are left out, and every other command runs in a fresh directory, in-process, and
must exit 0. A command may set environment variables before it (`VAR=value vmem
...`) and send its output to a file (`> FILE`).

A command for a GPU (`--device cuda`) runs where CUDA is; elsewhere it must stop
at its one line saying CUDA is not there (exit 2), and a command reading a file
that only such a command writes must stop at its one line naming that file."""

from __future__ import annotations

import io
import re
import runpy
import shlex
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmem.backends import cuda
from vmem.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "profiles" / "README.md")
FENCE = re.compile(r"^(\s*)```(.*)$")
SHELL = {"sh", "bash", "shell"}
# steps that set up an environment or run this very suite, not vmem's commands
SETUP = re.compile(r"^(python3? -m venv|\. |source |pip |pytest)")
# files the docs assume a user has: their own profile
USER_FILES = {"my_net.toml": (ROOT / "profiles" / "digits.toml").read_text()}


ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Command:
    doc: str  # the file and line it is shown at
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    stdout: str | None = None  # the file `>` sends the output to

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


def parse_command(doc: str, words: list[str]) -> Command:
    """Leading VAR=value words set the environment; `> FILE` takes the output."""
    env = []
    while words and ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        env.append((name, value))
    stdout = None
    if ">" in words:
        at = words.index(">")
        assert at == len(words) - 2, f"{doc}: only '> FILE' at the end is understood"
        stdout, words = words[-1], words[:at]
    return Command(doc, tuple(words), tuple(env), stdout)


def fenced_blocks(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line of the opening fence, info string, the block's lines)."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if match and current is None:
            current = (number, match.group(2).strip(), [])
        elif match:
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"{path}: a fence opened at line {current[0]} is never closed"
    return blocks


def shell_commands(path: Path) -> list[Command]:
    commands = []
    for start, info, lines in fenced_blocks(path):
        if info not in SHELL:
            continue
        logical: list[tuple[int, str]] = []
        pending = ""
        for offset, line in enumerate(lines, start + 1):
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            logical.append((offset, pending))
            pending = ""
        for number, line in logical:
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and not SETUP.match(shlex.join(words)):
                    commands.append(parse_command(f"{path.relative_to(ROOT)}:{number}", words))
    return commands


ALL = [command for doc in DOCS for command in shell_commands(doc)]


def test_every_fenced_block_names_its_language() -> None:
    """A command in an unlabelled block would escape the check below."""
    for doc in DOCS:
        for start, info, _ in fenced_blocks(doc):
            assert info, f"{doc.relative_to(ROOT)}:{start}: a fenced block without a language"


def test_the_docs_show_commands() -> None:
    shown = {c.argv[0] for c in ALL}
    assert {"vmem", "scripts/paper-figures"} <= shown and len(ALL) >= 15


def _gpu_only(argv: tuple[str, ...]) -> bool:
    for i, arg in enumerate(argv):
        device = argv[i + 1] if arg == "--device" and i + 1 < len(argv) else (
            arg.removeprefix("--device=") if arg.startswith("--device=") else None)
        if device is not None and re.fullmatch(r"cuda(:\d+)?", device):
            return True
    return False


def _outputs(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("-o", "--output")]


def _run(argv: tuple[str, ...]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            if argv[0] == "vmem":
                code = main(list(argv[1:]))
            else:
                script = ROOT / argv[0]
                assert script.is_file(), f"{argv[0]} is not a script of the repository"
                saved = sys.argv
                sys.argv = [str(script), *argv[1:]]
                try:
                    runpy.run_path(str(script), run_name="__main__")
                    code = 0
                finally:
                    sys.argv = saved
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_run(doc: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In order, in one directory per document (a command may read what an earlier
    one wrote: `vmem report` a saved session)."""
    monkeypatch.chdir(tmp_path)
    for name, text in USER_FILES.items():
        (tmp_path / name).write_text(text)
    has_cuda = cuda.available()
    gpu_files: set[str] = set()
    for command in shell_commands(doc):
        with monkeypatch.context() as env:
            for name, value in command.env:
                env.setenv(name, value)
            code, out, err = _run(command.argv)
        if command.stdout is not None:
            Path(command.stdout).write_text(out)
        where = f"{command.doc}: {command.text}"
        reads_gpu_file = [f for f in gpu_files if any(f in arg for arg in command.argv)]
        if _gpu_only(command.argv) and not has_cuda:
            assert code == 2 and len(err.strip().splitlines()) == 1, (where, code, err)
            assert "cupy" in err.lower() or "cuda" in err.lower(), (where, err)
            gpu_files.update(_outputs(command.argv))
        elif reads_gpu_file and not has_cuda:
            assert code == 2 and len(err.strip().splitlines()) == 1, (where, code, err)
            assert reads_gpu_file[0] in err, (where, err)
        else:
            assert code == 0, (where, code, err[-2000:])
            assert "Traceback" not in err, (where, err)
