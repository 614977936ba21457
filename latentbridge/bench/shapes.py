"""Reference model shapes built from configs alone (no downloads), with random weights.

`llama3.1-8b` and `mistral-7b` follow the published configs of Llama-3.1-8B and
Mistral-7B-v0.3 (the reference study's target and source shapes); `tiny-*` are the same
architectures a thousand times smaller, for the CPU smoke run and the tests. Random
weights give meaningless text but the exact cost: the same matrices, the same cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedModel


@dataclass(frozen=True)
class Shape:
    name: str
    arch: str  # "llama" or "mistral"
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float
    tie_embeddings: bool = False
    llama3_rope: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def config(self):
        common = dict(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab,
            max_position_embeddings=131072 if self.llama3_rope else 32768,
            rms_norm_eps=1e-5,
            tie_word_embeddings=self.tie_embeddings,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        if self.arch == "llama":
            rope = {"rope_type": "default", "rope_theta": self.rope_theta}
            if self.llama3_rope:
                rope = {
                    "rope_type": "llama3",
                    "rope_theta": self.rope_theta,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                }
            return LlamaConfig(**common, rope_parameters=rope)
        return MistralConfig(**common, sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})

    # ------------------------------------------------------------------ counts
    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def block_params(self) -> int:
        """Parameters of the transformer blocks and the final norm (no embeddings, no head)."""
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp + 2 * self.hidden) + self.hidden

    @property
    def total_params(self) -> int:
        head = 0 if self.tie_embeddings else self.embedding_params
        return self.embedding_params + self.block_params + head

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


SHAPES = {
    s.name: s
    for s in (
        Shape("llama3.1-8b", "llama", 4096, 14336, 32, 32, 8, 128256, 500000.0, llama3_rope=True),
        Shape("mistral-7b", "mistral", 4096, 14336, 32, 32, 8, 32768, 1000000.0),
        Shape("tiny-llama", "llama", 128, 256, 2, 4, 2, 512, 10000.0),
        Shape("tiny-mistral", "mistral", 96, 192, 2, 4, 2, 384, 10000.0),
    )
}
"""Reference target (Llama-3.1-8B) and source (Mistral-7B-v0.3), and tiny stand-ins."""


def random_model(shape: Shape | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> PreTrainedModel:
    """The shape's model with random weights, built directly on `device` in `dtype`, frozen."""
    shape = SHAPES[shape] if isinstance(shape, str) else shape
    cls = LlamaForCausalLM if shape.arch == "llama" else MistralForCausalLM
    torch.manual_seed(seed)
    config = shape.config()
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    model.to(dtype=dtype).eval().requires_grad_(False)
    return model


def weight_bytes_read_per_step(model: PreTrainedModel) -> int:
    """Bytes of weights one decode step must read: every parameter but the input embedding
    table (only B rows of it are read), unless that table is also the output head."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if embed.data_ptr() != head.data_ptr():
        total -= embed.numel() * embed.element_size()
    return total
