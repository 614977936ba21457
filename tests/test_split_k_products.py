"""The split-K inductor pass (`latentbridge.split_k_products`), on graphs traced here."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from latentbridge.split_k_products import SplitKProducts, splits


def test_the_split_k_pass_turns_a_skinny_product_into_summed_slices_with_the_same_result():
    """`SplitKProducts`: mm(x, W) over a constant W becomes bmm over S slices of the inner
    dimension summed in float32, S by how few output tiles the product has for the processors;
    products with tiles enough, or an inner dimension that does not divide, stay one mm."""
    assert splits(64, 14336, 4096, 132) == 4  # Llama-3.1-8B's down projection at batch 64 on an H200
    assert splits(64, 4096, 6144, 132) == 2  # its joined query, key and value
    assert splits(64, 4096, 28672, 132) == 1 and splits(64, 4096, 128256, 132) == 1  # gate+up, LM head
    assert splits(3, 40, 8, 64) == 1  # 40 is no multiple of 2 x 16

    class TwoProducts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.register_buffer("skinny", torch.randn(48, 256, generator=generator))
            self.register_buffer("odd", torch.randn(8, 40, generator=generator))

        def forward(self, x, y):
            return torch.nn.functional.linear(x, self.skinny), torch.nn.functional.linear(y, self.odd)

    model = TwoProducts()
    x, y = torch.randn(3, 256), torch.randn(3, 40)
    traced = make_fx(model)(x, y)
    SplitKProducts(processors=64)(traced.graph)
    traced.recompile()
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.aten.bmm.default) == 1 and targets.count(torch.ops.aten.mm.default) == 1
    for got, want in zip(traced(x, y), model(x, y)):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="processors must be at least 1, got 0"):
        SplitKProducts(processors=0)
