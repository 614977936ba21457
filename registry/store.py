"""Where the MLflow store is, and opening it safely from many processes.

Default: the SQLite file `mlflow.db` at the repo root, artifacts in `mlartifacts/` beside
it. `MLFLOW_TRACKING_URI` overrides (a tracking server for a cluster: SQLite's file locks
are unreliable on NFS/Lustre). The store's schema and each experiment are created once,
before jobs fan out: many processes migrating an empty SQLite file at once corrupt it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "latentbridge"
T = TypeVar("T")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def artifact_root() -> str:
    return os.environ.get("LATENTBRIDGE_ARTIFACT_ROOT") or (REPO_ROOT / "mlartifacts").as_uri()


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def client() -> MlflowClient:
    """A client on the project's store (schema created and WAL set on first use)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    made = MlflowClient(tracking_uri=uri, registry_uri=uri)
    path = sqlite_path(uri)
    if path is not None:
        with sqlite3.connect(path, timeout=30) as conn:  # WAL: readers never block the writer
            conn.execute("PRAGMA journal_mode=WAL")
    return made


def with_retries(action: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Retry a store call that failed on a locked database or a dropped connection."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (MlflowException, OSError) as error:
            transient = "locked" in str(error).lower() or "connection" in str(error).lower()
            if not transient or attempt == attempts:
                raise
            delay = min(0.25 * 2**attempt, 10.0)
            log.warning("%s failed (%s); retry %d in %.1fs", what, error, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def experiment_id(name: str = DEFAULT_EXPERIMENT) -> str:
    """The id of experiment `name`, created (with the project's artifact root) if missing."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=f"{artifact_root()}/{name}")
    except MlflowException:  # another process created it first
        return mlflow_client.get_experiment_by_name(name).experiment_id
