"""Transformers: token input, the language-model loss, the embedding, weight tying,
and whole GPT-2 steps against PyTorch and under every policy."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from networks import train
from torch_reference import torch_loss

import vmem
from vmem.dryrun import dry_run
from vmem.errors import ProfileError
from vmem.layers import DIRECT, Context, Embedding
from vmem.layers.embedding import segment_sum
from vmem.memory import MemoryKind
from vmem.plan import offloaded_tensors
from vmem.policies.vdnn import Budget, none, vdnn_conv
from vmem.profile import dump_profile, load_profile, parse_profile
from vmem.profiler.analysis import peak_bytes
from vmem.trial import synthetic_data


def gpt2_tiny() -> vmem.Network:
    return load_profile("gpt2-tiny").network


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-300))


# ---------------------------------------------------------------- the embedding

def test_embedding_gathers_rows_and_sums_repeated_tokens() -> None:
    """Forward is weight[ids]; backward adds every position's gradient into its
    token's row (tokens 1 and 3 repeat, 0 and 4 never occur)."""
    layer = Embedding(name="wte", vocab=6, features=3)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 3))
    ids = np.array([[1, 3, 1], [5, 3, 2]], dtype=np.int32)
    y, saved = layer.forward(np, [ids], {"weight": weight}, DIRECT, Context())
    np.testing.assert_array_equal(y, weight[ids])
    dy = rng.standard_normal(y.shape)
    dxs, grads = layer.backward(np, dy, [ids], None, {"weight": weight}, saved, DIRECT,
                                [ids.shape], [False])
    expected = np.zeros_like(weight)
    np.add.at(expected, ids.reshape(-1), dy.reshape(-1, 3))
    assert dxs == [None]
    np.testing.assert_allclose(grads["weight"], expected, rtol=1e-15)
    assert not grads["weight"][[0, 4]].any()


def test_segment_sum_matches_add_at_and_repeats_bit_for_bit() -> None:
    """float32 rows summed per token as np.add.at sums them in float64, to float32's
    rounding; and the same bits on every call (no atomics, whose order varies)."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, size=200)
    rows = rng.standard_normal((200, 4), dtype=np.float32) * 1000
    out = segment_sum(np, ids, rows, 7)
    expected = np.zeros((7, 4))
    np.add.at(expected, ids, rows.astype(np.float64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-2)
    assert not out[[5, 6]].any()
    np.testing.assert_array_equal(segment_sum(np, ids, rows, 7), out)
    assert segment_sum(np, ids[:0], rows[:0], 7).shape == (7, 4)


# ---------------------------------------------------------------- against PyTorch

def test_layers_match_torch_operators() -> None:
    """nn.Embedding, nn.LayerNorm, F.gelu(approximate="tanh"),
    F.scaled_dot_product_attention(is_causal=True) and F.cross_entropy, forward and
    backward, in float64."""
    torch = pytest.importorskip("torch")
    from vmem.layers import GELU, Attention, LayerNorm, SoftmaxLoss

    rng = np.random.default_rng(2)

    def compare(layer, x, params, torch_fn, ctx=None, integer=False):
        y, saved = layer.forward(np, [x], params, DIRECT, ctx or Context())
        tx = torch.tensor(x) if integer else torch.tensor(x, requires_grad=True)
        tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        ty = torch_fn(tx, **tparams)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        dy = None if layer.IS_LOSS else rng.standard_normal(y.shape)
        (ty if dy is None else (ty * torch.tensor(dy)).sum()).backward()
        dxs, grads = layer.backward(np, None if dy is None else dy.copy(), [x], None, params,
                                    saved, DIRECT, [x.shape], [not integer])
        if not integer:
            np.testing.assert_allclose(dxs[0], tx.grad.numpy(), rtol=1e-9, atol=1e-12)
        for k, g in grads.items():
            np.testing.assert_allclose(g, tparams[k].grad.numpy(), rtol=1e-9, atol=1e-12)

    ids = rng.integers(0, 11, size=(3, 7))
    embedding = torch.nn.Embedding(11, 5).double()
    compare(Embedding(name="e", vocab=11, features=5), ids,
            {"weight": embedding.weight.detach().numpy().copy()},
            lambda x, weight: torch.nn.functional.embedding(x, weight), integer=True)
    norm = torch.nn.LayerNorm(6).double()
    compare(LayerNorm(name="ln"), rng.standard_normal((2, 3, 6)) * 3 + 1,
            {"weight": rng.standard_normal(6), "bias": rng.standard_normal(6)},
            lambda x, weight, bias: torch.nn.functional.layer_norm(x, (6,), weight, bias,
                                                                   norm.eps))
    compare(GELU(name="g"), rng.standard_normal((2, 3, 4)) * 3, {},
            lambda x: torch.nn.functional.gelu(x, approximate="tanh"))

    def sdpa(x):
        q, k, v = (p.reshape(2, 5, 3, 4).transpose(1, 2) for p in x.split(12, dim=-1))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out.transpose(1, 2).reshape(2, 5, 12)

    compare(Attention(name="a", heads=3), rng.standard_normal((2, 5, 36)), {}, sdpa)
    labels = rng.integers(0, 9, size=(2, 4))
    compare(SoftmaxLoss(name="loss"), rng.standard_normal((2, 4, 9)) * 2, {},
            lambda x: torch.nn.functional.cross_entropy(x.reshape(8, 9),
                                                        torch.tensor(labels.reshape(8))),
            ctx=Context(labels=labels))


def captured_step(runtime: vmem.Runtime, x: np.ndarray, y: np.ndarray
                  ) -> tuple[float, dict[str, np.ndarray]]:
    """One training step's loss and its parameter gradients, copied as the update
    starts (the update spends them as its scratch)."""
    grads: dict[str, np.ndarray] = {}
    update = runtime.params.update

    def capture(step: int) -> None:
        for layer, entry in runtime.params.layers.items():
            grads.update({f"{layer}.{p}": g.copy() for p, g in entry.grads.items()})
        update(step)

    runtime.params.update = capture  # type: ignore[method-assign]
    loss = runtime.train_step(x, y)
    runtime.params.update = update  # type: ignore[method-assign]
    return loss, grads


def test_gpt2_tiny_step_matches_torch() -> None:
    """A whole step of gpt2-tiny (dropout on, the same masks): the loss and every
    gradient, the tied embedding's included, within 1e-5 of PyTorch's (float64)."""
    torch = pytest.importorskip("torch")
    network = gpt2_tiny()
    x, y = synthetic_data(network, 2, seed=3)
    with vmem.Runtime(network, device="cpu", seed=0) as runtime:
        weights = runtime.state_dict()
        loss, grads = captured_step(runtime, x, y)
    reference, leaves = torch_loss(torch, network, weights, x, y, seed=0, dtype=torch.float64)
    reference.backward()
    assert abs(loss - reference.item()) <= 1e-5 * abs(reference.item())
    assert set(grads) == set(leaves) == set(weights)
    for key, leaf in leaves.items():
        assert rel_error(grads[key], leaf.grad.numpy()) < 1e-5, key


# ---------------------------------------------------------------- tokens in, tied weights

def test_tied_head_weight_is_held_and_counted_once() -> None:
    network = gpt2_tiny()
    head = {n.name: n for n in network.nodes}["lm_head"]
    assert head.layer.param_shapes([(1, 32, 64)]) == {}
    with vmem.Runtime(network, device="sim:h100-pcie5") as runtime:
        weights = runtime.arena.bytes_by_kind()[MemoryKind.WEIGHTS]
    assert weights == network.num_params() * 4
    assert network.num_params() == 256 * 64 + 32 * 64 + 128 + 2 * (
        2 * 128 + 64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256 + 256 * 64 + 64)


def test_bad_token_ids_are_refused_by_name() -> None:
    network = gpt2_tiny()
    x, y = synthetic_data(network, 2, seed=0)
    with vmem.Runtime(network, device="cpu") as runtime:
        before = runtime.arena.in_use
        for bad, pattern in [(x.astype(np.float32), r"token ids must be integers in \[0, 256\)"),
                             (x - 1, r"token ids must lie in \[0, 256\), got values from -1"),
                             (x + 200, r"token ids must lie in \[0, 256\), got .* to 455"),
                             (x[:, :5], r"token ids have shape \(2, 5\); gpt2-tiny expects "
                                        r"\(N, 32\)")]:
            with pytest.raises(vmem.UsageError, match=pattern):
                runtime.train_step(bad, y)
        with pytest.raises(vmem.UsageError, match=r"labels have shape \(2,\); expected \(2, 32\)"):
            runtime.train_step(x, y[:, 0])
        with pytest.raises(vmem.UsageError, match=r"labels must lie in \[0, 256\)"):
            runtime.train_step(x, y + 256)
        with pytest.raises(vmem.UsageError, match="token ids must be integers"):
            runtime.evaluate(x.astype(np.float64))
        assert runtime.arena.in_use == before
        runtime.train_step(x, y)  # the next step runs


def test_evaluate_gives_each_positions_next_token_distribution() -> None:
    network = gpt2_tiny()
    x, _ = synthetic_data(network, 3, seed=0)
    with vmem.Runtime(network, device="cpu") as runtime:
        probabilities = runtime.evaluate(x)
    assert probabilities.shape == (3, 32, 256)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1, rtol=1e-5)


# ---------------------------------------------------------------- memory virtualization

POLICIES = ("none", "vdnn-all", "vdnn-conv", "vdnn-dyn", "budget")


def test_every_policy_trains_gpt2_bit_identically_to_none() -> None:
    """Without a limit and within one between vdnn-all's peak and none's, where
    vdnn-dyn and budget must move maps: the same losses and weights, bit for bit."""
    network = gpt2_tiny()
    reference_losses, reference_weights, runtime = train(network, "none")
    none_peak = runtime.peak_bytes(runtime.executor(2).plan)
    all_peak = runtime.peak_bytes(runtime.plan(2, "vdnn-all"))
    runtime.close()
    assert all_peak < none_peak
    runs = [(policy, None) for policy in POLICIES[1:]]
    runs += [(policy, (none_peak + all_peak) // 2) for policy in ("vdnn-dyn", "budget")]
    for policy, limit in runs:
        losses, weights, runtime = train(network, policy, memory_limit=limit)
        moved = sum(s.nbytes for s in runtime.last_record.spans if s.kind == "copy_d2h")
        runtime.close()
        assert losses == reference_losses, policy
        for name, value in reference_weights.items():
            np.testing.assert_array_equal(weights[name], value, err_msg=f"{policy}: {name}")
        if policy in ("vdnn-all", "vdnn-conv") or limit is not None:
            assert moved > 0, f"{policy} moved nothing"


@pytest.mark.parametrize("policy", POLICIES[:4])
def test_sim_allocates_what_the_cpu_allocates_on_gpt2(policy: str) -> None:
    network = gpt2_tiny()
    records = {}
    for device in ("cpu", "sim:h100-pcie5"):
        _, _, runtime = train(network, policy, device=device, steps=1)
        records[device] = runtime.last_record
        runtime.close()
    cpu, sim = records["cpu"], records["sim:h100-pcie5"]
    assert ([(e.op, e.label, e.kind, e.nbytes, e.in_use) for e in sim.memory]
            == [(e.op, e.label, e.kind, e.nbytes, e.in_use) for e in cpu.memory])
    assert peak_bytes(sim) == peak_bytes(cpu)


def test_the_residual_stream_moves_once() -> None:
    """The residual stream into a block is read by its first layernorm (which keeps
    it) and by its first add: vdnn-all copies it out once, after the add, and back
    once."""
    network = gpt2_tiny()
    _, _, runtime = train(network, "vdnn-all", steps=1)
    spans = runtime.last_record.spans
    offloaded = runtime.executor(2).offloaded
    runtime.close()
    stream = "h.0.add_1"  # read by h.0.ln_2 and h.0.add_2
    consumers = [network.nodes[i].name for i in network.lives[stream].consumers]
    assert consumers == ["h.0.ln_2", "h.0.add_2"]
    out = Counter(s.name for s in spans if s.kind == "copy_d2h")
    back = Counter(s.name for s in spans if s.kind == "copy_h2d")
    assert out[stream] == back[stream] == 1
    assert set(out) == set(back) == set(offloaded) and max(out.values()) == 1
    assert "data" in offloaded  # the token ids the embedding keeps, int32
    add = next(s for s in spans if s.kind == "kernel" and s.name == "h.0.add_2"
               and s.phase == "forward")
    copy = next(s for s in spans if s.kind == "copy_d2h" and s.name == stream)
    assert copy.start_ms >= add.start_ms - 1e-6  # with its last reader, not before


def test_vdnn_conv_offloads_the_inputs_of_linear_and_attention_layers() -> None:
    network = gpt2_tiny()
    plan = vdnn_conv(network, 2, 4, Budget())
    heavy = {n.name for n in network.nodes if n.layer.TYPE in ("linear", "attention")}
    assert network.heavy_layers == heavy
    assert {entry.layer for entry in plan.layers if entry.offload_input} == heavy
    expected = {source for n in network.nodes if n.name in heavy for source in n.inputs}
    assert offloaded_tensors(network, plan) == expected
    # a CNN keeps vDNN's rule: convolutions only, its linear layers not
    alexnet = load_profile("alexnet-tiny").network
    assert alexnet.heavy_layers == {n.name for n in alexnet.nodes if n.layer.TYPE == "conv"}


# ---------------------------------------------------------------- profiles

TOKEN_PROFILE = """\
input = [8]
vocab = 16

[[layer]]
name = "wte"
type = "embedding"
vocab = 16
features = 4

[[layer]]
name = "head"
type = "linear"
out_features = 16
bias = false
tied_to = "wte"

[[layer]]
name = "loss"
type = "softmax_loss"
"""


def test_a_token_profile_loads_and_round_trips() -> None:
    profile = parse_profile(TOKEN_PROFILE, "lm.toml")
    network = profile.network
    assert network.vocab == 16 and network.label_shape(3) == (3, 8)
    assert network.num_params() == 16 * 4  # the head's weight is the embedding's
    again = parse_profile(dump_profile(profile), "again.toml").network
    assert again.vocab == 16 and again.nodes == network.nodes


@pytest.mark.parametrize(("old", "new", "pattern"), [
    ("vocab = 16\n", "vocab = 0\n", r"lm.toml:2: 'vocab' must be a positive integer, got 0"),
    ("vocab = 16\n", "vocab = 16.0\n", r"lm.toml:2: 'vocab' must be an integer"),
    ("vocab = 16\n\n", "", r"layer 'wte': .*reads token ids, but the network's input is not"),
    ("vocab = 16\nfeatures", "vocab = 17\nfeatures",
     r"^lm.toml:5, layer 'wte': vocab 17, but the input's is 16$"),
    ('tied_to = "wte"', 'tied_to = "nope"',
     r"^lm.toml:11, layer 'head': uses the weight of 'nope', which is no layer$"),
    ("out_features = 16", "out_features = 15",
     r"layer 'head': needs its weight of shape \(15, 4\); the weight of 'wte' is \(16, 4\)"),
    ('type = "embedding"', 'type = "layernorm"', r"layer 'wte': .*reads data, which is token"),
    ("input = [8]", "input = [2, 8]", r"a token input is one sequence a sample"),
])
def test_bad_token_profiles_name_the_problem(old: str, new: str, pattern: str) -> None:
    text = TOKEN_PROFILE.replace(old, new, 1)
    assert text != TOKEN_PROFILE
    if new == 'type = "layernorm"':
        text = text.replace("vocab = 16\nfeatures = 4\n", "")
    with pytest.raises(ProfileError, match=pattern):
        parse_profile(text, "lm.toml")


def kept_by_block(network: vmem.Network, batch: int, block: str) -> int:
    """Bytes of the feature maps and saved state a block's layers made that are alive
    as the backward pass starts (a dry run on sim, policy none)."""
    run = dry_run(network, none(network, batch, 4, Budget()), np.dtype(np.float32),
                  vmem.AdamW())
    live: dict[str, int] = {}
    for event in run.record.memory:
        if event.phase == "backward":
            break
        if event.kind in ("feature_maps", "saved"):
            if event.op == "alloc":
                live[event.label] = event.nbytes
            else:
                live.pop(event.label)
    return sum(n for label, n in live.items() if label.startswith(block))


@pytest.mark.parametrize(("name", "batch"), [("gpt2-tiny", 3), ("gpt2", 1)])
def test_a_block_keeps_what_docs_transformers_md_counts(name: str, batch: int) -> None:
    """By hand (docs/transformers.md): 18 float32 (s, b, h) tensors (the layernorms',
    linears' and GELU's inputs, the fused QKV, two dropout masks), the (b, a, s, s)
    attention probabilities, and two statistics a row for each layernorm."""
    network = load_profile(name).network
    (s,), b = network.input_shape, batch
    h = network.param_shapes()["wte"]["weight"][1]
    a = next(n.layer.heads for n in network.nodes if n.layer.TYPE == "attention")
    assert kept_by_block(network, batch, "h.0.") == 72 * s * b * h + 4 * a * s * s * b + 16 * s * b
