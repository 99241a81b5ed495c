"""What is on the device at the peak, for people: the instant (step, layer and
pass), then the biggest tensors as a table that never cuts a number
(vmem.profiler.tables), a line for the others and the total, which is the peak
the report prints above it."""

from __future__ import annotations

from rich.console import Console

from vmem.profiler.peak import PeakContents
from vmem.profiler.tables import Column, Row, print_table
from vmem.units import format_bytes, format_ms

DEFAULT_COUNT = 10  # tensors shown: run, plan
DEFAULT_COUNT_EACH = 5  # tensors shown a policy: compare

_SHORT_KINDS = {"weight_grads": "weight grads", "gradient_maps": "grad maps"}

CAPTION = ("layer: the one that made it, where the name does not begin with it; "
           "offload, recompute: yes, the plan moves the map to the host / computes it again "
           "in the backward pass (a map it moves is here before it leaves or once it is back); "
           "could, a plan could, this one does not; -, no plan can")


def kind_title(kind: str, short: bool = False) -> str:
    """A memory kind as a report names it ("weight gradients", or "weight grads")."""
    if short and kind in _SHORT_KINDS:
        return _SHORT_KINDS[kind]
    return kind.replace("_", " ").replace("grads", "gradients")


def instant_text(contents: PeakContents) -> str:
    """When the peak falls: "step 2, backward pass of conv2, 0.1 ms into the step"."""
    layer, phase = contents.layer, contents.phase
    if phase in ("forward", "backward"):
        where = f"{phase} pass of {layer}"
    elif phase == "recompute":
        where = f"{layer} computed again in the backward pass"
    elif phase == "update":
        where = f"the optimizer's update ({layer})"
    else:
        where = "the step's start"
    return f"step {contents.step + 1}, {where}, {format_ms(contents.t_ms)} into the step"


def _action(value: str | None) -> str:
    return "-" if value in (None, "no") else value


def layer_cell(name: str, layer: str) -> str:
    """The layer that made a tensor, blank where the tensor's name already begins with
    it (a map is named by its layer; a parameter, its state, workspace and saved state
    begin with it), "-" where none did (the network's input)."""
    if not layer:
        return "-"
    return "" if name == layer or name.startswith(layer + ".") else layer


def print_peak(console: Console, contents: PeakContents, count: int,
               heading: str = "on the device at the peak") -> None:
    """The instant of the peak as a line, then the `count` biggest tensors (nothing
    where count is 0)."""
    if count <= 0:
        return
    console.print(f"{heading}: {format_bytes(contents.peak_bytes)} at "
                  f"{instant_text(contents)}", style="bold", highlight=False, soft_wrap=True)
    shown, others, other_bytes = contents.top(count)
    rows = [Row((t.name, kind_title(t.kind, short=True), layer_cell(t.name, t.layer),
                 format_bytes(t.nbytes), _action(t.offload), _action(t.recompute)))
            for t in shown]
    if others:
        rows.append(Row((f"{others} other{'s' if others > 1 else ''}", "", "",
                         format_bytes(other_bytes), "", ""), style="italic", section=True))
    rows.append(Row(("total (the peak)", "", "", format_bytes(contents.peak_bytes), "", ""),
                    style="bold", section=not others))
    columns = [Column("tensor", "left"), Column("kind", "left"), Column("layer", "left"),
               Column("size"), Column("offload", "left"), Column("recompute", "left")]
    print_table(console, columns, rows, caption=CAPTION)


def print_missing(console: Console, version: str, heading: str = "on the device at the peak"
                  ) -> None:
    """The line for a session saved before vmem recorded the peak's tensors."""
    console.print(f"{heading}: not in this session (saved by vmem {version}, which did not "
                  "record the tensors at the peak; run it again to see them)",
                  highlight=False, soft_wrap=True)
