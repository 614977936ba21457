"""Translators: modules that map source hidden states to K soft tokens for the target."""

from __future__ import annotations

from torch import nn

from latentbridge.config import TranslatorConfig
from latentbridge.translators.cross_attention import CrossAttentionTranslator
from latentbridge.translators.dit import DiTBridgeTranslator, teacher_batch
from latentbridge.translators.passthrough import PassthroughTranslator
from latentbridge.translators.soft_prompt import SoftPromptTranslator

KINDS = {
    "cross_attention": CrossAttentionTranslator,
    "dit": DiTBridgeTranslator,
    "passthrough": PassthroughTranslator,
    "soft_prompt": SoftPromptTranslator,
}


def build_translator(
    config: TranslatorConfig, *, source_dim: int, target_dim: int, target_rms: float
) -> nn.Module:
    """The translator a config names, sized for a source and target pair."""
    if config.kind not in KINDS:
        raise NotImplementedError(f"translator.kind={config.kind!r} is not built yet")
    return KINDS[config.kind](
        config, source_dim=source_dim, target_dim=target_dim, target_rms=target_rms
    )


__all__ = [
    "build_translator",
    "CrossAttentionTranslator",
    "DiTBridgeTranslator",
    "PassthroughTranslator",
    "SoftPromptTranslator",
    "teacher_batch",
]
