"""Sharing the few-shot prefix's keys and values changes no token and no logit beyond rounding.

Tiny random Llama and Gemma-3 (sliding window 16, far shorter than the ~300-token prompts, so
the sliding layers' masks matter), rows of different lengths, each path against the same
batch built without sharing; in decode, the prefix read once for the batch against each row
reading its own copy, and proof that the rows' copies are not read.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_generation import _sharpen, tiny_lm  # noqa: F401 (the fixture: tiny Llama and tiny Gemma-3 with a 16-token window)
from tiny_models import make_tiny_lm

from latentbridge import generation, prefix_cache
from latentbridge.bridge import build_inputs, tokenize
from latentbridge.data import Example
from latentbridge.losses import answer_logits, answer_nll
from latentbridge.models import load_frozen_lm
from latentbridge.prefix_cache import PrefixedInputs
from latentbridge.prompts import fewshot_prompt

EXEMPLARS = [
    Example(question=f"Ken sold {a} eggs in April and {b} in May. How many eggs?", answer=f"{a} + {b} = {a + b}\n#### {a + b}")
    for a, b in ((3, 4), (12, 30), (7, 8))
]
QUESTIONS = [
    "How many?",
    "Weng sold 12 clips in April and 7 clips in May. How many clips in total?",
    "Tina baked 40 cookies and gave away 9 of them to Randy. How many cookies are left?",
]
ANSWERS = [" 3 clips.\n#### 3\n", " 12 + 7 = 19 clips in total.\n#### 19\n", " 40 - 9 = 31\n#### 31\n"]
PREFIX = prefix_cache.fewshot_prefix(EXEMPLARS)
TEXTS = [fewshot_prompt(EXEMPLARS, q) for q in QUESTIONS]


def _window(lm) -> int | None:
    text = lm.model.config.get_text_config()
    return text.sliding_window if "sliding_attention" in (getattr(text, "layer_types", None) or []) else None


def _recording_logits(monkeypatch) -> list[torch.Tensor]:
    """Every engine forward's last-position logits, in order (prefill, then each decode step)."""
    seen: list[torch.Tensor] = []
    forward = generation._Engine._forward

    def recording(self, **inputs):
        out = forward(self, **inputs)
        seen.append(out.logits[:, -1].float().clone())
        return out

    monkeypatch.setattr(generation._Engine, "_forward", recording)
    return seen


def test_split_ids_are_the_whole_prompts_ids(tiny_lm):
    shared = prefix_cache.generation_inputs(tiny_lm, PREFIX, TEXTS)
    assert isinstance(shared, PrefixedInputs)
    prefix = shared.prefix
    assert prefix.ids[: -len(prefix.text_ids)] == tuple(tiny_lm.tokenizer("", add_special_tokens=True)["input_ids"])
    rows = prefix_cache.suffix_ids(tiny_lm, prefix, TEXTS)
    assert [list(prefix.text_ids) + row for row in rows] == tokenize(tiny_lm, TEXTS)
    assert len({len(r) for r in rows}) == len(rows)  # rows of different lengths: the suffixes are padded
    window = _window(tiny_lm)
    if window is not None:
        assert prefix.length > 4 * window  # the sliding layers see a window, not the prefix


def test_a_boundary_that_tokenizes_differently_is_not_shared(tiny_lm):
    """Cut a word in two where BPE merges it: the prefix's ids are then not the text's first
    ids, and the batch is built unshared; told what follows, the prefix keeps only the ids the
    text really starts with, and shares those exactly."""
    text = TEXTS[1]
    whole = tokenize(tiny_lm, [text])[0]
    cut = next(c for c in range(len(PREFIX) + 5, len(text)) if tokenize(tiny_lm, [text[:c]])[0] != whole[: len(tokenize(tiny_lm, [text[:c]])[0])])
    prefix = prefix_cache.shared_prefix(tiny_lm, text[:cut])
    assert prefix_cache.suffix_ids(tiny_lm, prefix, [text]) is None
    prefix_cache.release(tiny_lm)
    inputs = prefix_cache.generation_inputs(tiny_lm, text[:cut], [text])
    assert isinstance(inputs, PrefixedInputs)
    assert len(inputs.prefix.text_ids) < len(tokenize(tiny_lm, [text[:cut]])[0])
    assert list(inputs.prefix.text_ids) + prefix_cache.suffix_ids(tiny_lm, inputs.prefix, [text])[0] == whole
    prefix_cache.release(tiny_lm)


def test_a_prefix_ending_on_a_merged_blank_line_shares_the_ids_before_it():
    """SmolLM2's byte-level BPE: the exemplars end on one "\n\n" token alone, but a prompt goes on
    "\n" "\n" "Q": the shared ids stop before the blank line, and every prompt starts with them."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["Q: Ken sold 3 eggs.\nA: 3\n\nQ: Ann has 4 pens.\nA: 4\n\n"] * 50
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    lm = SimpleNamespace(tokenizer=PreTrainedTokenizerFast(tokenizer_object=backend))
    prefix_text = "Q: Ken sold 3 eggs.\nA: 3\n\n"
    prompts = [prefix_text + "Q: Ann has 4 pens.\nA:", prefix_text + "Q: Bo has 12 cards.\nA:"]
    alone = tokenize(lm, [prefix_text])[0]
    assert tokenize(lm, prompts)[0][: len(alone)] != alone  # the hazard: the text's own ids are not the prompt's
    shared = prefix_cache.common_ids(lm, prefix_text, prompts[0])
    assert len(shared) == len(alone) - 1  # all but the blank line
    assert all(row[: len(shared)] == list(shared) for row in tokenize(lm, prompts))


def test_generation_after_the_shared_prefix_matches_the_full_prompt(tiny_lm, monkeypatch):
    """Same tokens, same logits at the prefill and at every decode step (float32 rounding)."""
    logits = _recording_logits(monkeypatch)
    full = build_inputs(tiny_lm, TEXTS)
    assert full.attention_mask[:, 0].tolist().count(0) == 2  # left-padded without sharing
    expected = generation.generate_tokens(tiny_lm.model, full.inputs_embeds, full.attention_mask, 24)
    unshared_logits = list(logits)
    logits.clear()
    shared = prefix_cache.generation_inputs(tiny_lm, PREFIX, TEXTS)
    result = generation.generate_tokens(tiny_lm.model, shared.suffix.inputs_embeds, shared.suffix.attention_mask, 24, prefix=shared.prefix)
    assert result.tokens == expected.tokens
    assert all(len(set(row)) > 3 for row in result.tokens)  # not one repeated token
    assert len(logits) == len(unshared_logits) == 24
    for ours, reference in zip(logits, unshared_logits):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert result.stats.prompt_tokens == expected.stats.prompt_tokens  # the prefix is counted in each row
    assert result.stats.shared_prefix_tokens == shared.prefix.length
    assert result.stats.prompt_length == shared.prefix.length + shared.suffix.inputs_embeds.shape[1]


def test_generate_text_after_the_shared_prefix_matches(tiny_lm):
    """Through `generate` (the answer-line rule and EOS), as the text baselines call it."""
    full = generation.generate(tiny_lm, build_inputs(tiny_lm, TEXTS), 16)
    assert generation.generate(tiny_lm, prefix_cache.generation_inputs(tiny_lm, PREFIX, TEXTS), 16) == full


def test_teacher_forced_logits_after_the_shared_prefix_match(tiny_lm):
    """What the KL teacher and the content metrics' text NLL compute, with and without sharing."""
    full = build_inputs(tiny_lm, TEXTS, answers=ANSWERS, max_answer_tokens=12)
    scorer, shared = prefix_cache.scoring_inputs(tiny_lm, PREFIX, TEXTS, ANSWERS, max_answer_tokens=12)
    assert scorer is not tiny_lm and shared.inputs_embeds.shape[1] < full.inputs_embeds.shape[1]
    for first_n in (None, 5):
        expected, labels, order = answer_logits(tiny_lm, full, first_n=first_n)
        ours, our_labels, our_order = answer_logits(scorer, shared, first_n=first_n)
        assert torch.equal(our_labels, labels) and torch.equal(our_order, order)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(answer_nll(scorer, shared), answer_nll(tiny_lm, full), rtol=1e-5, atol=1e-4)


def test_sharing_switched_off_builds_the_full_rows(tiny_lm, monkeypatch):
    monkeypatch.setenv(prefix_cache.ENV, "0")
    assert not isinstance(prefix_cache.generation_inputs(tiny_lm, PREFIX, TEXTS), PrefixedInputs)
    scorer, inputs = prefix_cache.scoring_inputs(tiny_lm, PREFIX, TEXTS, ANSWERS)
    assert scorer is tiny_lm and torch.equal(inputs.labels, build_inputs(tiny_lm, TEXTS, answers=ANSWERS).labels)
    monkeypatch.delenv(prefix_cache.ENV)
    # a text that does not start with the prefix (the cue alone) is never shared
    scorer, _ = prefix_cache.scoring_inputs(tiny_lm, PREFIX, ["A: Let's think step by step."], ANSWERS[:1])
    assert scorer is tiny_lm


def test_the_prefix_is_computed_once_a_model(tiny_lm, monkeypatch):
    prefix_cache.release(tiny_lm)
    calls = []
    real = tiny_lm.model.base_model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("inputs_embeds").shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_lm.model.base_model, "forward", counting)
    for batch in (TEXTS[:2], TEXTS[2:]):
        prefix_cache.generation_inputs(tiny_lm, PREFIX, batch)
        prefix_cache.scoring_inputs(tiny_lm, PREFIX, batch, ANSWERS[: len(batch)])
    assert len(calls) == 1 and calls[0][0] == 1  # one batch-1 forward over the prefix


# --------------------------------------------------------------------------- the prefix read once in decode


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def decode_lm(request, tmp_path_factory):
    """Tiny float32 Llama (sharpened, so its text varies), and a tiny Gemma-3 of six layers:
    five sliding-window layers (window 16, far shorter than the prefix, so their masks hide
    most prefix slots from a decode step) and one full-attention layer."""
    layers = 3 if request.param == "llama" else 6
    folder = tmp_path_factory.mktemp(request.param)
    path = make_tiny_lm(folder, arch=request.param, tokenizer="bpe", hidden=48, layers=layers, seed=3)
    lm = load_frozen_lm(str(path))
    if request.param == "llama":
        _sharpen(lm.model)
    else:
        kinds = lm.model.config.get_text_config().layer_types
        assert "full_attention" in kinds and "sliding_attention" in kinds
    return lm


def _generate_shared(lm, shared: PrefixedInputs, new_tokens: int = 24) -> generation.GenerationResult:
    suffix = shared.suffix
    return generation.generate_tokens(lm.model, suffix.inputs_embeds, suffix.attention_mask, new_tokens, prefix=shared.prefix)


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_reading_the_prefix_once_in_decode_changes_no_token(decode_lm, attention, monkeypatch):
    """Three ways, same tokens and the same logits at every step (float32 rounding): the whole
    prompts unshared; the prefix shared, each row reading its own copy in decode (switched
    off); and the prefix read once for the batch, through `_prefix_once_attention` at every
    layer of every decode step."""
    if attention == "matmul":
        monkeypatch.setenv(generation.DECODE_ATTENTION_ENV, "matmul")
    calls = []
    once = generation._prefix_once_attention

    def counting(*args):
        calls.append(args[0].shape[0])
        return once(*args)

    monkeypatch.setattr(generation, "_prefix_once_attention", counting)
    logits = _recording_logits(monkeypatch)
    full = build_inputs(decode_lm, TEXTS)
    unshared = generation.generate_tokens(decode_lm.model, full.inputs_embeds, full.attention_mask, 24)
    runs = {"unshared": (unshared, list(logits))}
    shared = prefix_cache.generation_inputs(decode_lm, PREFIX, TEXTS)
    assert len(set(shared.suffix.attention_mask.sum(-1).tolist())) == len(TEXTS)  # suffixes of different lengths
    for name, switch in (("per_row", "0"), ("once", "1")):
        monkeypatch.setenv(generation.SHARED_PREFIX_DECODE_ENV, switch)
        logits.clear()
        calls.clear()
        result = _generate_shared(decode_lm, shared)
        runs[name] = (result, list(logits))
        assert result.stats.prefix_read_once == (switch == "1")
        assert len(calls) == (23 * decode_lm.num_layers if switch == "1" else 0)
    assert calls == [len(TEXTS)] * len(calls)  # the whole batch in one call a layer
    (once, once_logits), (per_row, per_row_logits) = runs["once"], runs["per_row"]
    assert once.tokens == per_row.tokens == unshared.tokens
    assert all(len(set(row)) > 3 for row in once.tokens)  # not one repeated token
    window = _window(decode_lm)
    if window is not None:  # the window leaves prefix slots out of every decode step
        assert shared.prefix.length > 4 * window
    for reference in (per_row_logits, runs["unshared"][1]):
        assert len(once_logits) == len(reference) == 24
        for ours, theirs in zip(once_logits, reference):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_decode_does_not_read_the_rows_copies_of_the_prefix(decode_lm, monkeypatch):
    """NaN in every row's copy of slots [0, P) once the prefill has run: reading the prefix once
    gives the tokens it gives unpoisoned; each row reading its own copy (switched off) does not,
    so the poison sits where a per-row read would find it."""
    shared = prefix_cache.generation_inputs(decode_lm, PREFIX, TEXTS)
    expected = _generate_shared(decode_lm, shared, 12).tokens
    prefill = generation._Engine.prefill

    def poisoned(self, embeds, mask, prefix=None):
        prefill(self, embeds, mask, prefix)
        for layer in self.cache.layers:
            layer.keys[:, :, : prefix.length] = float("nan")
            layer.values[:, :, : prefix.length] = float("nan")

    monkeypatch.setattr(generation._Engine, "prefill", poisoned)
    assert _generate_shared(decode_lm, shared, 12).tokens == expected
    monkeypatch.setenv(generation.SHARED_PREFIX_DECODE_ENV, "0")
    per_row = _generate_shared(decode_lm, shared, 12).tokens
    assert [row[0] for row in per_row] == [row[0] for row in expected]  # the prefill reads the rows' copies before the poison
    assert per_row != expected


def test_read_bytes_count_the_shared_prefix_once_a_step():
    """Rows of 4 after a 100-token prefix, 10 bytes a token (4 of them in sliding layers, window
    8): read once, a row counts its own tokens and a quarter of the prefix's part a step."""
    stats = generation.GenerationStats(
        batch=4, prompt_length=120, prompt_tokens=[110, 120, 115, 108], new_tokens=[5, 3, 1, 9], steps=8,
        prefill_s=0.0, decode_s=0.0, graphs=False, cache_len=129, cache_bytes=0, per_token_kv_bytes=10,
        sliding_kv_bytes=4, sliding_window=8, shared_prefix_tokens=100, prefix_read_once=True,
    )
    per_row = dataclasses.replace(stats, prefix_read_once=False)
    for row in range(4):
        contexts = [stats.prompt_tokens[row] + t for t in range(1, stats.new_tokens[row])]
        assert per_row.kv_read_bytes(row) == sum(6 * c + 4 * 8 for c in contexts)
        # own tokens: all in full layers, the last 8 in sliding ones (all past the prefix here)
        own = sum(6 * (c - 100) + 4 * 8 for c in contexts)
        assert stats.kv_read_bytes(row) == own + sum(6 * 100 for _ in contexts) // 4
    # prompts of 103 tokens: for the first steps the sliding layers' window reaches into the prefix
    short = dataclasses.replace(stats, prompt_tokens=[103] * 4)
    contexts = range(104, 108)  # row 0's 4 decode steps
    own = sum(6 * (c - 100) + 4 * min(c - 100, 8) for c in contexts)
    prefix = sum(6 * 100 + 4 * (8 - min(c - 100, 8)) for c in contexts)
    assert short.kv_read_bytes(0) == own + prefix // 4


def test_the_bandwidth_bound_reads_a_shared_prefix_once():
    from latentbridge.bench.generation_bench import bound_tokens_per_s
    from latentbridge.bench.shapes import random_model

    model = random_model("tiny-llama", dtype=torch.float32)
    per_row = bound_tokens_per_s(model, 8, 1100, 31, 10, 1e9)
    once = bound_tokens_per_s(model, 8, 1100, 31, 10, 1e9, shared_prefix=1000)
    assert per_row["kv_bytes_mean_step"] == 8 * (1100 + 16) * 10
    assert once["kv_bytes_mean_step"] == (1000 + 8 * (100 + 16)) * 10
    assert once["bound_tokens_per_s"] > per_row["bound_tokens_per_s"]


# --------------------------------------------------------------------------- the callers


@pytest.fixture
def tiny_bridge(tiny_config):
    from latentbridge.bridge import Bridge
    from latentbridge.data import load_splits
    from latentbridge.prompts import select_exemplars
    from latentbridge.train import load_models

    def build(*overrides: str):
        config = tiny_config.override(*overrides) if overrides else tiny_config
        splits = load_splits(config.data)
        exemplars = select_exemplars(splits.train, config.data.num_shots, config.data.fewshot_seed)
        bridge = Bridge(config, *load_models(config), exemplars)
        for lm in (bridge.source, bridge.target):
            prefix_cache.release(lm)
        return bridge, splits

    return build


def _both_ways(monkeypatch, fn):
    """`fn()` with sharing on (checking the shared path ran), then off."""
    built = []
    real = prefix_cache._shared_rows

    def spying(*args):
        built.append(real(*args) is not None)
        return real(*args)

    monkeypatch.setattr(prefix_cache, "_shared_rows", spying)
    shared = fn()
    assert built and all(built)  # every few-shot batch went through the shared prefix
    monkeypatch.setenv(prefix_cache.ENV, "0")
    try:
        return shared, fn()
    finally:
        monkeypatch.delenv(prefix_cache.ENV)


def test_text_baselines_are_the_same_with_and_without_sharing(tiny_bridge, monkeypatch):
    from latentbridge import baseline_cache, evaluate

    monkeypatch.setenv(baseline_cache.ENV, "0")
    bridge, splits = tiny_bridge("eval.max_new_tokens=12", "eval.batch_size=3")
    shared, unshared = _both_ways(monkeypatch, lambda: evaluate.text_baselines(bridge, splits.validation[:5], bridge.config.eval))
    assert shared == unshared and len(shared["source"]) == len(shared["target"]) == 5


def test_the_kl_teacher_is_the_same_with_and_without_sharing(tiny_bridge, monkeypatch):
    from latentbridge.bridge import TranslatorStep
    from latentbridge.losses import compute_losses

    bridge, splits = tiny_bridge("loss.kl_weight=1.0", "loss.kl_tokens=4", "train.max_answer_tokens=16")
    step = TranslatorStep(bridge.translator)
    examples = splits.train[:3]
    warm = bridge.config.optim.warmup_steps
    shared, unshared = _both_ways(monkeypatch, lambda: compute_losses(bridge, examples, warm, step))
    assert shared["kl"] > 0
    torch.testing.assert_close(shared["kl"], unshared["kl"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(shared["total"], unshared["total"], rtol=1e-4, atol=1e-6)


def test_content_text_nlls_are_the_same_with_and_without_sharing(tiny_bridge, monkeypatch):
    """soft_plus_text: the text rows and the no-question rows (the exemplars and the cue) share."""
    from latentbridge.content import content_metrics

    bridge, splits = tiny_bridge("eval.prompt_mode=soft_plus_text")
    run = lambda: content_metrics(bridge, splits.validation[:4], negatives_count=2, seed=0, batch_size=2).records  # noqa: E731
    shared, unshared = _both_ways(monkeypatch, run)
    for ours, reference in zip(shared, unshared):
        for key in ("nll_bits_text", "nll_bits_no_question", "nll_bits_own"):
            assert ours[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-4)


def test_baseline_cache_keys_say_whether_the_prefix_was_shared(tiny_bridge, monkeypatch):
    """Shared outputs get their own entries; unshared ones keep the keys they had before."""
    from latentbridge import baseline_cache

    bridge, _ = tiny_bridge()
    prompts = TEXTS
    shared = baseline_cache.key_material(bridge.target, prompts, 8)
    monkeypatch.setenv(generation.SHARED_PREFIX_DECODE_ENV, "0")
    per_row_decode = baseline_cache.key_material(bridge.target, prompts, 8)
    monkeypatch.setenv(prefix_cache.ENV, "0")
    unshared = baseline_cache.key_material(bridge.target, prompts, 8)
    assert shared == {**unshared, "shared_prefix": True, "prefix_read_once": True}
    assert per_row_decode == {**unshared, "shared_prefix": True} and "shared_prefix" not in unshared
    monkeypatch.setenv(generation.COMPILE_DECODE_ENV, "1")  # a compiled decode step gets its own entries too, a mode's own
    assert baseline_cache.key_material(bridge.target, prompts, 8) == {**unshared, "compiled_decode": "default"}
    monkeypatch.setenv(generation.COMPILE_DECODE_ENV, "max-autotune")
    assert baseline_cache.key_material(bridge.target, prompts, 8) == {**unshared, "compiled_decode": "max-autotune-no-cudagraphs"}


def test_baseline_cache_keys_say_whether_decode_attention_was_two_products(tiny_bridge, monkeypatch):
    """LATENTBRIDGE_DECODE_ATTENTION=matmul rounds decode attention its own way (the same tokens only
    up to rounding, as a shared prefix): its baselines are not reused for SDPA's, nor SDPA's for it;
    the default keeps the key it had."""
    from latentbridge import baseline_cache

    bridge, _ = tiny_bridge()
    monkeypatch.delenv(generation.DECODE_ATTENTION_ENV, raising=False)
    sdpa, sdpa_key = baseline_cache.key_material(bridge.target, TEXTS, 8), baseline_cache.cache_key(bridge.target, TEXTS, 8)
    assert "decode_attention" not in sdpa
    monkeypatch.setenv(generation.DECODE_ATTENTION_ENV, "matmul")
    assert baseline_cache.key_material(bridge.target, TEXTS, 8) == {**sdpa, "decode_attention": "matmul"}
    assert baseline_cache.cache_key(bridge.target, TEXTS, 8) != sdpa_key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
def test_reading_the_prefix_once_under_cuda_graphs(decode_lm, monkeypatch):
    """On a GPU the decode step is a captured CUDA graph: reading the prefix once gives the tokens
    of each row reading its own copy and of eager stepping, and a second prefix (the graph was
    captured with the first one's tensors) is captured again rather than read stale."""
    import copy

    from latentbridge.models import FrozenLM

    lm = FrozenLM(name=decode_lm.name, model=copy.deepcopy(decode_lm.model).to("cuda"), tokenizer=decode_lm.tokenizer)
    first = prefix_cache.generation_inputs(lm, PREFIX, TEXTS)
    other_exemplars = EXEMPLARS[1:] + EXEMPLARS[:1]
    second = prefix_cache.generation_inputs(
        lm, prefix_cache.fewshot_prefix(other_exemplars), [fewshot_prompt(other_exemplars, q) for q in QUESTIONS]
    )

    def tokens(shared: PrefixedInputs, **options) -> list[list[int]]:
        s = shared.suffix
        result = generation.generate_tokens(lm.model, s.inputs_embeds, s.attention_mask, 16, prefix=shared.prefix, **options)
        assert result.stats.graphs == options.get("graphs", True)
        return result.tokens

    eager = {name: tokens(shared, graphs=False) for name, shared in (("first", first), ("second", second))}
    assert eager["first"] != eager["second"]
    assert tokens(first) == eager["first"]
    assert tokens(second) == eager["second"]  # the same engine, a new prefix: captured again
    monkeypatch.setenv(generation.SHARED_PREFIX_DECODE_ENV, "0")
    assert tokens(first) == eager["first"]


def test_the_kl_teacher_reads_only_the_answer_tokens_its_logits_see(tiny_bridge, monkeypatch):
    """The teacher's first `kl_tokens` logits are the same with the answers cut after them."""
    from latentbridge.bridge import TranslatorStep
    from latentbridge.losses import compute_losses

    bridge, splits = tiny_bridge("loss.kl_weight=1.0", "loss.kl_tokens=4", "train.max_answer_tokens=16")
    step, examples, warm = TranslatorStep(bridge.translator), splits.train[:3], bridge.config.optim.warmup_steps
    real, seen = prefix_cache.scoring_inputs, []

    def spy(lm, prefix, texts, answers, max_answer_tokens=None):
        seen.append(max_answer_tokens)
        return real(lm, prefix, texts, answers, max_answer_tokens)

    monkeypatch.setattr(prefix_cache, "scoring_inputs", spy)
    cut = compute_losses(bridge, examples, warm, step)
    monkeypatch.setattr(prefix_cache, "scoring_inputs", lambda lm, prefix, texts, answers, _: real(lm, prefix, texts, answers, 16))
    whole = compute_losses(bridge, examples, warm, step)
    assert seen == [4] and cut["kl"] > 0
    torch.testing.assert_close(cut["kl"], whole["kl"], rtol=1e-4, atol=1e-6)
