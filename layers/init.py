"""How convolutions and linear layers draw their first weights, after the
reference implementations (a layer's `init` field names one, `init_std` is the
standard deviation of "normal"):

- "kaiming_fan_out": N(0, 2 / fan_out), fan_out = out_channels * k * k; zero bias.
  torchvision's convolutions in VGG and ResNet (kaiming_normal_, mode "fan_out",
  ReLU gain); the default for `conv`.
- "kaiming_fan_in": N(0, 2 / fan_in), fan_in = in_channels / groups * k * k (or
  in_features); zero bias. He et al. 2015's own choice.
- "normal": N(0, init_std²); zero bias. torchvision's VGG and AlexNet classifiers,
  with 0.01 (the default std), as Krizhevsky et al. and Sermanet et al. drew theirs.
- "uniform_fan_in": U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the
  bias. PyTorch's own default for nn.Linear and nn.Conv2d (kaiming_uniform_ with
  a = sqrt(5)); torchvision's ResNet classifier; the default for `linear`.

Every scheme is a pure function of the generator: the same seed, the same bits.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

from vmem.layers._checks import config_error
from vmem.layers.base import Layer, Shape, numel

Init = Literal["kaiming_fan_out", "kaiming_fan_in", "normal", "uniform_fan_in"]
INITS: tuple[str, ...] = get_args(Init)


def check_init(layer: Layer) -> None:  # a Conv or a Linear
    """A ValueError unless the layer's `init` is a known scheme and `init_std` a
    positive finite number."""
    init, std = layer.init, layer.init_std
    if init not in INITS:
        raise config_error(layer, f"init must be one of {', '.join(INITS)}, got {init!r}")
    if (isinstance(std, bool) or not isinstance(std, int | float) or not math.isfinite(std)
            or std <= 0):
        raise config_error(layer, f"init_std must be a positive number, got {std!r}")


def initial_weights(init: str, std: float, shapes: dict[str, Shape],
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A "weight" of shapes["weight"] (out first) and, where shapes has one, a
    "bias", drawn by the scheme `init`; float32."""
    weight = shapes["weight"]
    fan_in, fan_out = numel(weight[1:]), weight[0] * numel(weight[2:])
    bias = shapes.get("bias")
    if init == "uniform_fan_in":
        bound = 1.0 / math.sqrt(fan_in)
        params = {"weight": rng.uniform(-bound, bound, weight).astype(np.float32)}
        if bias is not None:
            params["bias"] = rng.uniform(-bound, bound, bias).astype(np.float32)
        return params
    scale = {"kaiming_fan_out": math.sqrt(2.0 / fan_out),
             "kaiming_fan_in": math.sqrt(2.0 / fan_in), "normal": float(std)}[init]
    params = {"weight": rng.standard_normal(weight, dtype=np.float32) * np.float32(scale)}
    if bias is not None:
        params["bias"] = np.zeros(bias, dtype=np.float32)
    return params
