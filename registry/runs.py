"""Opening, resuming and closing the MLflow run of one training run.

The launcher creates each run at submit time (status SCHEDULED, its id written to the run
dir, the code's commit and uncommitted diff attached); the job, and every requeued restart
of it, finds the id in the run dir and continues that same run.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import RunStatus, RunTag

from registry.artifacts import upload
from registry.store import REPO_ROOT, client, experiment_id, with_retries
from registry.tags import CODE_SNAPSHOT_FILE

RUN_ID_FILE = "mlflow_run_id"
TERMINAL = {"FINISHED", "FAILED", "KILLED"}


def git_commit() -> str:
    """The commit of the running code: from the snapshot record when running from a frozen
    snapshot (which has no .git of its own), else `git rev-parse HEAD`."""
    snapshot = REPO_ROOT / CODE_SNAPSHOT_FILE
    if snapshot.is_file():
        try:
            return json.loads(snapshot.read_text()).get("git_commit") or "unknown"
        except (OSError, ValueError):
            return "unknown"
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_id_in(run_dir: Path) -> str | None:
    id_file = Path(run_dir) / RUN_ID_FILE
    return id_file.read_text().strip() if id_file.is_file() else None


def open_run(
    run_dir: Path,
    name: str,
    experiment: str,
    tags: dict[str, str] | None = None,
    status: str = "RUNNING",
) -> str:
    """The MLflow run recorded in `run_dir`, or a new one (its id written to `run_dir`).

    A resumed job finds its run id in `run_dir` and continues the same MLflow run; either
    way the run is left in `status` (RUNNING for a job, SCHEDULED for the launcher).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / RUN_ID_FILE
    mlflow_client = client()
    existing = run_id_in(run_dir)
    if existing:
        set_status(existing, status)
        return existing
    all_tags = {"git_commit": git_commit(), "host": socket.gethostname(), "run_dir": str(run_dir.resolve())}
    all_tags.update(tags or {})
    run = with_retries(
        lambda: mlflow_client.create_run(experiment_id(experiment), run_name=name, tags=all_tags),
        "create run",
    )
    run_id = run.info.run_id
    if status != "RUNNING":
        set_status(run_id, status)
    tmp = id_file.with_suffix(".tmp")
    tmp.write_text(run_id)
    tmp.replace(id_file)
    return run_id


def set_status(run_id: str, status: str) -> None:
    """Set any run status; FINISHED/FAILED/KILLED also stamp the end time."""
    RunStatus.from_string(status)  # raises on a bad status
    if status in TERMINAL:
        with_retries(lambda: client().set_terminated(run_id, status=status), "close run")
    else:
        with_retries(lambda: client().update_run(run_id, status=status), f"mark run {status}")


def close_run(run_id: str, status: str) -> None:
    """Mark the run FINISHED, FAILED or KILLED."""
    RunStatus.from_string(status)  # raises on a bad status
    with_retries(lambda: client().set_terminated(run_id, status=status), "close run")


def run_status(run_id: str) -> str:
    return with_retries(lambda: client().get_run(run_id), "read run").info.status


def record_code(run_id: str, code: Mapping[str, str], diff_file: Path | None = None) -> None:
    """Tag the run with the code it runs (commit, dirty flag, snapshot) and attach the diff."""
    mlflow_client = client()
    tags = [RunTag(key, str(value)) for key, value in code.items()]
    with_retries(lambda: mlflow_client.log_batch(run_id, tags=tags), "tag code")
    if diff_file is not None and Path(diff_file).is_file():
        upload(mlflow_client, run_id, Path(diff_file), "code")
