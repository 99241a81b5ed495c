"""Lower bounds on a plan's peak from the dry run of a plan that does more.

Take a plan on vDNN's schedule (no `Move`s) and its dry run. A plan that
offloads or recomputes only some of the maps it does holds every map it keeps
on the device at least as long: a map no longer offloaded stays from its last
forward consumer to its copy back, one no longer recomputed from its last
forward consumer to its recomputation, and the other maps come back no later
(vDNN's prefetch searches past fewer offloaded layers, so it brings maps back
earlier or as early). So at every point of the step it holds at least what the
dry run held plus the maps it keeps there: the most of that over the step is a
lower bound on its peak, and a bound above the capacity says it does not fit
without running it.

A recomputation's workspace is the one thing the dry run held that a plan
not recomputing that map does not: it is taken off where it was held.

A layer the smaller plan runs on another algorithm that keeps more for its
backward pass, and holds at least as much workspace (attention materialized
where the dry run's was flash), holds the difference from the end of its
forward pass to its backward pass, and is counted so.

The bound holds only where the smaller plan moves a subset of the maps (the
same map never offloaded instead of recomputed), no map it stops recomputing
was brought back for that recomputation (the map's input then comes back
later than before), each map it stops recomputing was recomputed alone
(no chain: its inputs and consumers were not recomputed too) and is read by a
backward pass (a chain's inner maps are not), and every algorithm it changes,
of a layer neither plan computes again, keeps and holds no less; elsewhere
there is none.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

from vmem.dryrun import DryRun
from vmem.graph import Network
from vmem.layers.base import numel
from vmem.plan import Plan, offloaded_tensors, recompute_schedule


class PeakBound:
    """The dry run of a plan on vDNN's schedule, read as the memory held at each
    point of the step and where each moved map is away from the device."""

    def __init__(self, network: Network, plan: Plan, outcome: DryRun, itemsize: int) -> None:
        assert not plan.moves, "bounds are taken from plans on vDNN's schedule"
        self.network, self.itemsize = network, itemsize
        self.shapes = network.shapes(plan.batch)
        self.options = network.algorithms(plan.batch, itemsize)
        self.algorithms = {e.layer: e.algorithm for e in plan.layers}
        self.offloaded = offloaded_tensors(network, plan)
        schedule = recompute_schedule(network, plan, itemsize)
        self.recomputed = schedule.tensors
        n, index, lives = len(network.nodes), network.index, network.lives
        recompute_at = schedule.at

        def position(layer: str, phase: str) -> int:
            """Program order: forward k is k, backward k (and a recomputation done
            before it) is 2n - 1 - k, the update after everything."""
            if phase == "forward":
                return index[layer]
            if phase == "backward":
                return 2 * n - 1 - index[layer]
            if phase == "recompute":
                return 2 * n - 1 - recompute_at[layer]
            return 2 * n

        record = outcome.record
        self.positions = [position(e.layer, e.phase) for e in record.memory]
        self.in_use = np.array([e.in_use for e in record.memory], dtype=np.int64)
        # where each recomputation's workspace was held: event indices [from, to)
        self.workspace: dict[str, tuple[int, int, int]] = {}
        for k, event in enumerate(record.memory):
            name = event.label.removesuffix(".workspace")
            if event.phase == "recompute" and name != event.label and name in self.recomputed:
                if event.op == "alloc":
                    self.workspace[name] = (k, len(record.memory), event.nbytes)
                else:
                    start, _, nbytes = self.workspace[name]
                    self.workspace[name] = (start, k, nbytes)
        # where each offloaded map comes back: the backward pass whose iteration
        # issues its copy (the next kernel issued after the copy)
        self.back_at: dict[str, int] = {}
        pending: list[str] = []
        for span in record.spans:
            if span.kind == "copy_h2d":
                pending.append(span.name)
            elif span.kind == "kernel" and pending:
                at = (recompute_at[span.name] if span.phase == "recompute"
                      else index[span.name])
                self.back_at.update(dict.fromkeys(pending, at))
                pending = []
        self.back_at.update(recompute_at)
        self.last_forward = {name: lives[name].last_forward_use
                             for name in (*self.offloaded, *self.recomputed)}
        self._n = n

    def at_least(self, plan: Plan) -> int | None:
        """A lower bound on `plan`'s peak (None where none holds: see the module)."""
        if plan.moves:
            return None
        offloaded = offloaded_tensors(self.network, plan)
        recomputed = frozenset(e.layer for e in plan.layers if e.recompute_output)
        if not (offloaded <= self.offloaded and recomputed <= self.recomputed):
            return None
        nodes, index, lives = self.network.nodes, self.network.index, self.network.lives
        kept = [*(self.offloaded - offloaded), *(self.recomputed - recomputed)]
        added = np.zeros(len(self.in_use) + 1, dtype=np.int64)
        for name in self.recomputed - recomputed:
            if (any(source in self.offloaded or source in self.recomputed
                    for source in nodes[index[name]].inputs)
                    or any(nodes[c].name in self.recomputed for c in lives[name].consumers)
                    or not lives[name].backward_users):
                return None
            if name in self.workspace:  # held only while it was computed again
                start, end, nbytes = self.workspace[name]
                added[start] -= nbytes
                added[end] += nbytes
        for entry in plan.layers:
            if entry.algorithm == self.algorithms[entry.layer]:
                continue
            more = self._holds_more(entry.layer, entry.algorithm)
            if more is None or entry.layer in self.recomputed:
                return None
            # held from after its forward pass to before its backward pass
            k = index[entry.layer]
            lo = bisect_left(self.positions, k + 1)
            hi = bisect_left(self.positions, 2 * self._n - 1 - k)
            if lo < hi:
                added[lo] += more
                added[hi] -= more
        for name in kept:
            if name not in self.back_at:  # never came back (a guard: every map does)
                return None
            # away from the end of its last forward consumer to the iteration
            # that brings it back: forward k > last, backward k > back
            lo = bisect_left(self.positions, self.last_forward[name] + 1)
            hi = bisect_right(self.positions, 2 * self._n - 2 - self.back_at[name])
            if lo < hi:
                nbytes = numel(self.shapes[name]) * self.itemsize
                added[lo] += nbytes
                added[hi] -= nbytes
        return int((self.in_use + np.cumsum(added[:-1])).max(initial=0))

    def _saved_and_workspace(self, layer: str, name: str) -> tuple[int, int]:
        node = self.network.nodes[self.network.index[layer]]
        algo = next(a for a in self.options[layer] if a.name == name)
        in_shapes = self.network.in_shapes(node, self.shapes)
        return node.layer.saved_bytes(in_shapes, self.itemsize, algo), algo.workspace_bytes

    def _holds_more(self, layer: str, name: str) -> int | None:
        """How many more bytes `layer` saves for its backward pass on algorithm `name`
        than on the dry run's; None unless it saves and holds as workspace no less."""
        saved, workspace = self._saved_and_workspace(layer, name)
        then_saved, then_workspace = self._saved_and_workspace(layer, self.algorithms[layer])
        if saved < then_saved or workspace < then_workspace:
            return None
        return saved - then_saved
