"""A whole evaluation, end to end: N questions x (source-alone, target-alone, bridged), with
the few-shot prefix shared (`latentbridge.prefix_cache`) and without.

`reference`: random weights at the reference shapes, no tokenizer. Question i's prompt is one
shared run of `prefix_tokens` random ids (the exemplars) then its own ids (the question, lengths
spread over `question_tokens`). The text systems generate `new_tokens` forced (random weights
never write an answer line); bridged-K encodes the whole prompt with the source, runs the
translator and generates from `[BOS] [K soft tokens] [cue]` (the bridge reads no text prefix, so
it is timed once). Batches of `batch`, longest first, as `evaluate` buckets them. A system's
time is everything an evaluation pays: inputs, the prefix (once a model), cache allocation (and
CUDA-graph capture), prefill, decode.

`embedded`: the embedded pair with real weights, tokenizer, data and answer-line stopping,
through `evaluate.text_baselines` (baseline cache off) and `evaluate.bridged_answers`
themselves; the answers with and without sharing are compared; then the content metrics
(`latentbridge.content`) with one question's group a forward and with groups packed.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence
from unittest import mock

import torch
from tqdm.auto import tqdm

from latentbridge import baseline_cache, generation, prefix_cache
from latentbridge.bench.generation_bench import _agreement
from latentbridge.bridge import build_inputs
from latentbridge.content import content_metrics
from latentbridge.generation import generate_tokens, synchronize
from latentbridge.metric_names import BITS
from latentbridge.models import FrozenLM
from latentbridge.prefix_cache import compute_prefix, id_rows_batch
from latentbridge.prompts import ANSWER_CUE


def _timed(device: torch.device, fn: Callable):
    synchronize(device)
    began = time.perf_counter()
    value = fn()
    synchronize(device)
    return value, time.perf_counter() - began


def _batches(lengths: Sequence[int], batch: int) -> list[list[int]]:
    """Question indices in batches, longest prompt first (as `evaluate._answer` buckets)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def _left_padded_ids(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (length - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _embedded_rows(lm: FrozenLM, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = id_rows_batch(lm, rows)
    return inputs.inputs_embeds, inputs.attention_mask


# --------------------------------------------------------------------------- reference shapes


def reference(
    source: FrozenLM,
    target: FrozenLM,
    translator: torch.nn.Module,
    *,
    questions: int,
    batch: int,
    prefix_tokens: int,
    question_tokens: tuple[int, int],
    cue_tokens: int,
    new_tokens: int,
    log=print,
) -> dict:
    device = target.device
    generator = torch.Generator().manual_seed(0)
    low, high = question_tokens
    lengths = [low + (high - low) * i // max(questions - 1, 1) for i in range(questions)]
    batches = _batches(lengths, batch)

    def random_ids(lm: FrozenLM, n: int) -> list[int]:
        return torch.randint(3, lm.model.config.vocab_size, (n,), generator=generator).tolist()

    prompts = {}
    for lm in (source, target):
        prompts[lm.name] = ([1] + random_ids(lm, prefix_tokens), [random_ids(lm, n) for n in lengths])
    for lm in (source, target):  # the device's one-time costs (kernels, allocator) before any timing
        generate_tokens(lm.model, *_embedded_rows(lm, [prompts[lm.name][0][:8]]), 2)
        generation.release(lm)

    def text_alone(lm: FrozenLM, shared: bool) -> tuple[float, list[list[int]]]:
        prefix_ids, question_ids = prompts[lm.name]
        tokens: dict[int, list[int]] = {}

        def run():
            prefix = compute_prefix(lm, prefix_ids) if shared else None
            for chunk in tqdm(batches, desc=f"{lm.name} {'shared' if shared else 'unshared'}", leave=False):
                rows = [question_ids[i] if shared else prefix_ids + question_ids[i] for i in chunk]
                inputs = id_rows_batch(lm, rows)
                result = generate_tokens(lm.model, inputs.inputs_embeds, inputs.attention_mask, new_tokens, prefix=prefix)
                tokens.update(zip(chunk, result.tokens))
            generation.release(lm)

        _, seconds = _timed(device, run)
        return seconds, [tokens[i] for i in range(questions)]

    systems: dict[str, dict] = {}
    for name, lm in (("source-alone", source), ("target-alone", target)):
        unshared_s, unshared = text_alone(lm, shared=False)
        shared_s, shared = text_alone(lm, shared=True)
        systems[name] = {"unshared_s": unshared_s, "shared_s": shared_s, "speedup": unshared_s / shared_s,
                         "agreement": _agreement(shared, unshared)}
        log(f"[eval] {name}: {unshared_s:.1f}s unshared, {shared_s:.1f}s with the prefix shared "
            f"({unshared_s / shared_s:.2f}x); tokens identical in {systems[name]['agreement']['rows_identical']}/{questions} rows")

    def bridged() -> int:
        prefix_ids, question_ids = prompts[source.name]
        cue = random_ids(target, cue_tokens)
        for chunk in tqdm(batches, desc="bridged", leave=False):
            ids, mask = _left_padded_ids([prefix_ids + question_ids[i] for i in chunk], device)
            states = source.hidden_states(ids, mask, layer=-1)
            with torch.no_grad():
                soft = translator(states, mask)
            bos = target.embed(torch.ones(len(chunk), 1, dtype=torch.long, device=device))
            embeds = torch.cat([bos, soft.to(bos.dtype), target.embed(torch.tensor([cue] * len(chunk), device=device))], 1)
            generate_tokens(target.model, embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=device), new_tokens)
        generation.release(target)
        return soft.shape[1]

    k, bridged_s = _timed(device, bridged)
    systems[f"bridged-{k}"] = {"unshared_s": bridged_s, "shared_s": bridged_s, "speedup": 1.0}
    log(f"[eval] bridged-{k}: {bridged_s:.1f}s (reads no text prefix: the same either way)")
    unshared_total = sum(s["unshared_s"] for s in systems.values())
    shared_total = sum(s["shared_s"] for s in systems.values())
    log(f"[eval] {questions} questions x {len(systems)} systems: {unshared_total:.1f}s unshared, "
        f"{shared_total:.1f}s shared ({unshared_total / shared_total:.2f}x)")
    return {"source": source.name, "target": target.name, "questions": questions, "batch": batch,
            "prefix_tokens": prefix_tokens, "question_tokens": list(question_tokens), "cue_tokens": cue_tokens,
            "new_tokens_forced": new_tokens, "systems": systems,
            "total_unshared_s": unshared_total, "total_shared_s": shared_total, "speedup": unshared_total / shared_total}


# --------------------------------------------------------------------------- the embedded pair


def embedded(bridge, examples: Sequence, eval_config, log=print) -> dict:
    """`evaluate`'s own text baselines (unshared, then shared) and bridged answers on real models."""
    from latentbridge import evaluate

    device = bridge.target.device
    for lm in (bridge.source, bridge.target):  # the device's one-time costs (kernels, allocator) before any timing
        generation.generate(lm, build_inputs(lm, [ANSWER_CUE]), 2)
        generation.release(lm)
    out: dict = {"questions": len(examples), "batch": eval_config.batch_size, "max_new_tokens": eval_config.max_new_tokens}
    answers = {}
    with mock.patch.dict(os.environ, {baseline_cache.ENV: "0"}):
        for label, flag in (("unshared", "0"), ("shared", "1")):
            with mock.patch.dict(os.environ, {prefix_cache.ENV: flag}):
                for lm in (bridge.source, bridge.target):
                    prefix_cache.release(lm)
                answers[label], seconds = _timed(device, lambda: evaluate.text_baselines(bridge, examples, eval_config))
            out[f"text_baselines_{label}_s"] = seconds
            log(f"[eval] text baselines ({len(examples)} questions x source-alone, target-alone), {label}: {seconds:.1f}s")
    _, out["bridged_s"] = _timed(device, lambda: evaluate.bridged_answers(bridge, examples, eval_config))
    # the content metrics (teacher-forced NLLs): one question's group of 1 + negatives rows a
    # forward, then as many whole groups as a batch holds; both from scratch (no cached text NLLs)
    content = {}
    for label, rows in (("one_group", 1), ("packed", eval_config.batch_size)):
        content[label], out[f"content_{label}_s"] = _timed(device, lambda: content_metrics(
            bridge, examples, negatives_count=eval_config.content_negatives, seed=eval_config.content_seed,
            batch_size=eval_config.batch_size, rows_per_forward=rows,
        ))
    out["content_speedup"] = out["content_one_group_s"] / out["content_packed_s"]
    out["content_bits"] = {label: c.metrics[BITS] for label, c in content.items()}
    log(f"[eval] content metrics ({eval_config.content_negatives} negatives): one group a forward "
        f"{out['content_one_group_s']:.1f}s, packed {out['content_packed_s']:.1f}s; bits {out['content_bits']}")
    out["text_speedup"] = out["text_baselines_unshared_s"] / out["text_baselines_shared_s"]
    out["answers_identical"] = {name: sum(a == b for a, b in zip(answers["shared"][name], answers["unshared"][name]))
                                for name in answers["shared"]}
    out["total_unshared_s"] = out["text_baselines_unshared_s"] + out["bridged_s"]
    out["total_shared_s"] = out["text_baselines_shared_s"] + out["bridged_s"]
    log(f"[eval] bridged: {out['bridged_s']:.1f}s; whole evaluation {out['total_unshared_s']:.1f}s unshared, "
        f"{out['total_shared_s']:.1f}s shared; identical answers {out['answers_identical']} of {len(examples)}")
    return out
