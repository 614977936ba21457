"""Compiling the frozen models' decoder blocks (train.compile_frozen) changes speed, not results."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_lm
from torch._dynamo.utils import counters

from latentbridge.bridge import build_inputs
from latentbridge.config import ConfigError, RunConfig
from latentbridge.generation import generate_tokens, release
from latentbridge.models import load_frozen_lm

PROMPTS = [
    "Q: Weng sold 12 clips in April and 7 clips in May. How many clips in total?\nA:",
    "Q: How many?\nA:",
]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def eager_and_compiled(request, tmp_path_factory):
    path = make_tiny_lm(tmp_path_factory.mktemp(request.param), arch=request.param, tokenizer="bpe", hidden=48, layers=2, seed=3)
    eager, compiled = load_frozen_lm(str(path)), load_frozen_lm(str(path))
    assert compiled.compile_blocks() == 2
    return eager, compiled


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_blocks_give_the_eager_states_and_input_gradients(eager_and_compiled):
    eager, compiled = eager_and_compiled
    batch = eager.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    before = _graphs()
    for layer in (1, -1):
        torch.testing.assert_close(
            compiled.hidden_states(batch.input_ids, batch.attention_mask, layer=layer),
            eager.hidden_states(batch.input_ids, batch.attention_mask, layer=layer),
        )
    assert _graphs() > before, "the compiled model ran no compiled graph"

    # training's path: gradients flow through the frozen blocks to the input embeddings
    grads = []
    for lm in (eager, compiled):
        embeds = lm.embed(batch.input_ids).detach().requires_grad_(True)
        hidden = lm.model.base_model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        hidden.pow(2).mean().backward()
        grads.append(embeds.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


def test_generation_runs_compiled_blocks_eagerly_with_the_same_tokens(eager_and_compiled):
    eager, compiled = eager_and_compiled
    outputs = []
    for lm in (eager, compiled):
        inputs = build_inputs(lm, PROMPTS)
        before = _graphs()
        outputs.append(generate_tokens(lm.model, inputs.inputs_embeds, inputs.attention_mask, 12).tokens)
        assert _graphs() == before, "generation compiled a graph"
        release(lm.model)
    assert outputs[1] == outputs[0]


def test_compile_frozen_is_a_validated_boolean_option():
    assert RunConfig().train.compile_frozen is False
    assert RunConfig().override("train.compile_frozen=true").train.compile_frozen is True
    with pytest.raises(ConfigError, match="compile_frozen"):
        RunConfig().override("train.compile_frozen=sometimes")


def test_the_trainer_compiles_both_frozen_models_only_when_asked(tiny_config, tmp_path):
    from latentbridge.train import Trainer

    def compiled_layers(trainer):
        return [
            layer._compiled_call_impl is not None
            for lm in (trainer.bridge.source, trainer.bridge.target)
            for layer in lm.model.base_model.layers
        ]

    assert not any(compiled_layers(Trainer(tiny_config, tmp_path / "plain")))
    on = tiny_config.override("train.compile_frozen=true")
    assert all(compiled_layers(Trainer(on, tmp_path / "compiled")))


def test_compiling_on_a_cpu_without_a_compiler_is_refused_before_any_run(eager_and_compiled, monkeypatch):
    import shutil

    eager, _ = eager_and_compiled
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler .*train.compile_frozen=false"):
        eager.compile_blocks()
    assert all(layer._compiled_call_impl is None for layer in eager.model.base_model.layers)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_forwards_with_a_cache_leave_the_compiled_blocks_to_training(arch, tmp_path):
    """More layers than Dynamo's recompile limit (8). The shared prefix's keys and values, and the
    KL teacher's and content metrics' forwards that continue it, hand the blocks a cache: they run
    the blocks eagerly (compiled, each layer was a graph of its own, and past the limit every later
    call, training's included, ran eagerly). Training's forward then compiles, with the eager
    model's input gradients."""
    from latentbridge.prefix_cache import compute_prefix, continuing

    torch._dynamo.reset()  # the blocks' forward is one code object for every model of this process
    path = make_tiny_lm(tmp_path, arch=arch, tokenizer="bpe", hidden=48, layers=10, seed=3)
    eager, compiled = load_frozen_lm(str(path)), load_frozen_lm(str(path))
    assert compiled.compile_blocks() == 10
    prefix_ids = eager.tokenizer(PROMPTS[0]).input_ids
    batch = eager.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    before = _graphs()
    teacher = []
    for lm in (eager, compiled):
        reader = continuing(lm, compute_prefix(lm, prefix_ids))
        with torch.no_grad():
            out = reader.model.base_model(inputs_embeds=lm.embed(batch.input_ids), attention_mask=batch.attention_mask)
        teacher.append(out.last_hidden_state)
    assert _graphs() == before, "a forward with a cache compiled the blocks"
    torch.testing.assert_close(teacher[1], teacher[0])

    grads = []
    for lm in (eager, compiled):
        embeds = lm.embed(batch.input_ids).detach().requires_grad_(True)
        lm.model.base_model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state.pow(2).mean().backward()
        grads.append(embeds.grad)
    assert _graphs() > before, "training's forward ran no compiled graph"
    torch.testing.assert_close(grads[1], grads[0])
