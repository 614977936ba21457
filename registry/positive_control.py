"""Has the tool shown, on this target model, that it can see a question cross a bridge?

A verdict on a bridge (it carries the question or it does not; it beats its controls or not) is
only as good as the pipeline and the content metrics that produced it. The positive control
tests both where the answer is known: the target bridged to itself (suite `positive-control`:
source = target, so everything the target needs is in the source's hidden states). A working
pipeline must carry the question there: `content/bits_transmitted_low` above
`min_bits_transmitted` and `content/retrieval_top1` at least `positive_control_min_retrieval`.

Until the latest finished positive control on a run's target model in the store has passed, the
registry judges nothing about that run's content or accuracy (`registry.verdict`, rule
`no_positive_control`); collapse and degradation, which read the answers alone, are still
called. The control is looked up by target model, not by code version: the verdict names the
control it relied on (run, commit, figures) so that a reader sees how old it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from latentbridge.metric_names import BITS_LOW, RETRIEVAL, TEST_PREFIX
from registry.facts import suite_runs

log = logging.getLogger(__name__)

SUITE = "positive-control"


@dataclass(frozen=True)
class PositiveControl:
    """A finished positive-control bridge on `model` that carried the question."""

    model: str
    run_id: str
    name: str
    commit: str
    split: str  # "test" (the held-out test evaluation) or "validation" (its final one)
    bits_low: float
    retrieval: float

    def text(self) -> str:
        return (
            f"positive control {self.name} (run {self.run_id[:12]}, commit {self.commit[:12]}), passed on {self.model}"
            f" ({self.split}: bits transmitted {self.bits_low:.3g} at the low end of its interval, retrieval top-1 {self.retrieval:.3f})"
        )


def passed(metrics: Mapping[str, float], min_bits: float, min_retrieval: float) -> tuple[str, float, float] | None:
    """(split, bits_low, retrieval) when a positive-control run's metrics say it carried the
    question: its held-out test evaluation when it has one, else its final validation one."""
    for split, prefix in (("test", TEST_PREFIX), ("validation", "")):
        bits_low, retrieval = metrics.get(prefix + BITS_LOW), metrics.get(prefix + RETRIEVAL)
        if bits_low is not None and retrieval is not None:
            ok = bits_low > min_bits and retrieval >= min_retrieval
            return (split, float(bits_low), float(retrieval)) if ok else None
    return None


def _is_bridge_to_itself(run: Run, model: str) -> bool:
    params = run.data.params
    return (
        run.info.status == "FINISHED"
        and params.get("translator.kind") != "soft_prompt"
        and params.get("source_model") == params.get("target_model") == model
    )


def find(mlflow_client: MlflowClient, model: str, min_bits: float, min_retrieval: float) -> PositiveControl | None:
    """The latest finished positive control on `model` in the store (any experiment) when it
    passed, else None: a later control that failed (the pipeline broke since) outweighs an older
    pass."""
    experiment_ids = [e.experiment_id for e in mlflow_client.search_experiments()]
    runs = [r for r in suite_runs(mlflow_client, experiment_ids, SUITE) if _is_bridge_to_itself(r, model)] if experiment_ids else []
    if not runs:
        return None
    latest = runs[-1]  # suite_runs: oldest first
    result = passed(latest.data.metrics, min_bits, min_retrieval)
    if result is None:
        log.warning(
            "the latest positive control on %s, run %s, did not show the question crossing (or logged no content"
            " metrics): no bridge into %s is judged", model, latest.info.run_id, model,
        )
        return None
    split, bits_low, retrieval = result
    params = latest.data.params
    return PositiveControl(
        model, latest.info.run_id, params.get("name", latest.info.run_name or ""),
        latest.data.tags.get("git_commit", "unknown"), split, bits_low, retrieval,
    )


class Lookup:
    """`find` once per target model (an analysis judges many runs of few targets)."""

    def __init__(self, mlflow_client: MlflowClient, min_bits: float, min_retrieval: float) -> None:
        self.mlflow_client, self.min_bits, self.min_retrieval = mlflow_client, min_bits, min_retrieval
        self.found: dict[str, PositiveControl | None] = {}

    def __call__(self, model: str) -> PositiveControl | None:
        if model not in self.found:
            self.found[model] = find(self.mlflow_client, model, self.min_bits, self.min_retrieval)
        return self.found[model]
