"""Bad run-config values fail at once with a ConfigError naming the key (issue 13, bad input)."""

from __future__ import annotations

import math

import pytest

from latentbridge.config import ConfigError, OptimConfig, RunConfig


@pytest.mark.parametrize(
    "assignment,key",
    [
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=-inf", "optim.lr"),
        ("loss.lm_weight=nan", "loss.lm_weight"),
        ("optim.grad_clip=nan", "optim.grad_clip"),
        ("optim.beta1=nan", "optim.beta1"),
        ("translator.dropout=nan", "translator.dropout"),
        ("translator.adapter_scale=inf", "translator.adapter_scale"),
        ("train.collapse_invalid_jump=nan", "train.collapse_invalid_jump"),
    ],
)
def test_non_finite_float_override_is_refused_naming_the_key(assignment: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}=.*must be a finite number"):
        RunConfig().override(assignment)


def test_non_finite_float_is_refused_when_built_directly_or_from_a_dict() -> None:
    with pytest.raises(ConfigError, match="optim.weight_decay=nan"):
        OptimConfig(weight_decay=math.nan)
    with pytest.raises(ConfigError, match="loss.kl_weight=inf"):
        RunConfig.from_dict({"loss": {"kl_weight": math.inf}})


def test_finite_floats_still_pass() -> None:
    config = RunConfig().override("optim.lr=3e-4", "loss.lm_weight=0.5", "optim.grad_clip=2")
    assert config.optim.lr == 3e-4 and config.loss.lm_weight == 0.5 and config.optim.grad_clip == 2.0
