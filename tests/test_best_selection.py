"""Which evaluation's translator is kept as the best (saved, then tested): the highest bridged
accuracy, and on a tie the one carrying more content, so that a run whose accuracy sits at the
floor does not test its untrained step-0 translator."""

from __future__ import annotations

import pytest
import torch

from latentbridge.config import ConfigError, RunConfig
from latentbridge.metric_names import BITS_LOW, BRIDGED_ACCURACY
from latentbridge.train import Trainer


def _evaluate(trainer: Trainer, step: int, accuracy: float, bits: float | None) -> None:
    """What Trainer.evaluate hands keep_if_best at `step`, with the weights changed since the last."""
    trainer.step = step
    with torch.no_grad():
        for parameter in trainer.translator.parameters():
            parameter.fill_(float(step))
    metrics = {BRIDGED_ACCURACY: accuracy}
    if bits is not None:
        metrics[BITS_LOW] = bits
    trainer.keep_if_best(metrics)


def _kept_step(trainer: Trainer) -> float:
    """The step whose weights the best state holds (each evaluation filled every weight with its step)."""
    name = next(name for name, _ in trainer.translator.named_parameters())
    return float(trainer.best_state[name].flatten()[0])


def test_a_tie_at_the_floor_keeps_the_evaluation_carrying_more_content(tiny_config, tmp_path):
    trainer = Trainer(tiny_config, tmp_path / "run")
    assert tiny_config.train.best_tiebreak == "content_bits"
    _evaluate(trainer, 0, 0.0, 0.0)  # the untrained translator
    _evaluate(trainer, 250, 0.0, 5.0)  # same accuracy, content crossing: the new best
    assert (trainer.best_step, trainer.best_bits, trainer.evals_since_best) == (250, 5.0, 0)
    _evaluate(trainer, 500, 0.0, 3.0)  # tie, less content: kept as it was
    assert (trainer.best_step, trainer.evals_since_best) == (250, 1)
    _evaluate(trainer, 750, 0.01, 1.0)  # higher accuracy wins whatever the content
    assert (trainer.best_step, trainer.best_accuracy, trainer.best_bits) == (750, 0.01, 1.0)
    _evaluate(trainer, 1000, 0.005, 40.0)  # lower accuracy loses whatever the content
    assert trainer.best_step == 750 and _kept_step(trainer) == 750.0


def test_earliest_keeps_the_first_of_a_tie_as_before(tiny_config, tmp_path):
    config = tiny_config.override("train.best_tiebreak=earliest")
    trainer = Trainer(config, tmp_path / "run")
    _evaluate(trainer, 0, 0.0, 0.0)
    _evaluate(trainer, 250, 0.0, 5.0)
    assert trainer.best_step == 0 and trainer.evals_since_best == 1 and _kept_step(trainer) == 0.0


def test_without_content_metrics_a_tie_keeps_the_earliest(tiny_config, tmp_path):
    trainer = Trainer(tiny_config, tmp_path / "run")
    _evaluate(trainer, 0, 0.0, None)
    _evaluate(trainer, 250, 0.0, None)
    assert trainer.best_step == 0 and _kept_step(trainer) == 0.0


def test_an_unknown_tiebreak_is_refused_with_its_choices():
    with pytest.raises(ConfigError, match="best_tiebreak.*'latest'.*content_bits.*earliest"):
        RunConfig().override("train.best_tiebreak=latest")


def _facts(metrics: dict[str, float], curve: list[tuple[int, float]]):
    from registry.facts import RunFacts

    return RunFacts(
        run_id="r", name="tie", suite="", experiment_id="0", status="FINISHED", start_time=0,
        params={}, tags={}, metrics=metrics, history={BRIDGED_ACCURACY: curve}, evals=[],
    )


def test_the_registry_reports_the_step_the_trainer_kept():
    from latentbridge.metric_names import BEST_STEP

    curve = [(0, 0.0), (1000, 0.0), (2000, 0.0)]
    # the trainer kept step 2000 on the tie (more content): the registry says so, not step 0
    assert _facts({BEST_STEP: 2000.0}, curve).peak_step == 2000
    # a run that never logged its choice (it did not finish): the earliest of the highest so far
    assert _facts({}, [(0, 0.1), (1000, 0.3), (2000, 0.3)]).peak_step == 1000
    assert _facts({}, []).peak_step is None
