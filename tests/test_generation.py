"""The static-cache greedy decoder gives the same tokens as transformers' `generate`."""

from __future__ import annotations

import copy
import functools
import math
import shutil

import pytest
import torch
from tiny_models import make_tiny_lm

from latentbridge import generation
from latentbridge.bridge import build_inputs
from latentbridge.concat_projections import ConcatProjections
from latentbridge.generation import AnswerLineRule, generate, generate_tokens, plain_generate_tokens
from latentbridge.models import FrozenLM, load_frozen_lm
from latentbridge.split_k_products import SplitKProducts

PROMPTS = [
    "Q: Weng sold 12 clips in April and 7 clips in May. How many clips in total?\nA: Let's think step by step.",
    "Q: How many?\nA:",
    "Natalia baked 40 cookies.",
]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny_lm(request, tmp_path_factory):
    path = make_tiny_lm(tmp_path_factory.mktemp(request.param), arch=request.param, tokenizer="bpe", hidden=48, layers=3, seed=3)
    lm = load_frozen_lm(str(path))
    if request.param == "llama":
        _sharpen(lm.model)
    return lm


def _sharpen(model, gain: float = 2.0) -> None:
    """Larger random weights: at its default init the tiny llama writes one token forever,
    which would make token-for-token equality a weak check."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                std = 1.0 if "embed" in name else gain / param.shape[1] ** 0.5
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def _soft_prefixed(lm, seed: int = 0):
    """Left-padded rows of `[BOS] [4 soft tokens] text`, as the bridge builds them."""
    generator = torch.Generator().manual_seed(seed)
    soft = torch.randn(len(PROMPTS), 4, lm.hidden_size, generator=generator) * lm.embedding_rms
    return build_inputs(lm, PROMPTS, soft=soft)


def _reference_rows(lm, inputs, max_new_tokens, eos_ids):
    out = plain_generate_tokens(lm.model, inputs.inputs_embeds, inputs.attention_mask, max_new_tokens, eos_ids=eos_ids)
    rows = []
    for row in out.tolist():
        stop = next((i for i, t in enumerate(row) if t in eos_ids), len(row) - 1)
        rows.append(row[: stop + 1])
    return rows


@pytest.mark.parametrize("soft", [False, True])
def test_tokens_equal_plain_generate(tiny_lm, soft):
    inputs = _soft_prefixed(tiny_lm) if soft else build_inputs(tiny_lm, PROMPTS)
    assert inputs.attention_mask[:, 0].tolist().count(0) >= 1  # rows really are left-padded
    never = [len(tiny_lm.tokenizer) + 10]  # no EOS: every row runs the full length
    reference = _reference_rows(tiny_lm, inputs, 40, never)
    ours = generate_tokens(tiny_lm.model, inputs.inputs_embeds, inputs.attention_mask, 40).tokens
    assert ours == reference
    assert all(len(set(row)) > 5 for row in ours)  # the rows are not one repeated token


def test_rows_stop_where_plain_generate_stops(tiny_lm):
    """Per-row stopping at EOS: pick as EOS a token row 0 writes midway, so rows stop at different steps."""
    inputs = _soft_prefixed(tiny_lm, seed=1)
    free = generate_tokens(tiny_lm.model, inputs.inputs_embeds, inputs.attention_mask, 30).tokens
    eos = [free[0][12]]
    reference = _reference_rows(tiny_lm, inputs, 30, eos)
    ours = generate_tokens(
        tiny_lm.model, inputs.inputs_embeds, inputs.attention_mask, 30, stop=AnswerLineRule(None, eos)
    ).tokens
    assert ours == reference
    assert len(ours[0]) <= 13 and {len(r) for r in ours} != {30}


def test_generate_text_matches_the_stopping_criteria_path(tiny_lm):
    """`generate` (answer-line rule + EOS) gives the same text as transformers with `AnswerLineStop`."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class AnswerLineStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = tiny_lm.tokenizer.batch_decode(input_ids[:, -24:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            return torch.tensor([bool(generation._DONE.search(t)) for t in tails])

    inputs = build_inputs(tiny_lm, PROMPTS)
    out = tiny_lm.model.generate(
        inputs_embeds=inputs.inputs_embeds,
        attention_mask=inputs.attention_mask,
        max_new_tokens=24,
        do_sample=False,
        pad_token_id=tiny_lm.tokenizer.pad_token_id,
        stopping_criteria=StoppingCriteriaList([AnswerLineStop()]),
    )
    texts = tiny_lm.tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert generate(tiny_lm, inputs, 24) == [generation.cut_generation(t) for t in texts]


def test_answer_line_rule_stops_after_the_answer_line(tiny_lm):
    tok = tiny_lm.tokenizer
    ids = tok("In total 19 clips.\n#### 19\nQ: next", add_special_tokens=False)["input_ids"]
    rule = AnswerLineRule(tok, eos_ids=[])
    stops = [i for i in range(1, len(ids) + 1) if rule(ids[:i])]
    text_at_stop = tok.decode(ids[: stops[0]])
    assert text_at_stop.endswith("#### 19\n")


def test_engine_is_reused_and_released(tiny_lm):
    inputs = build_inputs(tiny_lm, PROMPTS)
    generate_tokens(tiny_lm.model, inputs.inputs_embeds, inputs.attention_mask, 8)
    engine = generation._ENGINES[tiny_lm.model]
    again = generate_tokens(tiny_lm.model, inputs.inputs_embeds, inputs.attention_mask, 8)
    assert generation._ENGINES[tiny_lm.model] is engine
    assert again.stats.new_tokens == [8, 8, 8] and again.stats.per_token_kv_bytes > 0
    # GQA counted: one KV head of head_dim 24, keys and values, float32, 3 layers
    assert again.stats.per_token_kv_bytes == 3 * 2 * 1 * 24 * 4
    generation.release(tiny_lm)
    assert tiny_lm.model not in generation._ENGINES
    # the model's own attention setting is untouched afterwards
    assert tiny_lm.model.config._attn_implementation != generation.ATTENTION_NAME


def _baseline_bridge(tiny_config, tmp_path, monkeypatch, questions: int = 4):
    """A bridge of the tiny pair with its model cache (baselines included) under tmp_path, and
    `questions` validation examples."""
    from latentbridge import baseline_cache
    from latentbridge.bridge import Bridge
    from latentbridge.data import load_splits
    from latentbridge.prompts import select_exemplars
    from latentbridge.train import load_models

    monkeypatch.setenv("LATENTBRIDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(baseline_cache.ENV, raising=False)
    splits = load_splits(tiny_config.data)
    exemplars = select_exemplars(splits.train, tiny_config.data.num_shots, tiny_config.data.fewshot_seed)
    return Bridge(tiny_config, *load_models(tiny_config), exemplars), splits.validation[:questions]


def test_text_baselines_are_cached_across_evaluations(tiny_config, tmp_path, monkeypatch):
    """A second evaluation with the same models and prompts reuses the cached outputs; a changed
    prompt (or max_new_tokens) generates again."""
    from latentbridge import baseline_cache, evaluate

    bridge, examples = _baseline_bridge(tiny_config, tmp_path, monkeypatch, questions=5)
    calls = []
    real_generate = evaluate.generate

    def counting(lm, inputs, max_new_tokens):
        rows = getattr(inputs, "suffix", inputs)  # after the shared few-shot prefix (prefix_cache.PrefixedInputs)
        calls.append(rows.attention_mask.shape[0])
        return real_generate(lm, inputs, max_new_tokens)

    monkeypatch.setattr(evaluate, "generate", counting)
    first = evaluate.text_baselines(bridge, examples, tiny_config.eval)
    assert calls and set(first) == {"source", "target"} and len(first["target"]) == 5
    assert len(list((tmp_path / "cache" / "baselines").glob("*.json"))) == 2

    calls.clear()
    again = evaluate.text_baselines(bridge, examples, tiny_config.eval)
    assert calls == [] and again == first  # reused, not generated

    changed = [examples[0].__class__(question=examples[0].question + " Then?", answer=examples[0].answer), *examples[1:]]
    evaluate.text_baselines(bridge, changed, tiny_config.eval)
    assert sum(calls) == 2 * len(changed)  # a changed prompt misses for both models

    calls.clear()
    import dataclasses

    longer = dataclasses.replace(tiny_config.eval, max_new_tokens=tiny_config.eval.max_new_tokens + 1)
    evaluate.text_baselines(bridge, examples, longer)
    assert calls

    calls.clear()
    monkeypatch.setenv(baseline_cache.ENV, "0")
    evaluate.text_baselines(bridge, examples, tiny_config.eval)
    assert calls  # switched off: generated again


def test_bucketing_keeps_question_order(tiny_config, monkeypatch):
    """Length bucketing changes the batches, not which output belongs to which question."""
    from latentbridge import evaluate

    seen = []

    def fake_generate(lm, inputs, max_new_tokens):
        seen.append(inputs)
        return [str(len(q)) for q in inputs]

    questions = ["a" * n for n in (3, 9, 1, 7, 5)]
    lengths = [len(q) for q in questions]
    monkeypatch.setattr(evaluate, "generate", fake_generate)
    config = tiny_config.eval.__class__(batch_size=2, num_questions=5, max_new_tokens=4)
    out = evaluate._answer(questions, lambda qs: qs, object(), config, "test", lengths)
    assert out == {i: str(len(q)) for i, q in enumerate(questions)}
    assert seen[0] == ["a" * 9, "a" * 7]  # the longest prompts share the first batch


def test_kv_bytes_count_sliding_window_layers_at_their_window(tiny_lm):
    inputs = build_inputs(tiny_lm, PROMPTS)
    stats = generate_tokens(tiny_lm.model, inputs.inputs_embeds, inputs.attention_mask, 8).stats
    kinds = list(getattr(tiny_lm.model.config.get_text_config(), "layer_types", None) or [])
    sliding = kinds.count("sliding_attention")
    assert stats.sliding_kv_bytes == sliding * 2 * 1 * 24 * 4  # those layers' share of a token
    context = stats.prompt_tokens[0] + stats.new_tokens[0]
    if sliding:  # tiny Gemma-3: window 16, the context is longer
        assert stats.sliding_window == 16 and context > 16
        full = stats.per_token_kv_bytes - stats.sliding_kv_bytes
        assert stats.kv_bytes(0) == full * context + stats.sliding_kv_bytes * 16 < stats.per_token_kv_bytes * context
    else:
        assert stats.kv_bytes(0) == stats.per_token_kv_bytes * context


def _large_copies_in_one_decode_step(model, prefix, embeds, mask) -> list[str]:
    """Profile one decode step of `model` after `prefix` (read once for the batch); return the
    aten::clone / copy_ / cat calls on a tensor of at least batch x cache slots elements. clone
    and copy_ are judged by their recorded input shapes; cat by the bytes it allocates (its
    output: the profiler records no shapes for a tensor list)."""
    from torch.profiler import profile

    batch = embeds.shape[0]
    with torch.no_grad():
        generate_tokens(model, embeds, mask, 2, prefix=prefix)  # builds (and warms) the engine
        engine = generation._ENGINES[model]
        slots = engine.max_len
        with generation._use_static_attention(model):
            engine.prefill(embeds, mask, prefix)
            with profile(record_shapes=True, profile_memory=True) as prof:
                engine.decode(1)
    generation.release(model)
    assert engine.decode_prefix is prefix
    large = []
    for event in prof.events():
        if event.name in ("aten::clone", "aten::copy_"):
            elements = max((math.prod(shape) for shape in event.input_shapes if shape), default=1)
        elif event.name == "aten::cat":
            elements = event.cpu_memory_usage // 4  # float32
        else:
            continue
        if elements >= batch * slots:
            large.append(f"{event.name} {event.input_shapes} ({elements} elements)")
    return large


def test_a_prefix_once_decode_step_copies_nothing_of_batch_times_slots(monkeypatch):
    """A decode step reading a shared prefix once (GQA: 2 query heads a KV head) copies no tensor
    that scales with batch x slots (the rows' keys and values, the scores and probabilities):
    no clone (a reshape of a strided view, an out-of-place masked_fill), no copy_, no cat."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from latentbridge.prefix_cache import SharedPrefix

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 64, (1, 80))
    with torch.no_grad():
        cache = DynamicCache()
        model.model(input_ids=ids, use_cache=True, past_key_values=cache)
    prefix = SharedPrefix(
        text_ids=tuple(ids[0].tolist()), ids=tuple(ids[0].tolist()),
        keys=tuple(layer.keys for layer in cache.layers), values=tuple(layer.values for layer in cache.layers),
    )
    embeds = torch.randn(4, 16, 32) * 0.02
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[1, :3] = mask[2, :7] = 0  # left padding between the prefix and a row's suffix
    calls = []
    once = generation._prefix_once_attention
    monkeypatch.setattr(generation, "_prefix_once_attention", lambda *args: calls.append(1) or once(*args))
    large = _large_copies_in_one_decode_step(model, prefix, embeds, mask)
    assert not large, "\n".join(large)
    # both decode steps (generate_tokens' one, then the profiled one) read the prefix once at every layer
    assert len(calls) == 2 * config.num_hidden_layers


# --------------------------------------------------------------------------- the compiled decode step


def _two_layer_lm(arch: str, device: str) -> torch.nn.Module:
    """A tiny float32 model of two layers (compiling on two cores is slow), GQA with two query
    heads a KV head: Llama sharpened so its text varies; Gemma-3 at its own init (sharpened, its
    scaled tied embeddings make it repeat its last token), one sliding-window layer (window 8) and
    one full-attention layer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    shape = dict(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape))
    else:
        config = Gemma3TextConfig(**shape, sliding_window=8, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=8)
        model = Gemma3ForCausalLM(config)
    if arch == "llama":
        _sharpen(model)
    return model.eval().to(device)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_the_compiled_decode_step_gives_the_eager_tokens(arch, device, monkeypatch):
    """`COMPILE_DECODE_ENV`: the decode step through torch.compile (in one graph, no break) gives
    the eager step's tokens, float32, without a shared prefix and with one read once for the batch
    (30 prefix tokens: the sliding layer's window of 8 hides most of them); on CUDA, as a captured
    CUDA graph. The eager step reads every slot but the last; the compiled one the written slots in
    buckets of 4 (`DECODE_WIDTH_BUCKET`: 3-4 widths a run, one compile each for all of them, a
    CUDA graph each), and the eager step in those buckets gives the same tokens too. An engine
    built with it is not reused without it, and its cache is freed with it."""
    import weakref

    from torch._dynamo.utils import counters

    from latentbridge.models import CPU_COMPILERS, FrozenLM
    from latentbridge.prefix_cache import compute_prefix

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the compiled step inside a CUDA graph needs a GPU (run on the device machine)")
    if device == "cpu" and not any(shutil.which(cxx) for cxx in CPU_COMPILERS):
        pytest.skip(f"inductor's CPU backend needs a C++ compiler ({', '.join(CPU_COMPILERS)}) and none is on PATH")
    model = _two_layer_lm(arch, device)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (3, 10), generator=generator).to(device)
    mask = torch.ones_like(ids)
    mask[1, :4] = mask[2, :7] = 0  # left padding of different amounts
    embeds = model.get_input_embeddings()(ids).detach()
    prefix = compute_prefix(FrozenLM(name=arch, model=model, tokenizer=None), torch.randint(3, 96, (30,), generator=generator).tolist())

    def run(shared) -> generation.GenerationResult:
        return generate_tokens(model, embeds, mask, 10, prefix=shared)

    monkeypatch.setattr(generation, "DECODE_WIDTH_BUCKET", 10**6)  # every slot the cache has but its last
    eager = {name: run(shared) for name, shared in (("alone", None), ("prefix", prefix))}
    assert all(not r.stats.compiled_decode for r in eager.values())
    monkeypatch.setattr(generation, "DECODE_WIDTH_BUCKET", 4)
    assert all(run(shared).tokens == eager[name].tokens for name, shared in (("alone", None), ("prefix", prefix)))
    assert eager["alone"].tokens != eager["prefix"].tokens  # the prefix is read
    assert all(len({t for row in r.tokens for t in row}) > 5 for r in eager.values())  # not one repeated token
    monkeypatch.setenv(generation.COMPILE_DECODE_ENV, "1")
    counters.clear()
    for name, shared in (("alone", None), ("prefix", prefix)):
        compiled = run(shared)
        assert compiled.tokens == eager[name].tokens, name
        assert compiled.stats.compiled_decode and compiled.stats.prefix_read_once == (shared is not None)
        assert compiled.stats.graphs == (device == "cuda")
    # a step compiled for each (no shared prefix / one read once): whole, with no graph break
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    engine = generation._ENGINES[model]
    cache = weakref.ref(engine.cache.layers[0].keys)
    del engine
    monkeypatch.delenv(generation.COMPILE_DECODE_ENV)
    again = run(prefix)  # the compiled engine is not reused uncompiled: replaced, and its cache freed
    assert not generation._ENGINES[model].compiled and cache() is None
    assert again.tokens == eager["prefix"].tokens
    generation.release(model)


def test_the_compile_switch_takes_yes_no_or_a_mode_and_refuses_anything_else(monkeypatch):
    """`COMPILE_DECODE_ENV`: yes/no words as every switch reads them, "max-autotune" or "frozen"; any other
    value raises, naming the variable, the value and the accepted values."""
    monkeypatch.delenv(generation.COMPILE_DECODE_ENV, raising=False)
    assert generation.compile_decode_mode() is None
    for value, mode in (("0", None), (" Off", None), ("1", "default"), ("yes", "default"), ("Max-Autotune", "max-autotune-no-cudagraphs"),
                        ("frozen", generation.FROZEN_DECODE_MODE), ("Frozen-Max-Autotune", generation.FROZEN_AUTOTUNE_MODE)):
        monkeypatch.setenv(generation.COMPILE_DECODE_ENV, value)
        assert generation.compile_decode_mode() == mode, value
    monkeypatch.setenv(generation.COMPILE_DECODE_ENV, "max-autotune-no-cudagraphs")  # the mode's own name is not a value
    with pytest.raises(ValueError) as raised:
        generation.compile_decode_mode()
    message = str(raised.value)
    assert "LATENTBRIDGE_COMPILE_DECODE='max-autotune-no-cudagraphs'" in message
    assert all(repr(word) in message for word in ("1", "yes", "0", "off", "max-autotune", "frozen")), message


def test_the_compile_mode_reaches_torch_compile(monkeypatch):
    """The mode the switch picks is the one torch.compile gets (whole graph; `dynamic=None`, as the
    engine marks its read width dynamic and nothing else), it is
    recorded in the stats, and an engine of one mode is not reused for another. torch.compile is
    replaced by a recorder that returns the step uncompiled: nothing compiles."""
    calls = []

    def recorder(fn, **options):
        calls.append(options)
        return fn

    monkeypatch.setattr(torch, "compile", recorder)
    # a fresh cache: no step compiled by an earlier test, none of the recorder's left for later ones
    monkeypatch.setattr(generation, "_compiled_step", functools.cache(generation._compiled_step.__wrapped__))
    model = _two_layer_lm("llama", "cpu")
    ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    embeds = model.get_input_embeddings()(ids).detach()
    eager = generate_tokens(model, embeds, mask, 5)
    frozen = generation.FROZEN_DECODE_MODE  # inductor's default mode with freezing (options: a backend of its own)
    autotune = {"max_autotune": True, "coordinate_descent_tuning": True}  # max-autotune-no-cudagraphs' options
    for value, mode, compiled in (("1", "default", "default"), ("max-autotune", "max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs"),
                                  ("frozen", frozen, None), ("frozen-max-autotune", generation.FROZEN_AUTOTUNE_MODE, None),
                                  ("frozen-split-k", generation.FROZEN_SPLIT_K_MODE, None)):
        monkeypatch.setenv(generation.COMPILE_DECODE_ENV, value)
        result = generate_tokens(model, embeds, mask, 5)
        if compiled is None:  # the frozen step: inductor's freezing and the pass joining products
            options = calls[-1].pop("options")
            passes = options.pop("post_grad_custom_pre_pass")
            if value == "frozen-split-k":  # joined first, then split
                assert [type(p) for p in passes.passes] == [ConcatProjections, SplitKProducts]
            else:
                assert isinstance(passes, ConcatProjections)
            assert options.pop("freezing") is True
            # CPU: products stay products the pass can join; autotuned too where the mode says so
            assert options == {"cpp.weight_prepack": False, **(autotune if value == "frozen-max-autotune" else {})}
        expected = {"mode": compiled} if compiled else {}
        assert calls[-1] == {**expected, "dynamic": None, "fullgraph": True}, value
        assert result.stats.compiled_decode == mode and generation._ENGINES[model].compile_mode == mode
        assert result.tokens == eager.tokens
    assert len(calls) == 5
    generation.release(model)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_frozen_decode_step_concatenates_projections_and_reads_each_models_own_weights(device, monkeypatch):
    """`COMPILE_DECODE_ENV=frozen`: inductor's freezing turns the weights into constants and
    `ConcatProjections` joins the projections that read one input (query, key and value of
    grouped-query shapes; gate and up), so the step runs fewer matrix products than the unfrozen
    compiled step: 7 a layer become 4, with the same tokens. A second
    model of the same shape with other weights gets its own tokens, not the first one's constants;
    `frozen-max-autotune` (autotuned as well) the eager tokens too."""
    from torch._dynamo.utils import counters

    from latentbridge.models import CPU_COMPILERS

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the frozen step on CUDA needs a GPU (run on the device machine)")
    if device == "cpu" and not any(shutil.which(cxx) for cxx in CPU_COMPILERS):
        pytest.skip(f"inductor's CPU backend needs a C++ compiler ({', '.join(CPU_COMPILERS)}) and none is on PATH")
    # count what these compiles do: no step an earlier test compiled, no graph from inductor's cache
    torch._dynamo.reset()
    monkeypatch.setattr(generation, "_compiled_step", functools.cache(generation._compiled_step.__wrapped__))
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    first, second = _two_layer_lm("llama", device), _two_layer_lm("llama", device)
    with torch.no_grad():
        for weight in second.parameters():
            weight.add_(0.3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(weight.numel())).to(device))
    ids = torch.randint(3, 96, (3, 10), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0

    def run(model) -> generation.GenerationResult:
        return generate_tokens(model, model.get_input_embeddings()(ids).detach(), mask, 10)

    eager = [run(model) for model in (first, second)]
    assert eager[0].tokens != eager[1].tokens
    products = {}
    for value in ("1", "frozen"):
        monkeypatch.setenv(generation.COMPILE_DECODE_ENV, value)
        counters.clear()
        assert run(first).tokens == eager[0].tokens, value
        products[value] = counters["inductor"]["extern_calls"]  # the matrix products left to aten / BLAS
        generation.release(first)
    assert products["1"] - products["frozen"] == 2 * 3  # two layers: q, k, v -> one; gate, up -> one
    frozen_second = run(second)
    assert frozen_second.tokens == eager[1].tokens and frozen_second.stats.compiled_decode == generation.FROZEN_DECODE_MODE
    monkeypatch.setenv(generation.COMPILE_DECODE_ENV, "frozen-max-autotune")  # the joined products autotuned too
    autotuned = run(first)
    assert autotuned.tokens == eager[0].tokens and autotuned.stats.compiled_decode == generation.FROZEN_AUTOTUNE_MODE
    monkeypatch.setattr(generation, "_processors", lambda: 64)  # every product of the tiny LM gets split
    monkeypatch.setenv(generation.COMPILE_DECODE_ENV, "frozen-split-k")
    split = run(first)
    assert split.tokens == eager[0].tokens and split.stats.compiled_decode == generation.FROZEN_SPLIT_K_MODE
    generation.release()
    torch._dynamo.reset()  # the frozen steps hold their weights as constants


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_decode_blas_library_holds_for_decode_steps_only(device, monkeypatch):
    """`DECODE_BLAS_ENV`: a CUDA decode's products go through the library named (here cuBLASLt),
    set for the decode steps and restored after, with the default's tokens; an engine built for one
    library is not reused for another, and its text baselines are cached apart. On a CPU there is
    nothing to choose: the tokens and torch's preference are untouched. A bad value names itself."""
    from latentbridge import baseline_cache

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("choosing a CUDA BLAS library needs a GPU (run on the device machine)")
    model = _two_layer_lm("llama", device)
    ids = torch.randint(3, 96, (3, 10), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)
    embeds = model.get_input_embeddings()(ids).detach()
    monkeypatch.delenv(generation.DECODE_BLAS_ENV, raising=False)
    default = generate_tokens(model, embeds, mask, 10)
    default_engine = generation._ENGINES[model]
    chosen, real = [], torch.backends.cuda.preferred_blas_library
    before = real() if device == "cuda" else None
    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library",
                        lambda backend=None: (chosen.append(backend), real(backend))[1])
    monkeypatch.setenv(generation.DECODE_BLAS_ENV, " cuBLASLt")
    lt = generate_tokens(model, embeds, mask, 10)
    assert lt.tokens == default.tokens
    assert generation._ENGINES[model] is not default_engine and generation._ENGINES[model].blas == "cublaslt"
    if device == "cuda":  # set for the steps, then torch's own preference again
        assert "cublaslt" in chosen and real() == before
    else:
        assert chosen == []
    generation.release(model)
    lm = FrozenLM(name="tiny", model=model, tokenizer=None)
    monkeypatch.setattr(baseline_cache, "weights_fingerprint", lambda model: "w")
    monkeypatch.setattr(baseline_cache, "tokenizer_fingerprint", lambda tokenizer: "t")
    with_lt = baseline_cache.key_material(lm, ["Q: 1?"], 8)
    monkeypatch.delenv(generation.DECODE_BLAS_ENV)
    assert (with_lt.get("decode_blas"), "decode_blas" in baseline_cache.key_material(lm, ["Q: 1?"], 8)) == (
        "cublaslt" if device == "cuda" else None, False)
    monkeypatch.setenv(generation.DECODE_BLAS_ENV, "mkl")
    with pytest.raises(ValueError, match=f"{generation.DECODE_BLAS_ENV}='mkl' .*cublaslt"):
        generate_tokens(model, embeds, mask, 10)


def test_the_cuda_graph_switch_reads_yes_and_no_words_as_every_switch_does(monkeypatch):
    """`GRAPHS_ENV`: on unless a no word ("0", "off", "No", ...); an explicit `graphs` argument wins,
    and a CPU never captures. Decided without a GPU: only the switch is read."""
    cuda = torch.device("cuda")
    monkeypatch.delenv(generation.GRAPHS_ENV, raising=False)
    assert generation._graphs_wanted(cuda, None)
    for value, wanted in (("0", False), (" Off", False), ("no", False), ("1", True), ("yes", True)):
        monkeypatch.setenv(generation.GRAPHS_ENV, value)
        assert generation._graphs_wanted(cuda, None) is wanted, value
        assert generation._graphs_wanted(cuda, True) and not generation._graphs_wanted(torch.device("cpu"), None)


def _counting_generate(monkeypatch):
    from latentbridge import evaluate

    calls, real = [], evaluate.generate
    monkeypatch.setattr(evaluate, "generate", lambda lm, inputs, n: calls.append(lm.name) or real(lm, inputs, n))
    return calls


def test_runs_needing_the_same_baselines_generate_them_once(tiny_config, tmp_path, monkeypatch, caplog):
    """While another process holds both entries (here a thread: flock locks each open file on its
    own), text_baselines waits for them and reads what the holder stored instead of generating."""
    import threading

    from latentbridge import baseline_cache, evaluate

    bridge, examples = _baseline_bridge(tiny_config, tmp_path, monkeypatch)
    texts = [bridge.prompt(ex.question) for ex in examples]
    n = tiny_config.eval.max_new_tokens
    calls = _counting_generate(monkeypatch)
    holding, results = threading.Event(), {}

    def other_run():
        with baseline_cache.claimed(bridge.source, texts, n), baseline_cache.claimed(bridge.target, texts, n):
            holding.set()
            for _ in range(600):  # until the waiter is blocked on the lock (30 s at most)
                if "another process is generating them" in caplog.text:
                    break
                threading.Event().wait(0.05)
            for lm in (bridge.source, bridge.target):
                baseline_cache.store(lm, texts, n, [f"{lm.name} answer {i}" for i in range(len(texts))])

    holder = threading.Thread(target=other_run)
    caplog.set_level("INFO", logger="latentbridge.baseline_cache")
    holder.start()
    holding.wait(30)
    results.update(evaluate.text_baselines(bridge, examples, tiny_config.eval))
    holder.join(30)
    assert calls == []  # nothing generated here
    assert results["source"] == [f"{bridge.source.name} answer {i}" for i in range(4)]
    assert results["target"] == [f"{bridge.target.name} answer {i}" for i in range(4)]


def test_a_waiter_gives_up_after_the_wait_and_generates_its_own(tiny_config, tmp_path, monkeypatch, caplog):
    import threading

    from latentbridge import baseline_cache, evaluate

    bridge, examples = _baseline_bridge(tiny_config, tmp_path, monkeypatch)
    texts = [bridge.prompt(ex.question) for ex in examples]
    calls = _counting_generate(monkeypatch)
    monkeypatch.setenv(baseline_cache.WAIT_ENV, "0")
    acquired, release = threading.Event(), threading.Event()

    def stuck_run():  # holds the source's entry and never stores it
        with baseline_cache.claimed(bridge.source, texts, tiny_config.eval.max_new_tokens):
            acquired.set()
            release.wait(60)

    holder = threading.Thread(target=stuck_run)
    holder.start()
    acquired.wait(30)
    try:
        out = evaluate.text_baselines(bridge, examples, tiny_config.eval)
    finally:
        release.set()
        holder.join(30)
    assert len(out["source"]) == 4 and bridge.source.name in calls
    assert "still holds them after 0 s (LATENTBRIDGE_BASELINE_WAIT_S); generating them here" in caplog.text


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_baseline_wait_names_the_variable_and_the_way_out(monkeypatch, value):
    from latentbridge import baseline_cache

    monkeypatch.setenv(baseline_cache.WAIT_ENV, value)
    with pytest.raises(ValueError, match=f"LATENTBRIDGE_BASELINE_WAIT_S='{value}' is not a number of seconds >= 0; set e.g."):
        baseline_cache.wait_seconds()


def test_a_tokenizer_is_fingerprinted_once_and_each_tokenizer_its_own(tiny_config, tmp_path, monkeypatch):
    """The baseline key reads the tokenizer's whole definition: once a tokenizer object (the claim,
    the lookup and the store each need the key), and two different tokenizers keep two prints."""
    from latentbridge import baseline_cache

    bridge, _ = _baseline_bridge(tiny_config, tmp_path, monkeypatch)
    tokenizer = bridge.target.tokenizer
    backend = tokenizer.backend_tokenizer
    reads = []
    monkeypatch.setattr(type(tokenizer), "backend_tokenizer", property(lambda self: reads.append(1) or backend))
    first = baseline_cache.tokenizer_fingerprint(tokenizer)
    for _ in range(3):
        baseline_cache.cache_key(bridge.target, ["Q: 1 + 1?"], 8)
    assert baseline_cache.tokenizer_fingerprint(tokenizer) == first and len(reads) <= 1
    monkeypatch.undo()
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<a-token-the-other-lacks>"])
    assert baseline_cache.tokenizer_fingerprint(other) != first
