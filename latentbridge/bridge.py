"""The bridge: source LLM -> translator -> soft tokens -> target LLM.

Both LLMs are frozen; only the translator trains. With `prepend` injection the target reads
`[BOS] [K soft tokens] [text]`; with `adapter` injection the soft tokens are added (times a
scale) to the first K text embeddings instead. The text is the answer cue (mode
`soft_only`), the question and the cue (`soft_plus_question`) or the full few-shot
prompt (`soft_plus_text`). In training the gold
solution follows and is the only part with labels, so training and evaluation give the
target the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from latentbridge.config import ConfigError, RunConfig
from latentbridge.data import Example
from latentbridge.models import FrozenLM
from latentbridge.prompts import ANSWER_CUE, answer_target, fewshot_prompt, question_block
from latentbridge.translators import build_translator
from latentbridge.translators.dit import teacher_batch

IGNORE_INDEX = -100


def _check_source_layer(layer: int, source: FrozenLM) -> None:
    """`translator.source_layer` must name a hidden state the source model has (checked once it is loaded)."""
    n = source.num_layers
    if not -(n + 1) <= layer <= n:
        raise ConfigError(
            f"translator.source_layer={layer} is out of range for the source model {source.name!r}"
            f" with {n} layers: choose from {-(n + 1)} to {n} (0 = embeddings, {n} or -1 = last layer)"
        )


@dataclass
class TargetInputs:
    """A padded batch for an LLM: embeddings, mask and (for training) labels."""

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


def tokenize(lm: FrozenLM, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with no special tokens."""
    return lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def bos_ids(lm: FrozenLM) -> list[int]:
    """What the tokenizer puts before text on its own (BOS for Llama/Gemma, nothing for some)."""
    return lm.tokenizer("", add_special_tokens=True)["input_ids"]


def text_ids(lm: FrozenLM, prompts: Sequence[str]) -> TargetInputs:
    """A left-padded batch of token ids (no embeddings): what the source reads."""
    rows = [torch.tensor(bos_ids(lm) + ids, device=lm.device) for ids in tokenize(lm, prompts)]
    length = max(r.shape[0] for r in rows)
    ids = _pad(rows, length, lm.tokenizer.pad_token_id, left=True)
    mask = _pad([torch.ones_like(r) for r in rows], length, 0, left=True)
    return TargetInputs(inputs_embeds=torch.empty(0), attention_mask=mask, input_ids=ids)


def build_inputs(
    lm: FrozenLM,
    texts: Sequence[str],
    *,
    answers: Sequence[str] | None = None,
    soft: torch.Tensor | None = None,
    injection: str = "prepend",
    adapter_scale: float = 1.0,
    max_answer_tokens: int | None = None,
) -> TargetInputs:
    """`[BOS] [soft] text [answer]` per row as embeddings.

    Left-padded for generation (no answers), right-padded with labels on the answer for
    training. Every system (text baselines, bridge, KL teacher) is built here.
    """
    bos = bos_ids(lm)
    text = tokenize(lm, texts)
    answer = [[] for _ in texts]
    if answers is not None:
        answer = [ids[:max_answer_tokens] for ids in tokenize(lm, answers)]
    embeds, labels = [], []
    for i, (t_ids, a_ids) in enumerate(zip(text, answer)):
        prefix = lm.embed(torch.tensor(bos, device=lm.device, dtype=torch.long))
        rest = lm.embed(torch.tensor(t_ids + a_ids, device=lm.device, dtype=torch.long))
        parts = [prefix]
        if soft is not None and injection == "prepend":
            parts.append(soft[i].to(rest.dtype))
        elif soft is not None:  # adapter: add to the first K text embeddings
            k = min(soft.shape[1], len(t_ids))
            rest = torch.cat([rest[:k] + adapter_scale * soft[i, :k].to(rest.dtype), rest[k:]])
        parts.append(rest)
        row = torch.cat(parts)
        embeds.append(row)
        ignored = row.shape[0] - len(a_ids)
        labels.append(torch.tensor([IGNORE_INDEX] * ignored + a_ids, device=lm.device, dtype=torch.long))
    length = max(e.shape[0] for e in embeds)
    left = answers is None
    ones = [torch.ones(e.shape[0], device=lm.device, dtype=torch.long) for e in embeds]
    return TargetInputs(
        inputs_embeds=_pad(embeds, length, 0.0, left),
        attention_mask=_pad(ones, length, 0, left),
        labels=None if left else _pad(labels, length, IGNORE_INDEX, left),
    )


def translator_autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast for the translator on GPU, its weights staying float32 (master
    weights); a no-op on CPU and for float32 models."""
    low = dtype in (torch.bfloat16, torch.float16) and device.type == "cuda"
    return torch.autocast(device.type, dtype=dtype if low else torch.float32, enabled=low)


class TranslatorStep(nn.Module):
    """The translator and (for the DiT bridge) its flow loss in one forward, for DDP,
    under the frozen models' precision (`translator_autocast`)."""

    def __init__(self, translator: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.translator = translator
        self.dtype = dtype

    def forward(self, states, mask, teacher=None, teacher_mask=None):
        with translator_autocast(states.device, self.dtype):
            soft = self.translator(states, mask)
            flow = None
            if teacher is not None and hasattr(self.translator, "flow_loss"):
                flow = self.translator.flow_loss(states, mask, teacher, teacher_mask)
        return soft, flow


class Bridge(nn.Module):
    """A frozen source, a frozen target and the trainable translator between them."""

    def __init__(
        self, config: RunConfig, source: FrozenLM, target: FrozenLM, exemplars: list[Example]
    ) -> None:
        super().__init__()
        self.config = config
        self.source, self.target = source, target
        self.exemplars = exemplars
        _check_source_layer(config.translator.source_layer, source)
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
        """The text after the soft tokens: the cue alone, the question and cue, or the full prompt."""
        mode = self.config.eval.prompt_mode
        if mode == "soft_only":
            return ANSWER_CUE
        return question_block(question) if mode == "soft_plus_question" else self.prompt(question)

    def no_question_text(self) -> str:
        """What the target reads in this prompt mode when there is no question at all."""
        if self.config.eval.prompt_mode == "soft_plus_text":
            return fewshot_prompt(self.exemplars, None)
        return ANSWER_CUE

    @property
    def reads_source(self) -> bool:
        return getattr(self.translator, "reads_source", True)

    # --------------------------------------------------------------- pieces
    @torch.no_grad()
    def encode_source(self, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The source's hidden states at `translator.source_layer` and their mask.

        A translator that reads nothing (the soft-prompt controls) gets one zero state a row.
        """
        if not self.reads_source:
            states = torch.zeros(len(questions), 1, self.source.hidden_size, device=self.source.device)
            return states.to(self.source.dtype), torch.ones(len(questions), 1, device=self.source.device, dtype=torch.long)
        batch = text_ids(self.source, [self.source_text(q) for q in questions])
        states = self.source.hidden_states(
            batch.input_ids, batch.attention_mask, layer=self.config.translator.source_layer
        )
        return states, batch.attention_mask

    @torch.no_grad()
    def target_token_embeddings(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The target's input embeddings of each text, zero-padded/truncated to K, and a mask."""
        rows = [self.target.embed(torch.tensor(ids, device=self.target.device)) for ids in tokenize(self.target, texts)]
        return teacher_batch([r.float() for r in rows], self.config.translator.num_tokens)

    def bridge_teacher(self, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """What the DiT bridge learns to emit: the target's embeddings of the answer or question."""
        if self.config.translator.dit_teacher == "answer":
            return self.target_token_embeddings([answer_target(ex) for ex in examples])
        return self.target_token_embeddings([question_block(ex.question) for ex in examples])

    def target_inputs(self, questions: Sequence[str], soft: torch.Tensor, answers: Sequence[str] | None = None) -> TargetInputs:
        cfg = self.config
        return build_inputs(
            self.target,
            [self.target_text(q) for q in questions],
            answers=answers,
            soft=soft,
            injection=cfg.translator.injection,
            adapter_scale=cfg.translator.adapter_scale,
            max_answer_tokens=cfg.train.max_answer_tokens,
        )

    @torch.no_grad()
    def soft_tokens(self, questions: Sequence[str]) -> torch.Tensor:
        """The translator's K soft tokens for each question, float32 (B, K, target_dim)."""
        states, mask = self.encode_source(questions)
        with translator_autocast(states.device, self.source.dtype):
            soft = self.translator(states, mask)
        return soft.float()

    @torch.no_grad()
    def bridged_inputs(self, questions: Sequence[str], soft_from: Sequence[str] | None = None) -> TargetInputs:
        """The target's inputs for `questions`; the soft tokens come from `soft_from` (default:
        the same questions; another question's for the mismatched control)."""
        return self.target_inputs(questions, self.soft_tokens(soft_from or questions))
