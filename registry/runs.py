"""Opening, resuming and closing the MLflow run of one training run."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from mlflow.entities import RunStatus

from registry.store import REPO_ROOT, client, experiment_id, with_retries

RUN_ID_FILE = "mlflow_run_id"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def open_run(run_dir: Path, name: str, experiment: str, tags: dict[str, str] | None = None) -> str:
    """The MLflow run recorded in `run_dir`, or a new one (its id written to `run_dir`).

    A resumed job finds its run id in `run_dir` and continues the same MLflow run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / RUN_ID_FILE
    mlflow_client = client()
    if id_file.is_file():
        run_id = id_file.read_text().strip()
        with_retries(lambda: mlflow_client.update_run(run_id, status="RUNNING"), "reopen run")
        return run_id
    all_tags = {"git_commit": git_commit(), "host": socket.gethostname(), "run_dir": str(run_dir.resolve())}
    all_tags.update(tags or {})
    run = with_retries(
        lambda: mlflow_client.create_run(experiment_id(experiment), run_name=name, tags=all_tags),
        "create run",
    )
    tmp = id_file.with_suffix(".tmp")
    tmp.write_text(run.info.run_id)
    tmp.replace(id_file)
    return run.info.run_id


def close_run(run_id: str, status: str) -> None:
    """Mark the run FINISHED, FAILED or KILLED."""
    RunStatus.from_string(status)  # raises on a bad status
    with_retries(lambda: client().set_terminated(run_id, status=status), "close run")
