"""The Runtime facing a careless or unlucky user: bad inputs and arguments are refused
in one line before anything is allocated, faults inside a step leave nothing behind
and the next steps train exactly as a fresh runtime's, a closed runtime refuses
every call, and no NumPy warning ever reaches the caller."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import vmem
from vmem import MemoryLimitTooSmall, NonFiniteError, RuntimeClosed, UsageError
from vmem.trial import synthetic_batch

NETWORK = "digits"  # 1x8x8 inputs, 10 classes: small enough for many runtimes


@pytest.fixture(autouse=True)
def no_warnings() -> Iterator[None]:
    """Every test here runs with warnings as errors: none may reach a user."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def batch(n: int = 4, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    return synthetic_batch((1, 8, 8), 10, n, seed=seed)


def runtime(**options: Any) -> vmem.Runtime:
    return vmem.Runtime(NETWORK, device="cpu", seed=3, **options)


def losses_of(rt: vmem.Runtime, steps: int, n: int = 4) -> list[float]:
    x, y = batch(n)
    return [rt.train_step(x, y) for _ in range(steps)]


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(b[key], value, err_msg=key)


# -- inputs that cannot become float32 ------------------------------------------------

X, Y = batch()
BAD_INPUTS = {
    "object": X.astype(object),
    "str": X.astype(str),
    "bytes": X.astype(bytes),
    "complex64": X.astype(np.complex64),
    "datetime64": np.zeros(X.shape, "datetime64[s]"),
    "timedelta64": np.zeros(X.shape, "timedelta64[s]"),
    "structured": np.zeros(X.shape, [("a", np.float32), ("b", np.float32)]),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
@pytest.mark.parametrize("call", ["train_step", "evaluate"])
def test_inputs_that_are_not_real_numbers_are_refused_by_name(kind: str, call: str) -> None:
    bad = BAD_INPUTS[kind]
    with runtime() as rt:
        before = rt.arena.in_use
        with pytest.raises(UsageError) as refused:
            rt.train_step(bad, Y) if call == "train_step" else rt.evaluate(bad)
        message = str(refused.value)
        assert message.startswith("inputs:") and str(bad.dtype) in message, message
        assert "float32" in message and "\n" not in message
        assert rt.arena.in_use == before


def test_refused_inputs_leak_nothing_under_a_tight_budget() -> None:
    """Ten refused batches leave the arena as it was: a step that fit before still fits."""
    with runtime(policy="budget", memory_limit="1MiB") as rt:
        before = rt.arena.in_use
        for _ in range(10):
            with pytest.raises(UsageError):
                rt.train_step(BAD_INPUTS["object"], Y)
            with pytest.raises(UsageError):
                rt.evaluate(BAD_INPUTS["str"])
        assert rt.arena.in_use == before
        assert np.isfinite(rt.train_step(X, Y))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8, np.bool_])
def test_real_inputs_are_converted_to_float32(dtype: type) -> None:
    x = np.abs(X * 4).astype(dtype)
    with runtime() as converted, runtime() as reference:
        assert converted.train_step(x, Y) == reference.train_step(x.astype(np.float32), Y)


@pytest.mark.parametrize("labels", [Y.astype(object), Y.astype(str), Y.astype(np.float32),
                                    Y.astype(np.complex64), [0.5, 1, 2, 3]])
def test_labels_that_are_not_class_ids_are_refused_by_name(labels: Any) -> None:
    with runtime() as rt:
        before = rt.arena.in_use
        with pytest.raises(UsageError, match=r"^labels: .*integer class ids in \[0, 10\)"):
            rt.train_step(X, labels)
        assert rt.arena.in_use == before


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e39])
@pytest.mark.parametrize("call", ["train_step", "evaluate"])
def test_non_finite_inputs_are_named_and_change_nothing(value: float, call: str) -> None:
    x = X.astype(np.float64)
    x[1, 0, 2, 3] = value  # 1e39 is finite in float64, infinite as float32
    with runtime() as rt:
        before = rt.state_dict(optimizer=True)
        with pytest.raises(NonFiniteError, match="^inputs: 1 value is not finite as float32"):
            rt.train_step(x, Y) if call == "train_step" else rt.evaluate(x)
        assert_same_state(before, rt.state_dict(optimizer=True))
        assert rt.steps == 0


def test_array_likes_are_accepted_and_ragged_ones_refused() -> None:
    with runtime() as rt, runtime() as reference:
        assert rt.train_step(X.tolist(), Y.tolist()) == reference.train_step(X, Y)
        with pytest.raises(UsageError, match="^inputs: "):
            rt.train_step([[1.0], [1.0, 2.0]], Y)


# -- non-finite numbers inside a step ------------------------------------------------


def overflowing(rt: vmem.Runtime) -> None:
    """conv1's weights set to ones: nine inputs of 3e38 then sum past float32's range."""
    state = rt.state_dict()
    rt.load_state_dict(state | {"conv1.weight": np.ones_like(state["conv1.weight"])})


def test_a_step_that_overflows_is_reported_and_not_applied() -> None:
    """Inputs near float32's largest value overflow inside the network (its first
    convolution's weights set to ones, so any nine of them sum past float32's range,
    whatever the initialisation): the step is refused by number, the weights stay as
    they were, and a good batch trains on as a fresh runtime's first step."""
    with runtime() as rt, runtime() as fresh:
        for each in (rt, fresh):
            overflowing(each)
        before = rt.state_dict(optimizer=True)
        in_use = rt.arena.in_use
        with pytest.raises(NonFiniteError, match="^non-finite .* at step 1; the update was "
                                                 "not applied") as refused:
            rt.train_step(np.full_like(X, 3e38), Y)
        assert refused.value.step == 1 and "\n" not in str(refused.value)
        assert rt.steps == 0 and rt.arena.in_use == in_use
        assert_same_state(before, rt.state_dict(optimizer=True))
        assert losses_of(rt, 2) == losses_of(fresh, 2)


@pytest.mark.parametrize("optimizer", [vmem.SGD(lr=1e30), vmem.AdamW(lr=1e30)])
def test_a_learning_rate_that_diverges_stops_at_the_first_non_finite_step(
        optimizer: vmem.SGD | vmem.AdamW) -> None:
    with runtime(optimizer=optimizer) as rt:
        x, y = batch()
        states = [rt.state_dict(optimizer=True)]
        with pytest.raises(NonFiniteError) as refused:
            for _ in range(20):
                rt.train_step(x, y)
                states.append(rt.state_dict(optimizer=True))
        assert refused.value.step == rt.steps + 1 == len(states)
        assert_same_state(states[-1], rt.state_dict(optimizer=True))
        assert all(np.isfinite(v).all() for v in states[-1].values())


@pytest.mark.parametrize("command", ["run", "compare"])
def test_the_cli_reports_a_diverging_run_in_one_line(capsys: pytest.CaptureFixture[str],
                                                     command: str) -> None:
    """`--lr 1e30` overflows at the second step: one line, exit 2, no NumPy warning
    (warnings are errors here)."""
    from vmem.cli import main

    code = main([command, NETWORK, "--device", "cpu", "--lr", "1e30", "--steps", "3"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(f"vmem {command}: error: non-finite loss (nan) at step 2; the "
                          "update was not applied") and err.count("\n") == 1, err


def test_evaluate_reports_non_finite_probabilities() -> None:
    with runtime() as rt:
        overflowing(rt)
        in_use = rt.arena.in_use
        with pytest.raises(NonFiniteError, match="^non-finite probabilities in evaluate"):
            rt.evaluate(np.full_like(X, 3e38))
        assert rt.arena.in_use == in_use


@pytest.mark.parametrize("make", [
    lambda: vmem.SGD(lr=float("inf")), lambda: vmem.SGD(lr=float("nan")),
    lambda: vmem.SGD(weight_decay=float("nan")), lambda: vmem.SGD(weight_decay=float("inf")),
    lambda: vmem.SGD(momentum=float("nan")), lambda: vmem.AdamW(lr=float("inf")),
    lambda: vmem.AdamW(eps=float("inf")), lambda: vmem.AdamW(beta1=float("nan")),
    lambda: vmem.AdamW(weight_decay=float("nan")),
    lambda: vmem.SGD(lr="0.1"), lambda: vmem.SGD(momentum=None), lambda: vmem.SGD(lr=True),
    lambda: vmem.AdamW(eps="1e-8"),
])
def test_optimizer_settings_that_are_not_finite_numbers_are_refused(make: Callable[[], Any]
                                                                     ) -> None:
    with pytest.raises(UsageError) as refused:
        make()
    message = str(refused.value)
    assert "finite" in message or "number" in message, message


@pytest.mark.parametrize(("field", "value"), [("beta", float("nan")), ("alpha", float("inf")),
                                              ("k", float("inf")), ("beta", float("inf"))])
def test_lrn_refuses_settings_that_are_not_finite(field: str, value: float) -> None:
    from vmem.layers import LAYER_TYPES

    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        LAYER_TYPES["lrn"](name="norm", **{field: value})


# -- bad arguments -----------------------------------------------------------------


@pytest.mark.parametrize(("options", "fragment"), [
    ({"seed": -1}, "seed: must be an integer >= 0"),
    ({"seed": 1.5}, "seed: must be an integer >= 0"),
    ({"seed": True}, "seed: must be an integer >= 0"),
    ({"seed": "3"}, "seed: must be an integer >= 0"),
    ({"device": None}, "device: expected a string"),
    ({"device": 0}, "device: expected a string"),
    ({"policy": None}, "policy"),
    ({"policy": ["none"]}, "policy"),
    ({"dtype": None}, "dtype"),
])
def test_bad_runtime_arguments_are_refused_by_name(options: dict[str, Any], fragment: str
                                                    ) -> None:
    with pytest.raises(UsageError, match=fragment):
        vmem.Runtime(NETWORK, **{"device": "cpu", **options})


@pytest.mark.parametrize("state", [None, [("conv1.weight", np.zeros(3))], "state", 3])
def test_load_state_dict_refuses_what_is_not_a_mapping(state: Any) -> None:
    with runtime() as rt:
        before = rt.state_dict(optimizer=True)
        with pytest.raises(UsageError, match="^state dict: expected a mapping"):
            rt.load_state_dict(state)
        assert_same_state(before, rt.state_dict(optimizer=True))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_state_dict_with_non_finite_values_is_refused_by_name(value: float) -> None:
    with runtime() as rt:
        state = rt.state_dict(optimizer=True)
        bad = {**state, "fc3.weight": state["fc3.weight"].copy()}
        bad["fc3.weight"][0, 0] = value
        with pytest.raises(UsageError, match="^state dict: 'fc3.weight': 1 value is not "
                                             "finite as float32"):
            rt.load_state_dict(bad)
        assert_same_state(state, rt.state_dict(optimizer=True))


@pytest.mark.parametrize("steps", [2**62, 2**32, -1])
def test_a_state_dict_with_steps_out_of_range_is_refused(steps: int) -> None:
    with runtime() as rt:
        state = {**rt.state_dict(optimizer=True), "steps": np.array(steps, dtype=np.int64)}
        with pytest.raises(UsageError, match=r"'steps' must be an integer from 0 to 2\*\*32 - 1"):
            rt.load_state_dict(state)
        assert rt.steps == 0


def test_a_memory_limit_below_what_is_in_use_is_refused_at_once() -> None:
    with runtime() as rt:
        in_use = rt.arena.in_use
        with pytest.raises(MemoryLimitTooSmall, match="memory_limit: 1.00 KiB is less than"):
            rt.set_memory_limit("1KiB")
        assert rt.memory_limit is None and rt.arena.capacity is None
        with pytest.raises(MemoryLimitTooSmall, match="cannot train digits at batch 1"):
            rt.set_memory_limit(in_use + 1)  # holds the weights, trains nothing
        assert rt.memory_limit is None
        assert np.isfinite(rt.train_step(X, Y))
        rt.set_memory_limit("1MiB")
        assert rt.memory_limit == 2**20


def test_set_memory_limit_refuses_what_is_not_a_size() -> None:
    with runtime() as rt, pytest.raises(UsageError, match="memory_limit"):
        rt.set_memory_limit([1])


def test_a_fraction_of_a_byte_is_refused_not_rounded() -> None:
    """1.5 would be read as 1 byte; a whole-valued float (1e9) is a size."""
    with runtime() as rt:
        with pytest.raises(UsageError, match="memory_limit: '1.5' is not a whole number"):
            rt.set_memory_limit(1.5)
        assert rt.memory_limit is None
        rt.set_memory_limit(1e9)
        assert rt.memory_limit == 10**9


# -- state dicts are copies ----------------------------------------------------------


def test_a_state_dict_is_a_copy_that_training_does_not_change() -> None:
    with runtime() as rt, runtime() as fresh:
        state = rt.state_dict(optimizer=True)
        kept = {key: value.copy() for key, value in state.items()}
        for name, arrays in rt.parameters.items():
            for pname, array in arrays.items():
                assert not np.shares_memory(state[f"{name}.{pname}"], array)
        losses = losses_of(rt, 3)
        assert_same_state(kept, state)
        rt.load_state_dict(state)
        assert losses_of(rt, 3) == losses == losses_of(fresh, 3)


# -- evaluate in batches that fit -------------------------------------------------------


@pytest.mark.parametrize("policy", ["budget", "none", "vdnn-all"])
def test_evaluate_of_more_samples_than_fit_runs_in_batches_that_fit(policy: str) -> None:
    x, y = batch(261, seed=5)
    with runtime(policy=policy, memory_limit="1MiB") as tight, runtime() as roomy:
        tight.train_step(x[:8], y[:8]), roomy.train_step(x[:8], y[:8])
        probabilities = tight.evaluate(x)
        expected = roomy.evaluate(x)
    assert probabilities.shape == (261, 10)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)


# -- a closed runtime ------------------------------------------------------------------


def call_within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run `call` in a thread; the exception it raised, failing if it hangs."""
    raised: list[BaseException | None] = [None]

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            raised[0] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call hung"
    return raised[0]


CLOSED_CALLS: dict[str, Callable[[vmem.Runtime], object]] = {
    "train_step": lambda rt: rt.train_step(X, Y),
    "evaluate": lambda rt: rt.evaluate(X),
    "state_dict": lambda rt: rt.state_dict(),
    "load_state_dict": lambda rt: rt.load_state_dict({}),
    "set_memory_limit": lambda rt: rt.set_memory_limit("1MiB"),
    "parameters": lambda rt: rt.parameters,
    "plan": lambda rt: rt.plan(4),
    "executor": lambda rt: rt.executor(4),
}


@pytest.mark.parametrize("policy", ["none", "vdnn-all"])
@pytest.mark.parametrize("call", CLOSED_CALLS)
def test_a_closed_runtime_refuses_every_call_in_one_line(policy: str, call: str) -> None:
    rt = runtime(policy=policy)
    rt.train_step(X, Y)
    rt.close()
    rt.close()  # twice is harmless
    raised = call_within(10, lambda: CLOSED_CALLS[call](rt))
    assert isinstance(raised, RuntimeClosed), raised
    message = str(raised)
    assert message.startswith(f"{call}: this runtime is closed") and "\n" not in message
    assert rt.arena.in_use == 0 and rt.host_pool.reserved == 0


# -- faults inside a step ---------------------------------------------------------------


class Injected(Exception):
    pass


def failing_on(call: int, exc: type[BaseException], inner: Callable[..., Any]
               ) -> Callable[..., Any]:
    """`inner`, raising `exc` on its `call`-th call (from 1) instead of running."""
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            raise exc("injected")
        return inner(*args, **kwargs)

    return wrapper


def rule_failing_on(call: int, exc: type[BaseException], update_of: Callable[..., Any]
                    ) -> Callable[..., Any]:
    """An optimizer's `update_of`, the rule of whose `call`-th update (from 1) raises
    `exc` when it runs: the updates before it have run by then."""
    import dataclasses

    calls = [0]

    def raising(*arrays: Any) -> None:
        raise exc("injected")

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        update = update_of(*args, **kwargs)
        calls[0] += 1
        return dataclasses.replace(update, rule=raising) if calls[0] == call else update

    return wrapper


def _layer_class(kind: str) -> type:
    from vmem.layers import LAYER_TYPES

    return LAYER_TYPES[kind]


# (layer type, method, which of the step's calls fails): digits has two convolutions and
# two poolings, one dropout and one loss
FAULTS = [(*where, exc) for where in [("conv", "forward", 2), ("conv", "backward", 2),
                                      ("maxpool", "backward", 2), ("dropout", "forward", 1),
                                      ("softmax_loss", "backward", 1)]
          for exc in (Injected, KeyboardInterrupt, MemoryError)]


@pytest.mark.parametrize("policy", ["none", "vdnn-all"])
@pytest.mark.parametrize(("kind", "method", "call", "exc"), FAULTS)
def test_a_fault_inside_a_step_leaves_nothing_and_training_goes_on_exactly(
        monkeypatch: pytest.MonkeyPatch, policy: str, kind: str, method: str, call: int,
        exc: type[BaseException]) -> None:
    """A fault in any pass (an error, Ctrl-C, host memory running out) frees every
    block and pinned buffer the step took; the runtime then trains as a fresh one."""
    with runtime(policy=policy) as rt, runtime(policy=policy) as fresh:
        expected = losses_of(fresh, 3)
        assert losses_of(rt, 1) == expected[:1]
        before = rt.state_dict(optimizer=True)
        in_use, pinned = rt.arena.in_use, rt.host_pool.in_use
        cls = _layer_class(kind)
        monkeypatch.setattr(cls, method, failing_on(call, exc, getattr(cls, method)))
        with pytest.raises(exc, match="injected"):
            losses_of(rt, 1)
        monkeypatch.undo()
        assert rt.arena.in_use == in_use and rt.host_pool.in_use == pinned == 0
        assert rt.steps == 1
        assert_same_state(before, rt.state_dict(optimizer=True))
        assert losses_of(rt, 2) == expected[1:]


@pytest.mark.parametrize("exc", [Injected, KeyboardInterrupt, MemoryError])
def test_a_fault_in_a_copy_on_the_memory_stream_leaves_nothing(
        monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]) -> None:
    with runtime(policy="vdnn-all") as rt, runtime(policy="vdnn-all") as fresh:
        expected = losses_of(fresh, 3)
        losses_of(rt, 1)
        in_use = rt.arena.in_use
        monkeypatch.setattr(np, "copyto", failing_on(3, exc, np.copyto))
        with pytest.raises(exc, match="injected"):
            losses_of(rt, 1)
        monkeypatch.undo()
        assert rt.arena.in_use == in_use and rt.host_pool.in_use == 0
        assert losses_of(rt, 2) == expected[1:]


# -- a fault inside the optimizer's update --------------------------------------------------


@pytest.mark.parametrize("optimizer", [vmem.SGD(lr=0.05), vmem.AdamW(lr=0.01)])
@pytest.mark.parametrize("exc", [Injected, KeyboardInterrupt])
def test_an_interrupted_update_is_never_trained_on_silently(
        monkeypatch: pytest.MonkeyPatch, optimizer: vmem.SGD | vmem.AdamW,
        exc: type[BaseException]) -> None:
    """Half the parameters updated: the runtime refuses to go on until a state dict
    is loaded, and then trains exactly as a fresh runtime."""
    with runtime(optimizer=optimizer) as rt, runtime(optimizer=optimizer) as fresh:
        expected = losses_of(fresh, 3)
        losses_of(rt, 1)
        saved = rt.state_dict(optimizer=True)
        cls = type(optimizer)
        # the third parameter's rule raises: 2 of 8 updated
        monkeypatch.setattr(cls, "update_of", rule_failing_on(3, exc, cls.update_of))
        with pytest.raises(exc, match="injected"):
            losses_of(rt, 1)
        monkeypatch.undo()
        assert rt.steps == 1
        for call in ("train_step", "evaluate", "state_dict", "parameters"):
            with pytest.raises(vmem.UpdateInterrupted, match=f"^{call}: the optimizer's update of "
                                                     "step 2 was interrupted") as refused:
                CLOSED_CALLS[call](rt)
            assert "load_state_dict" in str(refused.value)
        with pytest.raises(UsageError, match="with the optimizer's state"):
            rt.load_state_dict({k: v for k, v in saved.items() if k.count(".") == 1})
        rt.load_state_dict(saved)
        assert rt.steps == 1
        assert losses_of(rt, 2) == expected[1:]


# -- pinned host memory across batch sizes ------------------------------------------------


def test_pinned_memory_is_bounded_by_the_largest_plan() -> None:
    with runtime(policy="vdnn-all") as alone:
        losses_of(alone, 1, n=64)
        largest = alone.host_pool.reserved
    assert largest > 0
    with runtime(policy="vdnn-all") as rt:
        for n in range(1, 65):
            losses_of(rt, 1, n=n)
            assert rt.host_pool.reserved <= largest, n
        for n in (63, 64, 1, 64):  # and back: what is pinned is reused
            losses_of(rt, 1, n=n)
        assert rt.host_pool.reserved == largest and rt.host_pool.in_use == 0


def test_a_smaller_batch_reuses_the_pinned_memory_of_a_larger_one() -> None:
    with runtime(policy="vdnn-all", host_memory_limit="768KiB") as rt, \
            runtime(policy="vdnn-all") as fresh:
        assert losses_of(rt, 1, n=64) == losses_of(fresh, 1, n=64)
        assert losses_of(rt, 2, n=63) == losses_of(fresh, 2, n=63)
        assert rt.host_pool.reserved <= 768 * 1024


# -- layer state (BatchNorm's running statistics) is not moved by a failed step ------------


@pytest.mark.parametrize("fault", ["backward", "non-finite"])
def test_a_failed_step_leaves_batchnorm_running_statistics_as_they_were(
        monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """The forward pass moves the running statistics in place; a step that fails after
    it (a fault in the backward pass, a non-finite loss) puts them back, so the next
    steps train as a fresh runtime's."""
    from test_batchnorm import bn_network

    network = bn_network()
    x, y = synthetic_batch(network.input_shape, 6, 4, seed=1)
    with vmem.Runtime(network, device="cpu", seed=3) as rt, \
            vmem.Runtime(network, device="cpu", seed=3) as fresh:
        expected = [fresh.train_step(x, y) for _ in range(3)]
        assert rt.train_step(x, y) == expected[0]
        before = rt.state_dict(optimizer=True)
        if fault == "backward":
            cls = _layer_class("maxpool")
            monkeypatch.setattr(cls, "backward", failing_on(1, Injected, cls.backward))
            with pytest.raises(Injected):
                rt.train_step(x, y)
            monkeypatch.undo()
        else:
            with pytest.raises(NonFiniteError):
                rt.train_step(np.full_like(x, np.nan), y)
        assert_same_state(before, rt.state_dict(optimizer=True))
        assert [rt.train_step(x, y) for _ in range(2)] == expected[1:]
