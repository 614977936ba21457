"""Write every analysis asset of a suite and log them to MLflow as an analysis run.

A suite has one analysis run a scope (the experiments its runs are in): analysing it again
logs a new run and then deletes the earlier ones (`MlflowClient.delete_run`, MLflow's soft
delete: hidden from searches and the UI; `mlflow gc` removes their artifacts for good).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from registry.analysis.collect import SuiteData, collect
from registry.analysis.figures import write_figures
from registry.analysis.latex import compile_pdf, write_latex
from registry.analysis.tables import write_tables
from registry.facts import RUN_KIND_TAG
from registry.artifacts import upload
from registry.store import client, with_retries
from registry.verdict import VerdictRules

log = logging.getLogger(__name__)

ANALYSIS = "analysis"  # the RUN_KIND_TAG of an analysis run
SCOPE_TAG = "analysis_scope"  # the experiments whose runs it analysed, comma-separated ids


@dataclass(frozen=True)
class AnalysisResult:
    suite: str
    out: Path
    files: list[Path]
    data: SuiteData
    run_id: str | None  # the MLflow analysis run holding the files as artifacts


def analysis_runs(experiment_id: str, suite: str, scope: str) -> list[str]:
    """Ids of the active analysis runs of `suite` and `scope` in the experiment (a run logged
    before scopes were tagged counts as this scope: it sits in the same experiment)."""
    runs = client().search_runs([experiment_id], filter_string=f"tags.`{RUN_KIND_TAG}` = '{ANALYSIS}'")
    return [r.info.run_id for r in runs if r.data.tags.get("suite") == suite and r.data.tags.get(SCOPE_TAG, scope) == scope]


def log_analysis_run(data: SuiteData, out: Path, files: list[Path]) -> str:
    """A FINISHED run in the suite's experiment whose artifacts are `files` (paths kept relative
    to `out`); it replaces the suite's earlier analysis runs of the same scope, deleted once it is logged."""
    mlflow_client = client()
    experiment, scope = data.experiment_ids[0], ",".join(data.experiment_ids)
    earlier = analysis_runs(experiment, data.suite, scope)
    tags = {
        RUN_KIND_TAG: ANALYSIS,
        "suite": data.suite,
        SCOPE_TAG: scope,
        "analyzed_runs": ",".join(r.facts.run_id for r in data.runs)[:5000],
    }
    run = with_retries(
        lambda: mlflow_client.create_run(experiment, run_name=f"analysis-{data.suite}", tags=tags), "create analysis run"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for file in files:
                copy = Path(tmp) / file.relative_to(out)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, copy)
            upload(mlflow_client, run.info.run_id, Path(tmp))
    except BaseException:
        mlflow_client.set_terminated(run.info.run_id, "FAILED")
        raise
    with_retries(lambda: mlflow_client.set_terminated(run.info.run_id, "FINISHED"), "close analysis run")
    for run_id in earlier:
        with_retries(lambda run_id=run_id: mlflow_client.delete_run(run_id), "delete the earlier analysis run")
        log.info("analysis run %s replaces %s (deleted)", run.info.run_id, run_id)
    return run.info.run_id


def analyze(
    suite: str | Sequence[str],
    out: Path,
    *,
    rules: VerdictRules | None = None,
    log_to_mlflow: bool = True,
    count_prompt_tokens: bool = True,
    pdf: bool = False,
    include_unfinished: bool = False,
) -> AnalysisResult:
    """Tables, figures and LaTeX of `suite` (or several, as one: `collect`) in `out` (with `pdf`:
    paper.pdf too, by pdflatex), logged as the suite's analysis run unless `log_to_mlflow` is False."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # a bad --out fails now, not after the (slow) collection
    data = collect(suite, rules=rules, count_prompt_tokens=count_prompt_tokens, include_unfinished=include_unfinished)
    suite = data.suite  # several suites: "a+b"
    files = write_tables(data, out)
    files += write_figures(data.runs, out / "figures")
    files += write_latex(data, out)
    if pdf:
        files.append(compile_pdf(out))
    run_id = log_analysis_run(data, out, files) if log_to_mlflow else None
    log.info("analysis of suite %s: %d files in %s (MLflow run %s)", suite, len(files), out, run_id)
    return AnalysisResult(suite, out, files, data, run_id)
