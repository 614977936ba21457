"""What an MLflow training run says about itself, in one place for preservation and analysis.

Params are the flat run config; metrics give the accuracy curve (`bridged_accuracy` at every
evaluation), the baselines and the loss; tags carry provenance (`git_commit`, `slurm_job_id`,
and, when the launcher records them, `config_diff` and `command`). The eval JSONLs hold one
record per question, as `latentbridge.evaluate.score` writes them.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import PreserveError

log = logging.getLogger(__name__)

HISTORY_KEYS = ("bridged_accuracy", "source_accuracy", "target_accuracy", "bridged_invalid", "loss")
RUN_KIND_TAG = "latentbridge.run_kind"  # "analysis" on analysis runs; training runs have none
EVAL_FILE = re.compile(r"eval_step_(\d+)\.jsonl$")
NOT_CONFIG = {"name", "suite", "output_dir"}  # params that name a run rather than configure it
LAUNCH_PROG = "python launch"


def get_run(client: MlflowClient, run_id: str) -> Run:
    """The run, or a PreserveError naming the store when the id is unknown."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise PreserveError(f"no MLflow run with id {run_id!r} in {client.tracking_uri}") from None


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


def read_eval_jsonl(path: Path) -> list[dict]:
    """Records of one eval JSONL (strict: a malformed line is an error naming file and line)."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise PreserveError(f"{path}:{number}: malformed eval record ({error})") from None
    return records


def download_eval(client: MlflowClient, run_id: str, artifact_path: str, dst: Path) -> list[dict]:
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


# A trained control answers for a bridge when these params agree: the same pair, task and K.
SAME_TASK = ("source_model", "target_model", "data.source", "data.synthetic_seed", "eval.split", "translator.num_tokens")


def control_role(control: dict[str, str], bridge: dict[str, str]) -> str | None:
    """'no_source' or 'trained_text' when the `control` run's params make it a trained control
    of the bridge whose params are `bridge` (a soft prompt on the same pair and task: in the
    bridge's prompt mode, or reading the question's text); else None."""
    if control.get("translator.kind") != "soft_prompt" or bridge.get("translator.kind") == "soft_prompt":
        return None
    if any(control.get(k) != bridge.get(k) for k in SAME_TASK):
        return None
    mode = control.get("eval.prompt_mode", "soft_only")
    return "no_source" if mode == bridge.get("eval.prompt_mode", "soft_only") else "trained_text"


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
    config_diff: dict[str, str] = field(default_factory=dict)
    diff_basis: str = ""
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
    def command(self) -> str:
        if self.tags.get("command"):
            return self.tags["command"]
        return f"{LAUNCH_PROG} submit --suite {self.suite or 'demo'} --only {self.name}"

    @property
    def raised_flags(self) -> tuple[str, ...]:
        """Collapse flags the trainer raised: tag `collapse_flags`, metrics `collapse*` > 0."""
        flags = [f.strip() for f in self.tags.get("collapse_flags", "").split(",") if f.strip()]
        flags += [k for k, v in self.metrics.items() if k.startswith("collapse") and v > 0]
        return tuple(flags)

    # ---------------------------------------------------------------- accuracy
    def _curve(self, key: str) -> list[tuple[int, float]]:
        return self.history.get(key, [])

    @property
    def peak(self) -> float | None:
        curve = self._curve("bridged_accuracy")
        return max(v for _, v in curve) if curve else self.metrics.get("best_bridged_accuracy")

    @property
    def peak_step(self) -> int | None:
        curve = self._curve("bridged_accuracy")
        if not curve:
            best = self.metrics.get("best_step")
            return int(best) if best is not None else None
        top = max(v for _, v in curve)
        return min(s for s, v in curve if v == top)

    @property
    def final(self) -> float | None:
        curve = self._curve("bridged_accuracy")
        return curve[-1][1] if curve else self.metrics.get("bridged_accuracy")

    @property
    def final_step(self) -> int | None:
        curve = self._curve("bridged_accuracy")
        return curve[-1][0] if curve else None

    @property
    def degradation(self) -> float | None:
        return None if self.peak is None or self.final is None else self.peak - self.final

    @property
    def source_alone(self) -> float | None:
        return self.metrics.get("source_accuracy")

    @property
    def target_alone(self) -> float | None:
        return self.metrics.get("target_accuracy")

    @property
    def n_questions(self) -> int:
        return self.n_final if self.n_final is not None else int(self.params.get("eval.num_questions", 0))

    @property
    def invalid_rate(self) -> float | None:
        invalid = self.metrics.get("bridged_invalid")
        return None if invalid is None or not self.n_questions else invalid / self.n_questions

    @property
    def compression_ratio(self) -> float | None:
        from registry.prompt_length import compression_ratio

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


def config_diff(params: dict[str, str], tags: dict[str, str], siblings: Sequence[dict[str, str]] = ()) -> tuple[dict[str, str], str]:
    """This run's config against its suite's base, and how that base was known.

    The launcher's `config_diff` tag (JSON) is exact. Without it the base is inferred: the
    majority value of each key over the suite's runs (two or more: a key on which they do not
    agree is part of every run's diff), else latentbridge's defaults.
    """
    recorded = tags.get("config_diff")
    if recorded:
        try:
            return {k: str(v) for k, v in json.loads(recorded).items()}, "recorded by the launcher"
        except (json.JSONDecodeError, AttributeError):
            log.warning("tag config_diff is not a JSON object: %r", recorded[:200])
    keys = [k for k in params if k not in NOT_CONFIG]
    if len(siblings) >= 2:
        diff = {}
        for key in keys:
            counts = Counter(s.get(key) for s in siblings)
            value, count = counts.most_common(1)[0]
            if count * 2 <= len(siblings) or value != params[key]:
                diff[key] = params[key]
        return diff, f"inferred: the majority value of each key over the suite's {len(siblings)} runs"
    from latentbridge.config import RunConfig

    defaults = {k: str(v) for k, v in RunConfig().flat().items()}
    diff = {k: params[k] for k in keys if defaults.get(k) != params[k]}
    return diff, "inferred: against latentbridge's default config (the launcher recorded no config_diff)"


def run_facts(client: MlflowClient, run: Run, *, siblings: Sequence[dict[str, str]] | None = None) -> RunFacts:
    """Facts of one training run (metric histories fetched; prompt tokens from a logged metric)."""
    run_id = run.info.run_id
    experiment = client.get_experiment(run.info.experiment_id)
    suite = suite_of(run, experiment.name if experiment else None)
    if siblings is None:
        siblings = suite_params(client, run.info.experiment_id, suite)
    diff, basis = config_diff(dict(run.data.params), dict(run.data.tags), siblings)
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
        prompt_tokens_mean=run.data.metrics.get("prompt_tokens_mean"),
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


def suite_params(client: MlflowClient, experiment_id: str, suite: str) -> list[dict[str, str]]:
    return [dict(r.data.params) for r in suite_runs(client, [experiment_id], suite)]
