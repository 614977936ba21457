"""Generation throughput at a reference shape: plain `generate` against the static decoder.

Plain `generate` runs three ways: from the prompt's embeddings (what the bridge must do: soft
tokens have no ids) with its dynamic cache (`plain`), and from the token ids with its dynamic
cache (`plain_ids`) and with its static cache (`plain_ids_static`, `cache_implementation="static"`).

For each batch size: a prompt of `prompt_tokens` real tokens (random ids, as embeddings) and
`new_tokens` new tokens forced (no stopping), bf16, random weights; with `prefix_tokens`, the
static decoder's rows start with a shared prefix of that many random ids (its keys and values
computed once, `latentbridge.prefix_cache`) before their own `prompt_tokens`. Reported per
system: time to first token (the prefill), decode time, decode tokens/s (new tokens after the
first over the decode time), end-to-end tokens/s (all new tokens over the whole call), and the
decode rate as a fraction of the memory-bandwidth bound: every decode step must read the
weights (less the input embedding table), a shared prefix's keys and values once (where the
decode reads it once for the batch) and each row's own KV cache at its current length, at the
measured copy bandwidth.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Sequence
from unittest import mock

import torch
from torch._dynamo.utils import counters

from latentbridge import generation
from latentbridge.bench.shapes import random_model, weight_bytes_read_per_step
from latentbridge.generation import generate_tokens, plain_generate_tokens, synchronize
from latentbridge.models import FrozenLM
from latentbridge.prefix_cache import SharedPrefix, compute_prefix



PLAIN_VARIANTS = {
    "plain": {},  # from embeddings, dynamic cache
    "plain_ids": {"from_ids": True},
    "plain_ids_static": {"from_ids": True, "cache_implementation": "static"},
}
"""transformers' `generate` variants the gen part times: name -> `_plain` options."""

STATIC_VARIANTS = {
    "static_matmul_attention": ({generation.DECODE_ATTENTION_ENV: "matmul"}, False),
    "static_prefix_per_row": ({generation.SHARED_PREFIX_DECODE_ENV: "0"}, True),
    "static_compiled": ({generation.COMPILE_DECODE_ENV: "1"}, None),
    "static_compiled_per_row": ({generation.COMPILE_DECODE_ENV: "1", generation.SHARED_PREFIX_DECODE_ENV: "0"}, True),
    "static_compiled_max_autotune": ({generation.COMPILE_DECODE_ENV: "max-autotune"}, None),
    "static_compiled_frozen": ({generation.COMPILE_DECODE_ENV: "frozen"}, None),
    "static_compiled_frozen_max_autotune": ({generation.COMPILE_DECODE_ENV: "frozen-max-autotune"}, None),
    "static_compiled_frozen_split_k": ({generation.COMPILE_DECODE_ENV: "frozen-split-k"}, None),
    "static_compiled_frozen_split_k_cublaslt": ({generation.COMPILE_DECODE_ENV: "frozen-split-k", generation.DECODE_BLAS_ENV: "cublaslt"}, None),
}
"""The static decoder with decode choices switched by their environment variables: name ->
(settings, where), `where` the value of `prefix_read_once` the variant runs at (None: both).
The per-row variants (each row reads its own copy) run only where the decode reads a shared
prefix once; `static_matmul_attention` only where it does not (every step of the prefix-once
decode goes through `generation._prefix_once_attention`, so the switch would change nothing);
the compiled ones (the decode step through torch.compile, in the CUDA graph; inductor's default
mode, "max-autotune-no-cudagraphs", or either with freezing) either way."""


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


def bound_tokens_per_s(
    model, batch: int, prompt: int, new: int, per_token_kv: int, bandwidth: float, shared_prefix: int = 0
) -> dict:
    """The decode rate if every step only read its bytes once at `bandwidth`: the weights, the
    first `shared_prefix` of the `prompt` tokens once for the whole batch (a shared prefix the
    decode reads once) and each row's own tokens after them."""
    weights = weight_bytes_read_per_step(model)
    own_context = prompt - shared_prefix + (new + 1) / 2
    kv = (shared_prefix + batch * own_context) * per_token_kv
    step_s = (weights + kv) / bandwidth
    return {"weights_bytes": weights, "kv_bytes_mean_step": kv, "shared_prefix_tokens": shared_prefix,
            "bound_step_s": step_s, "bound_tokens_per_s": batch / step_s}


def warm_stop(row: list[int]) -> bool:
    """Stops a warm-up call after a few steps: the cache is sized and the graph captured for
    the full length, without paying for the whole generation."""
    return len(row) >= 4


def _ours(model, embeds, mask, new: int, repeats: int, graphs: bool | None = None, prefix: SharedPrefix | None = None) -> dict:
    # sizes the cache, captures the graph
    warm = generate_tokens(model, embeds, mask, new, graphs=graphs, stop=warm_stop, prefix=prefix)
    runs = [generate_tokens(model, embeds, mask, new, graphs=graphs, prefix=prefix) for _ in range(repeats)]
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
        "prefix_read_once": stats.prefix_read_once,
        "compiled_decode": stats.compiled_decode,
        "peak_memory_bytes": stats.peak_memory_bytes,
    }


def _profile(model, embeds, mask, prefix: SharedPrefix | None, device: torch.device, path: Path, steps: int = 16) -> None:
    """Write the operator table of `steps` decode steps of the static decoder, without a CUDA
    graph (so each kernel is named), to `path`. The prefill runs before the profiler starts: its
    large copies and matrix products would otherwise crowd the table of a decode step."""
    from latentbridge.bench.hardware import profile_table

    generate_tokens(model, embeds, mask, steps + 1, graphs=False, prefix=prefix)  # sizes the engine, warms up
    engine = generation._ENGINES[model]
    with torch.no_grad(), generation._use_static_attention(model):
        engine.prefill(embeds, mask, prefix)
        synchronize(device)
        profile_table(lambda: engine.decode(steps), device, path)
    how = "".join((f", compiled (mode {engine.compile_mode})" if engine.compiled else "",
                   ", shared prefix read once" if engine.decode_prefix is not None else ""))
    header = (f"{steps} decode steps of the static decoder at batch {embeds.shape[0]}, without a CUDA graph{how}; "
              "the prefill ran before the profiler started (torch.profiler)\n")
    path.write_text(header + path.read_text())


def variant_profile(profile_to: Path, variant: str) -> Path:
    """Where the gen part writes the profile of a `STATIC_VARIANTS` member, beside `profile_to`."""
    return profile_to.with_name(f"{profile_to.stem}_{variant}{profile_to.suffix}")


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
    variants: Sequence[str] | None = None,
    prefix_tokens: int = 0,
    profile_to: Path | None = None,
    log=print,
) -> dict:
    """`prefix_tokens` > 0: every row starts with the same `prefix_tokens` random ids, which the
    static decoder reads as a shared prefix (keys and values computed once, before the timing)
    and plain `generate` as part of each prompt. With `profile_to`, a table of where 16 decode
    steps of the static decoder at the largest batch spend their device time (no CUDA graph, so
    each kernel is named; the prefill outside the profiler; torch.profiler) is written there, and
    one for each variant timed, under its settings (a compiled variant's own step), at
    `variant_profile(profile_to, name)`.
    `variants`: the `STATIC_VARIANTS` timed at the largest batch, on any device; None: all of
    them on CUDA, none elsewhere."""

    if variants is None:
        variants = list(STATIC_VARIANTS) if device.type == "cuda" else []
    model = random_model(shape, device=device, dtype=torch.bfloat16)
    prefix_ids, _ = _prompt_ids(model, 1, prefix_tokens, seed=0)
    prefix = None
    if prefix_tokens:
        prefix = compute_prefix(FrozenLM(name=shape, model=model, tokenizer=None), prefix_ids[0].tolist())
    results: dict = {"shape": shape, "prompt_tokens": prompt_tokens, "prefix_tokens": prefix_tokens,
                     "new_tokens": new_tokens, "batches": {}}
    for batch in batches:
        ids, mask = _prompt_ids(model, batch, prompt_tokens, seed=batch)
        embeds = model.get_input_embeddings()(ids)
        row: dict = {}
        ours = _ours(model, embeds, mask, new_tokens, repeats, prefix=prefix)
        row["static"] = {k: v for k, v in ours.items() if k != "tokens"}
        read_once = prefix_tokens if ours["prefix_read_once"] else 0
        row["bound"] = bound_tokens_per_s(model, batch, prefix_tokens + prompt_tokens, new_tokens,
                                          ours["per_token_kv_bytes"], bandwidth, shared_prefix=read_once)
        row["static"]["fraction_of_bound"] = ours["decode_tokens_per_s"] / row["bound"]["bound_tokens_per_s"]
        log(f"[gen] {shape} B={batch} static: ttft {ours['ttft_s']:.3f}s decode {ours['decode_s']:.3f}s "
            f"-> {ours['decode_tokens_per_s']:.0f} decode tok/s ({row['static']['fraction_of_bound']:.0%} of bound "
            f"{row['bound']['bound_tokens_per_s']:.0f}), {ours['tokens_per_s']:.0f} end-to-end tok/s, graphs={ours['graphs']}")
        for name in variants if batch == max(batches) else ():
            settings, where = STATIC_VARIANTS[name]
            if where is not None and where != ours["prefix_read_once"]:
                continue
            generation.release(model)
            products = counters["inductor"]["extern_calls"]
            with mock.patch.dict(os.environ, settings):
                variant = _ours(model, embeds, mask, new_tokens, repeats, prefix=prefix)
                if profile_to is not None:  # its kernels by name: the step it compiled, run without a graph
                    _profile(model, embeds, mask, prefix, device, variant_profile(profile_to, name))
            generation.release(model)
            row[name] = {k: v for k, v in variant.items() if k != "tokens"}
            # the products inductor left to aten/cuBLAS in the graphs this variant compiled (0: none
            # compiled, or a step compiled earlier reused): 7 a layer + the LM head unfused
            row[name]["compiled_extern_products"] = counters["inductor"]["extern_calls"] - products
            row[name]["agreement_with_static"] = _agreement(variant["tokens"], ours["tokens"])
            row[name]["fraction_of_bound"] = variant["decode_tokens_per_s"] / row["bound"]["bound_tokens_per_s"]
            log(f"[gen] B={batch} {name}: {variant['decode_tokens_per_s']:.0f} decode tok/s "
                f"({row[name]['fraction_of_bound']:.0%} of bound; static {ours['decode_tokens_per_s']:.0f}), "
                f"first call {variant['first_call_s']:.1f}s, {row[name]['compiled_extern_products']} products compiled, "
                f"{row[name]['agreement_with_static']['rows_identical']}/{batch} rows as static")
        if profile_to is not None and batch == max(batches):
            _profile(model, embeds, mask, prefix, device, profile_to)
            generation.release(model)
            results["profile"] = str(profile_to)
            log(f"[gen] profile of 16 eager decode steps (prefill excluded) at batch {batch}: {profile_to}")
        if device.type == "cuda" and batch == min(batches):
            short = min(new_tokens, 32)
            graphed = generate_tokens(model, embeds, mask, short, graphs=True, prefix=prefix).tokens
            generation.release(model)
            eager = generate_tokens(model, embeds, mask, short, graphs=False, prefix=prefix).tokens
            generation.release(model)
            row["graph_vs_eager"] = _agreement(graphed, eager)
        whole_ids = torch.cat([prefix_ids.expand(batch, -1), ids], 1)  # plain generate reads the prefix in each prompt
        whole_mask = torch.cat([torch.ones_like(whole_ids[:, :prefix_tokens]), mask], 1)
        for name, options in (PLAIN_VARIANTS.items() if plain else ()):
            generation.release(model)
            reference = _plain(model, whole_ids, whole_mask, new_tokens, **options)
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
