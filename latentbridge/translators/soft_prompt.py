"""The no-source control: K learned soft tokens that read nothing.

Whatever the source's hidden states, every question gets the same K vectors (rescaled, like the
cross-attention translator's output, to the RMS of the target's input embeddings). Trained by
the same loop on the same data, it is what a bridge that carries no question reduces to: in the
bridge's prompt mode it is the floor a bridge must beat (the no-source control), and with the
question's text after it (`eval.prompt_mode=soft_plus_question` or `soft_plus_text`) it is the
trained text control, the target reading the question with the same K trained vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from latentbridge.config import TranslatorConfig


class SoftPromptTranslator(nn.Module):
    reads_source = False  # the bridge skips the source's forward pass

    def __init__(
        self, config: TranslatorConfig, *, source_dim: int, target_dim: int, target_rms: float
    ) -> None:
        super().__init__()
        self.config = config
        self.prompt = nn.Parameter(torch.randn(config.num_tokens, target_dim) * 0.02)
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    def forward(self, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """(B, K, target_dim): the same K vectors for every row; `source` only gives B."""
        x = self.prompt
        rms = x.float().pow(2).mean(dim=-1, keepdim=True).add(1e-6).sqrt()
        x = (x * (self.target_rms / rms)).to(self.prompt.dtype)
        return x.unsqueeze(0).expand(source.shape[0], -1, -1)
