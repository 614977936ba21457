"""Write every analysis asset of a suite and log them to MLflow as an analysis run."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from registry.analysis.collect import SuiteData, collect
from registry.analysis.figures import write_figures
from registry.analysis.latex import write_latex
from registry.analysis.tables import write_tables
from registry.facts import RUN_KIND_TAG
from registry.store import client, with_retries
from registry.verdict import VerdictRules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisResult:
    suite: str
    out: Path
    files: list[Path]
    data: SuiteData
    run_id: str | None  # the MLflow analysis run holding the files as artifacts


def log_analysis_run(data: SuiteData, out: Path, files: list[Path]) -> str:
    """A FINISHED run in the suite's experiment whose artifacts are `files` (paths kept relative to `out`)."""
    mlflow_client = client()
    tags = {
        RUN_KIND_TAG: "analysis",
        "suite": data.suite,
        "analyzed_runs": ",".join(r.facts.run_id for r in data.runs)[:5000],
    }
    run = with_retries(
        lambda: mlflow_client.create_run(data.experiment_ids[0], run_name=f"analysis-{data.suite}", tags=tags), "create analysis run"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for file in files:
                copy = Path(tmp) / file.relative_to(out)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, copy)
            with_retries(lambda: mlflow_client.log_artifacts(run.info.run_id, tmp), "log analysis artifacts")
    except BaseException:
        mlflow_client.set_terminated(run.info.run_id, "FAILED")
        raise
    with_retries(lambda: mlflow_client.set_terminated(run.info.run_id, "FINISHED"), "close analysis run")
    return run.info.run_id


def analyze(
    suite: str,
    out: Path,
    *,
    rules: VerdictRules | None = None,
    log_to_mlflow: bool = True,
    count_prompt_tokens: bool = True,
) -> AnalysisResult:
    out = Path(out)
    data = collect(suite, rules=rules, count_prompt_tokens=count_prompt_tokens)
    files = write_tables(data, out)
    files += write_figures(data.runs, out / "figures", suite)
    files += write_latex(data, out)
    run_id = log_analysis_run(data, out, files) if log_to_mlflow else None
    log.info("analysis of suite %s: %d files in %s (MLflow run %s)", suite, len(files), out, run_id)
    return AnalysisResult(suite, out, files, data, run_id)
