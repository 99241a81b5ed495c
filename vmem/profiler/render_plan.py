"""`vmem plan` for people: the plan's layers and its moves as tables that never
cut a number (vmem.profiler.tables); `Plan.explain()` is the same as plain text."""

from __future__ import annotations

from rich.console import Console

from vmem.plan import Plan
from vmem.profiler.tables import Column, print_table
from vmem.units import format_bytes


def print_plan(console: Console, plan: Plan) -> None:
    print_table(console, [Column("layer", "left"), Column("algorithm", "left"),
                          Column("workspace"), Column("offload", "left"),
                          Column("recompute", "left")],
                [(entry.layer, entry.algorithm, format_bytes(entry.workspace_bytes),
                  "yes" if entry.offload_input else "-",
                  "yes" if entry.recompute_output else "-") for entry in plan.layers],
                title=f"plan '{plan.policy}' at batch {plan.batch}",
                caption="offload: the layer's input leaves the device after the forward pass; "
                "recompute: its output is dropped and computed again in the backward pass")
    if plan.moves:
        print_table(console, [Column("offloaded map", "left"), Column("freed after", "left"),
                              Column("copied back at", "left")],
                    [(move.tensor, move.release_after, move.prefetch_before)
                     for move in plan.moves],
                    title="when offloaded maps move: freed after that layer's forward pass, "
                    "copied back as that layer's backward pass starts")
