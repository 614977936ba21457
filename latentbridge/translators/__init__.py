"""Translators: modules that map source hidden states to K soft tokens for the target."""

from __future__ import annotations

from torch import nn

from latentbridge.config import TranslatorConfig
from latentbridge.translators.cross_attention import CrossAttentionTranslator


def build_translator(
    config: TranslatorConfig, *, source_dim: int, target_dim: int, target_rms: float
) -> nn.Module:
    """The translator a config names, sized for a source and target pair."""
    if config.kind == "cross_attention":
        return CrossAttentionTranslator(
            config, source_dim=source_dim, target_dim=target_dim, target_rms=target_rms
        )
    raise NotImplementedError(f"translator.kind={config.kind!r} is not built yet")


__all__ = ["build_translator", "CrossAttentionTranslator"]
