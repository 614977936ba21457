"""How the train loop reports: a small interface the caller hands in.

latentbridge knows nothing of MLflow; `registry` implements this for MLflow runs and the
tests pass `MemoryReporter`. Only rank 0 reports; other ranks get `NullReporter`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Protocol


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


class FileReporter:
    """Writes the run record as plain files, for machines without an MLflow store.

    `folder/params.json`, `metrics.jsonl` (one {key, value, step} a line), `tags.json` and
    `artifacts/<artifact_path>/...`. `python -m registry import FOLDER...` replays it into MLflow.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        (self.folder / "artifacts").mkdir(parents=True, exist_ok=True)

    def _update_json(self, name: str, values: Mapping[str, Any]) -> None:
        path = self.folder / name
        current = json.loads(path.read_text()) if path.is_file() else {}
        current.update({k: v for k, v in values.items()})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True, default=str))
        tmp.replace(path)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._update_json("params.json", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        with (self.folder / "metrics.jsonl").open("a") as handle:
            for key, value in metrics.items():
                handle.write(json.dumps({"key": key, "value": float(value), "step": step}) + "\n")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        destination = self.folder / "artifacts" / (artifact_path or "")
        destination.mkdir(parents=True, exist_ok=True)
        path = Path(path)
        if path.is_dir():
            shutil.copytree(path, destination, dirs_exist_ok=True)
        else:
            shutil.copy2(path, destination / path.name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._update_json("tags.json", tags)
