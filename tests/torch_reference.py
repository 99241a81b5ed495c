"""A vmem network's loss computed by PyTorch, layer by layer with torch's own
operators, for tests that compare vmem against it: the same graph, weights and
dropout masks, torch's arithmetic and autograd (which sums a tied weight's
gradients over its uses by itself)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vmem.graph import DATA, Network
from vmem.layers.dropout import keep_mask


def torch_loss(torch: Any, network: Network, params: dict[str, np.ndarray], x: np.ndarray,
               y: np.ndarray, seed: int, dtype: Any) -> tuple[Any, dict[str, Any]]:
    """The mean loss of one training step (dropout on, its masks those vmem draws at
    `seed`) and the leaf tensors by "layer.param", for `params` as a vmem state dict."""
    functional = torch.nn.functional
    leaves = {key: torch.tensor(value, dtype=dtype, requires_grad=True)
              for key, value in params.items()}
    tensors: dict[str, Any] = {DATA: torch.as_tensor(np.asarray(x, dtype=np.int64))}
    for node in network.nodes:
        layer, ins = node.layer, [tensors[s] for s in node.inputs]

        def weight(name: str = "weight", layer: Any = layer) -> Any:
            owner = getattr(layer, "tied_to", "") or layer.name
            return leaves[f"{owner}.{name}"]

        kind = layer.TYPE
        if kind == "embedding":
            out = functional.embedding(ins[0], weight())
        elif kind == "position_embedding":
            out = ins[0] + weight()
        elif kind == "dropout":
            keep = keep_mask(seed, layer.name, tuple(ins[0].shape), float(layer.p))
            out = ins[0] * torch.as_tensor(keep / (1.0 - layer.p), dtype=dtype)
        elif kind == "layernorm":
            out = functional.layer_norm(ins[0], ins[0].shape[-1:], weight(), weight("bias"),
                                        layer.eps)
        elif kind == "linear":
            bias = leaves[f"{layer.name}.bias"] if layer.bias else None
            source = ins[0] if ins[0].dim() == 3 else ins[0].flatten(1)
            out = functional.linear(source, weight(), bias)
        elif kind == "attention":
            n, t, c3 = ins[0].shape
            q, k, v = (part.reshape(n, t, layer.heads, -1).transpose(1, 2)
                       for part in ins[0].split(c3 // 3, dim=-1))
            out = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            out = out.transpose(1, 2).reshape(n, t, c3 // 3)
        elif kind == "gelu":
            out = functional.gelu(ins[0], approximate="tanh")
        elif kind == "add":
            out = sum(ins[1:], ins[0])
        elif kind == "softmax_loss":
            logits = ins[0]
            out = functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           torch.as_tensor(np.asarray(y).reshape(-1)))
        else:
            raise NotImplementedError(f"no torch reference for layer type {kind}")
        tensors[node.name] = out
    return tensors[network.loss.name], leaves
