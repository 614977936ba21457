"""The few-shot prefix's keys and values, computed once per model and shared by every row.

Every full few-shot prompt starts with the same header and exemplars (about a thousand tokens
at 8 shots); only the question after them changes. So the text baselines' generation, the KL
teacher and the content metrics' text NLL run the model over that prefix once (batch 1, no
gradient) and give each batch only what follows it:

- generation (`generation_inputs` -> `generation.generate`): the static decoder copies the
  prefix's keys and values into slots `[0, P)` of every row, then prefills the left-padded
  suffixes after them: a row holds `[prefix][padding][suffix]`, positions continue from P past
  the padding, and masks hide the padding (see `generation._Engine`); its decode steps then read
  the prefix's own keys and values once for the whole batch, not each row's copy
  (`generation._prefix_once_attention`; `LATENTBRIDGE_SHARED_PREFIX_DECODE=0`: each row's copy);
- teacher forcing (`scoring_inputs` -> `losses.answer_logits` / `answer_nll`): the right-padded
  suffixes and answers run on a fresh `DynamicCache` holding the prefix for every row, with a
  2-D mask over prefix and suffix, so transformers' own masks (sliding windows included) and
  positions apply as if the whole prompt had been read.

Exact by construction: a batch shares the prefix only when every text's own token ids start
with the prefix's ids (each text is tokenized whole, so a boundary that would tokenize
differently is caught); otherwise that batch is built as before, unshared. The model reads the
same ids at the same positions either way; only the floating-point order of the prefix's
computation differs (batch 1 instead of inside the batch), so logits agree to the dtype's
rounding.

Not shared: the bridge's `soft_plus_text` mode reads `[BOS] [soft tokens] [full prompt]`; the
exemplars' keys depend on the soft tokens before them, so nothing after BOS is common to two
questions. Sharing there would need `[BOS] [exemplars] [soft] [question]`, which changes what
the target reads; it is left as it is.

`LATENTBRIDGE_SHARED_PREFIX=0` turns sharing off (for timing the difference, or bisecting).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers.cache_utils import DynamicCache

from latentbridge.bridge import IGNORE_INDEX, TargetInputs, _pad, bos_ids, build_inputs, tokenize
from latentbridge.config import env_flag
from latentbridge.models import FrozenLM
from latentbridge.prompts import ANSWER_CUE, fewshot_prompt

log = logging.getLogger(__name__)

ENV = "LATENTBRIDGE_SHARED_PREFIX"
_PREFIXES: "weakref.WeakKeyDictionary[torch.nn.Module, SharedPrefix]" = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def enabled() -> bool:
    return env_flag(ENV, default=True)


def fewshot_prefix(exemplars: Sequence) -> str:
    """What every few-shot prompt of a run starts with: the header and the exemplars, up to and
    including the blank line before the question (a boundary the tokenizers keep)."""
    prompt = fewshot_prompt(exemplars, None)
    if not prompt.endswith(ANSWER_CUE):
        raise ValueError("fewshot_prompt(exemplars, None) no longer ends with the answer cue")
    return prompt[: -len(ANSWER_CUE)]


def cache_argument(model: torch.nn.Module) -> str:
    """transformers >= 5.2x calls the cache `cache`; earlier 5.x `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# --------------------------------------------------------------------------- the prefix


@dataclass(frozen=True, eq=False)
class SharedPrefix:
    """One model's keys and values of one prefix, batch 1, every layer at full length (the
    sliding-window layers too: their masks, not the cache, apply the window)."""

    text_ids: tuple[int, ...]  # the prefix text's ids: the first ids of every text that shares it
    ids: tuple[int, ...]  # what the model read: BOS (where the tokenizer adds one) + text_ids
    keys: tuple[torch.Tensor, ...]  # per layer (1, kv_heads, length, head_dim)
    values: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        return len(self.ids)

    def cache(self, batch: int) -> DynamicCache:
        """A fresh dynamic cache holding the prefix for each of `batch` rows (the stored tensors
        are never written: a forward appends to copies)."""
        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in zip(self.keys, self.values)]
        )


@torch.no_grad()
def compute_prefix(lm: FrozenLM, ids: Sequence[int], text_ids: Sequence[int] | None = None) -> SharedPrefix:
    """The keys and values of `ids` (BOS included where the model reads one), batch 1, computed
    now. `text_ids` are the ids a text starts with when it shares them (default `ids`)."""
    cache = DynamicCache()
    embeds = lm.embed(torch.tensor([list(ids)], device=lm.device))
    with FrozenLM.blocks_eager():
        lm.model.base_model(inputs_embeds=embeds, use_cache=True, **{cache_argument(lm.model): cache})
    return SharedPrefix(
        text_ids=tuple(ids if text_ids is None else text_ids),
        ids=tuple(ids),
        keys=tuple(layer.keys for layer in cache.layers),
        values=tuple(layer.values for layer in cache.layers),
    )


def common_ids(lm: FrozenLM, text: str, continued: str) -> tuple[int, ...]:
    """The ids `text` and `continued` (a text that starts with it) both start with: `text`'s ids
    less the last ones that merge with what follows. Byte-level BPE (SmolLM2's) ends a text on one
    "\n\n" token but splits it "\n" "\n" before the next word, so the exemplars' ids alone are not
    the first ids of a prompt that goes on with a question."""
    alone, whole = tokenize(lm, [text, continued])
    n = 0
    while n < min(len(alone), len(whole)) and alone[n] == whole[n]:
        n += 1
    return tuple(alone[:n])


def shared_prefix(lm: FrozenLM, text: str, continued: str | None = None) -> SharedPrefix:
    """`[BOS] text`'s keys and values for `lm`, computed on first use and kept for the model (one
    prefix a model: a run has one set of exemplars). The weights are frozen, so they stay valid.
    With `continued` (a text that goes on after `text`), only the ids the two share (`common_ids`)."""
    text_ids = tuple(tokenize(lm, [text])[0]) if continued is None else common_ids(lm, text, continued)
    ids = tuple(bos_ids(lm)) + text_ids
    kept = _PREFIXES.get(lm.model)
    if kept is not None and kept.ids == ids and kept.keys[0].dtype == lm.dtype and kept.keys[0].device == lm.device:
        return kept
    prefix = compute_prefix(lm, ids, text_ids)
    log.info("shared prefix for %s: %d tokens, computed once", lm.name, prefix.length)
    _PREFIXES[lm.model] = prefix
    return prefix


def release(lm: FrozenLM | None = None) -> None:
    """Forget the prefix kept for `lm` (every model's when None)."""
    if lm is None:
        _PREFIXES.clear()
    else:
        _PREFIXES.pop(lm.model, None)


def suffix_ids(lm: FrozenLM, prefix: SharedPrefix, texts: Sequence[str]) -> list[list[int]] | None:
    """Each text's token ids after the prefix, or None unless every text, tokenized whole,
    starts with exactly the prefix's ids and has at least one id after them."""
    rows = tokenize(lm, texts)
    n = len(prefix.text_ids)
    if all(len(row) > n and tuple(row[:n]) == prefix.text_ids for row in rows):
        return [row[n:] for row in rows]
    if lm.name not in _WARNED:
        _WARNED.add(lm.name)
        log.warning("%s: a prompt does not tokenize as the shared prefix's ids plus more; not sharing it", lm.name)
    return None


def _shared_rows(lm: FrozenLM, prefix_text: str, texts: Sequence[str]) -> tuple[SharedPrefix, list[list[int]]] | None:
    """The prefix and each text's ids after it, where sharing is on and exact; else None."""
    if not enabled() or not texts or not all(t.startswith(prefix_text) for t in texts):
        return None
    prefix = shared_prefix(lm, prefix_text, continued=texts[0])
    rows = suffix_ids(lm, prefix, texts)
    return None if rows is None else (prefix, rows)


def id_rows_batch(lm: FrozenLM, rows: Sequence[Sequence[int]], answers: Sequence[Sequence[int]] | None = None) -> TargetInputs:
    """Embeddings of token-id rows: left-padded for generation, or (with `answers`, each row's
    answer ids after it, the only labelled part) right-padded for teacher forcing."""
    tails = answers if answers is not None else [[] for _ in rows]
    ids = [torch.tensor([*row, *tail], device=lm.device, dtype=torch.long) for row, tail in zip(rows, tails)]
    labels = [
        torch.tensor([IGNORE_INDEX] * len(row) + list(tail), device=lm.device, dtype=torch.long) for row, tail in zip(rows, tails)
    ]
    length = max(len(r) for r in ids)
    left = answers is None
    return TargetInputs(
        inputs_embeds=_pad([lm.embed(r) for r in ids], length, 0.0, left),
        attention_mask=_pad([torch.ones_like(r) for r in ids], length, 0, left),
        labels=None if left else _pad(labels, length, IGNORE_INDEX, left),
    )


# --------------------------------------------------------------------------- generation


@dataclass
class PrefixedInputs:
    """A generation batch after a shared prefix: `suffix` holds the left-padded rows that follow it."""

    prefix: SharedPrefix
    suffix: TargetInputs


def generation_inputs(lm: FrozenLM, prefix_text: str, texts: Sequence[str]) -> TargetInputs | PrefixedInputs:
    """What `generation.generate` reads for `[BOS] text` per row: after the shared prefix
    where that is exact, else `bridge.build_inputs`' left-padded batch."""
    shared = _shared_rows(lm, prefix_text, texts)
    if shared is None:
        return build_inputs(lm, texts)
    prefix, rows = shared
    return PrefixedInputs(prefix=prefix, suffix=id_rows_batch(lm, rows))


# --------------------------------------------------------------------------- teacher forcing


class _ContinuingModel:
    """A causal LM whose base model reads each batch as the continuation of a shared prefix:
    the batch's mask is widened over the prefix and a fresh cache holding the prefix is
    passed, so positions start after it. Everything else is the wrapped model's."""

    def __init__(self, model: torch.nn.Module, prefix: SharedPrefix) -> None:
        self._model, self._prefix = model, prefix

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def base_model(self, *, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        batch = inputs_embeds.shape[0]
        mask = torch.cat([attention_mask.new_ones(batch, self._prefix.length), attention_mask], 1)
        kwargs.update(use_cache=True, **{cache_argument(self._model): self._prefix.cache(batch)})
        with FrozenLM.blocks_eager():
            return self._model.base_model(inputs_embeds=inputs_embeds, attention_mask=mask, **kwargs)


def scoring_inputs(
    lm: FrozenLM,
    prefix_text: str,
    texts: Sequence[str],
    answers: Sequence[str],
    max_answer_tokens: int | None = None,
) -> tuple[FrozenLM, TargetInputs]:
    """The model and right-padded labelled batch that `losses.answer_logits` / `answer_nll`
    score `[BOS] text answer` with: the rows after the shared prefix and a model continuing
    from it where that is exact, else `lm` and `bridge.build_inputs`' full rows."""
    shared = _shared_rows(lm, prefix_text, texts)
    if shared is None:
        return lm, build_inputs(lm, texts, answers=answers, max_answer_tokens=max_answer_tokens)
    prefix, rows = shared
    answer_ids = [ids[:max_answer_tokens] for ids in tokenize(lm, answers)]
    return continuing(lm, prefix), id_rows_batch(lm, rows, answer_ids)


def continuing(lm: FrozenLM, prefix: SharedPrefix) -> FrozenLM:
    """`lm` reading each batch it is given as the continuation of `prefix` (teacher forcing)."""
    return dataclasses.replace(lm, model=_ContinuingModel(lm.model, prefix))
