"""Repeated blocks in a profile: a block of layers written once, with parameters,
and repeated; each instance's layers are named after the instance.

A `[block.NAME]` table gives the block's parameters and their defaults, its
`[[block.NAME.layer]]` tables its layers, whose string values may name a parameter
in braces: `"{width}"` alone is the parameter's value (of its own type), inside a
longer string its text. `{i}` is the instance's index (from 0) and `{in}` the
tensor the instance reads. A block layer's `inputs` name the block's own layers
(a local name), `{in}`, or any tensor outside the block; without `inputs` a block
layer reads the one before it, the first reads `{in}`. `when = false` (usually
`when = "{downsample}"`) leaves a layer out: whoever reads it reads its input.

A `[[layer]]` table with `block` instead of `type` repeats the block `repeat`
times: instance `i` is named by `name` with `{i}` formatted, its layers
`INSTANCE.LOCAL`; every other key sets a parameter, and `first` (a table) sets
parameters of instance 0 only (a stage's first ResNet block strides and projects).
Instance 0 reads `inputs` (default: the layer before the table), each next instance
the output of the one before it: the block's last layer.

Expanding gives plain layer tables with their names and inputs resolved, each with
its origin, so an error names the instance, the file and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmem.errors import ProfileError
from vmem.toml_text import TableLines, describe, tables

#: Keys of a repeating [[layer]] table that are not parameters.
REPEAT_KEYS = ("name", "block", "repeat", "inputs", "first")
#: Keys of a block's layer table beyond a layer's own.
BLOCK_LAYER_KEYS = ("when",)
#: Names every instance defines: its index and the tensor it reads.
INDEX, INPUT = "i", "in"
#: The most instances one table may repeat: enough for any published network.
MAX_REPEAT = 10_000

_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Origin:
    """Where a layer table comes from, for errors: its lines in the text, and for a
    layer of a repeated block the instance (`within`)."""

    lines: TableLines | None = None
    within: str | None = None
    instance: str | None = None  # the instance's name, for the network's blocks

    def line(self, key: str | None = None) -> int | None:
        return self.lines.line(key) if self.lines else None


@dataclass(frozen=True)
class Block:
    name: str
    defaults: dict[str, Any]  # parameter -> default value
    layers: tuple[dict[str, Any], ...]  # the layer tables as written
    layer_lines: tuple[TableLines, ...] | None  # one per layer, where the scan matched
    header: TableLines | None  # the [block.NAME] table


@dataclass(frozen=True)
class LayerSpec:
    """One layer table to build, its `name` and `inputs` final where it came from a block."""

    table: dict[str, Any]
    origin: Origin


# ---------------------------------------------------------------- block definitions

def parse_blocks(value: Any, text: str, path: str) -> dict[str, Block]:
    """The `[block.NAME]` tables of a profile, checked (their layers are checked
    when an instance is built, with its parameters)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProfileError(f"'block' must hold [block.NAME] tables, got {describe(value)}",
                           path=path, line=1)
    return {name: _parse_block(name, body, text, path) for name, body in value.items()}


def _parse_block(name: str, body: Any, text: str, path: str) -> Block:
    headers = tables(text, ("block", name), array=False)
    header = headers[0] if len(headers) == 1 else None
    layer_lines = tables(text, ("block", name, "layer"), array=True)

    def error(message: str, key: str | None = None) -> ProfileError:
        line = (header.line(key) if header else None) or (
            layer_lines[0].start if layer_lines else None)
        return ProfileError(f"block '{name}': {message}", path=path, line=line)

    if not isinstance(body, dict):
        raise error(f"must be a table of parameters and [[block.{name}.layer]] tables, "
                    f"got {describe(body)}")
    layers = body.get("layer")
    if not isinstance(layers, list) or not layers or not all(isinstance(t, dict)
                                                             for t in layers):
        raise error(f"needs one or more [[block.{name}.layer]] tables")
    defaults = {k: v for k, v in body.items() if k != "layer"}
    for key, default in defaults.items():
        if not _IDENTIFIER.fullmatch(key) or key in (*REPEAT_KEYS, INDEX, INPUT):
            raise error(f"'{key}' cannot name a parameter: a parameter is a name of "
                        f"letters, digits and '_', none of {', '.join(REPEAT_KEYS)}, "
                        f"{INDEX}, {INPUT}", key)
        if isinstance(default, dict):
            raise error(f"parameter '{key}' must have a value as its default (a string, "
                        f"number, boolean or list), got a table", key)
    matched = tuple(layer_lines) if len(layer_lines) == len(layers) else None
    return Block(name, defaults, tuple(layers), matched, header)


# ---------------------------------------------------------------- repeating

def expand_repeat(entry: dict[str, Any], lines: TableLines | None, previous: str,
                  blocks: dict[str, Block], path: str) -> tuple[list[LayerSpec], str]:
    """The layer tables of a repeating [[layer]] table, and the tensor its last
    instance outputs."""
    pattern = entry.get("name")

    def error(message: str, key: str | None = None) -> ProfileError:
        return ProfileError(message, path=path, line=lines.line(key) if lines else None,
                            layer=pattern if isinstance(pattern, str) else None)

    if "type" in entry:
        raise error("a [[layer]] table has 'type' (one layer) or 'block' (a repeated block), "
                    "not both", "block")
    kind = entry["block"]
    if not isinstance(kind, str) or kind not in blocks:
        shown = f"'{kind}'" if isinstance(kind, str) else describe(kind)
        known = ", ".join(blocks) or "none (define one with [block.NAME] tables)"
        raise error(f"unknown block {shown}; defined blocks: {known}", "block")
    block = blocks[kind]
    if not isinstance(pattern, str) or not pattern:
        raise error("a repeated block needs a 'name' (a non-empty string, with {i} for "
                    "the instance's index)", "name")
    count = entry.get("repeat", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPEAT:
        raise error(f"'repeat' must be an integer from 1 to {MAX_REPEAT:,}, got "
                    f"{describe(count)}", "repeat")
    if count > 1 and "{i}" not in pattern:
        raise error(f"'name' must contain {{i}} to name {count} instances apart, got "
                    f"'{pattern}'", "name")
    inputs = entry.get("inputs", previous)
    if isinstance(inputs, list) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, str) or not inputs:
        raise error(f"'inputs' of a repeated block must be one tensor name (what its first "
                    f"instance reads), got {describe(entry['inputs'])}", "inputs")
    accepted = (", ".join(block.defaults) or "none") + f" (besides {', '.join(REPEAT_KEYS)})"
    first = entry.get("first", {})
    if not isinstance(first, dict):
        raise error(f"'first' must be a table of parameters for instance 0, got "
                    f"{describe(first)}", "first")
    given = {k: v for k, v in entry.items() if k not in REPEAT_KEYS}
    for source, values in (("", given), (" (in 'first')", first)):
        unknown = [k for k in values if k not in block.defaults]
        if unknown:
            raise error(f"block '{kind}' has no parameter '{unknown[0]}'{source}; its "
                        f"parameters: {accepted}", unknown[0] if not source else "first")

    specs: list[LayerSpec] = []
    tensor = inputs
    for index in range(count):
        variables = block.defaults | given | (first if index == 0 else {})
        variables |= {INDEX: index, INPUT: tensor}
        name = _substitute(pattern, variables, block,
                           lambda message: error(message, "name"))
        line = f" repeated at line {lines.start}" if lines else ""
        within = f"instance '{name}' of block '{kind}'{line}"
        built, tensor = _instance(block, name, variables, within, path)
        specs += built
    return specs, tensor


def _instance(block: Block, instance: str, variables: dict[str, Any], within: str,
              path: str) -> tuple[list[LayerSpec], str]:
    """One instance's layer tables and its output tensor."""
    origins = [Origin(block.layer_lines[j] if block.layer_lines else None, within, instance)
               for j in range(len(block.layers))]

    def error_at(j: int) -> Any:
        def error(message: str, key: str | None = None) -> ProfileError:
            return ProfileError(message, path=path, line=origins[j].line(key),
                                layer=f"{instance}.{local[j]}" if j < len(local) else None,
                                within=within)
        return error

    local: list[str] = []
    included: list[bool] = []
    for j, table in enumerate(block.layers):
        error = error_at(j)
        if "block" in table:
            raise error("blocks do not nest: a block's layer has a 'type', not a 'block'",
                        "block")
        if "name" not in table:
            raise error(f"a [[block.{block.name}.layer]] table needs a 'name'")
        name = _substitute(table["name"], variables, block, lambda m, e=error: e(m, "name"))
        if not isinstance(name, str) or not name:
            raise error(f"'name' must be a non-empty string, got {describe(name)}", "name")
        if name in local:
            raise error(f"layer name '{name}' is used twice in block '{block.name}'", "name")
        local.append(name)
        when = _substitute(table.get("when", True), variables, block,
                           lambda m, e=error: e(m, "when"))
        if not isinstance(when, bool):
            raise error(f"'when' must be true or false (or name a boolean parameter), got "
                        f"{describe(when)}", "when")
        included.append(when)

    # A reference is ("local", j) or ("tensor", name); a left-out layer passes its input on.
    reads: list[list[tuple[str, Any]] | None] = []
    for j, table in enumerate(block.layers):
        error = error_at(j)
        raw = table.get("inputs", ["{in}"] if j == 0 else [local[j - 1]])
        raw = [raw] if isinstance(raw, str) else raw
        if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
            reads.append(None)  # left for the layer's own check to report
            continue
        refs: list[tuple[str, Any]] = []
        for source in raw:
            if source == "{" + INPUT + "}":
                refs.append(("tensor", variables[INPUT]))
                continue
            resolved = _substitute(source, variables, block, lambda m, e=error: e(m, "inputs"))
            if not isinstance(resolved, str) or not resolved:
                raise error(f"'inputs' must name tensors, got {describe(resolved)}", "inputs")
            refs.append(("local", local.index(resolved)) if resolved in local
                        else ("tensor", resolved))
        reads.append(refs)

    def tensor_of(ref: tuple[str, Any], seen: tuple[int, ...] = ()) -> str:
        kind, value = ref
        if kind == "tensor":
            return value
        if included[value]:
            return f"{instance}.{local[value]}"
        refs = reads[value]
        if refs is None or len(refs) != 1 or value in seen:
            raise error_at(value)(f"layer '{local[value]}' is left out (when = false), so "
                                  f"what reads it reads its input, which must be exactly one "
                                  f"tensor", "when")
        return tensor_of(refs[0], (*seen, value))

    specs = []
    for j, table in enumerate(block.layers):
        if not included[j]:
            continue
        error = error_at(j)
        values = {key: _substitute(value, variables, block, lambda m, e=error, k=key: e(m, k))
                  for key, value in table.items() if key not in ("name", "inputs", "when")}
        refs = reads[j]
        values["name"] = f"{instance}.{local[j]}"
        values["inputs"] = table["inputs"] if refs is None else [tensor_of(r) for r in refs]
        specs.append(LayerSpec(values, origins[j]))
    return specs, tensor_of(("local", len(local) - 1))


def _substitute(value: Any, variables: dict[str, Any], block: Block, error: Any) -> Any:
    """`value` with its {names} replaced: a string that is one {name} becomes the
    value itself, a longer one its text; lists are replaced item by item."""
    if isinstance(value, list):
        return [_substitute(v, variables, block, error) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(name: str) -> Any:
        if name not in variables:
            known = ", ".join(block.defaults) or "none"
            raise error(f"'{{{name}}}' names no parameter of block '{block.name}'; its "
                        f"parameters: {known} (and {INDEX}, the instance's index, and "
                        f"{INPUT}, its input)")
        return variables[name]

    whole = _VARIABLE.fullmatch(value)
    if whole:
        return lookup(whole.group(1))

    def text(found: re.Match[str]) -> str:
        part = lookup(found.group(1))
        if isinstance(part, bool) or not isinstance(part, str | int):
            raise error(f"'{{{found.group(1)}}}' is {describe(part)}: only a string or an "
                        f"integer can be part of a longer string")
        return str(part)

    return _VARIABLE.sub(text, value)
