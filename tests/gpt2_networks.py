"""GPT-2 shaped networks for the transformer tests."""

from __future__ import annotations

from vmem.graph import DATA, Network, Node
from vmem.layers import LAYER_TYPES


def gpt2_network(blocks: int = 2, width: int = 64, heads: int = 4, length: int = 32,
                 vocab: int = 256, p: float = 0.1) -> Network:
    t = LAYER_TYPES
    nodes = [Node(t["embedding"](name="wte", vocab=vocab, features=width), (DATA,)),
             Node(t["position_embedding"](name="wpe"), ("wte",)),
             Node(t["dropout"](name="drop", p=p), ("wpe",))]
    stream = "drop"
    for b in range(blocks):
        h = f"h.{b}."
        chain = [("ln_1", t["layernorm"](name=h + "ln_1"), (stream,)),
                 ("attn.c_attn", t["linear"](name=h + "attn.c_attn", out_features=3 * width), None),
                 ("attn", t["attention"](name=h + "attn", heads=heads), None),
                 ("attn.c_proj", t["linear"](name=h + "attn.c_proj", out_features=width), None),
                 ("attn.dropout", t["dropout"](name=h + "attn.dropout", p=p), None),
                 ("add_1", t["add"](name=h + "add_1"), (stream, h + "attn.dropout")),
                 ("ln_2", t["layernorm"](name=h + "ln_2"), None),
                 ("mlp.c_fc", t["linear"](name=h + "mlp.c_fc", out_features=4 * width), None),
                 ("mlp.gelu", t["gelu"](name=h + "mlp.gelu"), None),
                 ("mlp.c_proj", t["linear"](name=h + "mlp.c_proj", out_features=width), None),
                 ("mlp.dropout", t["dropout"](name=h + "mlp.dropout", p=p), None),
                 ("add_2", t["add"](name=h + "add_2"), (h + "add_1", h + "mlp.dropout"))]
        previous = stream
        for local, layer, inputs in chain:
            nodes.append(Node(layer, inputs or (previous,)))
            previous = h + local
        stream = h + "add_2"
    nodes += [Node(t["layernorm"](name="ln_f"), (stream,)),
              Node(t["linear"](name="lm_head", out_features=vocab, bias=False, tied_to="wte"),
                   ("ln_f",)),
              Node(t["softmax_loss"](name="loss"), ("lm_head",))]
    return Network.build("gpt2-test", (length,), nodes, vocab=vocab)
