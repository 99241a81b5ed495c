"""Property-based fuzzing of what a user gives vmem: profile text (mutations of
shipped profiles, and random TOML), command-line values (sizes, batches,
devices, policies) and session and calibration files (mutations of valid ones).
The property, for every input: the command succeeds, or it exits 2 with one
line on stderr and no traceback; and it leaves no file behind that it did not
finish (no output of a refused run, never a temporary).

The command line runs in-process (`vmem.cli.main`), so each example costs
milliseconds; examples are derandomized (the same inputs in every run, so CI
never flakes) and bounded so the file runs in seconds. VMEM_FUZZ_EXAMPLES=N
runs N examples per test, with fresh random inputs, for a longer hunt.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmem.cli import main
from vmem.policies import POLICIES
from vmem.profile import LAYER_KEYS, TOP_LEVEL_KEYS
from vmem.toml_text import format_value

LONG_HUNT = int(os.environ.get("VMEM_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=LONG_HUNT or examples, deadline=None, database=None,
                    derandomize=not LONG_HUNT, suppress_health_check=list(HealthCheck))


TRIED: dict[str, int] = {}  # examples run per test, for the record


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vmem-fuzz-") as name:
        yield Path(name)


def assert_clean(name: str, argv: list[str], folder: Path, inputs: set[str],
                 outputs: set[str] = frozenset()) -> int:
    """Run `argv`; success, or exit 2 with one line and no traceback; afterwards
    `folder` holds the inputs and, on success only, the outputs."""
    TRIED[name] = TRIED.get(name, 0) + 1
    code, _, err = _cli(argv)
    assert "Traceback" not in err and "Warning" not in err, (argv, err)
    if code != 0:
        assert code == 2, (argv, code, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
    left = set(os.listdir(folder))
    expected = inputs | (set(outputs) if code == 0 else set())
    assert left == expected, (argv, code, err, left - expected, expected - left)
    return code


# -- profile text ---------------------------------------------------------------------

SEEDS = [files("vmem.profiles").joinpath(f"{name}.toml").read_text(encoding="utf-8")
         for name in ("digits", "tiny-branch", "resnet18-tiny")]
TOKENS = ["0", "-1", "1.0", "1e309", "nan", "inf", "true", '""', '"x"', "[]", "[0]", "{}",
          "[[layer]]", "[block.b]", "[[block.b.layer]]", "repeat = 3", "=", '"', "[", "]",
          "\n", "\t", "\ufeff", "\u2028", "９", "9" * 30, "name", "type", "inputs", "data",
          "kernel", "groups", "stride", "pad", "axis", "p", "out_channels", "batch"]


@st.composite
def mutated_profiles(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        lines = text.splitlines(keepends=True)
        where = draw(st.integers(0, max(len(lines) - 1, 0)))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "replace-value",
                                       "insert-token", "insert-text", "cut"]))
        if action == "delete" and lines:
            del lines[where]
        elif action == "duplicate" and lines:
            lines.insert(where, lines[where])
        elif action == "swap" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[where], lines[other] = lines[other], lines[where]
        elif action == "replace-value" and lines and "=" in lines[where]:
            key = lines[where].split("=", 1)[0]
            value = draw(st.sampled_from(TOKENS) | st.integers(-2**70, 2**70).map(str))
            lines[where] = f"{key}= {value}\n"
        elif action == "insert-token":
            lines.insert(where, draw(st.sampled_from(TOKENS)) + "\n")
        elif action == "insert-text":
            lines.insert(where, draw(st.text(max_size=20)) + "\n")
        elif action == "cut" and lines:
            line = lines[where]
            cut = draw(st.integers(0, len(line)))
            lines[where] = line[:cut] + line[cut + 1:]
        text = "".join(lines)
    return text


LAYER_TYPES = ["conv", "relu", "maxpool", "avgpool", "linear", "softmax_loss", "dropout",
               "lrn", "concat", "add", "flatten", "batchnorm", "gelu", "nope"]
FIELDS = ["out_channels", "kernel", "stride", "pad", "groups", "bias", "out_features", "p",
          "axis", "size", "alpha", "beta", "k", "ceil_mode", "eps", "bogus"]
SCALARS = (st.integers(-5, 300) | st.integers(-2**64, 2**64) | st.booleans()
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=8)


@st.composite
def random_profiles(draw: st.DrawFn) -> str:
    """TOML documents of profile-like shape: top-level keys, then [[layer]] tables."""
    top = draw(st.dictionaries(st.sampled_from([*TOP_LEVEL_KEYS, "extra"]),
                               VALUES | st.lists(st.integers(-3, 40), max_size=4),
                               max_size=5))
    top.pop("layer", None)
    lines = [f"{key} = {format_value(value)}" for key, value in top.items()]
    names: list[str] = ["data"]
    for i in range(draw(st.integers(0, 6))):
        table = {"name": draw(st.sampled_from([f"l{i}", *names, "", "a\nb"])),
                 "type": draw(st.sampled_from(LAYER_TYPES))}
        if draw(st.booleans()):
            table["inputs"] = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
        table.update(draw(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=3)))
        names.append(str(table["name"]))
        lines += ["", "[[layer]]", *(f"{k} = {format_value(v)}" for k, v in table.items()
                                     if k in (*LAYER_KEYS, *FIELDS))]
    return "\n".join(lines) + "\n"


def _check_profile(name: str, text: str) -> None:
    with _workdir() as folder:
        path = folder / "net.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        assert_clean(name, ["plan", str(path), "--device", "sim:titan-x", "--policy",
                            "vdnn-all"], folder, {"net.toml"})


@fuzz_settings(150)
@given(mutated_profiles())
def test_mutated_profiles(text: str) -> None:
    _check_profile("mutated profiles", text)


@fuzz_settings(100)
@given(random_profiles())
def test_random_profiles(text: str) -> None:
    _check_profile("random profiles", text)


# -- command-line values -----------------------------------------------------------------

def _text_like(valid: list[str]) -> st.SearchStrategy[str]:
    """Valid values, near-valid ones (cut, padded, signed) and any text."""
    near = st.sampled_from(valid).flatmap(lambda v: st.sampled_from(
        [v[:-1], v + "x", " " + v, "-" + v, v.upper(), v.replace("i", "")]))
    return st.sampled_from(valid) | near | st.text(max_size=12)


SIZES = ["4GiB", "512MB", "1.5GiB", "100KB", "1", "0", "1e3", "２GiB", "inf", "12 GiB",
         "0.5B", "1" + "0" * 30 + "B", "1MiB", "64KiB", "8MiB"]
BATCHES = ["1", "2", "16", "0", "-1", "２", "1.5", "2147483648", "1_0", " 8"]
DEVICES = ["sim:titan-x", "sim:h100-pcie5", "sim:nope", "sim:", "cpu", "cuda", "cuda:7",
           "tpu", "auto", "sim:/dev/null.toml"]


@st.composite
def cli_values(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(["run", "compare", "plan"]))
    device = draw(_text_like(DEVICES))
    argv = [command, "digits", "--device", device]
    if draw(st.booleans()):
        argv += ["--memory-limit", draw(_text_like(SIZES))]
    batch = draw(st.none() | _text_like(BATCHES))
    if batch is not None:
        argv += ["--batch", batch]
    if command == "plan":
        argv += ["--policy", draw(_text_like(list(POLICIES)))]
    else:
        argv += ["--steps", draw(st.sampled_from(["1", "2", "0", "x"]))]
        if draw(st.booleans()):
            argv += ["--host-memory-limit", draw(_text_like(SIZES))]
        if command == "run":
            argv += ["--policy", draw(_text_like(list(POLICIES)))]
        else:
            argv += ["--policies", ",".join(draw(st.lists(_text_like(list(POLICIES)),
                                                          min_size=1, max_size=3)))]
    return argv


def _small_on_a_real_device(argv: list[str]) -> bool:
    """The cpu trains for real: keep its batches small (a huge batch is refused or
    runs out of host memory; neither needs trying here, with others' work beside)."""
    device = argv[argv.index("--device") + 1].strip().lower()
    if device not in ("cpu", "auto") or "--batch" not in argv:
        return True
    batch = argv[argv.index("--batch") + 1]
    return not (batch.strip().isdigit() and int(batch) > 64)


@fuzz_settings(100)
@given(cli_values(), st.booleans())
def test_command_line_values(argv: list[str], save: bool) -> None:
    if not _small_on_a_real_device(argv):
        return
    with _workdir() as folder:
        outputs = set()
        if save and argv[0] != "plan":
            argv = [*argv, "--save-session", str(folder / "s.json")]
            outputs = {"s.json"}
        assert_clean("command-line values", argv, folder, set(), outputs)


# -- session and calibration files -----------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**66, 2**66)
                    | st.floats(allow_nan=False) | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, as a path of keys and indices."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data[:3]):  # the first few of a long list stand for all
            found += _paths(value, (*prefix, i))
    return found


@st.composite
def mutated_json(draw: st.DrawFn, document: dict[str, Any]) -> Any:
    data = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _paths(data) if p]
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "negate", "grow"]))
        key = path[-1]
        value = parent[key]
        if action == "delete":
            del parent[key]
        elif action == "negate" and isinstance(value, int | float) and not isinstance(value,
                                                                                      bool):
            parent[key] = draw(st.sampled_from([-value, -1, 0, value * 10**6, 2**63]))
        elif action == "grow" and isinstance(value, list) and value:
            value.append(json.loads(json.dumps(value[0])))
        else:
            parent[key] = draw(JSON)
    return data


def _session() -> dict[str, Any]:
    with _workdir() as folder:
        path = folder / "s.json"
        code, _, err = _cli(["compare", "tiny-branch", "--device", "sim:titan-x", "--steps", "2",
                             "--policies", "none,vdnn-all", "--save-session", str(path)])
        assert code == 0, err
        return json.loads(path.read_text())


def _calibration() -> dict[str, Any]:
    from vmem.calibrate import calibrate
    from vmem.profile import load_profile

    return calibrate(load_profile("tiny-branch").network, "cpu", 2, 2)


_DOCUMENTS: dict[str, dict[str, Any]] = {}


def document(name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if name not in _DOCUMENTS:
        _DOCUMENTS[name] = make()
    return _DOCUMENTS[name]


@fuzz_settings(120)
@given(st.data(), st.sampled_from([[], ["--json"], ["--layers"], ["--trace", "t.json"],
                                   ["--layers", "--trace", "-"]]))
def test_mutated_sessions(data: st.DataObject, flags: list[str]) -> None:
    session = data.draw(mutated_json(document("session", _session)))
    with _workdir() as folder:
        path = folder / "s.json"
        path.write_text(json.dumps(session))
        argv = ["report", str(path), *[str(folder / f) if f.endswith(".json") else f
                                       for f in flags]]
        outputs = {"t.json"} if "t.json" in flags else set()
        assert_clean("mutated sessions", argv, folder, {"s.json"}, outputs)


@fuzz_settings(100)
@given(st.data())
def test_mutated_calibrations(data: st.DataObject) -> None:
    calibration = data.draw(mutated_json(document("calibration", _calibration)))
    with _workdir() as folder:
        path = folder / "cal.json"
        path.write_text(json.dumps(calibration))
        command = data.draw(st.sampled_from([["plan", "tiny-branch"],
                                             ["run", "tiny-branch", "--steps", "1"]]))
        assert_clean("mutated calibrations", [*command, "--device", f"sim:{path}"], folder,
                     {"cal.json"})


@pytest.fixture(scope="module", autouse=True)
def _say_how_many() -> Iterator[None]:
    yield
    print("\nfuzzed inputs tried: " + ", ".join(f"{k} {v}" for k, v in TRIED.items()))
