"""The no-translator baseline: source hidden states handed to the target as they are.

Each row keeps its first K real source tokens (in order, wherever the padding sits), zero
for the rest; the feature dimension is zero-padded or truncated to the target's width, and
each token is rescaled to the RMS of the target's input embeddings (zero rows stay zero).
Nothing here trains: there are no parameters, only the `target_rms` buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentbridge.config import TranslatorConfig


class PassthroughTranslator(nn.Module):
    def __init__(
        self, config: TranslatorConfig, *, source_dim: int, target_dim: int, target_rms: float
    ) -> None:
        super().__init__()
        self.config = config
        self.source_dim, self.target_dim = source_dim, target_dim
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """source (B, S, source_dim), source_mask (B, S) with 1 for real tokens -> (B, K, target_dim)."""
        k = self.config.num_tokens
        real = source_mask != 0
        # stable sort on "is padding": real positions first, in their original order
        order = torch.sort((~real).int(), dim=1, stable=True).indices[:, :k]
        kept = torch.gather(source, 1, order.unsqueeze(-1).expand(-1, -1, source.shape[-1]))
        kept = kept * torch.gather(real, 1, order).unsqueeze(-1).to(kept.dtype)
        kept = F.pad(kept, (0, 0, 0, k - kept.shape[1]))  # fewer than K source positions
        x = kept[..., : self.target_dim].float()
        x = F.pad(x, (0, self.target_dim - x.shape[-1]))
        rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
        scale = torch.where(rms > 0, self.target_rms / rms.clamp(min=1e-12), torch.zeros_like(rms))
        return (x * scale).to(source.dtype)
