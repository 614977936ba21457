"""Greedy generation from input embeddings, stopping each sequence at its answer line.

Every system (source-alone, target-alone, bridged) goes through `generate`, so the
baselines and the bridge are decoded the same way: pure greedy, no repetition penalty.
"""

from __future__ import annotations

import re

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from latentbridge.bridge import TargetInputs
from latentbridge.models import FrozenLM
from latentbridge.scoring import cut_generation

_DONE = re.compile(r"####\s*[-+]?[\d,]*\.?\d+\s*\n|\nQ:")


class AnswerLineStop(StoppingCriteria):
    """Stop a row once it has written `#### <number>` and a newline, or starts a new question."""

    def __init__(self, tokenizer, window: int = 24) -> None:
        self.tokenizer = tokenizer
        self.window = window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        tails = self.tokenizer.batch_decode(input_ids[:, -self.window :], skip_special_tokens=True)
        return torch.tensor([bool(_DONE.search(t)) for t in tails], device=input_ids.device)


@torch.no_grad()
def generate(lm: FrozenLM, inputs: TargetInputs, max_new_tokens: int) -> list[str]:
    """Greedy continuations of a left-padded batch of input embeddings, cut at the next question."""
    tok = lm.tokenizer
    out = lm.model.generate(
        inputs_embeds=inputs.inputs_embeds,
        attention_mask=inputs.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
        pad_token_id=tok.pad_token_id,
        stopping_criteria=StoppingCriteriaList([AnswerLineStop(tok)]),
    )
    texts = tok.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [cut_generation(t) for t in texts]
