"""One inductor pass: a skinny product over a constant weight split along its inner dimension.

Decoding a batch of 64, a product `mm(x, W)` with x (64, K) and W (K, N) is a read of W. The BLAS
kernel tiles the (64, N) output, and where those tiles are fewer than the GPU's processors most of
them sit idle: Llama-3.1-8B's down projection (K = 14,336, N = 4,096: 32 tiles of 64 x 128 on 132
processors) read its weight at 1.7 TB/s of the H200's 4 (session 17's autotuner log), its output
projection (4,096 x 4,096) likewise. Split K into S parts and the same bytes are read by S times as
many tiles: `bmm` of the S slices (S, 64, K/S) x (S, K/S, N), then the S partial products summed in
float32 and rounded once to x's dtype (split-K, as GEMM libraries do inside one kernel).

S is the largest power of two, at most `MAX_SPLITS`, with `tiles * S <= processors` and K/S a
multiple of `CHUNK`; a product with S < 2 (enough tiles already: gate and up, the LM head) is left
alone. The weight slices are a view of the constant (no copy; freezing may fold them into one). It
runs after `concat_projections.ConcatProjections` (a joined query-key-value product is split too),
only in the frozen decode modes (`generation.FROZEN_SPLIT_K_MODE`), where weights are constants.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from latentbridge.concat_projections import call_with_meta, constant_node, constant_weight

log = logging.getLogger(__name__)

aten = torch.ops.aten
TILE = (64, 128)  # rows x columns of output a BLAS tile covers, for counting tiles
MAX_SPLITS = 8
CHUNK = 16  # K/S must be a multiple of this


def splits(rows: int, inner: int, cols: int, processors: int) -> int:
    """How many parts to split the inner dimension of a (rows, inner) x (inner, cols) product into."""
    tiles = -(-rows // TILE[0]) * -(-cols // TILE[1])
    count = 1
    while count * 2 <= MAX_SPLITS and tiles * count * 2 <= processors and inner % (count * 2 * CHUNK) == 0:
        count *= 2
    return count


class SplitKProducts(CustomGraphPass):
    """The pass (`__call__(graph)`) for a device of `processors` processors (a GPU's SMs)."""

    def __init__(self, processors: int) -> None:
        if processors < 1:
            raise ValueError(f"processors must be at least 1, got {processors}")
        self.processors = processors

    def __call__(self, graph: torch.fx.Graph) -> None:
        module = graph.owning_module
        split = []
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not aten.mm.default:
                continue
            x, w = node.args
            weight = constant_weight(module, w) if isinstance(w, torch.fx.Node) else None
            shape = x.meta.get("val").shape if isinstance(x, torch.fx.Node) and "val" in x.meta else None
            if weight is None or shape is None or not all(isinstance(n, int) for n in shape):
                continue
            count = splits(shape[0], weight.shape[0], weight.shape[1], self.processors)
            if count > 1:
                self._split(graph, module, node, x, weight, count)
                split.append(f"{shape[0]}x{weight.shape[0]}x{weight.shape[1]}/{count}")
        # info, not debug: a bench's log then says whether (and how) the compiled step was split
        log.info("split the inner dimension of %d matrix products (rows x inner x cols / parts): %s",
                 len(split), ", ".join(sorted(set(split))) or "none")

    @staticmethod
    def _split(graph: torch.fx.Graph, module: torch.fx.GraphModule, node: torch.fx.Node, x: torch.fx.Node,
               weight: torch.Tensor, count: int) -> None:
        rows, inner = x.meta["val"].shape
        fake_mode = torch._guards.detect_fake_mode([x.meta["val"]])
        with graph.inserting_before(node):
            slices = constant_node(graph, module, fake_mode, "_latentbridge_split", weight.unflatten(0, (count, inner // count)))  # a view
            parts = call_with_meta(graph, fake_mode, aten.view.default, (x, [rows, count, inner // count]))
            parts = call_with_meta(graph, fake_mode, aten.permute.default, (parts, [1, 0, 2]))
            products = call_with_meta(graph, fake_mode, aten.bmm.default, (parts, slices))
            total = call_with_meta(graph, fake_mode, aten.sum.dim_IntList, (products, [0]), {"dtype": torch.float32})
            result = call_with_meta(graph, fake_mode, torch.ops.prims.convert_element_type.default, (total, x.meta["val"].dtype))
        node.replace_all_uses_with(result)
        graph.erase_node(node)

    def uuid(self) -> bytes:
        return hashlib.sha256(Path(__file__).read_bytes() + str(self.processors).encode()).digest()


class AfterEachOther(CustomGraphPass):
    """Several passes as the one inductor's `post_grad_custom_pre_pass` takes, run in order."""

    def __init__(self, *passes: CustomGraphPass) -> None:
        self.passes = passes

    def __call__(self, graph: torch.fx.Graph) -> None:
        for each in self.passes:
            each(graph)

    def uuid(self) -> bytes:
        return hashlib.sha256(b"".join(each.uuid() for each in self.passes)).digest()
