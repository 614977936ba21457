"""Collect a suite's finished training runs from MLflow, with their verdicts and final answers.

With `include_unfinished`, runs that did not finish (cut off by a lease, killed, crashed) but
logged at least one evaluation are kept too, judged on their last evaluation and labelled
`<name> [<status> at step N of M]` in every table, so a study cut short still reports what it
saw, and nobody mistakes a partial run for a finished one. A cut-off run that was later run
again to the end with the same params is replaced by that attempt (listed as skipped, with
`superseded_by`). A partial run is never taken as a trained control of a bridge: a control cut
off early was trained for less than the bridge it would be compared with.

Each run is scored on two evaluations: its final validation evaluation (the one the verdict
judges; validation also picked the best translator) and, when the trainer ran one, the test
evaluation of that best translator and the text baselines (reported, never used to select).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry import positive_control
from registry.errors import RegistryError
from latentbridge.metric_names import (
    BITS,
    BITS_HIGH,
    BITS_LOW,
    BRIDGED,
    BRIDGED_ACCURACY,
    LOSS_TERM_PREFIX,
    TEST_EVAL_FILE,
    TEST_FOLDER,
    EvalRecord,
)
from latentbridge.stats import bootstrap_ratio_interval
from registry.facts import (
    RunFacts,
    config_from_params,
    download_eval,
    matched_controls,
    run_facts,
    suite_runs,
)
from registry.prompt_length import try_mean_prompt_tokens
from registry.store import client, safe_uri
from registry.verdict import (
    Estimate,
    EvalScores,
    VerdictRules,
    collapse_flags,
    estimate,
    eval_scores,
    judge,
    paired_comparisons,
)

log = logging.getLogger(__name__)

LM_LOSS: Final = LOSS_TERM_PREFIX + "lm"  # the loss's language-modelling term: the answer NLL


@dataclass
class SuiteRun:
    facts: RunFacts
    label: str  # unique display name within the suite
    verdict: str | None = None
    verdict_rule: str = ""
    verdict_source: str = "computed"  # with the preserved version's verdict tag when it says otherwise
    validation: EvalScores | None = None  # of the final validation evaluation
    test: EvalScores | None = None  # of the test evaluation, when the run logged one
    preserved: str | None = None  # "MODEL/VERSION" when the run has a registered version
    comparisons: dict = field(default_factory=dict)  # control name -> verdict.Comparison
    test_comparisons: dict = field(default_factory=dict)  # the same on the test questions, when tested
    bits: tuple[float, float, float] | None = None  # content/bits_transmitted, low, high
    positive_control: str | None = None  # the passed positive control on its target the verdict relied on
    fraction_interval: tuple[float, float] | None = None  # of content/fraction_recovered
    evaluations: dict[int, Estimate] = field(default_factory=dict)  # step -> bridged validation accuracy, from its records
    status: str = "FINISHED"  # the MLflow run status; anything else is a partial run

    @property
    def partial(self) -> bool:
        return self.status != "FINISHED"

    def quality(self) -> tuple[str, Estimate] | None:
        """The bridged accuracy to report and its split: the held-out test's ("test"), else the
        final validation evaluation's ("val"; the validation peak was selected, so it is biased up)."""
        for split, scores in (("test", self.test), ("val", self.validation)):
            if scores is not None:
                return split, scores.estimate(BRIDGED)
        return None


def fraction_recovered_interval(records: list[EvalRecord], rules: VerdictRules) -> tuple[float, float] | None:
    """The bootstrap interval of (NLL(none) - NLL(own)) / (NLL(none) - NLL(text)) over questions."""
    content = [r.get("content") for r in records]
    if not content or not all(isinstance(c, dict) and "nll_bits_own" in c for c in content):
        return None
    gained = [c["nll_bits_no_question"] - c["nll_bits_own"] for c in content]
    gap = [c["nll_bits_no_question"] - c["nll_bits_text"] for c in content]
    return bootstrap_ratio_interval(gained, gap, rules.bootstrap_samples, rules.confidence, rules.seed)


def _metric_history(mlflow_client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, one point a step (a step logged again: the last value)."""
    try:
        points = mlflow_client.get_metric_history(run_id, key)
    except MlflowException:
        return []
    return sorted({p.step: p.value for p in sorted(points, key=lambda m: (m.step, m.timestamp))}.items())


def _test_records(mlflow_client: MlflowClient, run_id: str, dst: Path) -> list[EvalRecord] | None:
    """The records of the run's test evaluation, or None when it logged none."""
    path = f"{TEST_FOLDER}/{TEST_EVAL_FILE}"
    try:
        listed = {a.path for a in mlflow_client.list_artifacts(run_id, TEST_FOLDER)}
    except (MlflowException, OSError):
        return None
    return download_eval(mlflow_client, run_id, path, dst) if path in listed else None


@dataclass
class SuiteData:
    suite: str
    runs: list[SuiteRun]
    skipped: list[dict] = field(default_factory=list)  # unfinished runs: id, name, status
    experiment_ids: list[str] = field(default_factory=list)


T = TypeVar("T")


def own_suite_last(runs: Sequence[T], suite: str, suite_of: Callable[[T], str]) -> list[T]:
    """`runs` with those of `suite` last. Control matching keeps the last control of a role, so a
    bridge is judged against its own suite's trained controls, and against another analysed
    suite's (the same pair, task, K, steps and batch: `registry.facts.SAME_TASK`) only where its
    own suite has none (a suite of bridges alone, e.g. ablation-b beside ablations)."""
    return [r for r in runs if suite_of(r) != suite] + [r for r in runs if suite_of(r) == suite]


def _labels(runs: list[RunFacts], status: dict[str, str], with_suite: bool = False) -> list[str]:
    names = [f"{r.suite}/{r.name}" if with_suite else r.name for r in runs]
    counts = Counter(names)
    labels = [name if counts[name] == 1 else f"{name}#{r.run_id[:6]}" for name, r in zip(names, runs)]
    return [
        label if status[r.run_id] == "FINISHED"
        else f"{label} [{status[r.run_id].lower()} at step {r.evals[-1][0]} of {r.steps}]"
        for label, r in zip(labels, runs)
    ]


def _same_shared_params(a: dict[str, str], b: dict[str, str]) -> bool:
    """Equal on every key both hold, the run's name included (a run without one matches none)."""
    shared = a.keys() & b.keys()
    return "name" in shared and all(a[k] == b[k] for k in shared)


def _superseded(runs: list) -> dict[str, str]:
    """Unfinished run id -> the id of a FINISHED run with the same params (its name and whole
    config) that started after it: a run cut off (a lease ended, a node died) and then run
    again to the end. The finished attempt replaces it; the cut-off one is listed as skipped,
    never reported beside it. A cut-off run of the same name but another config (the suite
    changed in between) is a different experiment and stays. Params are compared on the keys
    both runs logged: an option that newer code added (and the older run could not log) does
    not tell a rerun from its cut-off attempt."""
    out = {}
    for r in runs:
        if r.info.status == "FINISHED":
            continue
        after = [
            f for f in runs
            if f.info.status == "FINISHED" and _same_shared_params(f.data.params, r.data.params)
            and (f.info.start_time or 0) > (r.info.start_time or 0)
        ]
        if after:
            out[r.info.run_id] = max(after, key=lambda f: f.info.start_time or 0).info.run_id
    return out


def collect(
    suite: str | Sequence[str], *, rules: VerdictRules | None = None, count_prompt_tokens: bool = True,
    include_unfinished: bool = False,
) -> SuiteData:
    """Every FINISHED training run of `suite` (oldest first), judged with `rules`; with
    `include_unfinished`, also every other run that logged an evaluation (see the module doc).
    Several suites (a study that spans them) are analysed as one, named `a+b`: each run labelled
    `<suite>/<name>`, and judged against the trained controls of its own suite first
    (`own_suite_last`)."""
    suites = [suite] if isinstance(suite, str) else list(dict.fromkeys(suite))
    if not suites:
        raise RegistryError("no suite to analyse: name one or more")
    suite = "+".join(suites)
    mlflow_client = client()
    rules = rules or VerdictRules.load()
    experiment_ids = [e.experiment_id for e in mlflow_client.search_experiments()]
    runs = [r for name in suites for r in suite_runs(mlflow_client, experiment_ids, name)] if experiment_ids else []
    runs.sort(key=lambda r: r.info.start_time or 0)
    status = {r.info.run_id: r.info.status for r in runs}
    # a partial run must have logged an evaluation (its metric, here; its eval JSONL, below), and
    # no later attempt with the same params may have finished (that one replaces it)
    later = _superseded(runs)
    chosen = [
        r for r in runs
        if status[r.info.run_id] == "FINISHED"
        or (include_unfinished and BRIDGED_ACCURACY in r.data.metrics and r.info.run_id not in later)
    ]
    facts = [run_facts(mlflow_client, r) for r in chosen]
    facts = [f for f in facts if status[f.run_id] == "FINISHED" or f.evals]
    kept = {f.run_id for f in facts}
    skipped = [
        {"run_id": r.info.run_id, "name": r.data.params.get("name", r.info.run_name), "status": r.info.status}
        | ({"superseded_by": later[r.info.run_id]} if r.info.run_id in later else {})
        for r in runs
        if r.info.run_id not in kept
    ]
    if not facts:
        known = sorted({r.data.params.get("suite") or r.data.tags.get("suite", "") for r in suite_runs(mlflow_client, experiment_ids)} - {""}) if experiment_ids else []
        raise RegistryError(
            f"suite {suite!r} has no finished runs in {safe_uri(mlflow_client.tracking_uri)}"
            + (f" ({len(skipped)} unfinished)" if skipped else "")
            + f"; suites with runs: {known or 'none'}"
        )
    out = []
    for fact in facts:  # registry.facts keeps the total loss; the figures plot its LM term
        lm_loss = _metric_history(mlflow_client, fact.run_id, LM_LOSS)
        if lm_loss:
            fact.history[LM_LOSS] = lm_loss
    # a bridge's trained controls are finished runs (as `registry.preserve.suite_controls` takes
    # them): a control cut off before its last step was trained for less than the bridge
    finished = [f for f in facts if status[f.run_id] == "FINISHED"]
    positive_controls = positive_control.Lookup(mlflow_client, rules.min_bits_transmitted, rules.positive_control_min_retrieval)
    with tempfile.TemporaryDirectory() as tmp:
        evaluations_of = {  # run id -> step -> the records of that evaluation
            f.run_id: {step: download_eval(mlflow_client, f.run_id, path, Path(tmp) / f.run_id) for step, path in f.evals}
            for f in facts
        }
        records_of = {f.run_id: evaluations_of[f.run_id][f.evals[-1][0]] for f in facts if f.evals}
        test_records_of = {f.run_id: _test_records(mlflow_client, f.run_id, Path(tmp) / f.run_id) for f in facts}
        for fact, label in zip(facts, _labels(facts, status, with_suite=len(suites) > 1)):
            item = SuiteRun(fact, label, status=status[fact.run_id])
            item.evaluations = {
                step: estimate([bool(r[BRIDGED]["correct"]) for r in records], rules)
                for step, records in evaluations_of[fact.run_id].items()
                if records and all(BRIDGED in r for r in records)
            }
            versions = mlflow_client.search_model_versions(f"run_id='{fact.run_id}'")
            if versions:
                version = min(versions, key=lambda v: int(v.version))
                item.preserved = f"{version.name}/{version.version}"
            if fact.final_eval is None:
                log.warning("run %s (%s) logged no eval JSONL: no verdict", label, fact.run_id)
                out.append(item)
                continue
            records = records_of[fact.run_id]
            fact.n_final = len(records)
            if fact.prompt_tokens_mean is None and count_prompt_tokens:
                fact.prompt_tokens_mean = try_mean_prompt_tokens(
                    config_from_params(fact.params), [r["question"] for r in records]
                )
            candidates = own_suite_last(finished, fact.suite, lambda f: f.suite)
            controls = matched_controls(
                fact.params, records, ((other.params, lambda o=other: records_of.get(o.run_id)) for other in candidates)
            )
            try:
                passed = positive_controls(fact.target_model)
                verdict = judge(
                    records, peak_bridged=fact.peak or 0.0, collapse_flags=collapse_flags(records, rules, fact.raised_flags),
                    rules=rules, content={k: fact.metrics[k] for k in (BITS, BITS_LOW, BITS_HIGH) if k in fact.metrics},
                    controls=controls, is_control=fact.kind == "soft_prompt",
                    target_model=fact.target_model, positive_control=passed.text() if passed else None,
                )
                item.verdict, item.verdict_rule = verdict.verdict, verdict.rule
                if item.partial:
                    item.verdict_rule = f"partial run ({item.status.lower()}), judged on its last evaluation (step {fact.evals[-1][0]}): {item.verdict_rule}"
                item.comparisons, item.bits, item.positive_control = verdict.comparisons, verdict.bits, verdict.positive_control
                item.validation = eval_scores(records, rules)
                item.fraction_interval = fraction_recovered_interval(records, rules)
            except (ValueError, KeyError, TypeError) as error:
                log.warning("run %s: cannot judge its final evaluation: %s", label, error)
            test_records = test_records_of[fact.run_id]
            if test_records:  # the tested translator against its controls' tested ones, question by question
                item.test = eval_scores(test_records, rules)
                test_controls = matched_controls(
                    fact.params, test_records, ((o.params, lambda o=o: test_records_of.get(o.run_id)) for o in candidates)
                )
                try:
                    item.test_comparisons = paired_comparisons(test_records, test_controls, rules)
                except ValueError as error:
                    log.warning("run %s: cannot compare its test evaluation: %s", label, error)
            if versions:  # the computed verdict stands: a version's `verdict` tag is editable by anyone with UI access
                preserved_verdict = version.tags.get("verdict")
                if preserved_verdict and preserved_verdict != item.verdict:
                    log.warning(
                        "run %s: preserved as %s v%s with the verdict tag %s; under the current rules it is %s (reported)",
                        label, version.name, version.version, preserved_verdict, item.verdict,
                    )
                    item.verdict_source = f"computed (preserved as {version.name} v{version.version}, tagged {preserved_verdict})"
            out.append(item)
    return SuiteData(suite, out, skipped, experiment_ids=sorted({r.info.experiment_id for r in chosen if r.info.run_id in kept}, key=_numeric_first))


def _numeric_first(experiment_id: str) -> tuple[int, str]:
    """MLflow's experiment ids in the order they were made ("2" before "10"), others after."""
    return (int(experiment_id), "") if experiment_id.isdigit() else (1 << 62, experiment_id)
