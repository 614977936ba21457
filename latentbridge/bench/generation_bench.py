"""Generation throughput at a reference shape: plain `generate` against the static decoder.

Plain `generate` runs three ways: from the prompt's embeddings (what the bridge must do: soft
tokens have no ids) with its dynamic cache (`plain`), and from the token ids with its dynamic
cache (`plain_ids`) and with its static cache (`plain_ids_static`, `cache_implementation="static"`).

For each batch size: a prompt of `prompt_tokens` real tokens (random ids, as embeddings) and
`new_tokens` new tokens forced (no stopping), bf16, random weights. Reported per system:
time to first token (the prefill), decode time, decode tokens/s (new tokens after the first
over the decode time), end-to-end tokens/s (all new tokens over the whole call), and the
decode rate as a fraction of the memory-bandwidth bound: every decode step must read the
weights (less the input embedding table) plus each row's KV cache at its current length,
at the measured copy bandwidth.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from latentbridge import generation
from latentbridge.bench.shapes import random_model, weight_bytes_read_per_step
from latentbridge.generation import generate_tokens, plain_generate_tokens, synchronize



PLAIN_VARIANTS = {
    "plain": {},  # from embeddings, dynamic cache
    "plain_ids": {"from_ids": True},
    "plain_ids_static": {"from_ids": True, "cache_implementation": "static"},
}
"""transformers' `generate` variants the gen part times: name -> `_plain` options."""


def _prompt_ids(model, batch: int, length: int, seed: int, ragged: bool = False):
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, length), generator=generator).to(model.device)
    mask = torch.ones(batch, length, dtype=torch.long, device=model.device)
    if ragged:  # left padding of different amounts
        for row in range(batch):
            mask[row, : int(torch.randint(0, length // 2, (1,), generator=generator))] = 0
    return ids, mask


def _prompt(model, batch: int, length: int, seed: int, ragged: bool = False):
    ids, mask = _prompt_ids(model, batch, length, seed, ragged)
    return model.get_input_embeddings()(ids), mask


def bound_tokens_per_s(model, batch: int, prompt: int, new: int, per_token_kv: int, bandwidth: float) -> dict:
    """The decode rate if every step only read its bytes once at `bandwidth`."""
    weights = weight_bytes_read_per_step(model)
    mean_context = prompt + (new + 1) / 2
    kv = batch * mean_context * per_token_kv
    step_s = (weights + kv) / bandwidth
    return {"weights_bytes": weights, "kv_bytes_mean_step": kv, "bound_step_s": step_s, "bound_tokens_per_s": batch / step_s}


def warm_stop(row: list[int]) -> bool:
    """Stops a warm-up call after a few steps: the cache is sized and the graph captured for
    the full length, without paying for the whole generation."""
    return len(row) >= 4


def _ours(model, embeds, mask, new: int, repeats: int, graphs: bool | None = None) -> dict:
    warm = generate_tokens(model, embeds, mask, new, graphs=graphs, stop=warm_stop)  # sizes the cache, captures the graph
    runs = [generate_tokens(model, embeds, mask, new, graphs=graphs) for _ in range(repeats)]
    prefill = statistics.median(r.stats.prefill_s for r in runs)
    decode = statistics.median(r.stats.decode_s for r in runs)
    stats = runs[0].stats
    batch = stats.batch
    return {
        "tokens": runs[0].tokens,
        "first_call_s": warm.stats.total_s,
        "ttft_s": prefill,
        "decode_s": decode,
        "total_s": prefill + decode,
        "decode_steps": stats.steps,
        "decode_tokens_per_s": batch * stats.steps / decode,
        "tokens_per_s": batch * new / (prefill + decode),
        "graphs": stats.graphs,
        "cache_len": stats.cache_len,
        "cache_bytes": stats.cache_bytes,
        "per_token_kv_bytes": stats.per_token_kv_bytes,
        "peak_memory_bytes": stats.peak_memory_bytes,
    }


def _never(model) -> list[int]:
    """An EOS id no step can produce: rows run the full length with plain argmax, as ours do
    with no stop rule (`min_new_tokens` would instead mask the real EOS out of the argmax)."""
    return [model.config.vocab_size + 10]


def _plain(model, ids, mask, new: int, *, from_ids: bool = False, cache_implementation: str | None = None) -> dict:
    """transformers' `generate` on the prompt `ids`, given as ids or as their embeddings."""
    device = ids.device

    def call(width: int | None, steps: int):
        part = ids[:, :width] if width else ids
        embeds = None if from_ids else model.get_input_embeddings()(part)
        return plain_generate_tokens(model, embeds, mask[:, : part.shape[1]], steps, eos_ids=_never(model),
                                     input_ids=part if from_ids else None, cache_implementation=cache_implementation)

    call(64, 2)  # warm-up
    synchronize(device)
    began = time.perf_counter()
    call(None, 1)
    synchronize(device)
    ttft = time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    out = call(None, new)
    synchronize(device)
    total = time.perf_counter() - began
    batch = ids.shape[0]
    return {
        "tokens": out.tolist(),
        "ttft_s": ttft,
        "total_s": total,
        "decode_s": total - ttft,
        "decode_tokens_per_s": batch * (new - 1) / max(total - ttft, 1e-9),
        "tokens_per_s": batch * new / total,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def _agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    first_diff = []
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        first_diff.append(next((i for i in range(n) if x[i] != y[i]), n))
    return {
        "rows_identical": sum(x == y for x, y in zip(a, b)),
        "rows": len(a),
        "mean_identical_prefix": sum(first_diff) / max(len(first_diff), 1),
    }


def tiny_equality_check(device: torch.device, new: int = 48) -> dict:
    """float32 tiny llama on `device`: the static decoder (graphs where CUDA) against plain
    `generate`, left-padded random embeddings, token for token."""
    model = random_model("tiny-llama", device=device, dtype=torch.float32, seed=5)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights than the default init, so the text is not one token
        for name, param in model.named_parameters():
            if param.ndim == 2:
                std = 1.0 if "embed" in name else 2.0 / param.shape[1] ** 0.5
                param.copy_((torch.randn(param.shape, generator=generator) * std).to(device))
    embeds, mask = _prompt(model, 6, 40, seed=2, ragged=True)
    ours = generate_tokens(model, embeds, mask, new).tokens
    plain = plain_generate_tokens(model, embeds, mask, new, eos_ids=_never(model)).tolist()
    generation.release(model)
    return {**_agreement(ours, plain), "equal": ours == plain, "distinct_tokens_row0": len(set(ours[0]))}


def run(
    shape: str,
    device: torch.device,
    batches: list[int],
    prompt_tokens: int,
    new_tokens: int,
    bandwidth: float,
    *,
    plain: bool = True,
    repeats: int = 2,
    attention_variants: bool = True,
    log=print,
) -> dict:
    model = random_model(shape, device=device, dtype=torch.bfloat16)
    results: dict = {"shape": shape, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batches": {}}
    for batch in batches:
        ids, mask = _prompt_ids(model, batch, prompt_tokens, seed=batch)
        embeds = model.get_input_embeddings()(ids)
        row: dict = {}
        ours = _ours(model, embeds, mask, new_tokens, repeats)
        row["static"] = {k: v for k, v in ours.items() if k != "tokens"}
        row["bound"] = bound_tokens_per_s(model, batch, prompt_tokens, new_tokens, ours["per_token_kv_bytes"], bandwidth)
        row["static"]["fraction_of_bound"] = ours["decode_tokens_per_s"] / row["bound"]["bound_tokens_per_s"]
        log(f"[gen] {shape} B={batch} static: ttft {ours['ttft_s']:.3f}s decode {ours['decode_s']:.3f}s "
            f"-> {ours['decode_tokens_per_s']:.0f} decode tok/s ({row['static']['fraction_of_bound']:.0%} of bound "
            f"{row['bound']['bound_tokens_per_s']:.0f}), {ours['tokens_per_s']:.0f} end-to-end tok/s, graphs={ours['graphs']}")
        if attention_variants and device.type == "cuda" and batch == max(batches):
            generation.release(model)
            os.environ[generation.DECODE_ATTENTION_ENV] = "matmul"
            try:
                variant = _ours(model, embeds, mask, new_tokens, repeats)
            finally:
                os.environ.pop(generation.DECODE_ATTENTION_ENV, None)
                generation.release(model)
            row["static_matmul_attention"] = {k: v for k, v in variant.items() if k != "tokens"}
            log(f"[gen] B={batch} static, matmul decode attention: {variant['decode_tokens_per_s']:.0f} decode tok/s")
            row["static_matmul_attention"]["agreement_with_sdpa"] = _agreement(variant["tokens"], ours["tokens"])
        if device.type == "cuda" and batch == min(batches):
            short = min(new_tokens, 32)
            graphed = generate_tokens(model, embeds, mask, short, graphs=True).tokens
            generation.release(model)
            eager = generate_tokens(model, embeds, mask, short, graphs=False).tokens
            generation.release(model)
            row["graph_vs_eager"] = _agreement(graphed, eager)
        for name, options in (PLAIN_VARIANTS.items() if plain else ()):
            generation.release(model)
            reference = _plain(model, ids, mask, new_tokens, **options)
            entry = row[name] = {k: v for k, v in reference.items() if k != "tokens"}
            entry["fraction_of_bound"] = reference["decode_tokens_per_s"] / row["bound"]["bound_tokens_per_s"]
            entry["static_speedup_end_to_end"] = ours["tokens_per_s"] / reference["tokens_per_s"]
            entry["static_speedup_decode"] = ours["decode_tokens_per_s"] / reference["decode_tokens_per_s"]
            entry["agreement_with_static"] = _agreement(ours["tokens"], reference["tokens"])
            log(f"[gen] {shape} B={batch} {name}: ttft {reference['ttft_s']:.3f}s total {reference['total_s']:.3f}s "
                f"-> {reference['decode_tokens_per_s']:.0f} decode tok/s, {reference['tokens_per_s']:.0f} end-to-end tok/s; "
                f"static decoder {entry['static_speedup_end_to_end']:.2f}x end-to-end, {entry['static_speedup_decode']:.2f}x decode")
        if plain:  # the names earlier benches wrote
            row["speedup_end_to_end"] = row["plain"]["static_speedup_end_to_end"]
            row["speedup_decode"] = row["plain"]["static_speedup_decode"]
            row["agreement_with_plain"] = row["plain"]["agreement_with_static"]
        generation.release(model)
        results["batches"][str(batch)] = row
    del model
    generation.release()
    return results
