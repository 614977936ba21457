"""The prompt length of runs that predate the trainer's `prompt_tokens_mean` metric.

The compression ratio (`latentbridge.metric_names.compression_ratio`) needs the mean number of
tokens the target reads as text when it answers alone (BOS + the few-shot prompt). The trainer
logs it at step 0; for a run without it, it is counted here with the target's tokenizer, once
per (target model, data config, questions).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from functools import lru_cache

log = logging.getLogger(__name__)

_COUNTS: dict[str, float] = {}


@lru_cache(maxsize=4)
def _target(name: str):
    from latentbridge.models import load_frozen_lm

    return load_frozen_lm(name)


def mean_prompt_tokens(config, questions: Sequence[str]) -> float:
    """Mean length in target tokens of the few-shot text prompt of each question."""
    from latentbridge.bridge import bos_ids, tokenize
    from latentbridge.data import load_splits
    from latentbridge.prompts import fewshot_prompt, select_exemplars

    key = hashlib.sha256(
        json.dumps([config.target_model, config.data.__dict__, list(questions)], sort_keys=True, default=str).encode()
    ).hexdigest()
    if key not in _COUNTS:
        target = _target(config.target_model)
        exemplars = select_exemplars(load_splits(config.data).train, config.data.num_shots, config.data.fewshot_seed)
        prompts = [fewshot_prompt(exemplars, q) for q in questions]
        bos = len(bos_ids(target))
        lengths = [bos + len(ids) for ids in tokenize(target, prompts)]
        _COUNTS[key] = sum(lengths) / len(lengths)
    return _COUNTS[key]


def try_mean_prompt_tokens(config, questions: Sequence[str]) -> float | None:
    """`mean_prompt_tokens`, or None (with a warning) when the model or data cannot be loaded."""
    if config is None or not questions:
        return None
    try:
        return mean_prompt_tokens(config, questions)
    except Exception as error:  # noqa: BLE001 - compression is reported as unknown, not fatal
        log.warning("cannot count prompt tokens for %s: %s", config.target_model, error)
        return None
