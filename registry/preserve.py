"""Preserve finished runs as versions of registered models, with a verdict and a note.

One registered model per source->target pair and translator kind. A version's files are an
`archive/` folder logged to its run:

    translator/        final translator (translator.safetensors + translator.json)
    best_translator/   the translator at the peak evaluation (when the run saved one)
    config.json        the run config
    evals/             every eval JSONL (one record per question)
    metrics.json       the metrics summary: baselines, peak, final, history, verdict, rules
    NOTE.md            the preservation note (also the version's description)
    manifest.json      sha256 of every file above

The version's tags hold the key facts and `manifest_sha256`, so a changed manifest is caught
too. Preserving a run that already has a version returns that version and changes nothing;
preserving is atomic per run (an exclusive lock beside the store), so concurrent preserves of
one run never overwrite each other's archive.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from latentbridge.metric_names import (
    BITS,
    BITS_HIGH,
    BITS_LOW,
    BRIDGED,
    FRACTION,
    FRACTION_MISMATCHED,
    MISMATCHED_ACCURACY,
    MISMATCHED_FOLLOWS,
    PROMPT_TOKENS_MEAN,
    RETRIEVAL,
    RETRIEVAL_CHANCE,
    SOURCE,
    TARGET,
    TEST_EVAL_FILE,
    TEST_FOLDER,
    TEST_PREFIX,
)
from latentbridge.models import sha256_file
from registry import positive_control
from registry.artifacts import upload
from registry.errors import PreserveError, TamperedArchiveError
from registry.facts import (
    RunFacts,
    download_eval,
    eval_files,
    get_run,
    is_training_run,
    matched_controls,
    read_eval_jsonl,
    run_facts,
    suite_runs,
)
from registry.prompt_length import try_mean_prompt_tokens
from registry.store import client, exclusive, with_retries
from registry.tags import NOT_RECORDED
from registry.verdict import (
    EvalScores,
    Verdict,
    VerdictRules,
    accuracy_interval,
    collapse_flags,
    eval_scores,
    judge,
)

log = logging.getLogger(__name__)

ARCHIVE = "archive"
MANIFEST = "manifest.json"
DESCRIPTION_LIMIT = 5000  # MLflow's limit on a model version description


@dataclass(frozen=True)
class Preserved:
    model: str
    version: str
    verdict: str
    rule: str
    created: bool
    run_id: str = ""


# --------------------------------------------------------------------------- manifest
def write_manifest(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_manifest(folder: Path, manifest_sha256: str | None = None) -> dict[str, str]:
    """Raise TamperedArchiveError unless every file matches the manifest (and the manifest its tag)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise TamperedArchiveError(f"{folder} has no {MANIFEST}: not a preserved archive")
    if manifest_sha256 and sha256_file(path) != manifest_sha256:
        raise TamperedArchiveError(
            f"{MANIFEST} of {folder} fails its sha256 check against the model version's tag: the archive was changed after preservation"
        )
    manifest = json.loads(path.read_text())
    for name, expected in manifest.items():
        file = Path(folder) / name
        if not file.is_file():
            raise TamperedArchiveError(f"archived file {name} is missing from {folder}")
        if sha256_file(file) != expected:
            raise TamperedArchiveError(
                f"archived file {name} fails its sha256 check (expected {expected[:12]}..., found "
                f"{sha256_file(file)[:12]}...): it was changed after preservation; refusing to use it"
            )
    extra = sorted(
        p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST
    )
    unlisted = [name for name in extra if name not in manifest]
    if unlisted:
        raise TamperedArchiveError(f"files not in the manifest were added to {folder}: {unlisted}")
    return manifest


# --------------------------------------------------------------------------- naming
def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.rstrip("/").split("/")[-1]).strip("-") or "model"


def model_name(params: dict[str, str]) -> str:
    """One registered model per source->target pair and translator kind."""
    return f"{_clean(params['source_model'])}__to__{_clean(params['target_model'])}__{params['translator.kind']}"


def existing_version(run_id: str) -> ModelVersion | None:
    """The registered version already made from `run_id` (the oldest if a race made two)."""
    versions = client().search_model_versions(f"run_id='{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


# --------------------------------------------------------------------------- the note
def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _content_lines(facts: RunFacts, verdict: Verdict, validation: EvalScores | None) -> list[str]:
    """What crosses the bridge, and bridged against each control on the same questions."""
    m = facts.metrics
    lines = ["", "## What crosses the bridge (final evaluation)"]
    if verdict.bits is None:
        lines.append("- not measured (the run predates the content metrics, or eval.content_metrics=false)")
    else:
        bits, low, high = verdict.bits
        lines += [
            f"- bits transmitted: {bits:.3f} bits a question, 95% paired bootstrap interval [{low:.3f}, {high:.3f}]"
            f" ({'above 0: question-specific content crosses' if low > 0 else 'includes 0: no content shown'})",
            f"- fraction recovered: {_fmt(m.get(FRACTION))} (of the NLL gap between no question and the full text;"
            f" another question's soft tokens: {_fmt(m.get(FRACTION_MISMATCHED))}, what the answer format alone recovers)",
            f"- retrieval top-1: {_fmt(m.get(RETRIEVAL))} (chance {_fmt(m.get(RETRIEVAL_CHANCE))})",
            f"- mismatched accuracy: {_fmt(m.get(MISMATCHED_ACCURACY))}; mismatched answers that give the soft"
            f" tokens' own question's gold: {_fmt(m.get(MISMATCHED_FOLLOWS))}",
        ]
    names = {"no_source": "trained no-source control", "trained_text": "trained text control", "mismatched": "mismatched soft tokens"}
    lines += ["", "## Bridged against the baselines and controls (final validation, same questions;"
              " difference with its 95% paired interval, exact McNemar p)"]
    lines += [f"- vs {system}-alone (the untrained model reading the few-shot text): {c.text()}"
              for system, c in (validation.versus.items() if validation else ())]
    if not verdict.comparisons:
        lines.append("- trained controls: none yet (the suite has no finished trained control for this pair and task)")
    lines += [f"- vs {names.get(k, k)}: {c.text()}" for k, c in verdict.comparisons.items()]
    return lines


def _scores_record(scores: EvalScores | None) -> dict | None:
    """An evaluation's scores as the archive's metrics.json keeps them."""
    if scores is None:
        return None
    out: dict = {"n": scores.n, "step": scores.step}
    for system in (SOURCE, TARGET, BRIDGED):
        out[system] = {"accuracy": scores.accuracy[system], "interval": list(scores.intervals[system])}
    out["comparisons"] = {system: asdict(c) for system, c in scores.versus.items()}
    return out


def _test_lines(facts: RunFacts, test: EvalScores | None) -> list[str]:
    """The note's held-out test section: validation selects the translator, test reports it."""
    if test is None:
        return ["", "## Held-out test", "- none: the run evaluated no held-out test questions (eval.test_questions=0)"]
    acc = lambda system: (f"{test.accuracy[system]:.3f} [{test.intervals[system][0]:.3f},"  # noqa: E731
                          f" {test.intervals[system][1]:.3f}]")
    lines = [
        "",
        f"## Held-out test ({test.n} questions; the translator selected on validation, step {test.step})",
        f"- source-alone: {acc(SOURCE)}",
        f"- target-alone: {acc(TARGET)}",
        f"- bridged: {acc(BRIDGED)}",
    ]
    lines += [f"- bridged vs {system}-alone: {c.text()}" for system, c in test.versus.items()]
    m = facts.metrics
    if TEST_PREFIX + BITS in m:
        lines.append(
            f"- bits transmitted: {m[TEST_PREFIX + BITS]:.3f} [{m.get(TEST_PREFIX + BITS_LOW, float('nan')):.3f},"
            f" {m.get(TEST_PREFIX + BITS_HIGH, float('nan')):.3f}]; fraction recovered {_fmt(m.get(TEST_PREFIX + FRACTION))};"
            f" retrieval top-1 {_fmt(m.get(TEST_PREFIX + RETRIEVAL))}; mismatched accuracy {_fmt(m.get(TEST_PREFIX + MISMATCHED_ACCURACY))}"
        )
    return lines


def _diff_lines(facts: RunFacts) -> list[str]:
    """The run's config diff against its suite's base, as the launcher recorded it at submit."""
    head = f"Config diff against the suite's base ({facts.diff_basis})"
    if not facts.diff_recorded:
        return [f"{head}; the full config is `config.json`."]
    diff = facts.config_diff
    lines = [f"- `{k} = {v}`" for k, v in sorted(diff.items())[:40]]
    if len(diff) > 40:
        lines.append(f"- ... and {len(diff) - 40} more (the full config is `config.json`)")
    return [f"{head}:", *(lines or ["- none: this is the suite's base configuration"])]


def _reproduce_line(facts: RunFacts) -> str:
    """The command that runs this run again, and what it is, from the launcher's tags."""
    command, alone = facts.command, facts.reproduce_command
    if not command:
        return f"The submit command was {NOT_RECORDED} (a run from before the launcher recorded it, or not launched by it)."
    if alone and alone != command:
        return (f"`{alone}`: the command it was submitted with, `{command}`, which submitted other runs too,"
                f" narrowed to this one with `--only {facts.name}`.")
    return f"`{command}`: the command it was submitted with" + (" (it submitted this run alone)." if alone else ".")


def note(
    facts: RunFacts,
    verdict: Verdict,
    rules: VerdictRules,
    interval: tuple[float, float] | None,
    test: EvalScores | None = None,
    validation: EvalScores | None = None,
) -> str:
    """The preservation note: why the run exists, how to reproduce it, key metrics, verdict."""
    ci = f" (95% Wilson interval [{interval[0]:.3f}, {interval[1]:.3f}])" if interval else ""
    ratio = facts.compression_ratio
    if not ratio:
        compression = f"unknown (the prompt length could not be counted; log metric {PROMPT_TOKENS_MEAN})"
    elif facts.prompt_mode == "soft_plus_text":
        compression = f"{ratio:.2f}x: none (soft_plus_text: the target reads all {facts.prompt_tokens_mean:.0f} prompt tokens after K={facts.K})"
    else:
        compression = f"{ratio:.1f}x ({facts.prompt_tokens_mean:.0f} prompt tokens / K={facts.K})"
    slurm = f", Slurm job {facts.slurm_job}" if facts.slurm_job else ""
    headline = "yes." if verdict.verdict == "headline" else f"no ({verdict.verdict})."
    lines = [
        f"# {facts.suite or '(no suite)'}/{facts.name}: {facts.source_model} -> {facts.target_model}",
        "",
        "## Why it exists",
        (
            f"Member `{facts.name}` of suite `{facts.suite or '(none)'}`: a {facts.kind} translator, K={facts.K},"
            f" {facts.steps} steps, seed {facts.seed}."
        ),
        *_diff_lines(facts),
        "",
        "## Reproduce",
        _reproduce_line(facts),
        (
            f"Code: {facts.code_state}{slurm}. MLflow run {facts.run_id}; the full config is `config.json` in this"
            " version's files."
        ),
        "",
        f"## Key metrics ({verdict.n} {facts.params.get('eval.split', '')} questions, final step {facts.final_step};"
        " validation selects the translator and decides the verdict, the held-out test below reports it)",
        f"- source-alone: {_fmt(verdict.source)}",
        f"- target-alone: {_fmt(verdict.target)}",
        f"- bridged final: {_fmt(verdict.bridged)}{ci}",
        f"- bridged peak: {_fmt(facts.peak)} at step {facts.peak_step} (degradation {_fmt(facts.degradation)})",
        f"- bridged invalid rate: {_fmt(facts.invalid_rate)}",
        f"- compression ratio: {compression}",
        *_content_lines(facts, verdict, validation),
        *_test_lines(facts, test),
        "",
        f"## Verdict: **{verdict.verdict}**",
        f"Decided by rule `{verdict.decided_by}`: {verdict.rule}.",
        f"Positive control: {verdict.positive_control or f'none passed on {facts.target_model} in the store'}.",
        f"Thresholds: {json.dumps(rules.to_dict(), sort_keys=True)}.",
        f"Publishable as a headline result: {headline}",
    ]
    return "\n".join(lines)


def _description(text: str) -> str:
    if len(text) <= DESCRIPTION_LIMIT:
        return text
    tail = "\n\n(truncated: the full note is NOTE.md in this version's files)"
    return text[: DESCRIPTION_LIMIT - len(tail)] + tail


# --------------------------------------------------------------------------- controls
def suite_controls(mlflow_client, facts: RunFacts, records: list[dict], dst: Path) -> dict[str, list[bool]]:
    """The suite's finished trained controls for this run's pair and task, each as its
    correctness on the same questions (the latest finished control of each role)."""

    def final_records(run_id: str):
        files = eval_files(mlflow_client, run_id)
        return download_eval(mlflow_client, run_id, files[-1][1], dst / run_id) if files else None

    finished = [
        run for run in suite_runs(mlflow_client, [facts.experiment_id], facts.suite)
        if run.info.status == "FINISHED" and run.info.run_id != facts.run_id
    ]
    candidates = ((dict(run.data.params), lambda run_id=run.info.run_id: final_records(run_id)) for run in finished)
    return matched_controls(facts.params, records, candidates)


# --------------------------------------------------------------------------- preserve
def _download(mlflow_client, run_id: str, path: str, dst: Path, required: bool) -> Path | None:
    try:
        return Path(mlflow_client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError) as error:
        if required:
            raise PreserveError(f"run {run_id} is missing its {path}/ artifacts: {error}") from None
        return None


def _final_translator(run_id: str, facts: RunFacts, final: Path | None, best: Path | None) -> Path:
    """The run's final translator. A record brought home without it (`registry export
    --skip-artifacts translator`: a GPU machine returns 64 MiB a call) still has it when the best
    translator was saved at the run's last step, the last evaluation being the peak: then the
    two are the same weights."""
    if final is not None:
        return final
    last = facts.steps
    if best is not None and facts.peak_step is not None and facts.peak_step == facts.final_step == last:
        log.info("run %s: no translator/ in its record; its best_translator, saved at the last step (%d), is the final one", run_id, last)
        return best
    raise PreserveError(
        f"run {run_id} is missing its translator/ artifacts, and its best_translator (peak at step {facts.peak_step},"
        f" last evaluation at step {facts.final_step} of {last}) is not the final one: export the run again"
        " without --skip-artifacts translator"
    )


def _translator_config(run_id: str, translator: Path) -> dict:
    """The run config the translator's translator.json keeps (the archive's config.json)."""
    path = translator / "translator.json"
    try:
        config = json.loads(path.read_text())["config"]
        if not isinstance(config, dict):
            raise TypeError(f"its config is a {type(config).__name__}, not an object")
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise PreserveError(
            f"run {run_id}: its {translator.name}/translator.json holds no run config ({type(error).__name__}: {error}); "
            "export the run again with its translator (no --skip-artifacts translator) and import that"
        ) from None
    return config


def preserve(run_id: str, rules: VerdictRules | None = None) -> Preserved:
    """Archive a finished run as a registered model version (idempotent).

    Atomic per run: the whole of it runs under the store's exclusive lock for this run, so two
    concurrent preserves of one run (even with different rules) make one version, and the
    second finds it and changes nothing -- it never overwrites the archive the version's
    `manifest_sha256` tag vouches for."""
    with exclusive(f"preserve-{run_id}"):
        return _preserve(run_id, rules)


def _preserve(run_id: str, rules: VerdictRules | None) -> Preserved:
    mlflow_client = client()
    run = get_run(mlflow_client, run_id)
    if run.info.status != "FINISHED":
        raise PreserveError(
            f"run {run_id} is {run.info.status}, not FINISHED: only finished runs can be preserved"
            " (wait for the job, or close it with registry.runs.close_run)"
        )
    if not is_training_run(run):
        raise PreserveError(f"run {run_id} is not a training run (no translator config in its params)")
    existing = existing_version(run_id)
    if existing is not None:
        return Preserved(
            existing.name, str(existing.version), existing.tags.get("verdict", "?"),
            existing.tags.get("verdict_rule", "?"), created=False, run_id=run_id,
        )
    rules = rules or VerdictRules.load()
    facts = run_facts(mlflow_client, run)
    if not facts.evals:
        raise PreserveError(f"run {run_id} logged no evaluation JSONL (evals/): nothing to judge")
    try:
        name = model_name(facts.params)
    except KeyError as missing:  # a run logged by hand, or a record whose params.json was cut down
        raise PreserveError(
            f"run {run_id}: its params (params.json of its record, if imported) have no {missing}, which names its "
            "model; export the run again with its translator and its full params, and import that"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        evals = _download(mlflow_client, run_id, "evals", local / "dl", required=True)
        translator = _download(mlflow_client, run_id, "translator", local / "dl", required=False)
        best = _download(mlflow_client, run_id, "best_translator", local / "dl", required=False)
        translator = _final_translator(run_id, facts, translator, best)
        test_dir = _download(mlflow_client, run_id, TEST_FOLDER, local / "dl", required=False)
        records = download_eval(mlflow_client, run_id, facts.final_eval, local / "final")
        facts.n_final = len(records)
        config_record = _translator_config(run_id, translator)
        if facts.prompt_tokens_mean is None:
            from latentbridge.config import RunConfig

            facts.prompt_tokens_mean = try_mean_prompt_tokens(
                RunConfig.from_dict(config_record), [r["question"] for r in records]
            )
        flags = collapse_flags(records, rules, facts.raised_flags)
        controls = suite_controls(mlflow_client, facts, records, local / "controls")
        content = {k: facts.metrics[k] for k in (BITS, BITS_LOW, BITS_HIGH) if k in facts.metrics}
        try:
            passed = positive_control.find(mlflow_client, facts.target_model, rules.min_bits_transmitted, rules.positive_control_min_retrieval)
            verdict = judge(
                records, peak_bridged=facts.peak or 0.0, collapse_flags=flags, rules=rules,
                content=content, controls=controls, is_control=facts.kind == "soft_prompt",
                target_model=facts.target_model, positive_control=passed.text() if passed else None,
            )
        except ValueError as error:
            raise PreserveError(f"run {run_id}: {error}") from None
        bridged = [bool(r[BRIDGED]["correct"]) for r in records]
        interval = accuracy_interval(bridged, rules.confidence)
        test_file = test_dir / TEST_EVAL_FILE if test_dir is not None else None
        test_records = read_eval_jsonl(test_file) if test_file and test_file.is_file() else []
        test = eval_scores(test_records, rules) if test_records else None
        text = note(facts, verdict, rules, interval, test, eval_scores(records, rules))

        archive = local / ARCHIVE
        shutil.copytree(translator, archive / "translator")
        if best is not None:
            shutil.copytree(best, archive / "best_translator")
        shutil.copytree(evals, archive / "evals")
        if test_dir is not None:
            shutil.copytree(test_dir, archive / TEST_FOLDER)
        (archive / "config.json").write_text(json.dumps(config_record, indent=2, sort_keys=True))
        summary = {
            "run": {k: v for k, v in facts.summary().items()},
            "final": {
                "step": facts.final_step,
                "eval_file": facts.final_eval,
                "bridged_accuracy": verdict.bridged,
                "bridged_interval": list(interval),
                "bridged_invalid_fraction": facts.invalid_rate,
                "source_accuracy": verdict.source,
                "target_accuracy": verdict.target,
                "translator": "translator",
            },
            "peak": {
                "step": facts.peak_step,
                "eval_file": facts.eval_at(facts.peak_step),
                "bridged_accuracy": facts.peak,
                "translator": "best_translator" if best is not None else None,
            },
            "test": _scores_record(test),
            "history": {k: [list(p) for p in v] for k, v in facts.history.items()},
            "metrics": facts.metrics,
            "verdict": verdict.to_dict(),
            "rules": rules.to_dict(),
        }  # no timestamp: two racing preserves of one run write identical bytes (and manifest)
        (archive / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        (archive / "NOTE.md").write_text(text + "\n")
        write_manifest(archive)
        manifest_sha = sha256_file(archive / MANIFEST)
        upload(mlflow_client, run_id, archive, ARCHIVE)

    try:
        with_retries(lambda: mlflow_client.create_registered_model(name), "create registered model")
    except MlflowException as error:
        if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
            raise
    opt = lambda x, digits=4: "unknown" if x is None else f"{x:.{digits}f}"
    tags = {
        "run_id": run_id,
        "run_name": facts.name,
        "suite": facts.suite,
        "source": facts.source_model,
        "target": facts.target_model,
        "K": str(facts.K),
        "compression_ratio": opt(facts.compression_ratio, 2),
        "prompt_tokens_mean": opt(facts.prompt_tokens_mean, 1),
        "steps": str(facts.steps),
        "seed": facts.seed,
        "git_commit": facts.git_commit,
        "slurm_job": facts.slurm_job or "none",
        "source_alone": opt(verdict.source),
        "target_alone": opt(verdict.target),
        "bridged_peak": opt(facts.peak),
        "bridged_final": opt(verdict.bridged),
        "invalid_rate": opt(facts.invalid_rate),
        "n_questions": str(verdict.n),
        "test_bridged": opt(test.accuracy[BRIDGED]) if test else "none",
        "test_target_alone": opt(test.accuracy[TARGET]) if test else "none",
        "test_n_questions": str(test.n) if test else "0",
        "verdict": verdict.verdict,
        "verdict_rule": verdict.decided_by,
        "bits_transmitted": opt(verdict.bits[0] if verdict.bits else None),
        "bits_transmitted_interval": (
            f"[{verdict.bits[1]:.4f}, {verdict.bits[2]:.4f}]" if verdict.bits else "unknown"
        ),
        "fraction_recovered": opt(facts.metrics.get(FRACTION)),
        "retrieval_top1": opt(facts.metrics.get(RETRIEVAL)),
        "manifest_sha256": manifest_sha,
    }
    # the verdict on the run too, so the runs table can show and filter it
    with_retries(
        lambda: mlflow_client.set_tag(run_id, "verdict", verdict.verdict), "tag the run's verdict"
    )
    version = with_retries(
        lambda: mlflow_client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{ARCHIVE}",
            run_id=run_id,
            tags={k: v for k, v in tags.items() if v != ""},  # MLflow refuses empty tag values
            description=_description(text),
        ),
        "create model version",
    )
    first = existing_version(run_id)
    if first is not None and str(first.version) != str(version.version):  # a concurrent preserve won
        with_retries(lambda: mlflow_client.delete_model_version(name, version.version), "delete duplicate version")
        return Preserved(name, str(first.version), first.tags.get("verdict", "?"), first.tags.get("verdict_rule", "?"), False, run_id)
    log.info("preserved run %s as %s version %s (%s)", run_id, name, version.version, verdict.verdict)
    return Preserved(name, str(version.version), verdict.verdict, verdict.decided_by, created=True, run_id=run_id)
