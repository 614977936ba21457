"""The reconstruction term (the target retells the question from the soft tokens alone) and
the content-first curriculum."""

from __future__ import annotations

import pytest
import torch

from latentbridge.bridge import IGNORE_INDEX, Bridge, TranslatorStep, build_inputs, tokenize
from latentbridge.config import ConfigError
from latentbridge.data import load_splits
from latentbridge.losses import compute_losses
from latentbridge.prompts import RECONSTRUCTION_CUE, reconstruction_target, select_exemplars
from latentbridge.train import load_models


@pytest.fixture
def bridge_for(tiny_config):
    def build(*overrides) -> tuple[Bridge, list]:
        config = tiny_config.override("translator.dropout=0.0", *overrides)
        splits = load_splits(config.data)
        return Bridge(config, *load_models(config), select_exemplars(splits.train, 2, 42)), splits.train[:4]

    return build


def _grad_norm(bridge: Bridge, loss: torch.Tensor) -> float:
    bridge.translator.zero_grad(set_to_none=True)
    loss.backward()
    return sum(float(p.grad.abs().sum()) for p in bridge.translator.parameters() if p.grad is not None)


def test_the_target_retells_the_question_and_only_the_question_is_labelled(bridge_for):
    bridge, examples = bridge_for()
    question = examples[0].question
    soft = torch.zeros(1, bridge.config.translator.num_tokens, bridge.target.hidden_size)
    inputs = build_inputs(bridge.target, [RECONSTRUCTION_CUE], answers=[reconstruction_target(question)], soft=soft)
    labels = inputs.labels[0][inputs.labels[0] != IGNORE_INDEX].tolist()
    assert labels == tokenize(bridge.target, [reconstruction_target(question)])[0]
    assert bridge.target.tokenizer.decode(labels).strip() == question.strip()


def test_the_reconstruction_term_trains_the_translator_and_depends_on_the_question(bridge_for):
    bridge, examples = bridge_for("loss.reconstruction_weight=1.0", "loss.lm_weight=0.0", "loss.info_nce_weight=0.0",
                                  "loss.kl_weight=0.0")
    terms = compute_losses(bridge, examples, step=0, translator_step=TranslatorStep(bridge.translator))
    assert set(terms) == {"reconstruction", "total"}
    assert torch.equal(terms["total"], terms["reconstruction"])
    assert _grad_norm(bridge, terms["total"]) > 0
    other = [type(ex)(question=examples[0].question.replace("has", "owns") + " Why?", answer=ex.answer) for ex in examples[:1]]
    torch.manual_seed(0)
    first = compute_losses(bridge, examples[:1], step=0, translator_step=TranslatorStep(bridge.translator))["reconstruction"]
    second = compute_losses(bridge, other, step=0, translator_step=TranslatorStep(bridge.translator))["reconstruction"]
    assert first.item() != pytest.approx(second.item())  # it is the loss of this question's own text


def test_content_first_steps_leave_out_the_answer_terms_then_add_them(bridge_for):
    bridge, examples = bridge_for("loss.reconstruction_weight=0.5", "loss.content_first_steps=3", "loss.kl_weight=0.0",
                                  "loss.info_nce_weight=0.0")
    early = compute_losses(bridge, examples, step=2, translator_step=TranslatorStep(bridge.translator))
    late = compute_losses(bridge, examples, step=3, translator_step=TranslatorStep(bridge.translator))
    assert "lm" not in early and "reconstruction" in early
    assert {"lm", "reconstruction"} <= set(late)
    assert late["total"].item() == pytest.approx(late["lm"].item() + 0.5 * late["reconstruction"].item(), rel=1e-5)



def test_content_first_steps_leave_out_the_alignment_terms_then_add_them(bridge_for):
    bridge, examples = bridge_for("loss.reconstruction_weight=0.5", "loss.content_first_steps=3", "loss.kl_weight=0.0",
                                  "loss.info_nce_weight=0.0", "loss.prompt_alignment_weight=0.2",
                                  "loss.token_alignment_weight=0.3")
    early = compute_losses(bridge, examples, step=2, translator_step=TranslatorStep(bridge.translator))
    late = compute_losses(bridge, examples, step=3, translator_step=TranslatorStep(bridge.translator))
    assert set(early) == {"reconstruction", "total"}
    assert set(late) == {"lm", "reconstruction", "prompt_alignment", "token_alignment", "total"}
    expected = late["lm"] + 0.5 * late["reconstruction"] + 0.2 * late["prompt_alignment"] + 0.3 * late["token_alignment"]
    assert late["total"].item() == pytest.approx(expected.item(), rel=1e-5)

def test_info_nce_trains_from_the_first_step_of_a_content_first_curriculum(bridge_for):
    bridge, examples = bridge_for("loss.content_first_steps=5", "loss.kl_weight=0.0", "optim.warmup_steps=100")
    terms = compute_losses(bridge, examples, step=0, translator_step=TranslatorStep(bridge.translator))
    assert set(terms) == {"info_nce", "total"}  # not left waiting for half the warmup with nothing to train


def test_bad_reconstruction_settings_are_refused_with_the_way_out(tiny_config):
    with pytest.raises(ConfigError, match="translator.injection=prepend"):
        tiny_config.override("loss.reconstruction_weight=1", "translator.injection=adapter")
    with pytest.raises(ConfigError, match=r"loss.content_first_steps=10 .*set one of them"):
        tiny_config.override("loss.content_first_steps=10", "loss.info_nce_weight=0")


def test_the_kl_teacher_and_the_token_alignment_teacher_are_kept_apart(bridge_for):
    """phase2-swap trains KL and token alignment together: the KL block's teacher model must not
    replace the DiT bridge's teacher embeddings that token alignment reads."""
    bridge, examples = bridge_for("loss.kl_weight=0.5", "loss.token_alignment_weight=0.1", "loss.info_nce_weight=0.0",
                                  "optim.warmup_steps=0")
    terms = compute_losses(bridge, examples, step=1, translator_step=TranslatorStep(bridge.translator))
    assert {"lm", "kl", "token_alignment"} <= set(terms) and torch.isfinite(terms["token_alignment"])
    expected = terms["lm"] + 0.5 * terms["kl"] + 0.1 * terms["token_alignment"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_content_first_steps_leave_out_the_dit_flow_term_then_add_it(bridge_for):
    bridge, examples = bridge_for("translator.kind=dit", "loss.flow_weight=1.0", "loss.info_nce_weight=0.1",
                                  "loss.content_first_steps=3", "loss.kl_weight=0.0", "loss.lm_weight=0.0")
    step = TranslatorStep(bridge.translator)
    assert set(compute_losses(bridge, examples, step=0, translator_step=step)) == {"info_nce", "total"}
    assert set(compute_losses(bridge, examples, step=3, translator_step=step)) == {"info_nce", "flow", "total"}
