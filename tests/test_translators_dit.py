import torch

from latentbridge.config import TranslatorConfig
from latentbridge.translators import (
    DiTBridgeTranslator,
    PassthroughTranslator,
    build_translator,
    teacher_batch,
)

SOURCE_DIM, TARGET_DIM, RMS, K = 12, 16, 0.05, 4


def _dit(**kw):
    values = dict(
        kind="dit", num_tokens=K, dropout=0.0, dit_width=32, dit_depth=2, dit_heads=4,
        dit_steps_train=2, dit_steps_eval=4,
    )
    values.update(kw)
    return build_translator(
        TranslatorConfig(**values), source_dim=SOURCE_DIM, target_dim=TARGET_DIM, target_rms=RMS
    )


def _passthrough(num_tokens=K, source_dim=SOURCE_DIM, target_dim=TARGET_DIM):
    config = TranslatorConfig(kind="passthrough", num_tokens=num_tokens)
    return build_translator(config, source_dim=source_dim, target_dim=target_dim, target_rms=RMS)


def _teacher(batch=2, length=K):
    """Teacher tokens each with RMS exactly RMS (like target embeddings)."""
    x = torch.randn(batch, length, TARGET_DIM)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt() * RMS


# ------------------------------------------------------------------------- DiT
def test_dit_shapes_rms_and_no_param_named_gate():
    torch.manual_seed(0)
    dit = _dit()
    assert isinstance(dit, DiTBridgeTranslator)
    source, mask = torch.randn(3, 7, SOURCE_DIM), torch.ones(3, 7)
    for mode in (dit.train, dit.eval):
        mode()
        out = dit(source, mask)
        assert out.shape == (3, K, TARGET_DIM)
        rms = out.pow(2).mean(-1).sqrt()
        assert torch.allclose(rms, torch.full_like(rms, RMS), rtol=1e-3)
    assert abs(float(dit.target_rms) - RMS) < 1e-6
    # AdaLN gates are activations, not parameters: nothing gets the optimizer's gate lr
    assert not [n for n, _ in dit.named_parameters() if n.endswith("_gate")]


def test_dit_eval_is_deterministic_and_ignores_the_global_rng():
    torch.manual_seed(0)
    dit = _dit().eval()
    source, mask = torch.randn(2, 5, SOURCE_DIM), torch.ones(2, 5)
    first = dit(source, mask)
    torch.randn(1000)  # move the global RNG
    torch.manual_seed(123)
    assert torch.equal(first, dit(source, mask))
    # a question's tokens do not depend on its batch
    assert torch.allclose(first[1:], dit(source[1:], mask[1:]), atol=1e-6)
    # training mode samples fresh noise
    dit.train()
    assert not torch.allclose(dit(source, mask), dit(source, mask))


def test_dit_blocks_are_identity_at_init():
    torch.manual_seed(0)
    dit = _dit()
    x, c = torch.randn(2, K, 32), torch.randn(2, 32)
    for block in dit.blocks:
        assert torch.equal(block(x, c), x)


def test_flow_loss_is_finite_and_reaches_every_parameter():
    torch.manual_seed(0)
    dit = _dit(dit_pool="attention").train()
    source, mask = torch.randn(2, 5, SOURCE_DIM), torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    teacher, teacher_mask = _teacher(), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    loss = dit.flow_loss(source, mask, teacher, teacher_mask)
    assert torch.isfinite(loss)
    loss.backward()
    # AdaLN-Zero at init: the zero modulation lets gradient reach the modulation itself,
    # the token path and the output, but not yet the block internals or the conditioner
    for name in ("blocks.0.modulation.weight", "final_modulation.weight", "in_proj.weight",
                 "out_proj.weight", "positions"):
        assert dit.get_parameter(name).grad.abs().sum() > 0, name
    # after one step every trainable parameter gets a gradient
    torch.optim.SGD(dit.parameters(), lr=0.1).step()
    dit.zero_grad()
    dit.flow_loss(source, mask, teacher, teacher_mask).backward()
    missing = [n for n, p in dit.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_flow_loss_ignores_teacher_padding():
    torch.manual_seed(0)
    dit = _dit().train()
    source, mask = torch.randn(2, 5, SOURCE_DIM), torch.ones(2, 5)
    teacher, teacher_mask = _teacher(), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    garbage = teacher.clone()
    garbage[teacher_mask == 0] = 7.0
    torch.manual_seed(1)
    a = dit.flow_loss(source, mask, teacher, teacher_mask)
    torch.manual_seed(1)
    b = dit.flow_loss(source, mask, garbage, teacher_mask)
    assert torch.allclose(a, b)


def test_flow_objective_learns_a_fixed_teacher():
    """Overfit two (source, teacher) pairs: sampling must land much closer to the teachers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add contention
    try:
        torch.manual_seed(0)
        dit = _dit(dit_steps_eval=4)
        source, mask = torch.randn(2, 5, SOURCE_DIM), torch.ones(2, 5)
        teacher, teacher_mask = _teacher(), torch.ones(2, K)

        def distance(target):
            dit.eval()
            with torch.no_grad():
                return (dit(source, mask) - target).pow(2).mean().item() / RMS**2

        before = distance(teacher)
        optimizer = torch.optim.Adam(dit.parameters(), lr=3e-3)
        dit.train()
        losses = []
        for _ in range(200):
            optimizer.zero_grad()
            loss = dit.flow_loss(source, mask, teacher, teacher_mask)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    after = distance(teacher)
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    assert after < 0.3 * before, (before, after)
    # the conditioning carries the source: each row lands on its own teacher, not the other's
    assert after < 0.3 * distance(teacher.flip(0))


def test_teacher_batch_pads_and_truncates():
    rows = [torch.ones(6, 3), torch.full((2, 3), 2.0)]
    teacher, mask = teacher_batch(rows, 4)
    assert teacher.shape == (2, 4, 3)
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert torch.equal(teacher[1, 2:], torch.zeros(2, 3)) and teacher[1, :2].eq(2.0).all()


# ------------------------------------------------------------------ passthrough
def test_passthrough_has_no_parameters_but_keeps_target_rms():
    translator = _passthrough()
    assert isinstance(translator, PassthroughTranslator)
    assert sum(p.numel() for p in translator.parameters()) == 0
    assert "target_rms" in dict(translator.named_buffers())


def test_passthrough_keeps_first_k_real_tokens_and_respects_the_mask():
    translator = _passthrough(num_tokens=3, source_dim=2, target_dim=2)
    # row 0 left-padded (real tokens 10, 11, 12, 13); row 1 has only two real tokens
    source = torch.tensor([[0.0, 10, 11, 12, 13], [99, 99, 99, 20, 21]]).unsqueeze(-1).expand(-1, -1, 2)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    out = translator(source, mask)
    assert out.shape == (2, 3, 2)
    direction = out / RMS  # each real token is (v, v) rescaled to RMS -> (1, 1) * RMS
    assert torch.allclose(direction[0], torch.ones(3, 2))
    assert torch.allclose(direction[1, :2], torch.ones(2, 2))
    assert torch.equal(out[1, 2], torch.zeros(2))  # padding stays zero
    # which tokens were kept: compare against the unnormalised order with distinct features
    signed = source.clone()
    signed[..., 1] = 1.0
    out = translator(signed, mask)
    first_feature = out[..., 0] / out[..., 1]
    assert torch.allclose(first_feature[0], torch.tensor([10.0, 11, 12]))
    assert torch.allclose(first_feature[1, :2], torch.tensor([20.0, 21]))


def test_passthrough_pads_and_truncates_positions_and_width():
    torch.manual_seed(0)
    source = torch.randn(2, 3, SOURCE_DIM)
    out = _passthrough(num_tokens=5, target_dim=20)(source, torch.ones(2, 3))  # wider target
    assert out.shape == (2, 5, 20)
    assert torch.equal(out[:, 3:], torch.zeros(2, 2, 20))
    assert torch.equal(out[..., SOURCE_DIM:], torch.zeros(2, 5, 20 - SOURCE_DIM))
    rms = out[:, :3].pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, RMS), rtol=1e-4)
    out = _passthrough(num_tokens=2, target_dim=8)(source, torch.ones(2, 3))  # narrower target
    assert out.shape == (2, 2, 8)
    scale = RMS / source[:, :2, :8].pow(2).mean(-1, keepdim=True).sqrt()
    assert torch.allclose(out, source[:, :2, :8] * scale, atol=1e-6)
