"""What an MLflow training run says about itself, in one place for preservation and analysis.

Params are the flat run config; metrics give the accuracy curve (`bridged_accuracy` at every
evaluation), the baselines and the loss; tags carry provenance (`git_commit`, `slurm_job_id`,
and what the launcher knew at submit: `config_diff`, `command`, `reproduce_command`; a run
without them says they were not recorded, nothing is guessed). The eval JSONLs hold one
record per question, as `latentbridge.evaluate.score` writes them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from latentbridge.metric_names import (
    BEST_BRIDGED_ACCURACY,
    BEST_STEP,
    BRIDGED,
    BRIDGED_ACCURACY,
    BRIDGED_INVALID,
    LEGACY_INVALID_COUNT_SUFFIX,
    LOSS,
    PROMPT_TOKENS_MEAN,
    SOURCE_ACCURACY,
    TARGET_ACCURACY,
    TEST_PREFIX,
    TIMES,
    EvalRecord,
    compression_ratio,
)
from registry.errors import PreserveError
from registry.store import safe_uri
from registry.tags import COMMAND_TAG, CONFIG_DIFF_TAG, NOT_RECORDED, REPRODUCE_TAG, RUN_KIND_TAG

log = logging.getLogger(__name__)

HISTORY_KEYS = (BRIDGED_ACCURACY, SOURCE_ACCURACY, TARGET_ACCURACY, BRIDGED_INVALID, LOSS, *TIMES)
EVAL_FILE = re.compile(r"eval_step_(\d+)\.jsonl$")


def get_run(client: MlflowClient, run_id: str) -> Run:
    """The run, or a PreserveError naming the store when the id is unknown."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise PreserveError(f"no MLflow run with id {run_id!r} in {safe_uri(client.tracking_uri)}") from None


def is_training_run(run: Run) -> bool:
    return run.data.tags.get(RUN_KIND_TAG, "train") == "train" and "translator.num_tokens" in run.data.params


def eval_files(client: MlflowClient, run_id: str) -> list[tuple[int, str]]:
    """(step, artifact path) of each eval JSONL the run logged, in step order."""
    try:
        listed = client.list_artifacts(run_id, "evals")
    except (MlflowException, OSError):
        return []
    found = [(int(m.group(1)), a.path) for a in listed if (m := EVAL_FILE.search(a.path))]
    return sorted(found)


def read_eval_jsonl(path: Path) -> list[EvalRecord]:
    """Records of one eval JSONL (strict: a malformed line is an error naming file and line)."""
    records: list[EvalRecord] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise PreserveError(f"{path}:{number}: malformed eval record ({error})") from None
    return records


def download_eval(client: MlflowClient, run_id: str, artifact_path: str, dst: Path) -> list[EvalRecord]:
    return read_eval_jsonl(Path(client.download_artifacts(run_id, artifact_path, str(dst))))


def config_from_params(params: dict[str, str]):
    """The RunConfig the params describe (keys this code no longer knows are dropped), or None."""
    from latentbridge.config import ConfigError, RunConfig

    known = set(RunConfig().flat())
    dropped = sorted(set(params) - known)
    if dropped:
        log.debug("params not in RunConfig (dropped): %s", dropped)
    try:
        return RunConfig().override(*(f"{k}={v}" for k, v in params.items() if k in known))
    except (ConfigError, ValueError) as error:
        log.warning("cannot rebuild the run config from its params: %s", error)
        return None


# A trained control answers for a bridge when these params agree: the same pair, task and K, and
# the same training budget (a control trained for fewer steps would flatter a longer-trained bridge).
SAME_TASK = ("source_model", "target_model", "data.source", "data.synthetic_seed", "eval.split", "translator.num_tokens",
             "train.steps", "train.batch_size")


def control_role(control: dict[str, str], bridge: dict[str, str]) -> str | None:
    """'no_source' or 'trained_text' when the `control` run's params make it a trained control
    of the bridge whose params are `bridge` (a soft prompt on the same pair and task, trained as
    long at the same batch size: in the bridge's prompt mode, or reading the question's text); else None
    (a soft_only soft prompt, which reads no text, beside a bridge in another mode)."""
    if control.get("translator.kind") != "soft_prompt" or bridge.get("translator.kind") == "soft_prompt":
        return None
    if any(control.get(k) != bridge.get(k) for k in SAME_TASK):
        return None
    mode = control.get("eval.prompt_mode", "soft_only")
    if mode == bridge.get("eval.prompt_mode", "soft_only"):
        return "no_source"
    return None if mode == "soft_only" else "trained_text"


def matched_controls(
    bridge_params: dict[str, str],
    records: Sequence[dict],
    candidates: Iterable[tuple[dict[str, str], Callable[[], list[dict] | None]]],
) -> dict[str, list[bool]]:
    """Each trained control of the bridge among `candidates` (params, and a loader of the run's
    final eval records, called only for a control; None when it has none), oldest first, as its
    correctness on the bridge's questions: {role: [...]}; the latest control of a role wins."""
    from registry.verdict import aligned_control

    found: dict[str, list[bool]] = {}
    for params, load in candidates:
        role = control_role(params, bridge_params)
        if role is None:
            continue
        control_records = load()
        aligned = aligned_control(records, control_records) if control_records else None
        if aligned is not None:
            found[role] = aligned
    return found


@dataclass
class RunFacts:
    run_id: str
    name: str
    suite: str
    experiment_id: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]]
    evals: list[tuple[int, str]]
    config_diff: dict[str, str] = field(default_factory=dict)  # empty: no change, or not recorded (`diff_recorded`)
    diff_basis: str = NOT_RECORDED
    prompt_tokens_mean: float | None = None
    n_final: int | None = None  # questions in the final eval JSONL, when it was read

    # ---------------------------------------------------------------- config
    @property
    def K(self) -> int:
        return int(self.params.get("translator.num_tokens", 0))

    @property
    def steps(self) -> int:
        return int(self.params.get("train.steps", 0))

    @property
    def seed(self) -> str:
        return self.params.get("seed", "")

    @property
    def kind(self) -> str:
        return self.params.get("translator.kind", "")

    @property
    def source_model(self) -> str:
        return self.params.get("source_model", "")

    @property
    def target_model(self) -> str:
        return self.params.get("target_model", "")

    @property
    def prompt_mode(self) -> str:
        return self.params.get("eval.prompt_mode", "soft_only")

    @property
    def git_commit(self) -> str:
        return self.tags.get("git_commit", "unknown")

    @property
    def code_state(self) -> str:
        """'git commit X', noting uncommitted changes and the code snapshot the job ran from."""
        text = f"git commit {self.git_commit}"
        if self.tags.get("git_dirty") == "true":
            text += " with uncommitted changes"
            if self.tags.get("code_snapshot"):
                text += f" (the code snapshot it ran from: {self.tags['code_snapshot']})"
        return text

    @property
    def slurm_job(self) -> str | None:
        return self.tags.get("slurm_job_id") or None

    @property
    def diff_recorded(self) -> bool:
        """Whether the launcher recorded `config_diff` at submit (else it is empty, which says nothing)."""
        return not self.diff_basis.startswith(NOT_RECORDED)

    @property
    def command(self) -> str:
        """The submit command as typed ('' when not recorded at submit)."""
        return self.tags.get(COMMAND_TAG, "")

    @property
    def reproduce_command(self) -> str:
        """The command that runs this run alone ('' when not recorded at submit)."""
        return self.tags.get(REPRODUCE_TAG, "")

    @property
    def raised_flags(self) -> tuple[str, ...]:
        """Collapse flags the trainer raised: tag `collapse_flags`, metrics `collapse*` > 0."""
        flags = [f.strip() for f in self.tags.get("collapse_flags", "").split(",") if f.strip()]
        flags += [k for k, v in self.metrics.items() if k.startswith("collapse") and v > 0]
        return tuple(flags)

    @property
    def phase_seconds(self) -> dict[str, float]:
        """Wall seconds each phase of the run took (metric_names.TIMES: every evaluation's share
        summed, the test's included); empty for runs logged before the trainer timed them."""
        return {
            key: sum(v for _, v in self.history.get(key, [])) + self.metrics.get(TEST_PREFIX + key, 0.0)
            for key in TIMES
            if key in self.history or TEST_PREFIX + key in self.metrics
        }

    # ---------------------------------------------------------------- accuracy
    def _curve(self, key: str) -> list[tuple[int, float]]:
        return self.history.get(key, [])

    @property
    def peak(self) -> float | None:
        curve = self._curve(BRIDGED_ACCURACY)
        return max(v for _, v in curve) if curve else self.metrics.get(BEST_BRIDGED_ACCURACY)

    @property
    def peak_step(self) -> int | None:
        """The step of the translator the run kept as its best: as the trainer logged it at the end
        (on a tie in accuracy it may be a later step, train.best_tiebreak); for a run that did not
        finish, the earliest step of the highest accuracy so far."""
        best = self.metrics.get(BEST_STEP)
        if best is not None:
            return int(best)
        curve = self._curve(BRIDGED_ACCURACY)
        if not curve:
            return None
        top = max(v for _, v in curve)
        return min(s for s, v in curve if v == top)

    @property
    def final(self) -> float | None:
        curve = self._curve(BRIDGED_ACCURACY)
        return curve[-1][1] if curve else self.metrics.get(BRIDGED_ACCURACY)

    @property
    def final_step(self) -> int | None:
        curve = self._curve(BRIDGED_ACCURACY)
        return curve[-1][0] if curve else None

    @property
    def degradation(self) -> float | None:
        return None if self.peak is None or self.final is None else self.peak - self.final

    @property
    def source_alone(self) -> float | None:
        return self.metrics.get(SOURCE_ACCURACY)

    @property
    def target_alone(self) -> float | None:
        return self.metrics.get(TARGET_ACCURACY)

    @property
    def n_questions(self) -> int:
        return self.n_final if self.n_final is not None else int(self.params.get("eval.num_questions", 0))

    @property
    def invalid_rate(self) -> float | None:
        """The share of final bridged answers with no final number (older runs logged a count)."""
        if BRIDGED_INVALID in self.metrics:
            return self.metrics[BRIDGED_INVALID]
        count = self.metrics.get(BRIDGED + LEGACY_INVALID_COUNT_SUFFIX)
        return None if count is None or not self.n_questions else count / self.n_questions

    @property
    def compression_ratio(self) -> float | None:
        if not self.prompt_tokens_mean or not self.K:
            return None
        return compression_ratio(self.prompt_tokens_mean, self.K, self.prompt_mode)

    @property
    def final_eval(self) -> str | None:
        return self.evals[-1][1] if self.evals else None

    def eval_at(self, step: int | None) -> str | None:
        return next((path for s, path in self.evals if s == step), None)

    def summary(self) -> dict:
        """The key numbers, JSON-ready."""
        return {
            "run_id": self.run_id,
            "name": self.name,
            "suite": self.suite,
            "source": self.source_model,
            "target": self.target_model,
            "kind": self.kind,
            "K": self.K,
            "steps": self.steps,
            "seed": self.seed,
            "n_questions": self.n_questions,
            "eval_split": self.params.get("eval.split", ""),
            "prompt_mode": self.prompt_mode,
            "source_alone": self.source_alone,
            "target_alone": self.target_alone,
            "peak": self.peak,
            "peak_step": self.peak_step,
            "final": self.final,
            "final_step": self.final_step,
            "degradation": self.degradation,
            "invalid_rate": self.invalid_rate,
            "prompt_tokens_mean": self.prompt_tokens_mean,
            "compression_ratio": self.compression_ratio,
            "git_commit": self.git_commit,
            "slurm_job": self.slurm_job,
            "config_diff": self.config_diff,
            "diff_basis": self.diff_basis,
        }


def suite_of(run: Run, experiment_name: str | None = None) -> str:
    return run.data.params.get("suite") or run.data.tags.get("suite") or experiment_name or ""


def _history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for key in HISTORY_KEYS:
        try:
            points = client.get_metric_history(run_id, key)
        except MlflowException:
            continue
        by_step: dict[int, float] = {}
        for point in sorted(points, key=lambda m: (m.step, m.timestamp)):
            by_step[point.step] = point.value  # a resumed job re-logging a step: the last one wins
        if by_step:
            out[key] = sorted(by_step.items())
    return out


def config_diff(tags: dict[str, str]) -> tuple[dict[str, str], str]:
    """The run's config diff against its suite's base as the launcher recorded it, and where
    it comes from: ({}, "not recorded at submit") for a run without a readable tag."""
    recorded = tags.get(CONFIG_DIFF_TAG)
    if recorded is None:
        return {}, NOT_RECORDED
    try:
        return {k: str(v) for k, v in json.loads(recorded).items()}, "recorded at submit"
    except (json.JSONDecodeError, AttributeError):
        log.warning("tag %s is not a JSON object: %r", CONFIG_DIFF_TAG, recorded[:200])
        return {}, f"{NOT_RECORDED} (tag {CONFIG_DIFF_TAG} unreadable)"


def run_facts(client: MlflowClient, run: Run) -> RunFacts:
    """Facts of one training run (metric histories fetched; prompt tokens from a logged metric)."""
    run_id = run.info.run_id
    experiment = client.get_experiment(run.info.experiment_id)
    suite = suite_of(run, experiment.name if experiment else None)
    diff, basis = config_diff(dict(run.data.tags))
    return RunFacts(
        run_id=run_id,
        name=run.data.params.get("name") or run.info.run_name or run_id[:8],
        suite=suite,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        history=_history(client, run_id),
        evals=eval_files(client, run_id),
        config_diff=diff,
        diff_basis=basis,
        prompt_tokens_mean=run.data.metrics.get(PROMPT_TOKENS_MEAN),
    )


def suite_runs(client: MlflowClient, experiment_ids: Sequence[str], suite: str | None = None) -> list[Run]:
    """Training runs (not analysis runs) in the experiments, of `suite` when given, oldest first."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    names: dict[str, str] = {}
    out = []
    for run in runs:
        if not is_training_run(run):
            continue
        if suite is not None:
            if run.info.experiment_id not in names:
                names[run.info.experiment_id] = client.get_experiment(run.info.experiment_id).name
            if suite_of(run, names[run.info.experiment_id]) != suite:
                continue
        out.append(run)
    return out
