"""Tiny, randomly initialised language models for unit tests, built offline in well under a second.

Two tokenizers make the two ends of a bridge differ the way real models do:

- "char": one token per character (printable ASCII and newline), adds `<bos>` like Gemma.
- "bpe":  byte-level BPE trained on a small arithmetic word-problem corpus, adds no `<bos>` like SmolLM2.

Both represent digits, '#', ':', spaces and newlines, so "#### 42" round-trips.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

Arch = Literal["llama", "gemma3"]
TokenizerKind = Literal["char", "bpe"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"

_NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Randy"]
_ITEMS = ["clips", "apples", "pages", "marbles", "cookies", "dollars", "books", "eggs", "pencils", "stickers"]
_VERBS = ["sold", "bought", "read", "found", "baked", "earned", "gave away", "collected"]


def word_problem_corpus(lines: int = 300, seed: int = 0) -> list[str]:
    """Deterministic GSM8K-flavoured lines: questions, worked steps and '#### N' answers."""
    rng = random.Random(seed)
    corpus: list[str] = []
    for _ in range(lines // 3):
        name, item, verb = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_VERBS)
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        corpus.append(f"{name} {verb} {a} {item} in April and {b} {item} in May. How many {item} in total?")
        corpus.append(f"In total: {a} + {b} = {a + b} {item}.\n{a} * 2 = {a * 2}, {b} - 1 = {b - 1}")
        corpus.append(f"#### {a + b}")
    return corpus


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable-ASCII character or newline; `<bos>` prepended."""
    alphabet = [PAD, BOS, EOS, UNK] + list(string.printable[:95]) + ["\n"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(alphabet))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return _wrap(backend)


def bpe_tokenizer(vocab_size: int = 400, seed: int = 0) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `word_problem_corpus`; every byte is representable."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(word_problem_corpus(seed=seed), trainer=trainer)
    return _wrap(backend)


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    unk = UNK if backend.token_to_id(UNK) is not None else None
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=unk,
        clean_up_tokenization_spaces=False,
    )


def make_tiny_lm(
    dirpath: str | Path,
    *,
    arch: Arch = "llama",
    tokenizer: TokenizerKind = "char",
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny random causal LM and its tokenizer to `dirpath`; return the path."""
    tok = char_tokenizer() if tokenizer == "char" else bpe_tokenizer(seed=seed)
    special = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    shape = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    model: PreTrainedModel
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, **special, tie_word_embeddings=True))
    elif arch == "gemma3":
        config = Gemma3TextConfig(**shape, **special, sliding_window=16, query_pre_attn_scalar=hidden // 2)
        model = Gemma3ForCausalLM(config)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    path = Path(dirpath)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_tiny_gguf(source_dir: str | Path, gguf_path: str | Path) -> Path:
    """Write a tiny *llama* model saved by `make_tiny_lm(..., tokenizer="bpe")` as an F32 GGUF.

    Weights go through llama.cpp's q/k permutation so a faithful reader recovers them exactly.
    """
    import gguf

    model = LlamaForCausalLM.from_pretrained(source_dir)
    tok = PreTrainedTokenizerFast.from_pretrained(source_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)

    backend = tok.backend_tokenizer
    vocab = backend.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    specials = {PAD, BOS, EOS}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in specials else 1 for token in tokens])  # 3 = CONTROL
    merges = json.loads(backend.to_str())["model"]["merges"]  # only the serialized form exposes them
    writer.add_token_merges([" ".join(pair) for pair in merges])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(False)

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for name, tensor in _gguf_tensors(model, heads, kv_heads):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(gguf_path)


def _gguf_tensors(model: LlamaForCausalLM, heads: int, kv_heads: int) -> list[tuple[str, np.ndarray]]:
    renames = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    out: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", model.model.embed_tokens.weight),
        ("output_norm.weight", model.model.norm.weight),
    ]
    for index, layer in enumerate(model.model.layers):
        for hf_name, gguf_name in renames.items():
            weight = layer.get_submodule(hf_name).weight
            if gguf_name == "attn_q":
                weight = _llama_cpp_permute(weight, heads)
            elif gguf_name == "attn_k":
                weight = _llama_cpp_permute(weight, kv_heads)
            out.append((f"blk.{index}.{gguf_name}.weight", weight))
    return [(name, weight.detach().float().numpy().copy()) for name, weight in out]


def _llama_cpp_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf q/k row permutation (rotary halves interleaved)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )
