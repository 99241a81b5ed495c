"""The command line: output for people and programs, and one clear line with
exit code 2 for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli


def test_profiles_json_lists_shipped_networks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert {"alexnet", "overfeat", "googlenet", "vgg16", "digits"} <= set(rows)
    assert rows["vgg16"]["parameters"] == 138_357_544
    assert rows["vgg16"]["input"] == [3, 224, 224]
    # VGG-16 forward: 15.47 G multiply-adds per sample, 2 FLOPs each (plus biases)
    assert 30.9 < rows["vgg16"]["gflops_per_sample"] < 31.1


def test_profiles_json_gives_a_language_models_flops_per_token(
        capsys: pytest.CaptureFixture[str]) -> None:
    """By hand, per token of gpt2: 2 FLOPs per weight of the 12 blocks' four linear
    layers and of the tied head, 4 T C per block for attention's two products over
    all T positions, and small terms (biases, softmax, layernorm, GELU, adds)."""
    code, out, _ = run_cli(capsys, "profiles", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    c, t, blocks, vocab = 768, 1024, 12, 50_257
    linear = blocks * (3 * c * c + c * c + 4 * c * c + 4 * c * c) + vocab * c
    by_hand = (2 * linear + blocks * 4 * t * c) / 1e9
    gpt2 = rows["gpt2"]
    assert gpt2["vocab"] == vocab and gpt2["input"] == [t]
    assert by_hand < gpt2["gflops_per_token"] < 1.02 * by_hand
    assert gpt2["gflops_per_sample"] == pytest.approx(gpt2["gflops_per_token"] * t)
    assert rows["vgg16"]["gflops_per_token"] is None and rows["vgg16"]["vocab"] is None


def test_profiles_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles")
    assert code == 0 and "138,357,544" in out and "googlenet" in out


def test_gpus_lists_every_preset_with_its_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """The datasheet sizes in bytes (binary GB), the H100's as nvidia-smi reports it."""
    code, out, _ = run_cli(capsys, "gpus", "--json")
    assert code == 0
    memory = {row["name"]: row["memory_bytes"] for row in json.loads(out)}
    assert memory == {"titan-x": 12 * 2**30, "h100-pcie5": 81559 * 2**20, "v100": 16 * 2**30,
                      "a100-40gb": 40 * 2**30, "a100-80gb": 80 * 2**30,
                      "rtx-4090": 24 * 2**30, "l4": 24 * 2**30, "h100-sxm": 80 * 2**30,
                      "h200": 141 * 2**30}
    code, out, _ = run_cli(capsys, "gpus")
    assert code == 0 and "141.00 GiB" in out and "V100-PCIE-16GB" in out


def test_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "run", "digits", "--steps", "3", "--device", "cpu",
                           "--batch", "16", "--json")
    assert code == 0
    result = json.loads(out)
    for key in ("profile", "batch", "device", "policy", "memory_limit_bytes", "peak_bytes",
                "average_bytes", "step_ms", "losses"):
        assert key in result
    assert result["batch"] == 16 and result["device"] == "cpu" and result["policy"] == "none"
    assert len(result["losses"]) == 3 and result["memory_limit_bytes"] is None
    assert 0 < result["average_bytes"] <= result["peak_bytes"]
    assert result["host_ms"] > 0  # the host time to issue a step, measured


def test_run_with_adamw_says_so_and_holds_more(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    """`--optimizer adamw` trains with AdamW: the results and the saved session say so,
    and its second moment is one more weight-sized buffer than SGD's velocity
    (digits has 13,706 float32 parameters)."""
    results = {}
    for optimizer in ("sgd", "adamw"):
        session = tmp_path / f"{optimizer}.json"
        code, out, _ = run_cli(capsys, "run", "digits", "--steps", "2", "--device", "cpu",
                               "--optimizer", optimizer, "--save-session", str(session),
                               "--json")
        assert code == 0
        results[optimizer] = json.loads(out)
        code, out, _ = run_cli(capsys, "report", str(session))
        assert code == 0 and f"optimizer {optimizer}" in out.splitlines()[0]
    assert results["adamw"]["optimizer"] == "adamw"
    code, out, _ = run_cli(capsys, "compare", "digits", "--steps", "1", "--device", "cpu",
                           "--optimizer", "adamw", "--memory-limit", "1360000B",
                           "--policies", "none,vdnn-all", "--json")
    rows = json.loads(out)
    # between vdnn-all's peak and none's with AdamW (1,351,844 and 1,368,228 bytes):
    # none does not fit, and its row says why
    assert code == 0 and rows[0]["error"] and rows[1]["error"] is None
    assert {row["optimizer"] for row in rows} == {"adamw"}
    by_kind = {name: r["peak_by_kind"]["optimizer"] for name, r in results.items()}
    assert by_kind == {"sgd": 13_706 * 4, "adamw": 2 * 13_706 * 4}


def test_run_under_a_memory_limit_reports_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "run", "digits", "--steps", "1", "--device", "cpu",
                           "--memory-limit", "2MiB", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["memory_limit_bytes"] == 2 * 2**20
    assert result["peak_bytes"] <= 2 * 2**20


@pytest.mark.parametrize("argv", [["run", "digits", "--bogus"], ["--bogus", "run", "digits"],
                                  ["compare", "digits", "--json", "-x", "1"]])
def test_unknown_options_name_the_command(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    command = next(a for a in argv if not a.startswith("-"))
    assert_one_line_error(code, err, f"vmem {command}: error: unrecognized arguments",
                          f"see vmem {command} --help")
    assert out == ""


@pytest.mark.parametrize(("argv", "fragments"), [
    (["run", "nosuchnet"], ["unknown profile 'nosuchnet'", "alexnet", "vgg16"]),
    (["run", "digits", "--batch", "0"], ["--batch", "positive integer", "'0'"]),
    (["run", "digits", "--batch", "two"], ["--batch", "positive integer"]),
    (["run", "digits", "--steps", "-3"], ["--steps", "positive integer"]),
    (["run", "digits", "--memory-limit", "4XB"], ["--memory-limit", "'4XB'", "GiB"]),
    (["run", "digits", "--memory-limit", "-1GB"], ["--memory-limit"]),
    (["run", "digits", "--device", "tpu"], ["--device", "'tpu'", "cpu", "cuda:N"]),
    (["run", "digits", "--device", "cuda"], ["cuda", "cpu"]),
    (["run", "digits", "--policy", "magic"], ["--policy", "'magic'", "none"]),
    (["run", "digits", "--optimizer", "adam"], ["--optimizer", "'adam'", "sgd", "adamw"]),
    (["run", "digits", "--device", "cpu", "--memory-limit", "100KB"],
     ["a memory limit of 97.66 KiB cannot train digits at batch 64 under any policy",
      "needs at least"]),
])
def test_bad_input_gets_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                            fragments: list[str]) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_device_cuda_without_gpu_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    from vmem.backends import cuda

    if cuda.available():
        pytest.skip("this machine has a CUDA device")
    code, _, err = run_cli(capsys, "run", "digits", "--device", "cuda:0")
    assert_one_line_error(code, err, "cuda")


def test_bad_profile_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    malformed = tmp_path / "malformed.toml"
    malformed.write_text('name = "x"\ninput = [1, 8, 8]\n[[layer]\nname = "a"\n')
    code, _, err = run_cli(capsys, "run", str(malformed))
    assert_one_line_error(code, err, "malformed.toml", ":3")

    unknown = tmp_path / "unknown.toml"
    unknown.write_text('name = "x"\ninput = [1, 8, 8]\n\n[[layer]]\nname = "c1"\n'
                       'type = "convolution"\n')
    code, _, err = run_cli(capsys, "run", str(unknown))
    assert_one_line_error(code, err, "unknown.toml", "c1", "convolution", "conv")

    disconnected = tmp_path / "shapes.toml"
    disconnected.write_text(
        'name = "x"\ninput = [1, 8, 8]\n\n'
        '[[layer]]\nname = "c1"\ntype = "conv"\nout_channels = 4\nkernel = 3\n\n'
        '[[layer]]\nname = "c2"\ntype = "conv"\ninputs = "data"\nout_channels = 4\nkernel = 5\n\n'
        '[[layer]]\nname = "cat"\ntype = "concat"\ninputs = ["c1", "c2"]\n\n'
        '[[layer]]\nname = "fc"\ntype = "linear"\nout_features = 10\n\n'
        '[[layer]]\nname = "loss"\ntype = "softmax_loss"\n')
    code, _, err = run_cli(capsys, "run", str(disconnected))
    assert_one_line_error(code, err, "shapes.toml", "cat", "c1", "c2")


def test_alexnet_with_defaults_from_the_installed_command() -> None:
    """`vmem run alexnet --device cpu` with its defaults finishes and prints the table."""
    done = subprocess.run([sys.executable, "-m", "vmem.cli", "run", "alexnet", "--device", "cpu"],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    assert "peak device memory" in done.stdout and "alexnet" in done.stdout
    assert "warm-up" in done.stdout


@pytest.mark.parametrize(("argv", "fragments"), [
    (["run", "digits", "--seed", "-1"], ["--seed", ">= 0", "'-1'"]),
    (["run", "digits", "--lr", "inf"], ["--lr", "finite", "'inf'"]),
    (["run", "digits", "--batch", str(2**31)], ["--batch", "up to 2147483647"]),
    (["run", "digits", "--memory-limit", "0.1"], ["--memory-limit", "less than one byte"]),
    (["run", "digits", "--memory-limit", "-1"], ["--memory-limit", "must be positive", "GiB"]),
    (["run", "digits", "--memory-limit", "1" + "0" * 400 + "B"], ["--memory-limit", "too large"]),
    (["run", "digits", "--memory-limit", "４GiB"], ["--memory-limit", "'４GiB'", "ASCII digits"]),
    (["run", "digits", "--host-memory-limit", "٤MiB"], ["--host-memory-limit", "ASCII"]),
    (["run", "digits", "--batch", "４"], ["--batch", "'４'", "ASCII digits"]),
    (["run", "digits", "--batch", "1_0"], ["--batch", "'1_0'", "ASCII digits"]),
    (["run", "digits", "--steps", "0x10"], ["--steps", "'0x10'"]),
    (["run", "digits", "--memory-limit", "1.5"], ["--memory-limit", "'1.5'", "whole number"]),
    (["run", "digits", "--memory-limit", "2.5B"], ["--memory-limit", "whole number of bytes"]),
    # control characters in a value are written as escapes: the line stays one line
    (["run", "digits", "--batch", "\x1e"], ["--batch", "'\\x1e'"]),
    (["run", "digits", "--device", "a\nb"], ["--device", "'a\\nb'"]),
    (["run", "digits", "--policy", "x\u2028y"], ["--policy", "'x\\u2028y'"]),
    (["run", "digits", "--seed", "１"], ["--seed", "ASCII digits"]),
    (["run", "digits", "--lr", "０.1"], ["--lr", "ASCII digits"]),
    (["compare", "digits", "--policies", "none,magic"], ["--policies", "'magic'", "vdnn-dyn"]),
    (["compare", "digits", "--policies", "none,vdnn-all,none"], ["--policies", "'none'", "twice"]),
])
def test_more_bad_input_gets_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], fragments: list[str]) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)
    assert out == ""


def test_one_file_for_two_outputs_is_refused(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    same = tmp_path / "out.json"
    code, out, err = run_cli(capsys, "run", "digits", "--device", "cpu", "--steps", "1",
                             "--trace", str(same), "--save-session", f"{tmp_path}/./out.json")
    assert_one_line_error(code, err, "--save-session", "also the --trace file")
    assert out == "" and os.listdir(tmp_path) == []


def test_a_batch_too_big_for_host_memory_is_one_line(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import vmem.trial

    def too_big(*_: object, **__: object) -> None:
        raise MemoryError("Unable to allocate 71.5 GiB for an array")

    monkeypatch.setattr(vmem.trial, "synthetic_batch", too_big)
    code, out, err = run_cli(capsys, "run", "digits", "--device", "cpu", "--steps", "1")
    assert_one_line_error(code, err, "out of host memory", "71.5 GiB", "--batch")
    assert out == ""


def test_compare_none_without_a_limit_is_the_oracle(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    """Without a memory limit `none` is the oracular run itself: its slowdown is
    exactly 1 (even on a CPU, whose step times vary from run to run), and the
    oracle's row repeats its figures."""
    from vmem.profiler.session import load_session

    saved = tmp_path / "c.json"
    code, out, _ = run_cli(capsys, "compare", "tiny-branch", "--device", "cpu", "--steps", "2",
                           "--policies", "vdnn-all,none", "--json", "--save-session", str(saved))
    assert code == 0
    rows = {row["policy"]: row for row in json.loads(out)}
    assert list(rows) == ["vdnn-all", "none"]
    assert rows["none"]["slowdown"] == 1.0
    session = load_session(saved)
    assert session.oracle is not None
    assert session.oracle.result.steps_ms == tuple(rows["none"]["steps_ms"])
    assert rows["vdnn-all"]["slowdown"] == rows["vdnn-all"]["step_ms"] / rows["none"]["step_ms"]
    assert rows["none"]["oracular"] is True and rows["vdnn-all"]["oracular"] is False


def test_compare_json_ends_with_the_oracle_when_no_row_is_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Under a limit the oracle (none, no limit) is a run of its own: its object comes
    last, marked, and every policy's slowdown is over its step time."""
    code, out, _ = run_cli(capsys, "compare", "tiny-branch", "--device", "sim:titan-x",
                           "--steps", "2", "--policies", "none,vdnn-all", "--memory-limit",
                           "1MiB", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["policy"], r["oracular"]) for r in rows] == [
        ("none", False), ("vdnn-all", False), ("none", True)]
    oracle = rows[-1]
    assert oracle["memory_limit_bytes"] is None and oracle["slowdown"] == 1.0
    for row in rows[:2]:
        assert row["memory_limit_bytes"] == 2**20
        assert row["slowdown"] == pytest.approx(row["step_ms"] / oracle["step_ms"])


def test_compare_under_a_limit_no_policy_meets_is_refused(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    saved = tmp_path / "c.json"
    code, out, err = run_cli(capsys, "compare", "tiny-branch", "--device", "sim:titan-x",
                             "--memory-limit", "40KiB", "--save-session", str(saved))
    assert_one_line_error(code, err, "40.00 KiB", "cannot train tiny-branch", "any policy")
    assert out == "" and not saved.exists()


def test_plan_says_when_it_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "tiny-branch", "--device", "sim:titan-x", "--memory-limit", "100KiB"]
    code, out, _ = run_cli(capsys, *argv, "--policy", "none", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["capacity_bytes"] == 100 * 1024 and plan["peak_bytes"] > 100 * 1024
    assert plan["fits"] is False
    code, out, _ = run_cli(capsys, *argv, "--policy", "none")
    assert code == 0 and "this plan does not fit" in out and "102,400 bytes" in out
    assert "--policy vdnn-dyn" in out
    code, out, _ = run_cli(capsys, *argv, "--policy", "vdnn-dyn", "--json")
    plan = json.loads(out)
    assert plan["fits"] is True and plan["peak_bytes"] <= 100 * 1024
    # without a limit the bound is the modeled GPU's memory: a Titan X's 12 GiB
    code, out, _ = run_cli(capsys, "plan", "tiny-branch", "--device", "sim:titan-x", "--json")
    assert json.loads(out)["capacity_bytes"] == 12 * 2**30
    code, out, _ = run_cli(capsys, "plan", "vgg16", "--batch", "256", "--device", "sim:titan-x",
                           "--policy", "none")
    assert code == 0 and "does not fit" in out and "sim:titan-x's memory" in out


@pytest.mark.parametrize("profile", ["alexnet-tiny", "digits"])
def test_run_under_a_limit_below_the_weights_says_what_plan_says(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, profile: str) -> None:
    """The limit is checked before the parameters are placed, so a limit the
    weights alone exceed is the named refusal `vmem plan` gives, not an
    allocation failing outside any layer."""
    limit = ["--device", "cpu", "--memory-limit", "1KiB"]
    code, _, planned = run_cli(capsys, "plan", profile, *limit)
    assert_one_line_error(code, planned, "a memory limit of 1.00 KiB cannot train", "any policy")
    saved = tmp_path / "run.json"
    code, out, ran = run_cli(capsys, "run", profile, *limit, "--json", "--save-session",
                             str(saved))
    assert_one_line_error(code, ran, f"cannot train {profile} at batch")
    assert ran.removeprefix("vmem run: ") == planned.removeprefix("vmem plan: ")
    assert "out of device memory" not in ran and out == "" and not saved.exists()


TITAN_X = "sim:titan-x's memory, 12.00 GiB (12,884,901,888 bytes)"


@pytest.mark.parametrize("command", ["run", "compare", "plan"])
@pytest.mark.parametrize("limit", ["13GiB", "12884901889B", "99999999999TiB"])
def test_a_limit_above_the_devices_memory_is_refused(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path, command: str,
                                                     limit: str) -> None:
    """A 12 GiB card cannot honour a 13 GiB limit: refused, rather than reported as
    the capacity while the card's 12 GiB is the real one."""
    saved = tmp_path / "s.json"
    extra = ["--json"] if command == "plan" else ["--steps", "1", "--save-session", str(saved)]
    code, out, err = run_cli(capsys, command, "tiny-branch", "--device", "sim:titan-x",
                             "--memory-limit", limit, *extra)
    assert_one_line_error(code, err, "--memory-limit: ", f"is more than {TITAN_X}",
                          "a size up to that, or no --memory-limit")
    assert out == "" and not saved.exists()


def test_a_limit_of_the_whole_device_is_reported_as_given(
        capsys: pytest.CaptureFixture[str]) -> None:
    titan = 12 * 2**30
    code, out, _ = run_cli(capsys, "run", "tiny-branch", "--device", "sim:titan-x",
                           "--memory-limit", "12GiB", "--steps", "1", "--json")
    assert code == 0 and json.loads(out)["memory_limit_bytes"] == titan
    code, out, _ = run_cli(capsys, "plan", "tiny-branch", "--device", "sim:titan-x",
                           "--memory-limit", "12GiB", "--json")
    assert code == 0 and json.loads(out)["capacity_bytes"] == titan


def test_a_limit_above_a_cuda_devices_memory_is_refused(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On cuda the bound is the total memory the device reports (facts'
    total_memory_bytes); a stand-in device of 1 GiB shows it without a GPU."""
    import vmem.backends.cuda
    from vmem.backends import get_backend
    from vmem.backends.cpu import CpuBackend
    from vmem.errors import UsageError

    closed: list[str] = []

    class OneGiBCard(CpuBackend):
        def __init__(self, index: int = 0, capacity: int | None = None,
                     bounded: bool = True) -> None:
            super().__init__(capacity)
            self.name = f"cuda:{index}"

        def facts(self) -> dict[str, object]:
            return {"backend": self.name, "total_memory_bytes": 2**30}

        def device_memory_bytes(self) -> int | None:  # the contract's default, not cpu's
            return super(CpuBackend, self).device_memory_bytes()

        def close(self) -> None:
            closed.append(self.name)
            super().close()

    monkeypatch.setattr(vmem.backends.cuda, "CudaBackend", OneGiBCard)
    with pytest.raises(UsageError, match=r"cuda:0's memory, 1.00 GiB \(1,073,741,824 bytes\)"):
        get_backend("cuda", 2**30 + 1)
    assert closed == ["cuda:0"]  # the device it opened to ask is given back
    backend = get_backend("cuda:0", 2**30)
    assert backend.arena.capacity == 2**30
    backend.close()
    code, out, err = run_cli(capsys, "run", "digits", "--device", "cuda", "--memory-limit",
                             "2GiB")
    assert_one_line_error(code, err, "2.00 GiB is more than cuda:0's memory, 1.00 GiB")
    assert out == ""


@pytest.mark.parametrize(("argv", "fragments"), [
    (("bench", "step", "--profile", "nosuch"), ("unknown profile 'nosuch'",)),
    (("bench", "step", "--policy", "bogus"), ("--policy", "unknown policy 'bogus'")),
    (("bench", "softmax", "--out", "/nonexistent-dir/report.md"), ("--out", "does not exist")),
])
def test_bench_checks_its_arguments_before_asking_for_a_gpu(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
        fragments: tuple[str, ...]) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)
    assert "CUDA" not in err and out == ""


def test_ctrl_c_while_modules_import_exits_130_quietly(tmp_path: Path) -> None:
    """The installed `vmem` command, interrupted while it imports numpy (as Ctrl-C
    in the first moments of a run would): exit 130 and nothing on stderr, as an
    interrupt later in the run."""
    import shutil

    command = shutil.which("vmem", path=str(Path(sys.executable).parent))
    assert command is not None, "the vmem console script is not installed"
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'numpy':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n")
    done = subprocess.run([command, "profiles"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode, done.stderr, done.stdout) == (130, "", "")


def test_compare_prints_the_baseline_where_no_policy_fits_the_device(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without --memory-limit, a network no policy fits into the device's memory gets
    a row saying so, naming the device's memory rather than a limit nobody gave, and
    the oracle (memory for everything) still runs: the vDNN paper's baseline. Its
    peak is the one `vmem plan` gives on a GPU with room for it."""
    code, out, err = run_cli(capsys, "compare", "vgg16", "--batch", "256", "--device",
                             "sim:titan-x", "--allocation", "network-wide", "--policies", "none",
                             "--json")
    assert code == 0, err
    none, oracle = json.loads(out)
    assert "cannot train vgg16" in none["error"] and "no --memory-limit" in none["error"]
    assert "sim:titan-x's memory" in none["error"] and "a memory limit of" not in none["error"]
    code, planned, _ = run_cli(capsys, "plan", "vgg16", "--batch", "256", "--device",
                               "sim:h100-pcie5", "--allocation", "network-wide", "--policy",
                               "none", "--json")
    assert oracle["oracular"] and oracle["peak_bytes"] == json.loads(planned)["peak_bytes"]
    code, out, _ = run_cli(capsys, "compare", "vgg16", "--batch", "256", "--device",
                           "sim:titan-x", "--allocation", "network-wide", "--policies", "none")
    assert code == 0 and "device memory 12.00 GiB (no --memory-limit)" in out
    assert "memory limit none" not in out and "│ oracle " in out


def test_a_limit_no_policy_meets_is_still_refused_by_compare(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "compare", "digits", "--device", "sim:titan-x",
                           "--memory-limit", "1KiB")
    assert_one_line_error(code, err, "a memory limit of 1.00 KiB cannot train digits")


def test_version_and_a_bare_vmem(capsys: pytest.CaptureFixture[str]) -> None:
    """`vmem --version` names the package's version; a bare `vmem` prints its help
    (every command listed) and exits 0."""
    from vmem import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"vmem {__version__}"
    code, out, err = run_cli(capsys)
    assert code == 0 and err == "" and "usage: vmem" in out
    for command in ("profiles", "run", "compare", "plan", "fit", "report", "calibrate"):
        assert command in out
