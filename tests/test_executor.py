"""The executor's memory accounting against figures worked out by hand, and its
behaviour after an out-of-memory error."""

from __future__ import annotations

import numpy as np
import pytest

import vmem
from vmem.errors import MemoryLimitTooSmall
from vmem.layers import LAYER_TYPES
from vmem.profiler.analysis import average_bytes, peak_bytes
from vmem.units import format_bytes

F32 = 4


def small_network() -> vmem.Network:
    """data (2, 2, 4, 4) -> conv 3x3 pad 1 (3) -> relu -> flatten -> linear (5) -> loss."""
    t = LAYER_TYPES
    return vmem.Network.sequential("hand", (2, 4, 4), [
        t["conv"](name="conv1", out_channels=3, kernel=3, pad=1),
        t["relu"](name="relu1"),
        t["flatten"](name="flat"),
        t["linear"](name="fc", out_features=5),
        t["softmax_loss"](name="loss"),
    ])


def batch(seed: int = 0, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 4, 4), dtype=np.float32), rng.integers(0, 5, n)


# Worked out by hand at batch 2, float32 (bytes):
PARAMS = (3 * 2 * 3 * 3 + 3) + (5 * 48 + 5)  # conv weight + bias, fc weight + bias: 302 floats
BASE = 3 * PARAMS * F32  # weights, their gradients, momentum: 3624
DATA = 2 * 2 * 4 * 4 * F32  # 256
CONV_OUT = 2 * 3 * 4 * 4 * F32  # 384; relu runs in place over it, flatten copies it
LOGITS = 2 * 5 * F32  # 40; the loss saves probabilities of the same size
LOSS = 1 * F32  # the scalar loss lives until the step ends
# im2col of the whole batch (2304) and backward's weight-gradient temporary (216)
WORKSPACE = 2 * (2 * 3 * 3) * (4 * 4) * F32 + 3 * 2 * 3 * 3 * F32
# The peak is conv1's backward pass: weights and state, data (conv1 keeps its
# input), the loss scalar, conv1's output gradient and the im2col workspace.
HAND_PEAK = BASE + DATA + LOSS + CONV_OUT + WORKSPACE  # 6788
# Forward, before the loss frees the logits: data, relu (conv) output, flatten
# output, logits, loss scalar, saved probabilities.
FORWARD_HIGH = BASE + DATA + CONV_OUT + CONV_OUT + LOGITS + LOSS + LOGITS


def test_peak_equals_hand_computed_figure() -> None:
    with vmem.Runtime(small_network(), device="cpu") as runtime:
        assert runtime.arena.in_use == BASE
        runtime.train_step(*batch())
        record = runtime.last_record
        assert peak_bytes(record) == HAND_PEAK == 6788
        assert max(e.in_use for e in record.memory if e.t_ms >= 0) == HAND_PEAK
        assert runtime.arena.in_use == BASE  # nothing left behind
        # the highest point of the forward pass, just before the logits die
        forward_free_of_logits = next(e for e in record.memory
                                      if e.op == "free" and e.label == "fc")
        assert forward_free_of_logits.in_use + LOGITS == FORWARD_HIGH


def test_relu_runs_in_place_and_feature_maps_die_on_time() -> None:
    with vmem.Runtime(small_network(), device="cpu") as runtime:
        runtime.train_step(*batch())
        labels = [(e.op, e.label) for e in runtime.last_record.memory]
    assert ("alloc", "relu1") not in labels  # in place over conv1's output
    # the data tensor lives until conv1's backward pass, the last thing to run
    assert labels.index(("free", "data")) > labels.index(("alloc", "dfc"))
    # relu's output (conv1's block, kept for relu's backward pass) dies after relu's
    # backward pass, which runs after flatten's output gradient is done with
    assert labels.index(("free", "dflat")) < labels.index(("free", "conv1"))
    # relu's backward pass writes conv1's output gradient over its own: no new block
    assert ("alloc", "dconv1") not in labels


def test_average_lies_between_base_and_peak() -> None:
    with vmem.Runtime(small_network(), device="cpu") as runtime:
        runtime.train_step(*batch())
        record = runtime.last_record
    assert BASE < average_bytes(record) < HAND_PEAK


def test_out_of_memory_names_layer_and_leaks_nothing() -> None:
    limit = HAND_PEAK - 1
    with vmem.Runtime(small_network(), device="cpu", memory_limit=limit) as runtime:
        before = runtime.arena.in_use
        with pytest.raises(vmem.OutOfDeviceMemory) as failure:
            runtime.train_step(*batch())
        error = failure.value
        assert (error.layer, error.phase) == ("conv1", "backward")
        assert error.requested == WORKSPACE and error.capacity == limit
        assert error.in_use == HAND_PEAK - WORKSPACE
        message = str(error)
        assert "conv1" in message and "backward" in message and "6.63 KiB" in message
        assert runtime.arena.in_use == before  # zero leaked bytes
        assert {b.kind for b in runtime.arena.live_blocks()} <= {"weights", "weight_grads",
                                                                  "optimizer"}
        runtime.set_memory_limit(HAND_PEAK)
        loss = runtime.train_step(*batch())
        assert np.isfinite(loss)
        assert runtime.arena.in_use == before


def test_out_of_memory_in_forward() -> None:
    limit = BASE + DATA + CONV_OUT + WORKSPACE - 1
    with vmem.Runtime(small_network(), device="cpu", memory_limit=limit) as runtime:
        with pytest.raises(vmem.OutOfDeviceMemory) as failure:
            runtime.train_step(*batch())
        assert (failure.value.layer, failure.value.phase) == ("conv1", "forward")
        assert runtime.arena.in_use == BASE


# The least any configuration needs at batch 2: vdnn-all with im2col one sample at a
# time (1152 bytes of columns, and the 216-byte weight-gradient temporary that sums
# the chunks); the peak is conv1's backward pass, its input prefetched back.
FLOOR = BASE + DATA + LOSS + CONV_OUT + (2 * 3 * 3) * (4 * 4) * F32 + 3 * 2 * 3 * 3 * F32
# At batch 1 one chunk is the whole batch: no temporary, and half the maps.
FLOOR_1 = BASE + DATA // 2 + LOSS + CONV_OUT // 2 + (2 * 3 * 3) * (4 * 4) * F32


def _watch_backends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, list[bool]]]:
    """Every backend a Runtime makes, with whether it was closed."""
    import vmem.runtime

    made: list[tuple[object, list[bool]]] = []
    real = vmem.runtime.get_backend

    def watched(*args: object, **kwargs: object) -> object:
        backend = real(*args, **kwargs)
        closed = [False]
        close = backend.close

        def close_and_note() -> None:
            closed[0] = True
            close()

        backend.close = close_and_note  # type: ignore[method-assign]
        made.append((backend, closed))
        return backend

    monkeypatch.setattr(vmem.runtime, "get_backend", watched)
    return made


@pytest.mark.parametrize(("batch_hint", "needed"), [(None, FLOOR_1), (2, FLOOR)])
def test_weights_that_do_not_fit_are_refused_before_any_allocation(
        monkeypatch: pytest.MonkeyPatch, batch_hint: int | None, needed: int) -> None:
    assert (FLOOR, FLOOR_1) == (5636, 5100)
    made = _watch_backends(monkeypatch)
    with pytest.raises(MemoryLimitTooSmall) as failure:
        vmem.Runtime(small_network(), device="cpu", memory_limit=BASE - 1, batch=batch_hint)
    message = str(failure.value)
    assert f"cannot train hand at batch {batch_hint or 1} under any policy" in message
    assert f"needs at least {format_bytes(needed)} ({needed:,} bytes)" in message
    assert "out of device memory" not in message
    [(backend, closed)] = made
    assert backend.arena.peak == 0 and backend.arena.in_use == 0  # nothing was placed
    assert closed == [True]


def test_a_batch_no_policy_fits_is_refused_by_name_and_leaks_nothing() -> None:
    with vmem.Runtime(small_network(), device="cpu", memory_limit=FLOOR - 1) as runtime:
        assert runtime.arena.in_use == BASE  # batch 1 can train: the runtime is made
        with pytest.raises(MemoryLimitTooSmall,
                           match=f"at batch 2 under any policy.*\\({FLOOR:,} bytes\\)"):
            runtime.train_step(*batch(n=2))
        assert runtime.arena.in_use == BASE and runtime.host_pool.reserved == 0
        assert np.isfinite(runtime.train_step(*batch(n=1)))  # a batch that fits still runs
        assert runtime.arena.in_use == BASE


def test_training_reduces_loss_and_evaluate_gives_probabilities() -> None:
    x, y = batch(n=8)
    with vmem.Runtime(small_network(), device="cpu", seed=3) as runtime:
        losses = [runtime.train_step(x, y) for _ in range(30)]
        probabilities = runtime.evaluate(x)
        assert runtime.arena.in_use == BASE
    assert losses[-1] < 0.5 * losses[0]
    assert probabilities.shape == (8, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_same_training() -> None:
    x, y = batch(n=4)
    runs = []
    for _ in range(2):
        with vmem.Runtime(small_network(), device="cpu", seed=7) as runtime:
            runs.append(([runtime.train_step(x, y) for _ in range(3)], runtime.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        np.testing.assert_array_equal(value, runs[1][1][name])


def test_bad_inputs_are_refused_clearly() -> None:
    with vmem.Runtime(small_network(), device="cpu") as runtime:
        with pytest.raises(vmem.UsageError, match=r"expects \(N, 2, 4, 4\)"):
            runtime.train_step(np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, int))
        with pytest.raises(vmem.UsageError, match=r"labels must lie in \[0, 5\)"):
            runtime.train_step(*batch()[:1], np.array([0, 5]))
        with pytest.raises(vmem.UsageError, match="expected \\(2,\\)"):
            runtime.train_step(batch()[0], np.array([0, 1, 2]))
        assert runtime.arena.in_use == BASE


def test_inplace_nodes_are_told_their_input_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor passes ctx.inplace exactly to the nodes whose output takes over
    their input's block, so those write over it and the device holds one buffer."""
    from vmem.layers import Dropout, ReLU
    from vmem.profile import load_profile
    from vmem.trial import synthetic_batch

    told: dict[str, bool] = {}
    for cls in (ReLU, Dropout):
        def forward(self, xp, xs, params, algo, ctx, _inner=cls.forward):  # noqa: ANN001
            told[self.name] = ctx.inplace
            y, saved = _inner(self, xp, xs, params, algo, ctx)
            assert (y is xs[0]) == ctx.inplace
            return y, saved
        monkeypatch.setattr(cls, "forward", forward)
    network = load_profile("alexnet-tiny").network  # its dropouts cannot run in place
    with vmem.Runtime(network, device="cpu", policy="vdnn-all") as runtime:
        x, y = synthetic_batch(network.input_shape, runtime.num_classes, 2, seed=0)
        runtime.train_step(x, y)
    index = {node.name: i for i, node in enumerate(network.nodes)}
    expected = {name: any(life.inplace_into == index[name] for life in network.lives.values())
                for name in told}
    assert told == expected
    assert any(expected.values()) and not all(expected.values())
