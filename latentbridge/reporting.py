"""How the train loop reports: a small interface the caller hands in.

latentbridge knows nothing of MLflow; `registry` implements this for MLflow runs and the
tests pass `MemoryReporter`. Only rank 0 reports; other ranks get `NullReporter`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


class NullReporter:
    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass


class MemoryReporter:
    """Keeps everything in memory: for tests and notebooks."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[tuple[Path, str | None]] = []
        self.tags: dict[str, str] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, float(value)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)


RECORD_STATUSES = ("SCHEDULED", "RUNNING", "FINISHED", "FAILED", "KILLED")  # MLflow's run statuses
TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})
PARAMS_FILE, METRICS_FILE, TAGS_FILE, STATUS_FILE, ARTIFACTS_DIR = (
    "params.json", "metrics.jsonl", "tags.json", "status.json", "artifacts")


class FileReporter:
    """Writes the run record as plain files, for machines without an MLflow store.

    `folder/params.json`, `metrics.jsonl` (one {key, value, step} a line), `tags.json`,
    `status.json` ({status, start_time, end_time}, times in ms since the epoch) and
    `artifacts/<artifact_path>/...`. `python -m registry import FOLDER...` replays it into MLflow.

    A requeued job re-runs the steps since its last checkpoint; as `registry.reporter.MlflowReporter`
    does for an MLflow run, the reporter reads once, when it opens the folder, which (metric, step)
    points the record already holds and skips them, so the record keeps each step once. A last
    line cut short by a kill is dropped then (its point is logged again).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        (self.folder / ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
        self.logged = self._logged_steps()
        self.skipped = 0  # points not logged because the record had them already

    def _logged_steps(self) -> set[tuple[str, int]]:
        path = self.folder / METRICS_FILE
        if not path.is_file():
            return set()
        complete, _, cut = path.read_text().rpartition("\n")
        if cut:  # the job was killed while writing this line
            path.write_text(complete + "\n" if complete else "")
        lines = (json.loads(line) for line in complete.splitlines() if line.strip())
        points = {(str(point["key"]), int(point["step"])) for point in lines}
        if points:
            log.info("record %s already has %d metric points up to step %d; those are not logged again",
                     self.folder, len(points), max(step for _, step in points))
        return points

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self.folder / name
        return json.loads(path.read_text()) if path.is_file() else {}

    def _update_json(self, name: str, values: Mapping[str, Any]) -> None:
        path = self.folder / name
        current = self._read_json(name)
        current.update({k: v for k, v in values.items()})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True, default=str))
        tmp.replace(path)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._update_json(PARAMS_FILE, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        fresh = {k: float(v) for k, v in metrics.items() if (k, step) not in self.logged}
        self.skipped += len(metrics) - len(fresh)
        if not fresh:
            return
        with (self.folder / METRICS_FILE).open("a") as handle:
            for key, value in fresh.items():
                handle.write(json.dumps({"key": key, "value": value, "step": step}) + "\n")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        destination = self.folder / ARTIFACTS_DIR / (artifact_path or "")
        destination.mkdir(parents=True, exist_ok=True)
        path = Path(path)
        if path.is_dir():
            shutil.copytree(path, destination, dirs_exist_ok=True)
        else:
            shutil.copy2(path, destination / path.name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._update_json(TAGS_FILE, tags)

    @property
    def status(self) -> str:
        """The recorded run status ("" when none is recorded)."""
        return str(self._read_json(STATUS_FILE).get("status", ""))

    def set_status(self, status: str) -> None:
        """Record the run status, as MLflow keeps it: the start time once, and an end time for
        FINISHED, FAILED and KILLED (none for SCHEDULED or RUNNING)."""
        if status not in RECORD_STATUSES:
            raise ValueError(f"unknown run status {status!r}; one of {RECORD_STATUSES}")
        now = int(time.time() * 1000)
        start = self._read_json(STATUS_FILE).get("start_time") or now
        end = now if status in TERMINAL_STATUSES else None
        self._update_json(STATUS_FILE, {"status": status, "start_time": start, "end_time": end})
