"""Per-method accuracy, latency, time to first token, KV-cache bytes and peak memory.

Methods (what the target reads before it answers):

  source-alone   the source answers from the full few-shot prompt (no target);
  target-alone   the target answers from the full few-shot prompt;
  bridged-K      `[BOS] [K soft tokens] cue`: the source reads the prompt, the translator
                 writes K soft tokens (K = 32, 48, 64);
  truncated-K    `[BOS] [last K tokens of the question] cue`: a text budget of K tokens;
  relay          the source writes its solution as text, the target reads
                 `Q: question / helper's solution / cue` and answers.

`embedded` runs the real embedded pair (SmolLM2-135M -> Gemma-3-270M) on questions of the
configured data with real stopping, so accuracy is real (with an untrained translator
unless one is loaded). `reference` runs the reference shapes with random weights at the
reference token counts with forced lengths: accuracy is meaningless there, the costs are not.

Per row: latency = upstream time of its batch (source encoding and translator, or the
source's whole generation for the relay) + the target's prefill + its own decode steps;
time to first token = upstream + prefill; KV bytes = what the row holds in the caches at its
end (target, plus the source's generation cache where the source generates), read off the
cache objects (per-token bytes from the allocated key/value tensors, so grouped-query
attention is counted as stored); KV read = the bytes its decode steps must read.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from latentbridge import generation
from latentbridge.bridge import TargetInputs, bos_ids, build_inputs, tokenize
from latentbridge.bench.generation_bench import warm_stop
from latentbridge.generation import GenerationResult, generate_tokens, generate_with_stats, synchronize
from latentbridge.models import FrozenLM
from latentbridge.prefix_cache import fewshot_prefix, generation_inputs, id_rows_batch
from latentbridge.prompts import ANSWER_CUE, question_block
from latentbridge.scoring import INVALID, extract_answer, is_correct



def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def relay_text(question: str, source_output: str) -> str:
    return f"Q: {question.strip()}\nA helper's solution: {source_output.strip()}\n{ANSWER_CUE}"


def truncated_inputs(lm: FrozenLM, questions: Sequence[str], k: int) -> TargetInputs:
    """`[BOS] [last k tokens of 'Q: question'] \\n cue`."""
    cue = tokenize(lm, ["\n" + ANSWER_CUE])[0]
    body = tokenize(lm, [question_block(q)[: -len(ANSWER_CUE)].rstrip("\n") for q in questions])
    return id_rows_batch(lm, [bos_ids(lm) + ids[-k:] + cue for ids in body])


@dataclass
class _Batch:
    """One method on one batch: the target's generation and the time spent before it."""

    result: GenerationResult
    upstream_s: float
    texts: list[str] | None = None
    extra_kv_bytes: list[int] | None = None  # per row, caches beyond the target's (the relay's source)
    extra_kv_read: list[int] | None = None


def _records(method: str, batch: _Batch, offset: int, golds: Sequence[str] | None, questions: Sequence[str] | None) -> list[dict]:
    stats = batch.result.stats
    out = []
    for row in range(stats.batch):
        record = {
            "method": method,
            "index": offset + row,
            "prompt_tokens": stats.prompt_tokens[row],
            "new_tokens": stats.new_tokens[row],
            "upstream_s": batch.upstream_s,
            "ttft_s": batch.upstream_s + stats.prefill_s,
            "latency_s": batch.upstream_s + stats.row_latency_s[row],
            "kv_bytes": stats.kv_bytes(row) + (batch.extra_kv_bytes[row] if batch.extra_kv_bytes else 0),
            "kv_read_bytes": stats.kv_read_bytes(row) + (batch.extra_kv_read[row] if batch.extra_kv_read else 0),
            "cache_len": stats.cache_len,
            "graphs": stats.graphs,
        }
        if questions is not None:
            record["question"] = questions[row]
        if batch.texts is not None:
            answer = extract_answer(batch.texts[row])
            record.update(output=batch.texts[row], answer=answer)
            if golds is not None:
                record.update(gold=golds[row], correct=is_correct(answer, golds[row]), invalid=answer == INVALID)
        out.append(record)
    return out


def aggregate(records: list[dict], peak_memory: dict[str, int | None], wall: dict[str, float]) -> dict:
    summary = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        entry = {
            "samples": len(rows),
            "latency_p50_s": _percentile([r["latency_s"] for r in rows], 0.5),
            "latency_p95_s": _percentile([r["latency_s"] for r in rows], 0.95),
            "ttft_p50_s": _percentile([r["ttft_s"] for r in rows], 0.5),
            "ttft_p95_s": _percentile([r["ttft_s"] for r in rows], 0.95),
            "prompt_tokens_mean": statistics.fmean(r["prompt_tokens"] for r in rows),
            "new_tokens_mean": statistics.fmean(r["new_tokens"] for r in rows),
            "kv_bytes_mean": statistics.fmean(r["kv_bytes"] for r in rows),
            "kv_read_bytes_mean": statistics.fmean(r["kv_read_bytes"] for r in rows),
            "peak_memory_bytes": peak_memory.get(method),
            "wall_s": wall.get(method),
        }
        if "correct" in rows[0]:
            entry["accuracy"] = sum(r["correct"] for r in rows) / len(rows)
            entry["invalid"] = sum(r["invalid"] for r in rows)
        summary[method] = entry
    return summary


class _Meter:
    """Wall time and peak device memory of one method."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.began
        self.peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None


def _timed(device: torch.device, fn):
    synchronize(device)
    began = time.perf_counter()
    value = fn()
    synchronize(device)
    return value, time.perf_counter() - began


# --------------------------------------------------------------------------- the embedded pair


def run_embedded(bridge_for_k, examples, ks: Sequence[int], max_new_tokens: int, batch_size: int, log=print) -> tuple[dict, list[dict]]:
    """Every method on `examples` with real text. `bridge_for_k(k)` gives a Bridge whose
    translator writes k soft tokens (the models are shared)."""
    base = bridge_for_k(ks[0])
    source, target = base.source, base.target
    device = target.device
    records: list[dict] = []
    peaks: dict[str, int | None] = {}
    walls: dict[str, float] = {}
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]

    def run_method(name: str, one_batch) -> None:
        with _Meter(device) as meter:
            offset = 0
            for chunk in batches:
                questions = [ex.question for ex in chunk]
                golds = [ex.gold for ex in chunk]
                records.extend(_records(name, one_batch(questions), offset, golds, questions))
                offset += len(chunk)
        generation.release()
        peaks[name], walls[name] = meter.peak, meter.seconds
        done = [r for r in records if r["method"] == name]
        log(f"[methods] {name}: accuracy {sum(r['correct'] for r in done)}/{len(done)}, {meter.seconds:.1f}s")

    shared = fewshot_prefix(base.exemplars)  # the text systems read the exemplars once, as evaluate does

    def text_alone(lm: FrozenLM):
        def one(questions):
            texts, result = generate_with_stats(lm, generation_inputs(lm, shared, [base.prompt(q) for q in questions]), max_new_tokens)
            return _Batch(result=result, upstream_s=0.0, texts=texts)
        return one

    run_method("source-alone", text_alone(source))
    run_method("target-alone", text_alone(target))
    for k in ks:
        bridge = bridge_for_k(k)
        bridge.translator.eval()

        def bridged(questions, bridge=bridge):
            inputs, upstream = _timed(device, lambda: bridge.bridged_inputs(questions))
            texts, result = generate_with_stats(target, inputs, max_new_tokens)
            return _Batch(result=result, upstream_s=upstream, texts=texts)

        run_method(f"bridged-{k}", bridged)
    for k in ks:
        def truncated(questions, k=k):
            inputs, upstream = _timed(device, lambda: truncated_inputs(target, questions, k))
            texts, result = generate_with_stats(target, inputs, max_new_tokens)
            return _Batch(result=result, upstream_s=upstream, texts=texts)

        run_method(f"truncated-{k}", truncated)

    def relay(questions):
        began = time.perf_counter()
        notes, first = generate_with_stats(source, generation_inputs(source, shared, [base.prompt(q) for q in questions]), max_new_tokens)
        inputs = build_inputs(target, [relay_text(q, n) for q, n in zip(questions, notes)])
        synchronize(device)
        upstream = time.perf_counter() - began
        texts, result = generate_with_stats(target, inputs, max_new_tokens)
        rows = range(first.stats.batch)
        return _Batch(result=result, upstream_s=upstream, texts=texts,
                      extra_kv_bytes=[first.stats.kv_bytes(r) for r in rows],
                      extra_kv_read=[first.stats.kv_read_bytes(r) for r in rows])

    run_method("relay", relay)
    return aggregate(records, peaks, walls), records


# --------------------------------------------------------------------------- the reference shapes


def run_reference(
    source: FrozenLM,
    target: FrozenLM,
    translators: dict[int, torch.nn.Module],
    *,
    batch: int,
    prompt_tokens: int = 1100,
    question_tokens: int = 60,
    cue_tokens: int = 10,
    new_tokens: int = 256,
    log=print,
) -> tuple[dict, list[dict]]:
    """Every method at the reference token counts with random ids and forced lengths."""
    device = target.device
    generator = torch.Generator().manual_seed(0)
    records: list[dict] = []
    peaks: dict[str, int | None] = {}
    walls: dict[str, float] = {}

    def ids(lm: FrozenLM, length: int) -> torch.Tensor:
        return torch.randint(3, lm.model.config.vocab_size, (batch, length), generator=generator).to(device)

    def embeds(lm: FrozenLM, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = ids(lm, length)
        return lm.embed(x), torch.ones_like(x)

    def forced(lm: FrozenLM, e: torch.Tensor, m: torch.Tensor) -> GenerationResult:
        generate_tokens(lm.model, e, m, new_tokens, stop=warm_stop)  # warm: sizes the cache and captures the graph
        return generate_tokens(lm.model, e, m, new_tokens)

    def run_method(name: str, fn) -> None:
        with _Meter(device) as meter:
            batch_result = fn()
        records.extend(_records(name, batch_result, 0, None, None))
        peaks[name], walls[name] = meter.peak, meter.seconds
        generation.release()
        r = records[-1]
        log(f"[methods] {name}: ttft {r['ttft_s']:.3f}s latency {r['latency_s']:.3f}s kv {r['kv_bytes'] / 2**20:.1f} MiB/row")

    run_method("source-alone", lambda: _Batch(forced(source, *embeds(source, prompt_tokens)), 0.0))
    run_method("target-alone", lambda: _Batch(forced(target, *embeds(target, prompt_tokens)), 0.0))
    for k, translator in translators.items():
        def bridged(translator=translator, k=k):
            src_ids = ids(source, prompt_tokens)

            def upstream():
                states = source.hidden_states(src_ids, torch.ones_like(src_ids), layer=-1)
                with torch.no_grad():
                    soft = translator(states, torch.ones_like(src_ids))
                bos = target.embed(torch.ones(batch, 1, dtype=torch.long, device=device))
                e = torch.cat([bos, soft.to(bos.dtype), target.embed(ids(target, cue_tokens))], 1)
                return e, torch.ones(e.shape[:2], dtype=torch.long, device=device)

            upstream()  # warm-up
            (e, m), seconds = _timed(device, upstream)
            return _Batch(forced(target, e, m), seconds)

        run_method(f"bridged-{k}", bridged)
    for k in translators:
        run_method(f"truncated-{k}", lambda k=k: _Batch(forced(target, *embeds(target, 1 + k + cue_tokens)), 0.0))

    def relay():
        e, m = embeds(source, prompt_tokens)
        generate_tokens(source.model, e, m, new_tokens, stop=warm_stop)  # warm
        first, seconds = _timed(device, lambda: generate_tokens(source.model, e, m, new_tokens))
        generation.release()
        result = forced(target, *embeds(target, 1 + question_tokens + new_tokens + cue_tokens))
        rows = range(first.stats.batch)
        return _Batch(result, seconds, extra_kv_bytes=[first.stats.kv_bytes(r) for r in rows],
                      extra_kv_read=[first.stats.kv_read_bytes(r) for r in rows])

    run_method("relay", relay)
    return aggregate(records, peaks, walls), records
