"""The diffusion-transformer (DiT) bridge, trained by rectified flow.

The source states are conditioned (a square Linear, identity at init), pooled to one vector
(masked mean, or attention pooling with a learned query) and passed through an MLP; a
timestep embedding is added to give the conditioning vector c. `dit_depth` DiT blocks over
K tokens read c through AdaLN-Zero: shift, scale and gate come from a zero-initialised
Linear, so every block starts as the identity.

Rectified flow runs in a normalised space where a target embedding has RMS 1: the teacher
x1 is divided by `target_rms`, the noise x0 ~ N(0, I) (per-token RMS about 1, matching the
teacher), x_t = (1 - t) x0 + t x1 and the network predicts v = x1 - x0. Sampling is Euler
from t=0 to t=1; each resulting token is rescaled to `target_rms`, as the cross-attention
translator does.

Evaluation noise is drawn from a generator seeded with `dit_noise_seed`, created per call,
and is the same for every row of the batch: a question's soft tokens depend only on the
weights and the question, never on the global RNG, its batch or the rank that evaluates it.

Optimizer note: parameters whose names end in `_gate` get a higher learning rate. The AdaLN
gates here are per-channel activations produced by the `modulation` Linears, not
parameters, so no parameter in this module is named `*_gate`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latentbridge.config import TranslatorConfig


def sinusoidal(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Sin/cos features of `positions` (any shape) -> (*shape, width)."""
    half = width // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.float().unsqueeze(-1) * freqs
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, width - 2 * half))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class SourceConditioner(nn.Module):
    """Source states -> one conditioning vector per row (B, width)."""

    def __init__(self, source_dim: int, width: int, pool: str) -> None:
        super().__init__()
        self.proj = nn.Linear(source_dim, source_dim)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.pool = pool
        # attention pooling: a zero query gives uniform weights, i.e. starts as the mean
        self.pool_query = nn.Parameter(torch.zeros(source_dim)) if pool == "attention" else None
        self.mlp = nn.Sequential(
            nn.RMSNorm(source_dim),
            nn.Linear(source_dim, width),
            nn.SiLU(),
            nn.Linear(width, width),
        )

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        states = self.proj(source)
        real = source_mask.to(states.dtype).unsqueeze(-1)  # (B, S, 1)
        if self.pool_query is None:
            pooled = (states * real).sum(1) / real.sum(1).clamp(min=1.0)
        else:
            scores = states @ self.pool_query / math.sqrt(states.shape[-1])
            scores = scores.masked_fill(source_mask == 0, torch.finfo(scores.dtype).min)
            pooled = (scores.softmax(dim=-1).unsqueeze(-1) * states).sum(1)
        return self.mlp(pooled)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as in DiT) through an MLP."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(1000.0 * t, self.width).to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """Self-attention and a GELU MLP, each modulated (shift, scale, gate) by c: AdaLN-Zero."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(4 * width, width),
            nn.Dropout(dropout),
        )
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mods = self.modulation(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = mods
        h = modulate(self.attn_norm(x), shift_attn, scale_attn)
        x = x + gate_attn * self.attn(h, h, h, need_weights=False)[0]
        h = modulate(self.mlp_norm(x), shift_mlp, scale_mlp)
        return x + gate_mlp * self.mlp(h)


class DiTBridgeTranslator(nn.Module):
    def __init__(
        self, config: TranslatorConfig, *, source_dim: int, target_dim: int, target_rms: float
    ) -> None:
        super().__init__()
        self.config = config
        width = config.dit_width
        self.conditioner = SourceConditioner(source_dim, width, config.dit_pool)
        self.time_embed = TimestepEmbedder(width)
        self.in_proj = nn.Linear(target_dim, width)
        # learned positions (sinusoidal init): the K tokens differ only by where they sit
        self.positions = nn.Parameter(sinusoidal(torch.arange(config.num_tokens), width))
        self.blocks = nn.ModuleList(
            DiTBlock(width, config.dit_heads, config.dropout) for _ in range(config.dit_depth)
        )
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        self.out_proj = nn.Linear(width, target_dim)
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    @property
    def dtype(self) -> torch.dtype:
        return self.in_proj.weight.dtype

    def condition(self, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """The source part of c (B, dit_width); the timestep part is added per step."""
        return self.conditioner(source.to(self.dtype), source_mask)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, K, target_dim) in the normalised space, t (B,) -> predicted x1 - x0."""
        c = cond + self.time_embed(t)
        h = self.in_proj(x) + self.positions
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)
        return self.out_proj(modulate(self.final_norm(h), shift, scale))

    def _noise(self, batch: int, device: torch.device) -> torch.Tensor:
        shape = (self.config.num_tokens, self.out_proj.out_features)
        if self.training:
            return torch.randn(batch, *shape, device=device, dtype=self.dtype)
        generator = torch.Generator(device=device).manual_seed(self.config.dit_noise_seed)
        noise = torch.randn(1, *shape, generator=generator, device=device, dtype=torch.float32)
        return noise.to(self.dtype).expand(batch, -1, -1)

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """Euler-sample K soft tokens: (B, S, source_dim), (B, S) -> (B, K, target_dim).

        Training mode: `dit_steps_train` steps from fresh noise, gradients through every step.
        Eval mode: `dit_steps_eval` steps from the seeded noise (deterministic).
        """
        cond = self.condition(source, source_mask)
        steps = self.config.dit_steps_train if self.training else self.config.dit_steps_eval
        x = self._noise(source.shape[0], source.device)
        for i in range(steps):
            t = torch.full((source.shape[0],), i / steps, device=source.device, dtype=self.dtype)
            x = x + self.velocity(x, t, cond) / steps
        rms = x.float().pow(2).mean(dim=-1, keepdim=True).add(1e-6).sqrt()
        return (x * (self.target_rms / rms)).to(self.dtype)

    def flow_loss(
        self,
        source: torch.Tensor,
        source_mask: torch.Tensor,
        teacher: torch.Tensor,
        teacher_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Rectified-flow MSE on the velocity at a random t, over the teacher's real positions.

        teacher (B, K, target_dim) are target input embeddings, zero-padded/truncated to K;
        teacher_mask (B, K) is 1 at real positions. Values under the padding are ignored.
        """
        real = teacher_mask.to(self.dtype).unsqueeze(-1)
        x1 = teacher.to(self.dtype) / self.target_rms.to(self.dtype) * real
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device, dtype=self.dtype)
        xt = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * x1
        v = self.velocity(xt, t, self.condition(source, source_mask))
        err = (v - (x1 - x0)).float().pow(2).mean(dim=-1) * real.squeeze(-1).float()
        return err.sum() / real.float().sum().clamp(min=1.0)


def teacher_batch(rows: Sequence[torch.Tensor], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row teacher embeddings (L_i, D) -> (B, K, D) zero-padded/truncated, and a (B, K) mask."""
    width = rows[0].shape[-1]
    teacher = rows[0].new_zeros(len(rows), num_tokens, width)
    mask = torch.zeros(len(rows), num_tokens, dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        n = min(row.shape[0], num_tokens)
        teacher[i, :n] = row[:n]
        mask[i, :n] = 1
    return teacher, mask
