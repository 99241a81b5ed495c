"""TOML profile <-> `Network`, with errors that name the file, the line and the layer.

A profile is a TOML file: top-level keys `input` and optional `name` (the file's
stem), `description`, `batch` (32), `cpu_batch` (min(batch, 8)), `lr` and `lr_batch`
(SGD's default learning rate and the batch it is for), and `vocab` (the
input is then token ids in [0, vocab), `input = [T]`), then one
`[[layer]]` table per layer (`name`, `type`, optional `inputs`, and the layer
type's own fields). `profiles/README.md` documents it.

A `[[layer]]` table with `block` instead of `type` repeats a block of layers
written once in `[block.NAME]` tables (`vmem.blocks`).

tomllib reports no line numbers for the values it returns, so the loader scans
the text for each `[[layer]]` table and the keys inside it (`vmem.toml_text`);
where that scan cannot match the tables (layers written as inline tables),
errors carry no line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from vmem.blocks import LayerSpec, Origin, expand_repeat, parse_blocks
from vmem.errors import NetworkError, ProfileError, ShapeError, UsageError, VmemError
from vmem.files import parse_toml, read_text
from vmem.graph import DATA, Network, Node
from vmem.layers import LAYER_TYPES, Layer
from vmem.optim import LearningRate
from vmem.toml_text import describe, format_value, tables, top_key_line

PROFILE_SUFFIX = ".toml"
TOP_LEVEL_KEYS = ("name", "description", "input", "batch", "cpu_batch", "lr", "lr_batch",
                  "vocab", "block", "layer")
REQUIRED_TOP_LEVEL = ("input", "layer")
DEFAULT_BATCH = 32  # where a profile gives no batch
DEFAULT_CPU_BATCH_CAP = 8  # where it gives no cpu_batch: min(batch, 8) keeps a cpu step short
LAYER_KEYS = ("name", "type", "inputs")  # keys every [[layer]] table may have
# The largest integer a profile may hold (a dimension, a count, a batch): past it,
# shapes and byte counts overflow the int64 arithmetic of the arrays.
MAX_INT = 2**31 - 1
# The most elements one sample's tensor, or one parameter, may hold: times a
# batch of up to MAX_INT and 4 bytes an element, byte counts stay within int64.
MAX_ELEMENTS = 2**30

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)")


@dataclass(frozen=True)
class Profile:
    network: Network
    batch: int  # the batch the vDNN paper used: the CLI's default on a GPU
    cpu_batch: int  # the CLI's default on the cpu backend
    path: Path
    # SGD's default learning rate, scaled to the batch trained (`lr`, `lr_batch`)
    learning_rate: LearningRate = LearningRate()


# ---------------------------------------------------------------- finding profiles

def _shipped() -> Any:
    return files("vmem.profiles")


def list_profiles() -> list[str]:
    """Names of the profiles shipped with vmem, sorted."""
    return sorted(entry.name.removesuffix(PROFILE_SUFFIX) for entry in _shipped().iterdir()
                  if entry.name.endswith(PROFILE_SUFFIX))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by bare name (`alexnet`), or a file: a `Path`, or a string
    that ends in `.toml` or contains a path separator."""
    text_form = str(name_or_path)
    is_path = (isinstance(name_or_path, Path) or text_form.endswith(PROFILE_SUFFIX)
               or "/" in text_form or os.sep in text_form)
    if not is_path:
        entry = _shipped() / f"{text_form}{PROFILE_SUFFIX}"
        if not entry.is_file():
            known = ", ".join(list_profiles())
            raise UsageError(f"unknown profile '{text_form}'; known profiles: {known} "
                             f"(or give a path to a .toml file)")
        return parse_profile(entry.read_text(encoding="utf-8"), str(entry))
    path = Path(name_or_path)
    if not os.path.lexists(path):
        hint = (f" (the shipped profile is named '{path.stem}', without .toml)"
                if path.stem in list_profiles() and not path.parent.parts else "")
        raise ProfileError(f"no such profile file{hint}", path=str(path))
    return parse_profile(read_text(path, f"{path}: cannot read the profile", ProfileError),
                         str(path))


# ---------------------------------------------------------------- field types

def _expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        return f"a list of {_expected(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is typing.Literal:
        return "one of " + ", ".join(format_value(a) for a in args)
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


_NO_MATCH = object()


def _coerce(value: Any, hint: Any) -> Any:
    """`value` converted to the field type `hint`, or _NO_MATCH. TOML's bool is no
    integer here (`bias = 1` is wrong); an integer is a fine float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            converted = _coerce(value, arg)
            if converted is not _NO_MATCH:
                return converted
        return _NO_MATCH
    if origin in (tuple, list):
        if not isinstance(value, list):
            return _NO_MATCH
        repeated = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        item_hints = [args[0]] * len(value) if repeated else list(args)
        if len(item_hints) != len(value):
            return _NO_MATCH
        items = [_coerce(v, h) for v, h in zip(value, item_hints, strict=True)]
        return _NO_MATCH if _NO_MATCH in items else origin(items)
    if origin is typing.Literal:
        return value if value in args else _NO_MATCH
    if hint is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _NO_MATCH
    if hint is str:
        return value if isinstance(value, str) else _NO_MATCH
    if hint is type(None):
        return _NO_MATCH  # TOML has no null
    return value  # a type this loader does not know: the layer checks it


def _layer_fields(cls: type[Layer]) -> dict[str, dataclasses.Field[Any]]:
    """A layer type's profile fields: its dataclass init fields but `name`."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "name"}


def _type_hints(cls: type[Layer]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: skip type checks
        return {}


# ---------------------------------------------------------------- parsing

def parse_profile(text: str, path: str) -> Profile:
    """Build a profile from TOML text; `path` names the file in errors. A leading
    byte-order mark (as some Windows editors write) is dropped."""
    text = text.removeprefix("\ufeff")
    try:
        doc = parse_toml(text, path, ProfileError)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(exc, text, path) from None
    layer_lines = tables(text, ("layer",), array=True)

    def top_error(message: str, key: str | None = None) -> ProfileError:
        return ProfileError(message, path=path, line=(top_key_line(text, key) if key else 1) or 1)

    unknown = [k for k in doc if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise top_error(f"unknown top-level key '{unknown[0]}'; accepted keys: "
                        f"{', '.join(TOP_LEVEL_KEYS)}", unknown[0])
    missing = [k for k in REQUIRED_TOP_LEVEL if k not in doc]
    if missing:
        raise top_error(f"missing top-level key '{missing[0]}' (required: "
                        f"{', '.join(REQUIRED_TOP_LEVEL)})")
    for key, hint in (("name", str), ("description", str), ("input", list[int]),
                      ("batch", int), ("cpu_batch", int), ("lr", float), ("lr_batch", int),
                      ("vocab", int)):
        if key in doc and _coerce(doc[key], hint) is _NO_MATCH:
            raise top_error(f"'{key}' must be {_expected(hint)}, got {describe(doc[key])}", key)
    for key in ("name", "description"):
        if key in doc and not doc[key].isprintable():
            raise top_error(f"'{key}' must be printable characters on one line, got "
                            f"{format_value(doc[key])}", key)
    for key in ("input", "batch", "cpu_batch", "lr_batch", "vocab"):
        if key in doc and _too_large(doc[key]):
            raise top_error(f"'{key}' must hold integers up to {MAX_INT}, got "
                            f"{format_value(doc[key])}", key)
    input_shape = doc["input"]
    batch = doc.get("batch", DEFAULT_BATCH)
    cpu_batch = doc.get("cpu_batch", min(batch, DEFAULT_CPU_BATCH_CAP))
    if not input_shape or min(input_shape) < 1:
        raise top_error(f"'input' must be a non-empty list of positive integers (one sample, "
                        f"e.g. [3, 224, 224]), got {format_value(input_shape)}", "input")
    for key, value in (("batch", batch), ("cpu_batch", cpu_batch),
                       ("lr_batch", doc.get("lr_batch", 1)), ("vocab", doc.get("vocab", 1))):
        if value < 1:
            raise top_error(f"'{key}' must be a positive integer, got {value}", key)
    learning_rate = _learning_rate(doc, top_error)
    layers = doc["layer"]
    if not isinstance(layers, list) or not layers or not all(isinstance(t, dict) for t in layers):
        raise top_error("'layer' must be one or more [[layer]] tables", "layer")
    if len(layer_lines) != len(layers):
        layer_lines = []  # layers written some other way: errors go without lines
    blocks = parse_blocks(doc.get("block"), text, path)

    nodes: list[Node] = []
    origins: list[Origin] = []  # one per node
    previous = DATA
    for index, table in enumerate(layers):
        lines = layer_lines[index] if layer_lines else None
        if "block" in table:
            specs, previous = expand_repeat(table, lines, previous, blocks, path)
        else:
            specs = [LayerSpec(table, Origin(lines))]
        for spec in specs:
            node = _parse_layer(spec.table, previous, path, spec.origin)
            nodes.append(node)
            origins.append(spec.origin)
            if "block" not in table:
                previous = node.name
    instances: dict[str, list[str]] = {}
    for node, origin in zip(nodes, origins, strict=True):
        if origin.instance is not None:
            instances.setdefault(origin.instance, []).append(node.name)
    try:
        network = Network.build(doc.get("name", Path(path).stem), input_shape, nodes,
                                doc.get("description", ""), doc.get("vocab", 0),
                                tuple(instances.items()))
    except NetworkError as exc:
        # The last node of that name: for a name used twice, the second is at fault.
        index = max((i for i, n in enumerate(nodes) if n.name == exc.layer), default=None)
        origin = origins[index] if index is not None else Origin()
        message = _unprefixed(str(exc), exc.layer)
        if isinstance(exc, ShapeError) and index is not None:
            message += f" (it reads {', '.join(nodes[index].inputs)})"
        raise ProfileError(message, path=path, line=origin.line(), layer=exc.layer,
                           within=origin.within) from None
    _check_sizes(network, nodes, origins, path, top_key_line(text, "input"))
    return Profile(network, batch, cpu_batch, Path(path), learning_rate)


def _learning_rate(doc: dict[str, Any], top_error: Any) -> LearningRate:
    """The profile's `lr` (a positive finite number) and `lr_batch` (the batch it is
    for, which needs an `lr`), checked; SGD's default where neither is given."""
    if "lr" not in doc:
        if "lr_batch" in doc:
            raise top_error("'lr_batch' is the batch an 'lr' is for: give 'lr' too",
                            "lr_batch")
        return LearningRate()
    lr = float(doc["lr"])
    if not (math.isfinite(lr) and lr > 0):
        raise top_error(f"'lr' must be a positive finite number (SGD's learning rate), "
                        f"got {format_value(doc['lr'])}", "lr")
    return LearningRate(lr, doc.get("lr_batch"))


def _check_sizes(network: Network, nodes: list[Node], origins: list[Origin], path: str,
                 input_line: int | None) -> None:
    """Refuse a tensor or parameter too large to count in bytes (the first, in
    order), naming its layer."""
    shapes = network.shapes(1)
    origin_of = dict(zip((n.name for n in nodes), origins, strict=True))
    inputs = math.prod(network.input_shape)
    if inputs > MAX_ELEMENTS:
        raise ProfileError(f"'input' holds {inputs:,} elements per sample; at most "
                           f"{MAX_ELEMENTS:,} are accepted", path=path, line=input_line)
    for node in network.nodes:
        name = node.name
        sizes = [(f"its output {shapes[name]}", math.prod(shapes[name][1:]))]
        params = node.layer.param_shapes(network.in_shapes(node, shapes))
        sizes += [(f"its {p} {shape}", math.prod(shape)) for p, shape in params.items()]
        for what, elements in sizes:
            if elements > MAX_ELEMENTS:
                raise ProfileError(f"{what} holds {elements:,} elements (per sample for "
                                   f"an output); at most {MAX_ELEMENTS:,} are accepted",
                                   path=path, line=origin_of[name].line(), layer=name,
                                   within=origin_of[name].within)


def _parse_layer(table: dict[str, Any], previous: str, path: str, origin: Origin) -> Node:
    name = table.get("name")
    layer_name = name if isinstance(name, str) else (
        origin.lines.scanned_name() if origin.lines else None)
    if layer_name is not None and not layer_name.isprintable():
        layer_name = format_value(layer_name)[1:-1]  # escaped: the message stays one line

    def error(message: str, key: str | None = None) -> ProfileError:
        return ProfileError(message, path=path, line=origin.line(key), layer=layer_name,
                            within=origin.within)

    if "name" not in table:
        raise error("a [[layer]] table needs a 'name'")
    if not isinstance(name, str) or not name:
        raise error(f"'name' must be a non-empty string, got {describe(name)}", "name")
    if not name.isprintable():  # it opens every later message about the layer: one line
        raise error(f"'name' must be printable characters on one line, got "
                    f"{format_value(name)}", "name")
    known_types = ", ".join(sorted(LAYER_TYPES))
    if "type" not in table:
        raise error(f"a [[layer]] table needs a 'type'; known types: {known_types}")
    kind = table["type"]
    if not isinstance(kind, str) or kind not in LAYER_TYPES:
        shown = f"'{kind}'" if isinstance(kind, str) else describe(kind)
        raise error(f"unknown layer type {shown}; known types: {known_types}", "type")
    cls = LAYER_TYPES[kind]

    inputs = table.get("inputs", [previous])
    if isinstance(inputs, str):
        inputs = [inputs]
    if (not isinstance(inputs, list) or not inputs
            or not all(isinstance(s, str) and s for s in inputs)):
        raise error(f"'inputs' must be a layer name or a list of layer names ('{DATA}' is the "
                    f"network input), got {describe(table['inputs'])}", "inputs")

    fields = _layer_fields(cls)
    hints = _type_hints(cls)
    accepted = ", ".join(fields) or "none"
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in LAYER_KEYS:
            continue
        if key not in fields:
            raise error(f"{kind} has no field '{key}'; accepted fields: {accepted} "
                        f"(besides name, type, inputs)", key)
        hint = hints.get(key)
        converted = value if hint is None else _coerce(value, hint)
        if converted is _NO_MATCH:
            raise error(f"field '{key}' of {kind} must be {_expected(hint)}, "
                        f"got {describe(value)}", key)
        if _too_large(value):
            raise error(f"field '{key}' of {kind} must hold integers up to {MAX_INT}, "
                        f"got {format_value(value)}", key)
        values[key] = converted
    for key, field in fields.items():
        if (key not in values and field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING):
            raise error(f"{kind} needs field '{key}'; accepted fields: {accepted}")
    try:
        layer = cls(name=name, **values)
    except (VmemError, ValueError, TypeError) as exc:
        message = _unprefixed(str(exc), name)
        raise error(message, _rejected_key(cls, name, values, message)) from None
    return Node(layer, tuple(inputs))


def _rejected_key(cls: type[Layer], name: str, values: dict[str, Any],
                  message: str) -> str | None:
    """The key whose value the layer rejected, for the error's line: of the keys
    its message names, the one whose removal (back to its default) lets the layer
    build, else the first named; None where the message names none."""
    named = [k for k in values if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", message)]
    fields = _layer_fields(cls)
    for key in named:
        field = fields[key]
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            continue
        try:
            cls(name=name, **{k: v for k, v in values.items() if k != key})
        except (VmemError, ValueError, TypeError):
            continue
        return key
    return named[0] if named else None


def _too_large(value: Any) -> bool:
    """Whether a value holds an integer (alone or in a list) beyond MAX_INT."""
    if isinstance(value, list | tuple):
        return any(_too_large(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT


def _unprefixed(message: str, layer: str | None) -> str:
    """A layer's message without its "layer 'NAME' (TYPE): " opening, which the
    ProfileError's own prefix repeats."""
    if layer is None:
        return message
    return re.sub(rf"^layer '{re.escape(layer)}' \(\w+\): ", "", message, count=1)


def _toml_error(exc: tomllib.TOMLDecodeError, text: str, path: str) -> ProfileError:
    message = str(exc)
    found = _TOML_POSITION.search(message)
    line = int(found.group(1)) if found else None
    message = _TOML_POSITION.sub("", message)
    layer = None
    if line is not None:
        # The layer whose table holds the bad line, when its name can be read.
        holding = [t for t in tables(text, ("layer",), array=True) if t.start <= line < t.end]
        layer = holding[0].scanned_name() if holding else None
    return ProfileError(f"malformed TOML: {message}", path=path, line=line, layer=layer)


# ---------------------------------------------------------------- dumping

def dump_profile(profile: Profile) -> str:
    """TOML text that `parse_profile` turns back into an equal network. Fields at
    their default are left out; `inputs` only where it is not the previous layer."""
    network = profile.network
    out = [f"name = {format_value(network.name)}"]
    if network.description:
        out.append(f"description = {format_value(network.description)}")
    out += [f"input = {format_value(list(network.input_shape))}",
            f"batch = {profile.batch}", f"cpu_batch = {profile.cpu_batch}"]
    if profile.learning_rate != LearningRate():
        out.append(f"lr = {format_value(profile.learning_rate.lr)}")
        if profile.learning_rate.batch is not None:
            out.append(f"lr_batch = {profile.learning_rate.batch}")
    if network.takes_tokens:
        out.append(f"vocab = {network.vocab}")
    previous = DATA
    for node in network.nodes:
        layer = node.layer
        out += ["", "[[layer]]", f"name = {format_value(layer.name)}",
                f"type = {format_value(layer.TYPE)}"]
        if node.inputs != (previous,):
            out.append(f"inputs = {format_value(list(node.inputs))}")
        for key, field in _layer_fields(type(layer)).items():
            value = getattr(layer, key)
            default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                       else field.default)
            if value != default:
                out.append(f"{key} = {format_value(value)}")
        previous = layer.name
    return "\n".join(out) + "\n"
