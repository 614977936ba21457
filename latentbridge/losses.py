"""The training objective: a weighted sum of loss terms, each able to pass a gradient.

  lm               next-token loss on the gold solution given the soft tokens;
  kl               KL(target reading the full text prompt || target reading the soft tokens)
                   on the first `kl_tokens` answer positions, float32, from the end of warmup
                   (the teacher sees the question: it reads the whole few-shot prompt);
  info_nce         pooled soft tokens vs the target's embedding of the SAME question, with
                   in-batch negatives, float32, from half of warmup;
  prompt_alignment MSE of the soft tokens to the target's embeddings of the question;
  token_alignment  MSE of the soft tokens to the bridge teacher (answer or question);
  flow             the DiT bridge's rectified-flow loss;
  reconstruction   next-token loss on the question's own text, the target reading only
                   `[BOS] [soft tokens] Q:` (nothing of the question but what crossed).
For the first `content_first_steps` steps only the content terms (info_nce, reconstruction)
train: the soft tokens learn to say the question before they learn the answer's format.
Logits are computed only where they are used (answer positions): for a 262k vocabulary
the LM head is most of a step's cost.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latentbridge import prefix_cache
from latentbridge.bridge import IGNORE_INDEX, Bridge, TargetInputs, build_inputs
from latentbridge.data import Example
from latentbridge.models import FrozenLM
from latentbridge.prompts import RECONSTRUCTION_CUE, answer_target, question_block, reconstruction_target


def _answer_positions(lm: FrozenLM, inputs: TargetInputs):
    """The target's last hidden states before each labelled token, those labels, each one's
    1-based position within its row's answer and its row, for the labelled positions only."""
    hidden = lm.model.base_model(
        inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, use_cache=False
    ).last_hidden_state
    labels = inputs.labels[:, 1:]
    keep = labels != IGNORE_INDEX
    order = keep.long().cumsum(dim=1)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
    return hidden[:, :-1], labels, keep, order, rows


def _lm_head(lm: FrozenLM, hidden: torch.Tensor) -> torch.Tensor:
    """float32 logits of hidden states, with the model's final soft-capping where it has one."""
    logits = lm.model.get_output_embeddings()(hidden).float()
    cap = getattr(lm.model.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def answer_logits(
    lm: FrozenLM, inputs: TargetInputs, first_n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 logits (N, V) predicting each labelled token, those labels (N,) and each
    one's 1-based position within its row's answer (N,), in row-major order.

    With `first_n`, only the first n labelled positions of each row are computed.
    """
    hidden, labels, keep, order, _ = _answer_positions(lm, inputs)
    if first_n is not None:
        keep = keep & (order <= first_n)
    return _lm_head(lm, hidden[keep]), labels[keep], order[keep]


@torch.no_grad()
def answer_nll(lm: FrozenLM, inputs: TargetInputs, chunk_tokens: int = 4096) -> torch.Tensor:
    """Each row's negative log-likelihood of its labelled tokens, summed, in nats (B,) float32.

    The LM head runs over `chunk_tokens` positions at a time, so a 262k vocabulary does not
    hold every answer token's logits at once.
    """
    hidden, labels, keep, _, rows = _answer_positions(lm, inputs)
    hidden, labels, rows = hidden[keep], labels[keep], rows[keep]
    total = torch.zeros(inputs.labels.shape[0], device=labels.device, dtype=torch.float32)
    for start in range(0, labels.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        nll = F.cross_entropy(_lm_head(lm, hidden[part]), labels[part], reduction="none")
        total.index_add_(0, rows[part], nll)
    return total


def info_nce(soft: torch.Tensor, positives: torch.Tensor, positive_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row i's mean soft token should match row i's mean question embedding, not row j's."""
    pooled = F.normalize(soft.float().mean(dim=1), dim=-1)
    weights = positive_mask.unsqueeze(-1).float()
    target = (positives.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    logits = pooled @ F.normalize(target, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def masked_mse(soft: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    k = min(soft.shape[1], reference.shape[1])
    err = (soft[:, :k].float() - reference[:, :k].float()).pow(2).mean(-1) * mask[:, :k].float()
    return err.sum() / mask[:, :k].float().sum().clamp(min=1.0)


def compute_losses(
    bridge: Bridge, examples: Sequence[Example], step: int, translator_step: nn.Module
) -> dict[str, torch.Tensor]:
    """Every active loss term and `total`, for one batch at one step."""
    cfg, weights = bridge.config, bridge.config.loss
    warmup = bridge.config.optim.warmup_steps
    questions = [ex.question for ex in examples]
    answers = [answer_target(ex) for ex in examples]
    states, mask = bridge.encode_source(questions)
    # the content-first curriculum's first steps train on the content terms alone (reconstruction
    # and InfoNCE): no answer, no alignment and no flow term
    content_only = step < weights.content_first_steps
    teacher = teacher_mask = None
    if (weights.flow_weight or weights.token_alignment_weight) and not content_only:
        teacher, teacher_mask = bridge.bridge_teacher(examples)
    soft, flow = translator_step(states, mask, teacher if weights.flow_weight else None, teacher_mask)
    terms: dict[str, torch.Tensor] = {}
    if weights.reconstruction_weight:
        retell = build_inputs(
            bridge.target,
            [RECONSTRUCTION_CUE] * len(questions),
            answers=[reconstruction_target(q) for q in questions],
            soft=soft,
            max_answer_tokens=cfg.train.max_answer_tokens,
        )
        retell_logits, retell_labels, _ = answer_logits(bridge.target, retell)
        terms["reconstruction"] = F.cross_entropy(retell_logits, retell_labels)
    logits = labels = order = None
    if (weights.lm_weight or weights.kl_weight) and not content_only:
        student = bridge.target_inputs(questions, soft, answers)
        logits, labels, order = answer_logits(bridge.target, student)
    if weights.lm_weight and not content_only:
        terms["lm"] = F.cross_entropy(logits, labels)
    if weights.kl_weight and step >= warmup and not content_only:
        # the teacher reads the exemplars from their keys, computed once a run, and only the
        # answer tokens its first `kl_tokens` logits see (a causal model's logits at a position do
        # not depend on the tokens after it)
        with torch.no_grad():
            kl_teacher, full_text = prefix_cache.scoring_inputs(
                bridge.target,
                prefix_cache.fewshot_prefix(bridge.exemplars),
                [bridge.prompt(q) for q in questions],
                answers,
                min(cfg.train.max_answer_tokens, weights.kl_tokens),
            )
            teacher_logits, _, _ = answer_logits(kl_teacher, full_text, first_n=weights.kl_tokens)
        student_logits = logits[order <= weights.kl_tokens]
        terms["kl"] = F.kl_div(
            F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1), log_target=True, reduction="batchmean"
        )
    use_info_nce = bool(weights.info_nce_weight) and (step >= warmup // 2 or content_only)
    use_prompt_alignment = bool(weights.prompt_alignment_weight) and not content_only
    if use_info_nce or use_prompt_alignment:
        question_emb, question_mask = bridge.target_token_embeddings([question_block(q) for q in questions])
        if use_info_nce:
            terms["info_nce"] = info_nce(soft, question_emb, question_mask, weights.info_nce_temperature)
        if use_prompt_alignment:
            terms["prompt_alignment"] = masked_mse(soft, question_emb, question_mask)
    if teacher is not None and weights.token_alignment_weight:
        terms["token_alignment"] = masked_mse(soft, teacher, teacher_mask)
    if flow is not None:
        terms["flow"] = flow
    scale = {
        "lm": weights.lm_weight,
        "kl": weights.kl_weight,
        "info_nce": weights.info_nce_weight,
        "prompt_alignment": weights.prompt_alignment_weight,
        "token_alignment": weights.token_alignment_weight,
        "flow": weights.flow_weight,
        "reconstruction": weights.reconstruction_weight,
    }
    terms["total"] = sum(scale[name] * value for name, value in terms.items())
    return terms
