"""The train loop's `Reporter`, writing to one MLflow run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag

from registry.store import client, with_retries

MAX_PARAM_LENGTH = 6000


class MlflowReporter:
    """Logs params, metrics, tags and artifacts to `run_id`, retrying transient store errors."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = client()

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            batch = items[start : start + 100]
            with_retries(lambda: self.client.log_batch(self.run_id, params=batch), "log params")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        with_retries(lambda: self.client.log_batch(self.run_id, metrics=batch), "log metrics")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retries(lambda: self.client.log_batch(self.run_id, tags=batch), "set tags")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            with_retries(lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path), "log artifacts")
        else:
            with_retries(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), "log artifact")
