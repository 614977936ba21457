import torch

from latentbridge.config import TranslatorConfig
from latentbridge.translators import build_translator


def _translator(**kw):
    config = TranslatorConfig(num_tokens=6, width=32, depth=2, heads=4, dropout=0.0, **kw)
    return build_translator(config, source_dim=24, target_dim=40, target_rms=0.05)


def test_shapes_rms_and_orthogonal_queries():
    torch.manual_seed(0)
    translator = _translator()
    out = translator(torch.randn(3, 9, 24), torch.ones(3, 9))
    assert out.shape == (3, 6, 40)
    rms = out.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.05), rtol=1e-3)
    q = translator.queries.detach()
    gram = q @ q.T
    assert torch.allclose(gram, torch.eye(6), atol=1e-5)  # orthonormal rows


def test_blocks_start_as_identity_then_gates_let_the_source_in():
    torch.manual_seed(0)
    translator = _translator()
    a, b = torch.randn(1, 5, 24), torch.randn(1, 5, 24)
    mask = torch.ones(1, 5)
    assert torch.allclose(translator(a, mask), translator(b, mask))  # gates at 0: source ignored
    for block in translator.blocks:
        assert block.cross_gate.item() == 0.0
        block.cross_gate.data.fill_(0.5)
    assert not torch.allclose(translator(a, mask), translator(b, mask))


def test_padding_mask_hides_padded_source_positions():
    torch.manual_seed(0)
    translator = _translator()
    for block in translator.blocks:
        block.cross_gate.data.fill_(1.0)
    source = torch.randn(1, 6, 24)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    changed = source.clone()
    changed[:, 4:] = 100.0  # garbage under the padding must not matter
    assert torch.allclose(translator(source, mask), translator(changed, mask), atol=1e-5)


def test_gradients_reach_the_gates_at_init():
    torch.manual_seed(0)
    translator = _translator()
    translator(torch.randn(2, 4, 24), torch.ones(2, 4)).pow(2).sum().backward()
    assert translator.blocks[0].cross_gate.grad is not None
    assert translator.blocks[0].cross_gate.grad.abs() > 0
