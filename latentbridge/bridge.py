"""The bridge: source LLM -> translator -> soft tokens -> target LLM.

Both LLMs are frozen; only the translator trains. The target reads
`[BOS] [K soft tokens] [text]`, where the text is the answer cue (mode `soft_only`) or the
full few-shot prompt (mode `soft_plus_text`); in training the gold solution follows and is
the only part with labels, so training and evaluation give the target the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from latentbridge.config import RunConfig
from latentbridge.data import Example
from latentbridge.models import FrozenLM
from latentbridge.prompts import ANSWER_CUE, answer_target, fewshot_prompt
from latentbridge.translators import build_translator

IGNORE_INDEX = -100


@dataclass
class TargetInputs:
    """A padded batch for the target: embeddings, mask and (for training) labels."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None  # set for plain text batches


def _pad(rows: list[torch.Tensor], length: int, value: float, left: bool) -> torch.Tensor:
    padded = []
    for row in rows:
        fill = row.new_full((length - row.shape[0], *row.shape[1:]), value)
        padded.append(torch.cat([fill, row] if left else [row, fill]))
    return torch.stack(padded)


def tokenize(lm: FrozenLM, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each text with no special tokens (optionally cut to the last max_tokens)."""
    ids = lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [row[-max_tokens:] if max_tokens else row for row in ids]


def bos_ids(lm: FrozenLM) -> list[int]:
    """What the tokenizer puts before text on its own (BOS for Llama/Gemma, nothing for some)."""
    return lm.tokenizer("", add_special_tokens=True)["input_ids"]


def text_inputs(lm: FrozenLM, prompts: Sequence[str]) -> TargetInputs:
    """A left-padded batch of plain text prompts, as embeddings (one path for every system)."""
    rows = [torch.tensor(bos_ids(lm) + ids, device=lm.device) for ids in tokenize(lm, prompts)]
    length = max(r.shape[0] for r in rows)
    ids = _pad(rows, length, lm.tokenizer.pad_token_id, left=True)
    mask = _pad([torch.ones_like(r) for r in rows], length, 0, left=True)
    return TargetInputs(inputs_embeds=lm.embed(ids), attention_mask=mask, input_ids=ids)


def soft_inputs(
    lm: FrozenLM,
    soft: torch.Tensor,
    texts: Sequence[str],
    answers: Sequence[str] | None = None,
    max_answer_tokens: int | None = None,
) -> TargetInputs:
    """`[BOS] soft text [answer]` for each row; left-padded for generation, right for training."""
    bos = bos_ids(lm)
    text_ids = tokenize(lm, texts)
    answer_ids = [[] for _ in texts]
    if answers is not None:
        answer_ids = [ids[:max_answer_tokens] for ids in tokenize(lm, answers)]
    embeds, labels = [], []
    for i, (t_ids, a_ids) in enumerate(zip(text_ids, answer_ids)):
        prefix = lm.embed(torch.tensor(bos, device=lm.device, dtype=torch.long))
        rest = lm.embed(torch.tensor(t_ids + a_ids, device=lm.device, dtype=torch.long))
        embeds.append(torch.cat([prefix, soft[i].to(rest.dtype), rest]))
        ignored = len(bos) + soft.shape[1] + len(t_ids)
        labels.append(torch.tensor([IGNORE_INDEX] * ignored + a_ids, device=lm.device))
    length = max(e.shape[0] for e in embeds)
    left = answers is None
    mask = _pad([torch.ones(e.shape[0], device=lm.device, dtype=torch.long) for e in embeds], length, 0, left)
    return TargetInputs(
        inputs_embeds=_pad(embeds, length, 0.0, left),
        attention_mask=mask,
        labels=None if left else _pad(labels, length, IGNORE_INDEX, left),
    )


class Bridge(nn.Module):
    """A frozen source, a frozen target and the trainable translator between them."""

    def __init__(
        self, config: RunConfig, source: FrozenLM, target: FrozenLM, exemplars: list[Example]
    ) -> None:
        super().__init__()
        self.config = config
        self.source, self.target = source, target
        self.exemplars = exemplars
        self.translator = build_translator(
            config.translator,
            source_dim=source.hidden_size,
            target_dim=target.hidden_size,
            target_rms=target.embedding_rms,
        ).to(source.device)

    # --------------------------------------------------------------- prompts
    def prompt(self, question: str) -> str:
        """The full few-shot text prompt (what the text baselines read)."""
        return fewshot_prompt(self.exemplars, question)

    def source_text(self, question: str) -> str:
        reads = self.config.data.source_reads
        return self.prompt(question) if reads == "fewshot_prompt" else question

    def target_text(self, question: str) -> str:
        """The text after the soft tokens: the cue alone, or the full prompt."""
        return ANSWER_CUE if self.config.eval.prompt_mode == "soft_only" else self.prompt(question)

    # --------------------------------------------------------------- forward
    def soft_tokens(self, questions: Sequence[str], translator: nn.Module | None = None) -> torch.Tensor:
        """K soft tokens per question from the source's hidden states (B, K, target width)."""
        inputs = text_inputs(self.source, [self.source_text(q) for q in questions])
        with torch.no_grad():
            states = self.source.hidden_states(
                inputs.input_ids,
                inputs.attention_mask,
                layer=self.config.translator.source_layer,
            )
        return (translator or self.translator)(states, inputs.attention_mask)

    def lm_loss(self, examples: Sequence[Example], translator: nn.Module | None = None) -> torch.Tensor:
        """Teacher-forced next-token loss on the gold solutions given the soft tokens."""
        questions = [ex.question for ex in examples]
        soft = self.soft_tokens(questions, translator)
        inputs = soft_inputs(
            self.target,
            soft,
            [self.target_text(q) for q in questions],
            [answer_target(ex) for ex in examples],
            max_answer_tokens=self.config.train.max_answer_tokens,
        )
        out = self.target.model(
            inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask
        )
        logits = out.logits[:, :-1].float()
        labels = inputs.labels[:, 1:]
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )

    def bridged_inputs(self, questions: Sequence[str]) -> TargetInputs:
        with torch.no_grad():
            soft = self.soft_tokens(questions)
        return soft_inputs(self.target, soft, [self.target_text(q) for q in questions])
