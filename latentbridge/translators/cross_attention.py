"""The bottlenecked gated cross-attention translator.

K learned queries (orthogonal init) of width d pass through `depth` blocks of
self-attention, cross-attention to the source hidden states, and a SwiGLU feed-forward.
Each residual branch is scaled by tanh(gate) with the gate at 0, so every block starts as
the identity. The result is projected to the target's width and rescaled so each soft
token has the RMS of the target's input embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentbridge.config import TranslatorConfig


class SwiGLU(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        hidden = int(2 * 4 * width / 3)
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


class GatedBlock(nn.Module):
    """Self-attention over the queries, cross-attention to the source, feed-forward."""

    def __init__(self, width: int, source_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.RMSNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.self_gate = nn.Parameter(torch.zeros(()))
        self.cross_norm = nn.RMSNorm(width)
        self.source_norm = nn.RMSNorm(source_dim)
        self.cross_attn = nn.MultiheadAttention(
            width, heads, dropout=dropout, kdim=source_dim, vdim=source_dim, batch_first=True
        )
        self.cross_gate = nn.Parameter(torch.zeros(()))
        self.ffn_norm = nn.RMSNorm(width)
        self.ffn = SwiGLU(width, dropout)
        self.ffn_gate = nn.Parameter(torch.zeros(()))

    def forward(
        self, x: torch.Tensor, source: torch.Tensor, source_padding: torch.Tensor
    ) -> torch.Tensor:
        h = self.self_norm(x)
        x = x + torch.tanh(self.self_gate) * self.self_attn(h, h, h, need_weights=False)[0]
        q, kv = self.cross_norm(x), self.source_norm(source)
        attended = self.cross_attn(q, kv, kv, key_padding_mask=source_padding, need_weights=False)
        x = x + torch.tanh(self.cross_gate) * attended[0]
        return x + torch.tanh(self.ffn_gate) * self.ffn(self.ffn_norm(x))


class CrossAttentionTranslator(nn.Module):
    def __init__(
        self, config: TranslatorConfig, *, source_dim: int, target_dim: int, target_rms: float
    ) -> None:
        super().__init__()
        self.config = config
        self.queries = nn.Parameter(torch.empty(config.num_tokens, config.width))
        nn.init.orthogonal_(self.queries)
        self.blocks = nn.ModuleList(
            GatedBlock(config.width, source_dim, config.heads, config.dropout)
            for _ in range(config.depth)
        )
        self.out_norm = nn.RMSNorm(config.width)
        self.out_proj = nn.Linear(config.width, target_dim)
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """source (B, S, source_dim), source_mask (B, S) with 1 for real tokens -> (B, K, target_dim)."""
        dtype = self.queries.dtype
        source = source.to(dtype)
        padding = source_mask == 0
        x = self.queries.unsqueeze(0).expand(source.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, source, padding)
        x = self.out_proj(self.out_norm(x))
        rms = x.float().pow(2).mean(dim=-1, keepdim=True).add(1e-6).sqrt()
        return (x * (self.target_rms / rms)).to(dtype)
