"""Evaluation: source-alone, target-alone and bridged answers on the same questions.

The text baselines are computed once per run; the bridge at every evaluation. Questions
are sharded across ranks and gathered on rank 0, which writes one JSONL record a question
and returns the accuracy and the invalid fraction (the share of answers with no final
number) of each system.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from latentbridge import baseline_cache, distributed, generation, prefix_cache
from latentbridge.bridge import Bridge, tokenize
from latentbridge.config import EvalConfig
from latentbridge.content import ContentResult
from latentbridge.data import Example
from latentbridge.generation import generate
from latentbridge.metric_names import ACCURACY, INVALID_FRACTION, MISMATCHED, MISMATCHED_FOLLOWS, Answer, EvalRecord
from latentbridge.models import FrozenLM
from latentbridge.scoring import INVALID, extract_answer, is_correct

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    records: list[EvalRecord]


def _answer(
    questions: Sequence[str],
    make_inputs: Callable,
    lm: FrozenLM,
    config: EvalConfig,
    label: str,
    lengths: Sequence[int] | None = None,
) -> dict[int, str]:
    """This rank's share of `questions` answered in batches: {question index: output}.

    With `lengths` (prompt tokens per question) batches are bucketed: longest first, so each
    batch pads little and the static cache is sized for one length range at a time.
    """
    mine = distributed.shard(list(questions))
    if lengths is not None:
        mine = sorted(mine, key=lambda i: (-lengths[i], i))
    outputs: dict[int, str] = {}
    batches = range(0, len(mine), config.batch_size)
    try:
        for start in tqdm(batches, desc=label, disable=not distributed.is_main(), leave=False):
            indices = mine[start : start + config.batch_size]
            texts = generate(lm, make_inputs([questions[i] for i in indices]), config.max_new_tokens)
            outputs.update(zip(indices, texts))
    finally:
        generation.release(lm)  # the static cache is not kept through training
    return outputs


def _gathered(outputs: dict[int, str]) -> list[str] | None:
    """The outputs of every rank merged in question order, on rank 0."""
    parts = distributed.gather_to_main(outputs)
    if parts is None:
        return None
    merged = {k: v for part in parts for k, v in part.items()}
    return [merged[i] for i in range(len(merged))]


def text_baselines(bridge: Bridge, examples: Sequence[Example], config: EvalConfig) -> dict[str, list[str]] | None:
    """Source-alone and target-alone answers with the full few-shot text prompt (each model
    reads the exemplars once: `latentbridge.prefix_cache`)."""
    questions = [ex.question for ex in examples]
    texts = [bridge.prompt(q) for q in questions]
    shared = prefix_cache.fewshot_prefix(bridge.exemplars)
    out = {}
    for name, lm in (("source", bridge.source), ("target", bridge.target)):
        # the main rank holds the entry while it looks and generates: another run needing the same
        # baselines waits for them instead of generating them too (baseline_cache.claimed)
        main = distributed.is_main()
        with baseline_cache.claimed(lm, texts, config.max_new_tokens) if main else contextlib.nullcontext():
            cached = baseline_cache.load(lm, texts, config.max_new_tokens) if main else None
            if distributed.broadcast_from_main(cached is not None):  # every rank skips together
                out[name] = cached
                continue
            prompts = lambda qs, lm=lm: prefix_cache.generation_inputs(lm, shared, [bridge.prompt(q) for q in qs])  # noqa: E731
            lengths = [len(ids) for ids in tokenize(lm, texts)]
            out[name] = _gathered(_answer(questions, prompts, lm, config, f"{name}-alone", lengths))
            if main:
                baseline_cache.store(lm, texts, config.max_new_tokens, out[name])
    return out if distributed.is_main() else None


def bridged_answers(
    bridge: Bridge, examples: Sequence[Example], config: EvalConfig, soft_from: Sequence[int] | None = None
) -> list[str] | None:
    """The target's answers from the soft tokens; with `soft_from`, question i reads the soft
    tokens of question `soft_from[i]` (the mismatched control)."""
    questions = [ex.question for ex in examples]
    sources = [questions[j] for j in soft_from] if soft_from is not None else questions
    pairs = list(zip(questions, sources))
    was_training = bridge.translator.training
    bridge.translator.eval()
    try:
        # bucket by what varies: the source's text and (soft_plus_*) the target's text after the soft tokens
        lengths = [
            len(s) + len(t)
            for s, t in zip(
                tokenize(bridge.source, [bridge.source_text(q) for q in sources]),
                tokenize(bridge.target, [bridge.target_text(q) for q in questions]),
            )
        ]
        make_inputs = lambda items: bridge.bridged_inputs([q for q, _ in items], [s for _, s in items])  # noqa: E731
        label = "bridged" if soft_from is None else "mismatched"
        return _gathered(_answer(pairs, make_inputs, bridge.target, config, label, lengths))
    finally:
        bridge.translator.train(was_training)


def score(
    examples: Sequence[Example],
    outputs: dict[str, list[str]],
    step: int,
    content: ContentResult | None = None,
) -> Evaluation:
    """One record a question and the accuracy and invalid fraction of each system.

    `outputs` holds each system's texts, by `latentbridge.metric_names.SYSTEMS` name. With `content`
    (latentbridge.content), each record holds the question's content values, the mismatched
    answer says whose soft tokens it read and whether it gave that question's gold, and the
    metrics hold the content metrics.
    """
    records: list[EvalRecord] = []
    totals = {name: {"correct": 0, "invalid": 0} for name in outputs}
    follows = 0
    for index, ex in enumerate(examples):
        answers: dict[str, Answer] = {}
        for name, texts in outputs.items():
            answer = extract_answer(texts[index])
            correct = is_correct(answer, ex.gold)
            answers[name] = Answer(output=texts[index], answer=answer, correct=correct)
            totals[name]["correct"] += correct
            totals[name]["invalid"] += answer == INVALID
        record = EvalRecord(step=step, index=index, question=ex.question, gold_solution=ex.answer, gold=ex.gold, **answers)
        if content is not None:
            record["content"] = content.records[index]
            if MISMATCHED in record:
                partner = content.records[index]["mismatched_with"]
                matches = is_correct(record[MISMATCHED]["answer"], examples[partner].gold)
                record[MISMATCHED].update(soft_from=partner, matches_soft_source=matches)
                follows += matches
        records.append(record)
    metrics = {}
    for name, total in totals.items():
        metrics[ACCURACY[name]] = total["correct"] / max(len(examples), 1)
        metrics[INVALID_FRACTION[name]] = total["invalid"] / max(len(examples), 1)
    if content is not None:
        metrics.update(content.metrics)
        if MISMATCHED in outputs:
            metrics[MISMATCHED_FOLLOWS] = follows / max(len(examples), 1)
    return Evaluation(metrics=metrics, records=records)


def write_jsonl(records: Sequence[EvalRecord], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    tmp.replace(path)
    return path
