"""A profile's learning rate: `lr` for a batch of `lr_batch`, scaled linearly to the
batch trained (the recipes' own rule), used by `vmem run` and `vmem.Runtime` unless an
optimizer or `--lr` is given; checked, named in errors, round-tripped. The figures
are the papers' recipes, computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_profiles
from cli_helpers import assert_one_line_error, run_cli
from profile_errors import MARK, profile_error

import vmem
from vmem.optim import LearningRate
from vmem.profile import dump_profile, list_profiles, load_profile, parse_profile
from vmem.trial import synthetic_batch

# The recipes, as their papers (or reference code) give them: (lr, the batch it is for).
RECIPES = {
    "alexnet": (0.01, 128),  # Krizhevsky et al. 2012
    "overfeat": (0.0125, 128),  # Sermanet et al. 2014: 0.05 at momentum 0.6 = 0.0125 at 0.9
    "vgg16": (0.01, 256),  # Simonyan & Zisserman 2015
    "googlenet": (0.01, 32),  # Caffe's bvlc_googlenet solver
    "resnet18": (0.1, 256), "resnet50": (0.1, 256), "resnet152": (0.1, 256),  # torchvision
}
# ...and what they give at each profile's cpu batch, by hand: lr * cpu_batch / lr_batch.
AT_CPU_BATCH = {"alexnet": 0.01 * 8 / 128, "overfeat": 0.0125 * 4 / 128,
                "vgg16": 0.01 * 2 / 256, "googlenet": 0.01 * 4 / 32, "resnet18": 0.1 * 4 / 256,
                "resnet50": 0.1 * 2 / 256, "resnet152": 0.1 / 256}

DIGITS = Path(load_profile("digits").path).read_text()


def test_the_rule_scales_linearly_or_not_at_all() -> None:
    assert LearningRate(0.1, 256).at(2) == 0.1 * 2 / 256
    assert LearningRate(0.1, 256).at(256) == 0.1
    assert LearningRate(0.05).at(1) == LearningRate(0.05).at(4096) == 0.05
    assert LearningRate() == LearningRate(0.01, None)


@pytest.mark.parametrize("name", list_profiles())
def test_every_shipped_profile_has_its_learning_rate(name: str) -> None:
    """The full-size networks quote their recipes; the rest (test networks, GPT-2,
    trained with Adam) take SGD's 0.01 at every batch."""
    profile = load_profile(name)
    lr, lr_batch = RECIPES.get(name, (0.01, None))
    assert profile.learning_rate == LearningRate(lr, lr_batch)
    expected = AT_CPU_BATCH.get(name, 0.01)
    assert profile.learning_rate.at(profile.cpu_batch) == pytest.approx(expected, rel=1e-15)
    assert set(RECIPES) == set(test_profiles.FULL)


def test_lr_round_trips(tmp_path: Path) -> None:
    for name in ("resnet50", "digits"):
        profile = load_profile(name)
        again = parse_profile(dump_profile(profile), str(tmp_path / "again.toml"))
        assert again.learning_rate == profile.learning_rate
        assert again.network == profile.network
    text = DIGITS.replace("cpu_batch = 64", "cpu_batch = 64\nlr = 0.3")
    profile = parse_profile(text, "x.toml")
    assert profile.learning_rate == LearningRate(0.3)
    assert parse_profile(dump_profile(profile), "y.toml").learning_rate == LearningRate(0.3)


@pytest.mark.parametrize(("lines", "fragments"), [
    ("lr = 0" + MARK, ["'lr' must be a positive finite number", "got 0"]),
    ("lr = -0.1" + MARK, ["'lr' must be a positive finite number"]),
    ("lr = inf" + MARK, ["'lr' must be a positive finite number", "inf"]),
    ("lr = nan" + MARK, ["'lr' must be a positive finite number", "nan"]),
    ('lr = "0.1"' + MARK, ["'lr' must be a number", "a string"]),
    ("lr = true" + MARK, ["'lr' must be a number"]),
    ("lr = 0.1\nlr_batch = 0" + MARK, ["'lr_batch' must be a positive integer"]),
    ("lr = 0.1\nlr_batch = 2.5" + MARK, ["'lr_batch' must be an integer"]),
    ("lr = 0.1\nlr_batch = 99999999999" + MARK, ["'lr_batch' must hold integers up to"]),
    ("lr_batch = 256" + MARK, ["'lr_batch' is the batch an 'lr' is for: give 'lr' too"]),
])
def test_a_bad_learning_rate_is_named(tmp_path: Path, lines: str, fragments: list[str]) -> None:
    text = DIGITS.replace("cpu_batch = 64", "cpu_batch = 64\n" + lines)
    message, _ = profile_error(tmp_path, text)
    for fragment in fragments:
        assert fragment in message, message


def test_vmem_profiles_refuses_a_bad_lr_in_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(DIGITS.replace("cpu_batch = 64", "cpu_batch = 64\nlr = -1"))
    code, out, err = run_cli(capsys, "profiles", str(path))
    assert_one_line_error(code, err, str(path), "'lr' must be a positive finite number")
    assert out == ""


def _run_json(capsys, *argv: str) -> dict:
    code, out, err = run_cli(capsys, "run", *argv, "--device", "cpu", "--json")
    assert code == 0, err
    return json.loads(out)


def test_vmem_run_trains_at_the_profiles_rate_for_its_batch(tmp_path: Path, capsys) -> None:
    path = tmp_path / "scaled.toml"
    path.write_text(DIGITS.replace("cpu_batch = 64", "cpu_batch = 8\nlr = 0.2\nlr_batch = 64"))
    assert _run_json(capsys, str(path), "--steps", "1")["lr"] == 0.2 * 8 / 64
    assert _run_json(capsys, str(path), "--steps", "1", "--batch", "16")["lr"] == 0.2 * 16 / 64
    assert _run_json(capsys, str(path), "--steps", "1", "--lr", "0.5")["lr"] == 0.5
    assert _run_json(capsys, str(path), "--steps", "1", "--optimizer", "adamw")["lr"] == 0.001
    assert _run_json(capsys, "digits", "--steps", "1")["lr"] == 0.01


def test_runtime_scales_the_rate_to_each_steps_batch() -> None:
    """A Runtime given the profile trains each step at lr * batch / lr_batch: the same
    bits as one given that SGD, step by step, batches of 8 then 4."""
    profile = parse_profile(DIGITS.replace("cpu_batch = 64", "lr = 0.4\nlr_batch = 16"),
                            "scaled.toml")
    x, y = synthetic_batch(profile.network.input_shape, 10, 8, seed=3)
    batches = [(x, y), (x[:4], y[:4])]
    with vmem.Runtime(profile, device="cpu") as scaled:
        for xb, yb in batches:
            scaled.train_step(xb, yb)
        assert scaled.optimizer.lr == 0.4 * 4 / 16
        got = scaled.state_dict(optimizer=True)
    with vmem.Runtime(profile.network, device="cpu", optimizer=vmem.SGD(lr=0.2)) as by_hand:
        by_hand.train_step(*batches[0])
        by_hand.params.optimizer = vmem.SGD(lr=0.1)  # what the rule gives at batch 4
        by_hand.train_step(*batches[1])
        want = by_hand.state_dict(optimizer=True)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_an_optimizer_given_is_used_as_it_is() -> None:
    with vmem.Runtime("resnet50", device="sim:v100", optimizer=vmem.SGD(lr=0.3)) as rt:
        assert rt.optimizer.lr == 0.3
    with vmem.Runtime(load_profile("resnet50"), device="sim:v100", batch=32) as rt:
        assert rt.optimizer.lr == pytest.approx(0.0125, rel=1e-15)
    with vmem.Runtime(load_profile("resnet50").network, device="sim:v100") as rt:
        assert rt.optimizer.lr == 0.01  # a bare Network: SGD's default
