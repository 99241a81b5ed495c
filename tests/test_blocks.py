"""Repeated blocks in profiles: a block written once and repeated gives the network
written out layer by layer by hand; the dump round-trips; every error inside an
instance names the instance, the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from profile_errors import MARK, profile_error

from vmem.profile import dump_profile, parse_profile

HEAD = 'name = "r"\ninput = [3, 8, 8]\nbatch = 2\n'

# A residual block after ResNet's: the projection shortcut only where asked for
# (the first instance of a stage), the stride on the first convolution.
BASIC = '''
[block.basic]
planes = 4
stride = 1
downsample = false

[[block.basic.layer]]
name = "conv1"
type = "conv"
out_channels = "{planes}"
kernel = 3
stride = "{stride}"
pad = 1

[[block.basic.layer]]
name = "relu1"
type = "relu"

[[block.basic.layer]]
name = "conv2"
type = "conv"
out_channels = "{planes}"
kernel = 3
pad = 1

[[block.basic.layer]]
name = "downsample.0"
type = "conv"
inputs = "{in}"
out_channels = "{planes}"
kernel = 1
stride = "{stride}"
when = "{downsample}"

[[block.basic.layer]]
name = "add"
type = "add"
inputs = ["conv2", "downsample.0"]

[[block.basic.layer]]
name = "relu2"
type = "relu"
'''

STEM = '''
[[layer]]
name = "conv1"
type = "conv"
out_channels = 4
kernel = 3
pad = 1
'''

STAGES = '''
[[layer]]
name = "layer1.{i}"
block = "basic"
repeat = 2

[[layer]]
name = "layer2.{i}"
block = "basic"
repeat = 2
planes = 8
first = { stride = 2, downsample = true }
'''

TAIL = '''
[[layer]]
name = "fc"
type = "linear"
out_features = 3

[[layer]]
name = "loss"
type = "softmax_loss"
'''


def conv(name: str, inputs: str, channels: int, kernel: int, stride: int = 1) -> str:
    return (f'\n[[layer]]\nname = "{name}"\ntype = "conv"\ninputs = "{inputs}"\n'
            f"out_channels = {channels}\nkernel = {kernel}\nstride = {stride}\n"
            f"pad = {kernel // 2}\n")


def plain(name: str, kind: str, *inputs: str) -> str:
    listed = ", ".join(f'"{i}"' for i in inputs)
    return f'\n[[layer]]\nname = "{name}"\ntype = "{kind}"\ninputs = [{listed}]\n'


def flat_basic(instance: str, reads: str, planes: int, stride: int, project: bool) -> str:
    """One basic block written out by hand, as the expansion must give it."""
    text = (conv(f"{instance}.conv1", reads, planes, 3, stride)
            + plain(f"{instance}.relu1", "relu", f"{instance}.conv1")
            + conv(f"{instance}.conv2", f"{instance}.relu1", planes, 3))
    shortcut = reads
    if project:
        text += conv(f"{instance}.downsample.0", reads, planes, 1, stride)
        shortcut = f"{instance}.downsample.0"
    return (text + plain(f"{instance}.add", "add", f"{instance}.conv2", shortcut)
            + plain(f"{instance}.relu2", "relu", f"{instance}.add"))


def test_a_repeated_block_is_the_network_written_out_by_hand() -> None:
    repeated = parse_profile(HEAD + BASIC + STEM + STAGES + TAIL, "r.toml")
    by_hand = parse_profile(
        HEAD + STEM
        + flat_basic("layer1.0", "conv1", 4, 1, False)
        + flat_basic("layer1.1", "layer1.0.relu2", 4, 1, False)
        + flat_basic("layer2.0", "layer1.1.relu2", 8, 2, True)
        + flat_basic("layer2.1", "layer2.0.relu2", 8, 1, False)
        + TAIL, "r.toml")
    assert repeated.network == by_hand.network
    assert repeated.network.shapes(2)["layer2.1.relu2"] == (2, 8, 4, 4)


def test_dump_writes_every_layer_and_round_trips() -> None:
    profile = parse_profile(HEAD + BASIC + STEM + STAGES + TAIL, "r.toml")
    text = dump_profile(profile)
    assert "[block." not in text and text.count("[[layer]]") == len(profile.network.nodes)
    again = parse_profile(text, "dumped.toml")
    assert again.network == profile.network
    assert (again.batch, again.cpu_batch) == (profile.batch, profile.cpu_batch)


def test_a_transformer_block_reads_its_input_twice_and_chains() -> None:
    """A GPT-2 block's wiring: two residual adds, the first reading the block input,
    the second the first add; the next instance reads the last add."""
    block = '''
[block.h]
[[block.h.layer]]
name = "ln_1"
type = "relu"
[[block.h.layer]]
name = "attn.c_attn"
type = "conv"
out_channels = 3
kernel = 1
[[block.h.layer]]
name = "attn.c_proj"
type = "conv"
out_channels = 3
kernel = 1
[[block.h.layer]]
name = "add_1"
type = "add"
inputs = ["attn.c_proj", "{in}"]
[[block.h.layer]]
name = "ln_2"
type = "relu"
[[block.h.layer]]
name = "mlp.c_proj"
type = "conv"
out_channels = 3
kernel = 1
[[block.h.layer]]
name = "add_2"
type = "add"
inputs = ["mlp.c_proj", "add_1"]
'''
    entry = '\n[[layer]]\nname = "h.{i}"\nblock = "h"\nrepeat = 3\ninputs = "data"\n'
    network = parse_profile(HEAD + block + entry + TAIL, "g.toml").network
    reads = {n.name: n.inputs for n in network.nodes}
    assert reads["h.0.ln_1"] == ("data",)
    assert reads["h.0.add_1"] == ("h.0.attn.c_proj", "data")
    assert reads["h.1.ln_1"] == ("h.0.add_2",)
    assert reads["h.2.add_1"] == ("h.2.attn.c_proj", "h.1.add_2")
    assert reads["h.2.add_2"] == ("h.2.mlp.c_proj", "h.2.add_1")
    assert reads["fc"] == ("h.2.add_2",)
    assert len(network.nodes) == 3 * 7 + 2


def test_a_parameter_inside_a_longer_string_and_the_index() -> None:
    block = ('\n[block.b]\nsuffix = "x"\n[[block.b.layer]]\nname = "relu_{suffix}{i}"\n'
             'type = "relu"\n')
    entry = '\n[[layer]]\nname = "s{i}"\nblock = "b"\nrepeat = 2\nsuffix = "y"\n'
    network = parse_profile(HEAD + block + entry + TAIL, "b.toml").network
    assert [n.name for n in network.nodes[:2]] == ["s0.relu_y0", "s1.relu_y1"]


# ---------------------------------------------------------------- errors

def repeat_line(text: str, name: str) -> int:
    return text.splitlines().index(f'name = "{name}"') + 1


def assert_instance(error: str, line: int, layer: str, instance: str, at: int) -> None:
    assert f"bad.toml:{line}, layer '{layer}', instance '{instance}' of block 'basic' " \
           f"repeated at line {at}: " in error, error


def test_a_bad_field_inside_an_instance_names_it_the_file_and_the_line(tmp_path: Path) -> None:
    body = BASIC.replace("kernel = 1\n", 'kernel = "1"' + MARK + "\n")
    text = HEAD + body + STEM + STAGES + TAIL
    error, line = profile_error(tmp_path, text)
    # Only layer2.0 projects: the left-out layers of the other instances are not built.
    assert_instance(error, line, "layer2.0.downsample.0", "layer2.0",
                    repeat_line(text, "layer2.{i}") - 1)
    assert "field 'kernel' of conv must be an integer" in error


def test_an_unknown_parameter_in_a_field(tmp_path: Path) -> None:
    body = BASIC.replace('out_channels = "{planes}"\nkernel = 3\nstride',
                         'out_channels = "{plane}"' + MARK + "\nkernel = 3\nstride")
    text = HEAD + body + STEM + STAGES + TAIL
    error, line = profile_error(tmp_path, text)
    assert_instance(error, line, "layer1.0.conv1", "layer1.0", repeat_line(text, "layer1.{i}") - 1)
    assert "'{plane}'" in error and "planes, stride, downsample" in error


def test_shapes_that_do_not_connect_in_an_instance(tmp_path: Path) -> None:
    """Without the projection, layer2.0 adds an 8-channel map to a 4-channel one."""
    stages = STAGES.replace("first = { stride = 2, downsample = true }", "")
    body = BASIC.replace('name = "add"', 'name = "add"' + MARK)
    text = HEAD + body + STEM + stages + TAIL
    error, line = profile_error(tmp_path, text)
    assert_instance(error, line, "layer2.0.add", "layer2.0", repeat_line(text, "layer2.{i}") - 1)
    assert "(1, 8, 8, 8)" in error and "(1, 4, 8, 8)" in error


M = MARK


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("planes = 8", f"plane = 8{M}", "block 'basic' has no parameter 'plane'; its parameters: "
                                    "planes, stride, downsample"),
    ("first = { stride = 2, downsample = true }", f"first = {{ strides = 2 }}{M}",
     "no parameter 'strides' (in 'first')"),
    ('block = "basic"\nrepeat = 2\nplanes', f'block = "basi"{M}\nrepeat = 2\nplanes',
     "unknown block 'basi'; defined blocks: basic"),
    ("repeat = 2\nplanes", f"repeat = 0{M}\nplanes", "'repeat' must be an integer from 1"),
    ('name = "layer2.{i}"', f'name = "layer2"{M}', "'name' must contain {i}"),
    ('block = "basic"\nrepeat = 2\nplanes', f'type = "relu"\nblock = "basic"{M}\nrepeat = 2\n'
     "planes", "'type' (one layer) or 'block'"),
])
def test_a_bad_repeating_table(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert STAGES.count(old) == 1
    error, _ = profile_error(tmp_path, HEAD + BASIC + STEM + STAGES.replace(old, new) + TAIL)
    assert expected in error, error
    assert "layer 'layer2" in error


def test_when_must_be_a_boolean(tmp_path: Path) -> None:
    body = BASIC.replace('when = "{downsample}"', 'when = "{stride}"' + MARK)
    error, _ = profile_error(tmp_path, HEAD + body + STEM + STAGES + TAIL)
    assert "'when' must be true or false" in error and "layer1.0.downsample.0" in error


def test_a_left_out_layer_must_have_one_input(tmp_path: Path) -> None:
    body = BASIC.replace('inputs = "{in}"\nout_channels', 'inputs = ["{in}", "conv2"]\n'
                         'out_channels').replace('when = "{downsample}"',
                                                 'when = "{downsample}"' + MARK)
    error, _ = profile_error(tmp_path, HEAD + body + STEM + STAGES + TAIL)
    assert "left out" in error and "exactly one" in error


def test_a_name_used_twice_in_a_block(tmp_path: Path) -> None:
    body = BASIC.replace('name = "relu2"', 'name = "relu1"' + MARK)
    error, _ = profile_error(tmp_path, HEAD + body + STEM + STAGES + TAIL)
    assert "'relu1' is used twice in block 'basic'" in error


def test_a_bad_block_definition(tmp_path: Path) -> None:
    body = BASIC.replace("stride = 1\n", "repeat = 1" + MARK + "\n", 1)
    error, _ = profile_error(tmp_path, HEAD + body + STEM + STAGES + TAIL)
    assert "block 'basic': 'repeat' cannot name a parameter" in error
    empty = '\n[block.basic]' + MARK + '\nplanes = 4\n'
    error, _ = profile_error(tmp_path, HEAD + empty + STEM + STAGES + TAIL)
    assert "needs one or more [[block.basic.layer]] tables" in error


def test_an_unknown_block_with_none_defined(tmp_path: Path) -> None:
    entry = f'\n[[layer]]\nname = "s.{{i}}"\nblock = "basic"{MARK}\nrepeat = 2\n'
    error, _ = profile_error(tmp_path, HEAD + STEM + entry + TAIL)
    assert "unknown block 'basic'; defined blocks: none" in error
