"""The inductor pass that joins matrix products reading one input through constant weights."""

from __future__ import annotations

import torch

from latentbridge.concat_projections import ConcatProjections

aten = torch.ops.aten


def _graph_module(weights: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """x (4, 8) through: q (8 -> 6, stored (6, 8) and read transposed, as a linear's weight is),
    k and v (8 -> 2, transposed), u (8 -> 3, stored (8, 3)), a product over a second input y with
    a constant of another input width (not joined) and one over a weight that is an input (not a
    constant: not joined)."""
    root = torch.nn.Module()
    for name, tensor in weights.items():
        root.register_buffer(name, tensor)
    graph = torch.fx.Graph()
    x, y, w_in = graph.placeholder("x"), graph.placeholder("y"), graph.placeholder("w_in")
    outs = []
    for name in ("q", "k", "v"):
        outs.append(graph.call_function(aten.mm.default, (x, graph.call_function(aten.permute.default, (graph.get_attr(name), [1, 0])))))
    outs.append(graph.call_function(aten.mm.default, (x, graph.get_attr("u"))))
    outs.append(graph.call_function(aten.mm.default, (y, graph.call_function(aten.t.default, (graph.get_attr("other"),)))))
    outs.append(graph.call_function(aten.mm.default, (x, w_in)))
    graph.output(tuple(outs))
    return torch.fx.GraphModule(root, graph)


def _products(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is aten.mm.default]


def test_products_of_one_input_over_constants_become_one_and_give_the_same_results():
    g = torch.Generator().manual_seed(0)
    weights = {"q": torch.randn(6, 8, generator=g), "k": torch.randn(2, 8, generator=g), "v": torch.randn(2, 8, generator=g),
               "u": torch.randn(8, 3, generator=g), "other": torch.randn(5, 7, generator=g)}
    gm = _graph_module(weights)
    x, y, w_in = torch.randn(4, 8, generator=g), torch.randn(4, 7, generator=g), torch.randn(8, 2, generator=g)
    before = gm(x, y, w_in)
    assert len(_products(gm)) == 6

    ConcatProjections()(gm.graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()

    after = gm(x, y, w_in)
    for old, new in zip(before, after):
        torch.testing.assert_close(new, old)
    products = _products(gm)
    assert len(products) == 3  # q, k, v and u joined; y's and the input weight's left alone
    joined = next(n for n in products if n.args[1].op == "get_attr")
    assert joined.args[0].name == "x" and getattr(gm, joined.args[1].target).shape == (8, 6 + 2 + 2 + 3)
    assert {n.args[1].op for n in products} == {"get_attr", "call_function", "placeholder"}


def test_a_lone_product_and_weights_of_different_dtypes_are_left_alone():
    weights = {"q": torch.randn(6, 8), "k": torch.randn(2, 8, dtype=torch.float64), "v": torch.randn(2, 8),
               "u": torch.randn(8, 3, dtype=torch.float64), "other": torch.randn(5, 7)}
    gm = _graph_module(weights)
    ConcatProjections()(gm.graph)
    gm.graph.eliminate_dead_code()
    # float32: q and v joined; float64: k and u joined; y's product and the input weight's alone
    assert len(_products(gm)) == 4
    assert sorted(getattr(gm, n.args[1].target).shape[1] for n in _products(gm) if n.args[1].op == "get_attr") == [5, 8]

