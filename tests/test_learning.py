"""Every shipped network learns from its first weights: the first loss near
ln(classes), as the reference implementations' initialisation gives, and the loss
falling over ten steps of `vmem run` at the profile's cpu batch and learning rate.
The tiny and small networks train here; the full-size ones (minutes a step on a
CPU) get a first-loss check from one training step at batch 1, and their ten steps
are scripts/learn-check's (results in bench/results/learn-check.md); that each
has its recipe's learning rate is tests/test_learning_rate.py's."""

from __future__ import annotations

import json
import math

import pytest
import test_profiles
from cli_helpers import run_cli

import vmem
from vmem.profile import load_profile
from vmem.trial import synthetic_batch

# How near ln(classes) a first loss must be. He-normal classifiers gave 11-23 on the
# tiny networks and 39 on VGG-16; torchvision's ResNets start a little above chance
# (the residual sums grow with depth before BN sees them).
NEAR = 0.5
SMALL = tuple(f"{n}-tiny" for n in test_profiles.WITH_TINY) + ("digits", "tiny-branch",
                                                                 "gpt2-tiny")


@pytest.mark.parametrize("name", SMALL)
def test_a_small_network_starts_near_chance_and_learns(name: str, capsys) -> None:
    """`vmem run NAME --device cpu --steps 10`: the profile's cpu batch, its seeded
    batch every step, SGD at the profile's learning rate."""
    code, out, err = run_cli(capsys, "run", name, "--device", "cpu", "--steps", "10",
                             "--json")
    assert code == 0, err
    result = json.loads(out)
    losses, network = result["losses"], load_profile(name).network
    assert result["batch"] == load_profile(name).cpu_batch and len(losses) == 10
    chance = math.log(network.vocab if network.takes_tokens else network.classes)
    assert abs(losses[0] - chance) < NEAR * chance, losses
    assert losses[-1] < losses[0] and min(losses[5:]) < min(losses[:5]), losses


@pytest.mark.parametrize("name", test_profiles.FULL)
def test_a_full_size_network_starts_near_chance(name: str) -> None:
    """The first step's loss (the first weights, a training forward pass: BN with the
    batch's statistics) on one seeded sample."""
    profile = load_profile(name)
    with vmem.Runtime(profile.network, device="cpu", seed=0) as runtime:
        x, y = synthetic_batch(profile.network.input_shape, runtime.num_classes, 1, seed=0)
        loss = runtime.train_step(x, y)
    chance = math.log(runtime.num_classes)
    assert abs(loss - chance) < NEAR * chance, loss
