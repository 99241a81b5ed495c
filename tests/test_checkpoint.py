"""State dicts: saved and loaded through a file, training goes on exactly as if it had
never stopped (the uninterrupted run is the reference), and every bad state dict is
refused by name with nothing changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vmem
from vmem.trial import synthetic_batch

NETWORK = "alexnet-tiny"  # convolutions, LRN, dropout: every kind of state a step reads


def batch(runtime: vmem.Runtime) -> tuple[np.ndarray, np.ndarray]:
    return synthetic_batch(runtime.network.input_shape, runtime.num_classes, 4, seed=1)


@pytest.mark.parametrize("optimizer", [vmem.SGD(lr=0.01), vmem.AdamW(lr=0.001)],
                         ids=["sgd", "adamw"])
def test_training_resumes_exactly_from_a_saved_state(optimizer: vmem.SGD | vmem.AdamW,
                                                     tmp_path: Path) -> None:
    """Five steps in one go against three, a save to disk, and two more in a new runtime
    (same seed: dropout's masks follow the seed and the step count)."""
    with vmem.Runtime(NETWORK, device="cpu", optimizer=optimizer, seed=4) as runtime:
        x, y = batch(runtime)
        reference = [runtime.train_step(x, y) for _ in range(5)]
        final = runtime.state_dict()
    with vmem.Runtime(NETWORK, device="cpu", optimizer=optimizer, seed=4) as runtime:
        first = [runtime.train_step(x, y) for _ in range(3)]
        np.savez(tmp_path / "checkpoint.npz", **runtime.state_dict(optimizer=True))
    with vmem.Runtime(NETWORK, device="cpu", optimizer=optimizer, seed=4,
                      policy="vdnn-all") as runtime:
        with np.load(tmp_path / "checkpoint.npz") as saved:
            runtime.load_state_dict(saved)
        assert runtime.steps == 3
        resumed = [runtime.train_step(x, y) for _ in range(2)]
        state = runtime.state_dict()
    assert first + resumed == reference
    for key, value in final.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_weights_alone_give_the_same_predictions() -> None:
    """Without the optimizer's state, a state dict carries the weights: evaluation
    matches, and the optimizer's state and step count stay as they were."""
    with vmem.Runtime(NETWORK, device="cpu", seed=4) as trained:
        x, y = batch(trained)
        for _ in range(2):
            trained.train_step(x, y)
        weights = trained.state_dict()
        expected = trained.evaluate(x)
    with vmem.Runtime(NETWORK, device="cpu", seed=9) as runtime:
        runtime.load_state_dict(weights)
        np.testing.assert_array_equal(runtime.evaluate(x), expected)
        assert runtime.steps == 0
        velocities = runtime.state_dict(optimizer=True)
        assert all(not v.any() for k, v in velocities.items() if k.endswith(".velocity"))


def _bad_states(good: dict[str, np.ndarray]) -> list[tuple[dict[str, object], str]]:
    weight, velocity = "conv1.weight", "conv1.weight.velocity"
    weights = {k: v for k, v in good.items() if k != "steps" and not k.endswith("velocity")}
    return [
        ({k: v for k, v in weights.items() if k != weight}, f"no '{weight}'"),
        ({**weights, "conv9.weight": good[weight]}, "unknown 'conv9.weight'"),
        ({**weights, weight: good[weight][:1]}, f"'{weight}' has shape (1,"),
        ({**weights, weight: good[weight].astype(np.int32)}, "dtype int32"),
        ({**weights, velocity: good[velocity]}, "but no"),
        ({**good, "steps": np.array(-1)}, "'steps' must be an integer from 0 to 2**32 - 1"),
        ({**good, "steps": np.array(2.5)}, "'steps' must be an integer from 0 to 2**32 - 1"),
        ({**weights, "conv1.weight.exp_avg": good[weight]}, "unknown 'conv1.weight.exp_avg'"),
    ]


def test_a_bad_state_dict_is_refused_by_name_and_changes_nothing() -> None:
    with vmem.Runtime(NETWORK, device="cpu", seed=4) as runtime:
        x, y = batch(runtime)
        runtime.train_step(x, y)
        good = runtime.state_dict(optimizer=True)
        for _ in range(2):
            runtime.train_step(x, y)
        before = runtime.state_dict(optimizer=True)
        for state, message in _bad_states(good):
            with pytest.raises(vmem.UsageError, match="state dict") as refused:
                runtime.load_state_dict(state)
            assert message in str(refused.value) and "\n" not in str(refused.value)
            after = runtime.state_dict(optimizer=True)
            for key, value in before.items():
                np.testing.assert_array_equal(after[key], value, err_msg=f"{message}: {key}")
        assert runtime.steps == 3


def test_sim_has_no_values_to_load() -> None:
    with (vmem.Runtime(NETWORK, device="sim:titan-x") as runtime,
          pytest.raises(vmem.UsageError, match="sim:titan-x backend holds no parameter")):
        runtime.load_state_dict({})


def test_a_state_dict_is_a_copy_that_later_steps_leave_alone() -> None:
    """On cpu the device arrays are host arrays, updated in place by each step: the
    state dict must not be them."""
    with vmem.Runtime(NETWORK, device="cpu", optimizer=vmem.SGD(lr=0.01)) as runtime:
        x, y = batch(runtime)
        before = runtime.state_dict(optimizer=True)
        kept = {key: value.copy() for key, value in before.items()}
        runtime.train_step(x, y)
        after = runtime.state_dict()
    assert any(not np.array_equal(after[key], kept[key]) for key in after)
    for key, value in before.items():
        np.testing.assert_array_equal(value, kept[key], err_msg=key)
