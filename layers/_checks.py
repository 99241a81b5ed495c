"""Validation shared by the layer families. Shape problems raise
`vmem.errors.ShapeError`; bad configuration values raise `ValueError`. Both messages
start with "layer 'NAME' (TYPE): " so a profile loader can point at the layer."""

from __future__ import annotations

from collections.abc import Sequence

from vmem.errors import ShapeError
from vmem.layers.base import Layer, Shape


def where(layer: Layer) -> str:
    return f"layer '{layer.name}' ({layer.TYPE})"


def shape_error(layer: Layer, message: str) -> ShapeError:
    return ShapeError(f"{where(layer)}: {message}")


def config_error(layer: Layer, message: str) -> ValueError:
    return ValueError(f"{where(layer)}: {message}")


def require_int(layer: Layer, field: str, minimum: int) -> None:
    value = getattr(layer, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise config_error(layer, f"{field} must be an integer >= {minimum}, got {value!r}")


def inputs(layer: Layer, in_shapes: Sequence[Shape], *, min_rank: int = 1,
           rank: int | None = None) -> list[Shape]:
    """Check the number of inputs against ARITY, each input's rank, and that every
    size is positive; return the shapes as tuples."""
    shapes = [tuple(int(d) for d in s) for s in in_shapes]
    if layer.ARITY is None:
        if len(shapes) < 2:
            raise shape_error(layer, f"needs two or more inputs, got {len(shapes)}")
    elif len(shapes) != layer.ARITY:
        raise shape_error(layer, f"needs {layer.ARITY} input(s), got {len(shapes)}: {shapes}")
    for s in shapes:
        if rank is not None and len(s) != rank:
            kind = "NCHW" if rank == 4 else f"rank {rank}"
            raise shape_error(layer, f"needs {kind} input, got shape {s}")
        if len(s) < min_rank:
            raise shape_error(layer, f"needs input of rank >= {min_rank}, got shape {s}")
        if any(d <= 0 for d in s):
            raise shape_error(layer, f"input shape {s} has a non-positive size")
    return shapes
