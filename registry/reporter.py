"""The train loop's `Reporter`, writing to one MLflow run.

A requeued job resumes from its last checkpoint, which can be older than the last step it
logged before it was killed: it then trains and logs those steps again. To keep the run's
history exact (every step once), the reporter reads, once at start, which (metric, step)
points the run already holds and skips them; everything new is logged. So re-running
already-logged steps is harmless, and the run ends with no step twice and none missing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag

from registry.store import client, with_retries

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
BATCH = 1000  # MLflow's log_batch limit on metrics per call


class MlflowReporter:
    """Logs params, metrics, tags and artifacts to `run_id`, retrying transient store errors.

    Metric points whose (key, step) the run already has are skipped (see the module doc).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = client()
        self.logged: dict[str, set[int]] = self._logged_steps()
        self.skipped = 0  # points not logged because the run had them already

    def _logged_steps(self) -> dict[str, set[int]]:
        """{metric key: steps already logged} for this run (empty for a new run)."""
        run = with_retries(lambda: self.client.get_run(self.run_id), "read run")
        logged: dict[str, set[int]] = {}
        for key in run.data.metrics:
            history = with_retries(lambda k=key: self.client.get_metric_history(self.run_id, k), "read metric history")
            logged[key] = {point.step for point in history}
        if logged:
            last = max(max(steps) for steps in logged.values())
            log.info("run %s already has %d metrics up to step %d; those points will not be logged again",
                     self.run_id, len(logged), last)
        return logged

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            batch = items[start : start + 100]
            with_retries(lambda: self.client.log_batch(self.run_id, params=batch), "log params")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        fresh = {k: float(v) for k, v in metrics.items() if step not in self.logged.get(k, ())}
        self.skipped += len(metrics) - len(fresh)
        if not fresh:
            return
        batch = [Metric(k, v, now, step) for k, v in fresh.items()]
        for start in range(0, len(batch), BATCH):
            part = batch[start : start + BATCH]
            with_retries(lambda: self.client.log_batch(self.run_id, metrics=part), "log metrics")
        for key in fresh:
            self.logged.setdefault(key, set()).add(step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retries(lambda: self.client.log_batch(self.run_id, tags=batch), "set tags")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            with_retries(lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path), "log artifacts")
        else:
            with_retries(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), "log artifact")
