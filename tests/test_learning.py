"""Every shipped network learns from its first weights: the first loss near
ln(classes), as the reference implementations' initialisation gives, and the loss
falling over ten steps at the profile's cpu batch. The tiny and small networks
train here; the full-size ones (minutes a step on a CPU) get a first-loss check
from one training step at batch 1, and their ten steps are scripts/learn-check's
(results in bench/results/learn-check.md)."""

from __future__ import annotations

import math

import pytest
import test_profiles

import vmem
from vmem.profile import load_profile
from vmem.trial import synthetic_batch

# How near ln(classes) a first loss must be. He-normal classifiers gave 11-23 on the
# tiny networks and 39 on VGG-16; torchvision's ResNets start a little above chance
# (the residual sums grow with depth before BN sees them).
NEAR = 0.5
SMALL = tuple(f"{n}-tiny" for n in test_profiles.WITH_TINY) + ("digits", "tiny-branch")


@pytest.mark.parametrize("name", SMALL)
def test_a_small_network_starts_near_chance_and_learns(name: str) -> None:
    profile = load_profile(name)
    with vmem.Runtime(profile.network, device="cpu", seed=0) as runtime:
        x, y = synthetic_batch(profile.network.input_shape, runtime.num_classes,
                               profile.cpu_batch, seed=0)
        losses = [runtime.train_step(x, y) for _ in range(10)]
    chance = math.log(runtime.num_classes)
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
