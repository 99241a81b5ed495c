"""What a plan does with each tensor on the device at a step's peak: which layer
made it, and whether the plan moves it to the host (offload) or drops it and
computes it again (recompute), or could, or no plan can. Pure functions of the
network, the plan and `vmem.profiler.peak`'s contents.

Only feature maps move or are computed again (vDNN's offloads; recomputation of
a layer's output and what it saves for its backward pass): weights, their
gradients, optimizer state, gradient maps and workspace stay where they are."""

from __future__ import annotations

from dataclasses import replace

from vmem.graph import Network
from vmem.memory import MemoryKind
from vmem.plan import Plan, offloadable_inputs, offloaded_tensors, recomputable, recomputed_tensors
from vmem.profiler.peak import AT_START, Action, PeakContents, PeakTensor, described

SAVED_SUFFIX = ".saved"  # the executor's label of what a layer saves: "{layer}.saved"


def owning_layer(label: str, layers: frozenset[str]) -> str:
    """The layer a parameter's (or its gradient's, or its optimizer state's) label
    names: the longest layer name it begins with before a '.' ("fc6.weight.momentum"
    is fc6's); "" where none."""
    cut = len(label)
    while cut > 0:
        if label[:cut] in layers:
            return label[:cut]
        cut = label.rfind(".", 0, cut)
    return ""


def held_tensor(network: Network, label: str, contents: PeakContents) -> str:
    """The feature map a block labelled `label` holds at the peak: a layer that runs in
    place writes its output over its input's block, which keeps its first label; in the
    forward pass only the layers before the peak's have written."""
    lives, index = network.lives, network.index
    before = index.get(contents.layer, len(network.nodes)) if contents.phase == "forward" \
        else len(network.nodes)
    name = label
    while name in lives and lives[name].inplace_into is not None \
            and lives[name].inplace_into < before:
        name = network.nodes[lives[name].inplace_into].name
    return name


def _last_in_place(network: Network, name: str) -> str:
    """Where the chain of layers writing in place over `name`'s block ends: the map
    the block will hold once the forward pass is done."""
    lives = network.lives
    while name in lives and lives[name].inplace_into is not None:
        name = network.nodes[lives[name].inplace_into].name
    return name


def describe(contents: PeakContents, network: Network, plan: Plan, itemsize: int
             ) -> PeakContents:
    """The peak's tensors named by what they hold, with their layer and the plan's
    actions: offload "yes" where the plan moves the map, "could" where a plan could
    (a backward pass reads it and no layer writes over it), else "no"; recompute
    "yes" where the plan computes the map (or a layer's saved state) again, "could"
    where a plan could, else "no"."""
    layers = frozenset(network.index)
    offloaded = offloaded_tensors(network, plan)
    recomputed = recomputed_tensors(network, plan, itemsize)
    offloadable = frozenset(source for node in network.nodes
                            for source in offloadable_inputs(network, node.name))
    could_recompute: dict[str, bool] = {}

    def recompute(layer: str) -> Action:
        if layer in recomputed:
            return "yes"
        if layer not in layers:
            return "no"
        if layer not in could_recompute:
            could_recompute[layer] = recomputable(network, layer, itemsize, plan.batch) is None
        return "could" if could_recompute[layer] else "no"

    def one(tensor: PeakTensor) -> PeakTensor:
        if tensor.name == AT_START:
            return replace(tensor, offload="no", recompute="no")
        if tensor.kind == MemoryKind.FEATURE_MAPS:
            name = held_tensor(network, tensor.name, contents)
            final = _last_in_place(network, name)
            offload: Action = ("yes" if final in offloaded else
                               "could" if final in offloadable else "no")
            return replace(tensor, name=name, layer=name if name in layers else "",
                           offload=offload, recompute=recompute(final))
        if tensor.kind == MemoryKind.SAVED and tensor.name.endswith(SAVED_SUFFIX):
            layer = tensor.name.removesuffix(SAVED_SUFFIX)
            return replace(tensor, layer=layer, offload="no", recompute=recompute(layer))
        layer = tensor.layer or owning_layer(tensor.name, layers)
        return replace(tensor, layer=layer, offload="no", recompute="no")

    return described(contents, [one(tensor) for tensor in contents.tensors])

