"""One inductor pass: the matrix products that read one input through constant weights become one.

A decoder layer reads its normed hidden state through the query, key and value projections (and
the next norm's output through gate and up). Decoding a batch of 64, each is a skinny product whose
time is reading its weight, and the small ones (Llama-3.1-8B's 4096 x 1024 key and value) run far
below the memory bandwidth. One product over the concatenated weights reads the same bytes in one
larger, faster kernel.

Inductor's freezing has such a pattern, but in the torch of the GPU machine (2.11) it joins only
weights of one shape (gate and up), never a query with grouped-query keys and values. This pass
joins any products `mm(x, W_i)` that share `x` and whose `W_i` are constants of the frozen graph
(`get_attr` nodes, possibly transposed) with one dtype, device and input width; each old product
becomes a column slice of the joined one. It runs as `post_grad_custom_pre_pass`, so only where
freezing made the weights constants (`generation.FROZEN_DECODE_MODE`); the joined weights are new
constants (copies: the originals stay with the model, whose eager prefill reads them).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

log = logging.getLogger(__name__)

aten = torch.ops.aten
_TRANSPOSES = (aten.permute.default, aten.t.default)


def constant_weight(graph_module: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor | None:
    """The tensor a weight node stands for: a constant, or a transpose of one; else None."""
    if node.op == "get_attr":
        value = getattr(graph_module, node.target, None)
        return value if isinstance(value, torch.Tensor) else None
    if node.op == "call_function" and node.target in _TRANSPOSES and isinstance(node.args[0], torch.fx.Node):
        base = constant_weight(graph_module, node.args[0])
        if base is None or base.ndim != 2 or (node.target is aten.permute.default and list(node.args[1]) != [1, 0]):
            return None
        return base.t()
    return None


def call_with_meta(graph: torch.fx.Graph, fake_mode, target, args: tuple, kwargs: dict | None = None) -> torch.fx.Node:
    """A new `target(*args, **kwargs)` node at the graph's insertion point, with the fake value
    inductor's later passes read (`meta["val"]`) computed from its inputs' (none without a fake mode)."""
    node = graph.call_function(target, args, kwargs or {})
    if fake_mode is not None:
        values = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
        with fake_mode:
            node.meta["val"] = target(*values, **(kwargs or {}))
    return node


def constant_node(graph: torch.fx.Graph, module: torch.fx.GraphModule, fake_mode, prefix: str,
                  tensor: torch.Tensor) -> torch.fx.Node:
    """A `get_attr` node at the insertion point for `tensor`, a new buffer of `module` under a
    free name starting with `prefix`, with its fake value."""
    name = f"{prefix}_{len([n for n in graph.nodes if n.op == 'get_attr'])}"
    while hasattr(module, name):
        name += "_"
    module.register_buffer(name, tensor, persistent=False)
    node = graph.get_attr(name)
    if fake_mode is not None:
        with fake_mode:
            node.meta["val"] = fake_mode.from_tensor(tensor)
    return node


def _joined(weights: list[torch.Tensor]) -> torch.Tensor:
    """The (in, sum of outs) weight whose column blocks are `weights`, laid out as they are: a
    transposed (out, in) row-major weight stays one (the LM's own layout), else row-major."""
    if all(w.stride(0) == 1 for w in weights):
        return torch.cat([w.t() for w in weights], dim=0).t()
    return torch.cat(weights, dim=1)


class ConcatProjections(CustomGraphPass):
    """The pass (`__call__(graph)`); `uuid` names this file's contents for inductor's graph cache."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        module = graph.owning_module
        groups: dict[tuple, list[tuple[torch.fx.Node, torch.Tensor]]] = defaultdict(list)
        for node in graph.nodes:
            if node.op != "call_function" or node.target is not aten.mm.default:
                continue
            x, w = node.args
            weight = constant_weight(module, w) if isinstance(w, torch.fx.Node) else None
            if weight is None:
                continue
            groups[(x, weight.shape[0], weight.dtype, weight.device)].append((node, weight))
        joined = 0
        for (x, *_), members in groups.items():
            if len(members) > 1:
                self._join(graph, module, x, members)
                joined += len(members)
        if joined:
            log.debug("joined %d matrix products into fewer over concatenated weights", joined)

    @staticmethod
    def _join(graph: torch.fx.Graph, module: torch.fx.GraphModule, x: torch.fx.Node,
              members: list[tuple[torch.fx.Node, torch.Tensor]]) -> None:
        fused = _joined([w for _, w in members])
        first = members[0][0]  # the earliest member (graph order): after `x`, before the others
        fake_mode = torch._guards.detect_fake_mode([x.meta.get("val")])
        with graph.inserting_before(first):
            constant = constant_node(graph, module, fake_mode, "_latentbridge_joined", fused)
            product = call_with_meta(graph, fake_mode, aten.mm.default, (x, constant))
        start = 0
        for node, weight in members:
            stop = start + weight.shape[1]
            with graph.inserting_before(node):
                part = call_with_meta(graph, fake_mode, aten.slice.Tensor, (product, 1, start, stop))
            node.replace_all_uses_with(part)
            graph.erase_node(node)
            start = stop

    def uuid(self) -> bytes:
        return hashlib.sha256(Path(__file__).read_bytes()).digest()
