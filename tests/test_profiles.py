"""Profiles: the shipped networks against their published parameter counts, the
tiny variants against their full versions, the TOML round trip, and every error
path naming the file, the line and the layer."""

from __future__ import annotations

from pathlib import Path

import pytest
from profile_errors import MARK, profile_error

from vmem.errors import ProfileError, UsageError
from vmem.graph import DATA
from vmem.profile import Profile, dump_profile, list_profiles, load_profile, parse_profile

WITH_TINY = ("alexnet", "overfeat", "googlenet", "vgg16", "resnet18")  # each has a -tiny
FULL = (*WITH_TINY, "resnet50", "resnet152")
GPT2 = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
SHIPPED = (*FULL, *(f"{n}-tiny" for n in WITH_TINY), "digits", "tiny-branch", *GPT2,
           "gpt2-tiny")

# Published parameter counts (weights and biases), the references:
PUBLISHED_PARAMS = {
    # Krizhevsky et al., NIPS 2012, give "60 million"; the exact count of the two-tower
    # network (conv2/4/5 in two groups) is that of Caffe's bvlc_alexnet: 60,965,224.
    "alexnet": 60_965_224,
    # Sermanet et al., ICLR 2014, Table 1 (fast model), summed with biases; the paper
    # gives about 145 million.
    "overfeat": 145_920_872,
    # Szegedy et al., CVPR 2015, Table 1, as built by Caffe's bvlc_googlenet, without
    # the two auxiliary classifiers (which only serve training).
    "googlenet": 6_998_552,
    # Simonyan & Zisserman, ICLR 2015, Table 2: configuration D, "138M"; exactly
    # 138,357,544 in the authors' released Caffe model (and torchvision's vgg16).
    "vgg16": 138_357_544,
    # He et al., CVPR 2016, as torchvision builds them (v1.5 bottlenecks); torchvision's
    # model documentation gives these counts (BN weight and bias included).
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
    # Radford et al. 2019 give 117M, 345M, 762M and 1542M; the exact counts of the
    # released models (Hugging Face's GPT2Model, tied head counted once) are these.
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}
# (blocks, width, heads) of each GPT-2, from the released models' configurations.
GPT2_SHAPES = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16),
               "gpt2-large": (36, 1280, 20), "gpt2-xl": (48, 1600, 25),
               "gpt2-tiny": (2, 64, 4)}

# Fields that make up a layer's connectivity and geometry, kept equal in tiny variants.
STRUCTURAL_FIELDS = ("kernel", "stride", "pad", "groups", "ceil_mode", "axis", "bias")


def structure(profile: Profile) -> list[tuple[object, ...]]:
    return [(node.name, node.layer.TYPE, node.inputs,
             tuple(getattr(node.layer, f, None) for f in STRUCTURAL_FIELDS))
            for node in profile.network.nodes]


# ---------------------------------------------------------------- shipped profiles

def test_every_shipped_profile_is_listed() -> None:
    assert list_profiles() == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name)
    network = profile.network
    assert network.name == name
    assert network.description
    assert profile.path.name == f"{name}.toml"
    assert profile.batch >= profile.cpu_batch >= 1
    assert network.loss.layer.IS_LOSS
    assert network.shapes(profile.cpu_batch)[network.logits][0] == profile.cpu_batch


@pytest.mark.parametrize("name", (*FULL, *GPT2))
def test_parameter_count_is_the_published_one(name: str) -> None:
    assert load_profile(name).network.num_params() == PUBLISHED_PARAMS[name]


def test_full_profiles_use_the_papers_inputs_and_vdnn_batches() -> None:
    inputs = {"alexnet": (3, 227, 227), "overfeat": (3, 231, 231),
              "googlenet": (3, 224, 224), "vgg16": (3, 224, 224)}
    inputs |= dict.fromkeys(("resnet18", "resnet50", "resnet152"), (3, 224, 224))
    # the vDNN paper's batches; torchvision's reference training's 32 a GPU for ResNets
    batches = {"alexnet": 128, "overfeat": 128, "googlenet": 128, "vgg16": 64}
    batches |= dict.fromkeys(("resnet18", "resnet50", "resnet152"), 32)
    for name in FULL:
        profile = load_profile(name)
        assert profile.network.input_shape == inputs[name]
        assert profile.batch == batches[name]
        assert profile.network.shapes(1)[profile.network.logits] == (1, 1000)


def test_googlenet_has_nine_four_branch_inception_modules() -> None:
    network = load_profile("googlenet").network
    concats = [n for n in network.nodes if n.layer.TYPE == "concat"]
    assert len(concats) == 9
    assert all(len(n.inputs) == 4 for n in concats)
    assert not any(n.name.startswith(("loss1", "loss2")) for n in network.nodes)


@pytest.mark.parametrize(("name", "blocks", "layers"), [
    ("resnet18", [2, 2, 2, 2], 69), ("resnet50", [3, 4, 6, 3], 175),
    ("resnet152", [3, 8, 36, 3], 515)])
def test_resnets_have_torchvisions_blocks_and_names(name: str, blocks: list[int],
                                                    layers: int) -> None:
    """Stages of torchvision's depths; a projection shortcut only in a stage's first
    block where the shape changes; the stride on the 3x3 (v1.5); torchvision's
    parameter names and shapes; 7x7 maps before the global pool. Layers, by hand:
    the stem's 4 and the head's 3, and per block its convolutions, BNs and ReLUs
    and one add, 2 more where it projects."""
    network = load_profile(name).network
    index = {n.name: n for n in network.nodes}
    bottleneck = "layer1.0.conv3" in index
    for stage, depth in enumerate(blocks, start=1):
        assert f"layer{stage}.{depth - 1}.add" in index and f"layer{stage}.{depth}.add" not in index
        projects = bottleneck or stage > 1
        assert (f"layer{stage}.0.downsample.0" in index) == projects
        assert not any(f"layer{stage}.{b}.downsample.0" in index for b in range(1, depth))
        strided = f"layer{stage}.0.conv2" if bottleneck else f"layer{stage}.0.conv1"
        assert index[strided].layer.stride == (2 if stage > 1 else 1)
    per_block = 3 * 3 + 1 if bottleneck else 2 * 3 + 1
    projections = 4 if bottleneck else 3
    assert len(network.nodes) == 4 + per_block * sum(blocks) + 2 * projections + 3 == layers
    params = network.param_shapes()
    width = 512 * (4 if bottleneck else 1)
    assert params["conv1"] == {"weight": (64, 3, 7, 7)}
    assert params["bn1"] == {"weight": (64,), "bias": (64,)}
    assert params["layer4.0.downsample.0"]["weight"] == (width, width // 2, 1, 1)
    assert params["fc"] == {"weight": (1000, width), "bias": (1000,)}
    assert network.shapes(1)["layer4.0.add"] == (1, width, 7, 7)
    assert network.shapes(1)["avgpool"] == (1, width, 1, 1)


def test_resnet152_is_written_in_at_most_200_lines() -> None:
    assert len(load_profile("resnet152").path.read_text().splitlines()) <= 200


@pytest.mark.parametrize("name", WITH_TINY)
def test_tiny_variant_has_the_full_graph(name: str) -> None:
    full, tiny = load_profile(name), load_profile(f"{name}-tiny")
    assert structure(tiny) == structure(full)
    assert tiny.network.shapes(4)[tiny.network.logits] == (4, 10)
    assert tiny.network.input_shape[0] == full.network.input_shape[0]
    assert tiny.network.num_params() < full.network.num_params() / 50
    # A proxy for "a training step at batch 4 takes well under a second on a CPU".
    assert tiny.network.flops(4) < 2e9


@pytest.mark.parametrize("name", (*GPT2, "gpt2-tiny"))
def test_gpt2_profiles_have_gpt2s_shape(name: str) -> None:
    """Pre-LN blocks of the released sizes, context 1024 and the byte-pair vocabulary
    (the tiny one: 32 and bytes), a final layernorm and a head tied to wte."""
    network = load_profile(name).network
    blocks, width, heads = GPT2_SHAPES[name]
    length, vocab = (32, 256) if name == "gpt2-tiny" else (1024, 50_257)
    assert network.input_shape == (length,) and network.vocab == vocab
    by_name = {n.name: n for n in network.nodes}
    attention = [n for n in network.nodes if n.layer.TYPE == "attention"]
    assert len(attention) == blocks and all(n.layer.heads == heads for n in attention)
    assert by_name["h.0.ln_1"].inputs == ("drop",)  # pre-LN: the stream, normalised first
    assert by_name["h.0.add_1"].inputs == ("drop", "h.0.attn.resid_dropout")
    assert network.nodes[-3].name == "ln_f" and by_name["lm_head"].layer.tied_to == "wte"
    assert network.shapes(2)[network.logits] == (2, length, vocab)
    shapes = network.param_shapes()
    assert shapes["wte"]["weight"] == (vocab, width) and "weight" not in shapes["lm_head"]
    assert shapes[f"h.{blocks - 1}.mlp.c_fc"]["weight"] == (4 * width, width)


def test_gpt2_tiny_has_gpt2s_graph() -> None:
    """The same layers, types and inputs as gpt2's first two blocks, then its end."""
    def graph(name: str) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(n.name, n.layer.TYPE, n.inputs) for n in load_profile(name).network.nodes]

    full, tiny = graph("gpt2"), graph("gpt2-tiny")
    assert tiny[:27] == full[:27]  # the embedding and two blocks of twelve layers
    assert [n for n, _, _ in tiny[27:]] == [n for n, _, _ in full[-3:]]


def test_digits_fits_sklearn_digits() -> None:
    network = load_profile("digits").network
    assert network.input_shape == (1, 8, 8)
    assert network.shapes(1)[network.logits] == (1, 10)


def test_tiny_branch_has_a_fork_a_concat_and_an_add() -> None:
    network = load_profile("tiny-branch").network
    types = {n.layer.TYPE for n in network.nodes}
    assert {"concat", "add"} <= types
    assert max(len(life.consumers) for life in network.lives.values()) >= 3


# ---------------------------------------------------------------- round trip

@pytest.mark.parametrize("name", SHIPPED)
def test_dump_then_parse_gives_an_equal_profile(name: str) -> None:
    profile = load_profile(name)
    again = parse_profile(dump_profile(profile), "dumped.toml")
    assert again.network == profile.network
    assert (again.batch, again.cpu_batch) == (profile.batch, profile.cpu_batch)


def test_round_trip_keeps_strings_floats_and_explicit_inputs(tmp_path: Path) -> None:
    text = BASE + layer_tables(
        ('name = "conv1"', 'type = "conv"', "out_channels = 4", "kernel = 3", "pad = 1",
         "bias = false"),
        ('name = "norm"', 'type = "lrn"', "alpha = 2.5e-5", "k = 1"),
        ('name = "side"', 'type = "relu"', 'inputs = "conv1"'),
        ('name = "sum"', 'type = "add"', 'inputs = ["norm", "side"]'),
        ('name = "fc"', 'type = "linear"', "out_features = 3"),
        ('name = "loss"', 'type = "softmax_loss"'),
    )
    text = text.replace('name = "t"', 'name = "t \\"quoted\\" \\\\ name"', 1)
    path = tmp_path / "custom.toml"
    path.write_text(text)
    profile = load_profile(path)
    norm = profile.network.nodes[profile.network.index["norm"]].layer
    assert norm.k == 1.0 and isinstance(norm.k, float)
    assert profile.network.name == 't "quoted" \\ name'
    assert profile.network.nodes[profile.network.index["side"]].inputs == ("conv1",)
    again = parse_profile(dump_profile(profile), "dumped.toml")
    assert again.network == profile.network


def test_defaults_inputs_name_and_batches() -> None:
    tables = layer_tables(('name = "flat"', 'type = "flatten"'),
                          ('name = "fc"', 'type = "linear"', "out_features = 3"),
                          ('name = "loss"', 'type = "softmax_loss"'))
    profile = parse_profile(BASE.replace("cpu_batch = 2\n", "") + tables, "p.toml")
    assert [n.inputs for n in profile.network.nodes] == [(DATA,), ("flat",), ("fc",)]
    assert profile.cpu_batch == profile.batch == 2
    bare = parse_profile("input = [1, 8, 8]\n" + tables, "dir/bare.toml")
    assert bare.network.name == "bare"
    assert (bare.batch, bare.cpu_batch) == (32, 8)


def test_a_path_with_a_separator_or_suffix_is_a_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.toml").write_text(dump_profile(load_profile("digits")))
    monkeypatch.chdir(tmp_path)
    assert load_profile("mine.toml").network == load_profile("digits").network
    assert load_profile(str(tmp_path / "mine.toml")).network.name == "digits"


# ---------------------------------------------------------------- errors

BASE = 'name = "t"\ninput = [1, 8, 8]\nbatch = 2\ncpu_batch = 2\n'

# A valid chain; tests swap or edit one table to break it.
GOOD = (
    ('name = "conv1"', 'type = "conv"', "out_channels = 4", "kernel = 3", "pad = 1"),
    ('name = "relu1"', 'type = "relu"'),
    ('name = "fc"', 'type = "linear"', "out_features = 3"),
    ('name = "loss"', 'type = "softmax_loss"'),
)


def layer_tables(*tables: tuple[str, ...]) -> str:
    return "".join("\n[[layer]]\n" + "\n".join(table) + "\n" for table in tables)


def with_layer(index: int, table: tuple[str, ...]) -> str:
    return BASE + layer_tables(*GOOD[:index], table, *GOOD[index + 1:])


def assert_names(message: str, line: int, layer: str | None) -> None:
    where = f"bad.toml:{line}" + (f", layer '{layer}'" if layer else "")
    assert where in message, message


def test_the_good_profile_loads() -> None:
    assert len(parse_profile(BASE + layer_tables(*GOOD), "good.toml").network.nodes) == 4


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(UsageError) as info:
        load_profile("alexnett")
    assert "alexnett" in str(info.value)
    assert all(name in str(info.value) for name in SHIPPED)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="missing.toml"):
        load_profile(tmp_path / "missing.toml")


def test_malformed_toml_names_the_line_and_the_layer(tmp_path: Path) -> None:
    text = with_layer(1, ('name = "relu1"', 'type = "relu" "oops"' + MARK))
    message, line = profile_error(tmp_path, text)
    assert_names(message, line, "relu1")
    assert "malformed TOML" in message and "(at line" not in message


def test_missing_top_level_key(tmp_path: Path) -> None:
    text = BASE.replace("input = [1, 8, 8]\n", "").replace('name = "t"', 'name = "t"' + MARK)
    message, line = profile_error(tmp_path, text + layer_tables(*GOOD))
    assert line == 1 and "missing top-level key 'input'" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = BASE + "batchsize = 3" + MARK + "\n" + layer_tables(*GOOD)
    message, line = profile_error(tmp_path, text)
    assert_names(message, line, None)
    assert "'batchsize'" in message and "cpu_batch" in message


def test_top_level_value_of_the_wrong_type(tmp_path: Path) -> None:
    text = BASE.replace("\nbatch = 2", '\nbatch = "2"' + MARK) + layer_tables(*GOOD)
    message, line = profile_error(tmp_path, text)
    assert_names(message, line, None)
    assert "'batch' must be an integer" in message


def test_layer_without_a_name(tmp_path: Path) -> None:
    text = BASE + layer_tables(*GOOD[:2]) + "\n[[layer]]" + MARK + "\n" + \
        'type = "linear"\nout_features = 3\n' + layer_tables(GOOD[3])
    message, line = profile_error(tmp_path, text)
    assert_names(message, line, None)
    assert "needs a 'name'" in message


def test_layer_without_a_type(tmp_path: Path) -> None:
    message, line = profile_error(tmp_path, with_layer(1, ('name = "relu1"' + MARK,)))
    assert_names(message, line, "relu1")
    assert "needs a 'type'" in message and "maxpool" in message


def test_unknown_layer_type_lists_the_known_ones(tmp_path: Path) -> None:
    message, line = profile_error(tmp_path, with_layer(1, ('name = "relu1"',
                                                           'type = "rectifier"' + MARK)))
    assert_names(message, line, "relu1")
    assert "'rectifier'" in message
    assert all(t in message for t in ("conv", "relu", "softmax_loss", "concat"))


def test_unknown_field_lists_the_accepted_ones(tmp_path: Path) -> None:
    table = ('name = "conv1"', 'type = "conv"', "out_channels = 4", "kernal = 3" + MARK)
    message, line = profile_error(tmp_path, with_layer(0, table))
    assert_names(message, line, "conv1")
    assert "'kernal'" in message
    assert all(f in message for f in ("out_channels", "kernel", "stride", "pad", "groups"))


def test_missing_required_field(tmp_path: Path) -> None:
    table = ('name = "conv1"' + MARK, 'type = "conv"', "kernel = 3")
    message, line = profile_error(tmp_path, with_layer(0, table))
    assert_names(message, line, "conv1")
    assert "out_channels" in message


@pytest.mark.parametrize(("field", "expected"), [
    ('kernel = "3"', "must be an integer"),
    ("kernel = 3.0", "must be an integer"),
    ("stride = true", "must be an integer"),
    ("bias = 1", "must be true or false"),
])
def test_field_of_the_wrong_type(tmp_path: Path, field: str, expected: str) -> None:
    table = ('name = "conv1"', 'type = "conv"', "out_channels = 4", field + MARK,
             *(("kernel = 3",) if not field.startswith("kernel") else ()))
    message, line = profile_error(tmp_path, with_layer(0, table))
    assert_names(message, line, "conv1")
    assert expected in message


def test_float_field_rejects_a_string(tmp_path: Path) -> None:
    table = ('name = "relu1"', 'type = "dropout"', 'p = "half"' + MARK)
    message, line = profile_error(tmp_path, with_layer(1, table))
    assert_names(message, line, "relu1")
    assert "'p'" in message and "must be a number" in message


def test_inputs_of_the_wrong_type(tmp_path: Path) -> None:
    table = ('name = "relu1"', 'type = "relu"', "inputs = [1]" + MARK)
    message, line = profile_error(tmp_path, with_layer(1, table))
    assert_names(message, line, "relu1")
    assert "'inputs'" in message


@pytest.mark.parametrize(("table", "fragment"), [
    (('name = "conv1"', 'type = "conv"', "out_channels = 4", "kernel = 0" + MARK), "kernel"),
    (('name = "conv1"', 'type = "conv"', "out_channels = 4", "kernel = 3",
      "stride = 0" + MARK), "stride"),
    (('name = "conv1"', 'type = "conv"', "out_channels = 4", "groups = 3" + MARK, "kernel = 3"),
     "groups 3"),
    (('name = "conv1"', 'type = "conv"', "out_channels = 4", "kernel = 3", "pad = -1" + MARK),
     "pad"),
    (('name = "conv1"', "kernel = 3", 'type = "conv"', "out_channels = 0" + MARK), "out_channels"),
    (('name = "conv1"', 'type = "maxpool"', "kernel = 2", "pad = 2" + MARK), "pad 2"),
    (('name = "conv1"', 'type = "dropout"', "p = 1.0" + MARK), "p must be"),
    (('name = "conv1"', 'type = "lrn"', "alpha = 1e-4", "k = 0.0" + MARK), "k > 0"),
    (('name = "conv1"', 'type = "lrn"', "k = 1.0", "alpha = -1.0" + MARK), "alpha >= 0"),
])
def test_a_value_the_layer_rejects_names_the_keys_line(tmp_path: Path, table: tuple[str, ...],
                                                       fragment: str) -> None:
    message, line = profile_error(tmp_path, with_layer(0, table))
    assert_names(message, line, "conv1")
    assert fragment in message


@pytest.mark.parametrize("name", ["conv\\n1", "a\\tb", "bell\\u0007", "line\\u2028sep"])
def test_a_layer_name_is_printable_and_one_line(tmp_path: Path, name: str) -> None:
    table = (f'name = "{name}"' + MARK, 'type = "relu"')
    message, line = profile_error(tmp_path, with_layer(1, table))
    assert "printable" in message and f"bad.toml:{line}" in message


@pytest.mark.parametrize("key", ["name", "description"])
def test_the_networks_name_and_description_are_one_line(tmp_path: Path, key: str) -> None:
    text = BASE.replace('name = "t"\n', "") + f'{key} = "two\\nlines"' + MARK + "\n"
    message, line = profile_error(tmp_path, text + layer_tables(*GOOD))
    assert f"'{key}' must be printable" in message and f"bad.toml:{line}" in message


def test_a_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (BASE + layer_tables(*GOOD)).encode())
    assert len(load_profile(path).network.nodes) == 4
    assert len(parse_profile("\ufeff" + BASE + layer_tables(*GOOD), "bom.toml").network.nodes) == 4


def test_reading_an_unknown_layer(tmp_path: Path) -> None:
    table = ('name = "relu1"' + MARK, 'type = "relu"', 'inputs = "conv9"')
    message, line = profile_error(tmp_path, with_layer(1, table))
    assert_names(message, line, "relu1")
    assert "'conv9'" in message


def test_a_name_used_twice_points_at_the_second(tmp_path: Path) -> None:
    table = ('name = "conv1"' + MARK, 'type = "relu"')
    message, line = profile_error(tmp_path, with_layer(1, table))
    assert_names(message, line, "conv1")
    assert "used twice" in message


def test_shapes_that_do_not_connect_name_the_layers_and_shapes(tmp_path: Path) -> None:
    text = BASE + layer_tables(
        GOOD[0],
        ('name = "pool"', 'type = "maxpool"', "kernel = 2"),
        ('name = "sum"' + MARK, 'type = "add"', 'inputs = ["conv1", "pool"]'),
        *GOOD[2:])
    message, line = profile_error(tmp_path, text)
    assert_names(message, line, "sum")
    assert "conv1" in message and "pool" in message
    assert "4, 8, 8)" in message and "4, 4, 4)" in message


def test_kernel_larger_than_its_input(tmp_path: Path) -> None:
    table = ('name = "conv1"' + MARK, 'type = "conv"', "out_channels = 4", "kernel = 9")
    message, line = profile_error(tmp_path, with_layer(0, table))
    assert_names(message, line, "conv1")
    assert "9" in message and "8" in message


def test_loss_must_come_last(tmp_path: Path) -> None:
    text = BASE + layer_tables(*GOOD[:3]) + layer_tables(
        ('name = "loss"' + MARK, 'type = "softmax_loss"'), ('name = "after"', 'type = "relu"'))
    message, line = profile_error(tmp_path, text)
    assert_names(message, line, "loss")


def test_an_integer_too_large_for_int64_shapes(tmp_path: Path) -> None:
    """2**31 and more would overflow the int64 arithmetic of shapes and bytes."""
    table = ('name = "fc"', 'type = "linear"', f"out_features = {2**31}" + MARK)
    message, line = profile_error(tmp_path, with_layer(2, table))
    assert_names(message, line, "fc")
    assert "'out_features'" in message and "up to 2147483647" in message
    huge_batch = BASE.replace("batch = 2\n", "batch = 99999999999999999999\n", 1)
    message, line = profile_error(tmp_path, huge_batch.replace(
        "batch = 99999999999999999999", "batch = 99999999999999999999" + MARK)
        + layer_tables(*GOOD))
    assert "'batch'" in message and "bad.toml:3" in message


def test_a_tensor_too_large_to_count_names_its_layer(tmp_path: Path) -> None:
    # fc reads conv1's 4 x 8 x 8 = 256 features: at out_features 2**22 its weight
    # holds exactly 2**30 elements, the most accepted; one feature more is over.
    ok = ('name = "fc"', 'type = "linear"', f"out_features = {2**22}")
    assert parse_profile(with_layer(2, ok), "ok.toml").network.num_params() > 2**30
    over = ('name = "fc"' + MARK, 'type = "linear"', f"out_features = {2**22 + 1}")
    message, line = profile_error(tmp_path, with_layer(2, over))
    assert_names(message, line, "fc")
    assert "weight" in message and f"{(2**22 + 1) * 256:,}" in message
    wide = BASE.replace("input = [1, 8, 8]", f"input = [1, {2**31 - 1}, {2**31 - 1}]" + MARK)
    message, line = profile_error(tmp_path, wide + layer_tables(*GOOD))
    assert "'input'" in message and f"{(2**31 - 1)**2:,}" in message
