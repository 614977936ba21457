"""What crosses the bridge: information metrics, teacher-forced, with no generation.

Accuracy near the floor cannot tell "the soft tokens carry the question, the target is too weak
to use it" from "the soft tokens carry nothing". These metrics can. For each evaluated question
the target scores its gold solution (the negative log-likelihood of the solution's tokens,
summed, in bits) under four inputs:

  text        (a) its full few-shot text prompt (what target-alone reads);
  own         (b) the question's own soft tokens, in the bridge's prompt mode;
  mismatched  (c) another question's soft tokens (a seeded derangement of the evaluated set,
                  the same at every evaluation);
  no_question (d) no question at all: the cue alone in the bridge's prompt mode, no soft tokens.

and, for retrieval, under the soft tokens of `negatives` other questions (the mismatched one
first). Logged per evaluation:

  content/bits_transmitted        mean of NLL(c) - NLL(b): bits about the question's answer that
                                  the soft tokens carry; `_low`/`_high` its 95% paired bootstrap
                                  interval over questions (seeded). A bridge that learned one soft
                                  prompt for every question transmits exactly 0;
  content/fraction_recovered      (NLL(d) - NLL(b)) / (NLL(d) - NLL(a)), of the means over
                                  questions: the share of what the text gives that the bridge gives
                                  (a constant soft prompt that sets the answer format scores above
                                  0 here, so read it beside bits_transmitted);
  content/fraction_recovered_mismatched
                                  the same with another question's soft tokens, (NLL(d) - NLL(c)) /
                                  (NLL(d) - NLL(a)): what the format alone recovers. The difference
                                  of the two is bits_transmitted over the gap, the question's share;
  content/retrieval_top1          the share of questions whose own soft tokens give their gold
                                  solution a lower NLL than every negative's (chance
                                  `content/retrieval_chance` = 1 / (negatives + 1)).

Each question's rows (own and negatives) share one forward pass and one length (several
questions' groups share a forward, up to the evaluation batch's rows), so a translator that
ignores its input (the soft-prompt controls) gives them identical NLLs on a CPU: 0 bits, exactly.
On a GPU, batched bf16 kernels leave up to ~1e-5 bits a question of noise (seen on an H200); the
registry's verdict asks for more than `min_bits_transmitted` (0.001 bits).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from latentbridge import distributed, prefix_cache
from latentbridge.bridge import Bridge
from latentbridge.data import Example
from latentbridge.losses import answer_nll
from latentbridge.metric_names import (
    BITS,
    BITS_HIGH,
    BITS_LOW,
    FRACTION,
    FRACTION_MISMATCHED,
    RETRIEVAL,
    RETRIEVAL_CHANCE,
    ContentRecord,
)
from latentbridge.prompts import answer_target
from latentbridge.stats import bootstrap_mean_interval

BOOTSTRAP_SAMPLES = 2000
NATS_PER_BIT = math.log(2)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (Sattolo's cycle), n >= 2."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 questions (got {n}); evaluate more questions")
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: every element moves
        order[i], order[j] = order[j], order[i]
    return order


def negatives(n: int, count: int, seed: int) -> list[list[int]]:
    """For each question i, `min(count, n - 1)` other questions, the derangement's partner first."""
    partner = derangement(n, seed)
    rng = random.Random(seed + 1)
    out = []
    for i in range(n):
        others = [j for j in range(n) if j not in (i, partner[i])]
        out.append([partner[i], *rng.sample(others, min(count, n - 1) - 1)])
    return out


@dataclass(frozen=True)
class ContentResult:
    metrics: dict[str, float]
    records: list[ContentRecord]  # one per question, in question order: goes into the eval record


def _rows_nll(bridge: Bridge, texts: Sequence[str], answers: Sequence[str], soft: torch.Tensor | None) -> torch.Tensor:
    """Summed NLL (nats) of each answer under its text (and soft tokens, when given). Texts that
    start with the few-shot exemplars read them from the prefix computed once (`prefix_cache`)."""
    if soft is None:
        scorer, inputs = prefix_cache.scoring_inputs(
            bridge.target, prefix_cache.fewshot_prefix(bridge.exemplars), texts, answers, bridge.config.train.max_answer_tokens
        )
        return answer_nll(scorer, inputs).cpu()
    inputs = bridge.target_inputs(list(texts), soft.to(bridge.target.dtype), list(answers))
    return answer_nll(bridge.target, inputs).cpu()


def _question_nlls(
    bridge: Bridge,
    examples: Sequence[Example],
    soft: torch.Tensor,
    others: list[list[int]],
    mine: list[int],
    batch: int,
    fixed: dict[int, dict],
    rows_per_forward: int,
) -> dict[int, dict]:
    """This rank's questions' NLLs (nats): text, no question, own and each negative.

    `fixed` caches the two that do not depend on the translator (text, no question) across
    evaluations of the same questions; it is filled in place.
    """
    out: dict[int, dict] = {}
    for start in tqdm(range(0, len(mine), batch), desc="content", disable=not distributed.is_main(), leave=False):
        chunk = mine[start : start + batch]
        answers = [answer_target(examples[i]) for i in chunk]
        todo = [row for row, i in enumerate(chunk) if i not in fixed]
        if todo:
            todo_answers = [answers[row] for row in todo]
            text = _rows_nll(bridge, [bridge.prompt(examples[chunk[row]].question) for row in todo], todo_answers, None)
            empty = _rows_nll(bridge, [bridge.no_question_text()] * len(todo), todo_answers, None)
            for k, row in enumerate(todo):
                fixed[chunk[row]] = {"text": float(text[k]), "no_question": float(empty[k])}
        # each question's group (own first, then the negatives) in one forward, as many whole
        # groups a forward as `rows_per_forward` rows hold (at least one): a group's rows share a length
        per_forward = max(1, rows_per_forward // (1 + max(len(others[i]) for i in chunk)))
        for first in range(0, len(chunk), per_forward):
            rows = range(first, min(first + per_forward, len(chunk)))
            groups = [[chunk[row], *others[chunk[row]]] for row in rows]
            nll = _rows_nll(
                bridge,
                [examples[chunk[row]].question for row, group in zip(rows, groups) for _ in group],
                [answers[row] for row, group in zip(rows, groups) for _ in group],
                soft[[j for group in groups for j in group]],
            )
            for row, part in zip(rows, nll.split([len(group) for group in groups])):
                out[chunk[row]] = {**fixed[chunk[row]], "own": float(part[0]), "negatives": part[1:].tolist()}
    return out


@torch.no_grad()
def content_metrics(
    bridge: Bridge,
    examples: Sequence[Example],
    *,
    negatives_count: int,
    seed: int,
    batch_size: int,
    fixed: dict[int, dict] | None = None,
    rows_per_forward: int | None = None,
) -> ContentResult | None:
    """The content metrics of the bridge on `examples` (on rank 0; None on the other ranks).

    Pass the same `fixed` dict at every evaluation of the same questions to compute the
    translator-independent NLLs (text, no question) once. `rows_per_forward` (default
    `batch_size`) bounds the rows of one scoring forward: whole groups of 1 + negatives rows
    (1: one question's group a forward).
    """
    n = len(examples)
    others = negatives(n, negatives_count, seed)
    was_training = bridge.translator.training
    bridge.translator.eval()
    try:
        questions = [ex.question for ex in examples]
        soft = torch.cat([bridge.soft_tokens(questions[i : i + batch_size]) for i in range(0, n, batch_size)])
        mine = distributed.shard(list(range(n)))
        nlls = _question_nlls(
            bridge, examples, soft, others, mine, batch_size, {} if fixed is None else fixed, rows_per_forward or batch_size
        )
        parts = distributed.gather_to_main(nlls)
    finally:
        bridge.translator.train(was_training)
    if parts is None:
        return None
    merged = {k: v for part in parts for k, v in part.items()}
    return summarize([merged[i] for i in range(n)], others, seed)


def summarize(nlls: Sequence[dict], others: Sequence[Sequence[int]], seed: int) -> ContentResult:
    """Metrics and per-question records from each question's NLLs in nats (see the module doc)."""
    bits = lambda nats: nats / NATS_PER_BIT  # noqa: E731
    records: list[ContentRecord] = []
    gains, own_best = [], []
    for nll, negs in zip(nlls, others):
        mismatched = nll["negatives"][0]
        best = all(nll["own"] < other for other in nll["negatives"])
        gains.append(bits(mismatched - nll["own"]))
        own_best.append(best)
        records.append(
            ContentRecord(
                nll_bits_text=bits(nll["text"]),
                nll_bits_own=bits(nll["own"]),
                nll_bits_mismatched=bits(mismatched),
                nll_bits_no_question=bits(nll["no_question"]),
                bits_transmitted=gains[-1],
                mismatched_with=int(negs[0]),
                own_ranked_first=best,
                negatives=len(negs),
            )
        )
    mean = lambda key: sum(r[key] for r in records) / len(records)  # noqa: E731
    low, high = bootstrap_mean_interval(gains, BOOTSTRAP_SAMPLES, 0.95, seed)
    gap = mean("nll_bits_no_question") - mean("nll_bits_text")
    recovered = lambda nll: (mean("nll_bits_no_question") - mean(nll)) / gap if gap > 0 else float("nan")  # noqa: E731
    metrics = {
        BITS: sum(gains) / len(gains),
        BITS_LOW: low,
        BITS_HIGH: high,
        FRACTION: recovered("nll_bits_own"),
        FRACTION_MISMATCHED: recovered("nll_bits_mismatched"),
        RETRIEVAL: sum(own_best) / len(own_best),
        RETRIEVAL_CHANCE: 1.0 / (len(others[0]) + 1),
    }
    return ContentResult(metrics=metrics, records=records)
