"""Small networks and plans the policy tests share, on the CPU (tests/test_policies.py,
tests/test_budget.py, tests/test_recompute.py) and on a GPU (tests/gpu/test_cuda.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

import vmem
from vmem.plan import Plan, recomputable
from vmem.profile import parse_profile
from vmem.trial import synthetic_data

PROFILES = Path(vmem.__file__).parent.parent / "profiles"


def gpt2_tiny(**attention: object) -> vmem.Network:
    """gpt2-tiny (T = 32), its attention layers configured as given (algorithm,
    tile)."""
    text = (PROFILES / "gpt2-tiny.toml").read_text()
    line = 'heads = "{heads}"'
    assert line in text
    extra = "".join(f"\n{key} = {value!r}".replace("'", '"') for key, value in attention.items())
    return parse_profile(text.replace(line, line + extra), "gpt2-tiny.toml").network


def pointwise_network() -> vmem.Network:
    """Six 1x1 convolutions over 32x32 maps, then a pool: feature maps, not
    workspace or weights, make the peak, so offloading must lower it."""
    t = vmem.layers.LAYER_TYPES
    layers = []
    for i in range(6):
        layers += [t["conv"](name=f"conv{i}", out_channels=8, kernel=1),
                   t["relu"](name=f"relu{i}")]
    layers += [t["maxpool"](name="pool", kernel=2), t["linear"](name="fc", out_features=10),
               t["softmax_loss"](name="loss")]
    return vmem.Network.sequential("pointwise", (8, 32, 32), layers)


def recomputing(network: vmem.Network, plan: Plan, only: set[str] | None = None) -> Plan:
    """`plan` with every recomputable output (or those in `only`) computed again,
    none from another that is."""
    chosen: set[str] = set()
    for node in network.nodes:
        if only is not None and node.name not in only:
            continue
        if (recomputable(network, node.name, 4, plan.batch) is None
                and not any(source in chosen for source in node.inputs)):
            chosen.add(node.name)
    return replace(plan, layers=tuple(replace(entry, recompute_output=entry.layer in chosen)
                                      for entry in plan.layers))


def resnet18_plain() -> vmem.Network:
    """ResNet-18 (He et al. 2016) without BatchNorm, on 224x224 images: a 7x7
    stem and max pool (`pool1`), four stages of two basic blocks (two 3x3
    convolutions and a shortcut, a 1x1 stride-2 convolution where the shape
    changes), global average pooling and a 1000-way classifier."""
    t = vmem.layers.LAYER_TYPES
    nodes = [vmem.Node(t["conv"](name="conv1", out_channels=64, kernel=7, stride=2, pad=3),
                       ("data",)),
             vmem.Node(t["relu"](name="relu1"), ("conv1",)),
             vmem.Node(t["maxpool"](name="pool1", kernel=3, stride=2, pad=1), ("relu1",))]
    previous = "pool1"
    for stage, channels in enumerate((64, 128, 256, 512), start=2):
        for block in range(2):
            name, stride = f"res{stage}{'ab'[block]}", 2 if stage > 2 and block == 0 else 1
            nodes += [
                vmem.Node(t["conv"](name=f"{name}_conv1", out_channels=channels, kernel=3,
                                    stride=stride, pad=1), (previous,)),
                vmem.Node(t["relu"](name=f"{name}_relu1"), (f"{name}_conv1",)),
                vmem.Node(t["conv"](name=f"{name}_conv2", out_channels=channels, kernel=3,
                                    pad=1), (f"{name}_relu1",))]
            shortcut = previous
            if stride != 1:
                nodes.append(vmem.Node(t["conv"](name=f"{name}_down", out_channels=channels,
                                                 kernel=1, stride=stride), (previous,)))
                shortcut = f"{name}_down"
            nodes += [vmem.Node(t["add"](name=f"{name}_add"), (f"{name}_conv2", shortcut)),
                      vmem.Node(t["relu"](name=f"{name}_relu"), (f"{name}_add",))]
            previous = f"{name}_relu"
    nodes += [vmem.Node(t["avgpool"](name="pool5", kernel=7), (previous,)),
              vmem.Node(t["linear"](name="fc", out_features=1000), ("pool5",)),
              vmem.Node(t["softmax_loss"](name="loss"), ("fc",))]
    return vmem.Network.build("resnet18-plain", (3, 224, 224), nodes)


def train(network: vmem.Network, policy: str, device: str = "cpu", steps: int = 2,
          **options: object) -> tuple[list[float], dict[str, np.ndarray], vmem.Runtime]:
    """`steps` AdamW steps on one synthetic batch of 2 under `policy`: the losses, the
    weights after (where the backend runs kernels) and the runtime, for comparing
    policies bit for bit."""
    runtime = vmem.Runtime(network, device=device, policy=policy, seed=5,
                           optimizer=vmem.AdamW(lr=0.01), **options)
    x, y = synthetic_data(network, 2, seed=2, data=runtime.backend.runs_kernels)
    losses = [runtime.train_step(x, y) for _ in range(steps)]
    return losses, (runtime.state_dict() if runtime.backend.runs_kernels else {}), runtime
