"""Preserve finished runs as versions of registered models, with a verdict and a note.

A preserved version is an `archive/` folder logged to the run: the translator (weights and
config), the eval JSONLs, `metrics.json` and `manifest.json` (the sha256 of every file).
Preserving the same run twice returns the version it already has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from registry.store import client, with_retries
from registry.verdict import VerdictRules, Verdict, judge

log = logging.getLogger(__name__)

ARCHIVE = "archive"
MANIFEST = "manifest.json"


class PreserveError(RuntimeError):
    """A run cannot be preserved (not finished, missing artifacts, unknown id)."""


@dataclass(frozen=True)
class Preserved:
    model: str
    version: str
    verdict: Verdict
    created: bool


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): sha256_file(p) for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_manifest(folder: Path) -> None:
    """Raise if any file differs from the manifest (or the manifest is missing)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise PreserveError(f"{folder} has no {MANIFEST}: not a preserved archive")
    for name, expected in json.loads(path.read_text()).items():
        file = folder / name
        if not file.is_file():
            raise PreserveError(f"archived file {name} is missing from {folder}")
        if sha256_file(file) != expected:
            raise PreserveError(f"archived file {name} fails its sha256 check: it was changed after preservation")


def model_name(params: dict[str, str]) -> str:
    """One registered model per source->target pair and translator kind."""
    clean = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "-", s.split("/")[-1]).strip("-")  # noqa: E731
    return f"{clean(params['source_model'])}__to__{clean(params['target_model'])}__{params['translator.kind']}"


def _existing_version(name: str, run_id: str) -> ModelVersion | None:
    try:
        versions = client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None
    return versions[0] if versions else None


def _final_records(evals: Path) -> list[dict]:
    files = sorted(evals.glob("eval_step_*.jsonl"))
    if not files:
        raise PreserveError("the run logged no evaluation JSONL: nothing to judge")
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def _note(run, name: str, verdict: Verdict, metrics: dict[str, float]) -> str:
    p = run.data.params
    t = run.data.tags
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    overrides = t.get("overrides", "")
    command = t.get("command") or f"python launch submit --suite {p.get('suite') or 'demo'} --only {p.get('name', '')} {overrides}".strip()
    return "\n".join(
        [
            f"# {p.get('suite', '')}/{p.get('name', '')}: {p['source_model']} -> {p['target_model']}",
            "",
            f"Why it exists: member `{p.get('name', '')}` of suite `{p.get('suite', '')}`"
            f" ({p['translator.kind']} translator, K={p['translator.num_tokens']}, {p['train.steps']} steps, seed {p['seed']}).",
            f"Reproduce: `{command}` at git commit {t.get('git_commit', 'unknown')}.",
            "",
            f"Key metrics on {verdict.n} {p.get('eval.split', '')} questions: bridged final {fmt(verdict.bridged)}"
            f" (peak {fmt(metrics.get('best_bridged_accuracy'))}), target-alone {fmt(verdict.target)},"
            f" source-alone {fmt(verdict.source)}.",
            "",
            f"Verdict: **{verdict.verdict}**: {verdict.rule}.",
            "Publishable as a headline result: " + ("yes." if verdict.verdict == "headline" else f"no ({verdict.verdict})."),
        ]
    )


def preserve(run_id: str, rules: VerdictRules | None = None) -> Preserved:
    """Archive a finished run as a registered model version (idempotent)."""
    mlflow_client = client()
    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException:
        raise PreserveError(f"no MLflow run with id {run_id!r} in {mlflow_client.tracking_uri}") from None
    if run.info.status != "FINISHED":
        raise PreserveError(
            f"run {run_id} is {run.info.status}, not FINISHED: only finished runs can be preserved"
        )
    params = run.data.params
    name = model_name(params)
    existing = _existing_version(name, run_id)
    rules = rules or VerdictRules.load()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        try:
            evals = Path(mlflow_client.download_artifacts(run_id, "evals", str(local)))
            translator = Path(mlflow_client.download_artifacts(run_id, "translator", str(local)))
        except (MlflowException, OSError) as error:
            raise PreserveError(f"run {run_id} is missing its artifacts (evals/, translator/): {error}") from None
        metrics = dict(run.data.metrics)
        verdict = judge(
            _final_records(evals),
            peak_bridged=metrics.get("best_bridged_accuracy", metrics.get("bridged_accuracy", 0.0)),
            rules=rules,
        )
        if existing is not None:
            return Preserved(name, existing.version, verdict, created=False)
        archive = local / ARCHIVE
        shutil.copytree(translator, archive / "translator")
        shutil.copytree(evals, archive / "evals")
        summary = {"metrics": metrics, "verdict": verdict.to_dict(), "rules": rules.__dict__}
        (archive / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        write_manifest(archive)
        with_retries(lambda: mlflow_client.log_artifacts(run_id, str(archive), ARCHIVE), "log archive")
    try:
        with_retries(lambda: mlflow_client.create_registered_model(name), "create registered model")
    except MlflowException as error:
        if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
            raise
    tags = {
        "source": params["source_model"],
        "target": params["target_model"],
        "K": params["translator.num_tokens"],
        "steps": params["train.steps"],
        "seed": params["seed"],
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "verdict": verdict.verdict,
        "bridged_final": f"{verdict.bridged:.4f}",
        "bridged_peak": f"{metrics.get('best_bridged_accuracy', verdict.bridged):.4f}",
    }
    if verdict.target is not None:
        tags["target_alone"] = f"{verdict.target:.4f}"
    if verdict.source is not None:
        tags["source_alone"] = f"{verdict.source:.4f}"
    version = with_retries(
        lambda: mlflow_client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{ARCHIVE}",
            run_id=run_id,
            tags=tags,
            description=_note(run, name, verdict, metrics),
        ),
        "create model version",
    )
    log.info("preserved run %s as %s version %s (%s)", run_id, name, version.version, verdict.verdict)
    return Preserved(name, version.version, verdict, created=True)
