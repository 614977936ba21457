"""Write MLflow runs out as FileReporter run records: the inverse of `python -m registry import`.

`export_runs(experiment, out)` writes, for each training run of the experiment (or each run
named), one folder `out/<run name>-<run id[:8]>/` in the format `FileReporter` writes and
`registry.import_runs` reads:

    params.json     the run's params (strings, as MLflow keeps them)
    metrics.jsonl   every point of every metric, {"key", "value", "step"} a line, ordered by step,
                    key, then logging time (a (key, step) logged twice keeps its last value on import)
    tags.json       the run's own tags (see below)
    status.json     {"status", "start_time", "end_time"} (times in ms since the epoch, or null)
    artifacts/      the run's artifacts, except those under a skipped first path component
                    (default: `checkpoint`)
    export.json     where the record came from (store, experiment, run id, skipped artifact paths,
                    export time); not part of the record: import ignores it

Tags: MLflow's own `mlflow.*` tags are dropped -- they describe the process that logged the run
(user, source, git of the logging script, parent run), and `mlflow.runName` would clash with the
name import gives the run (its `name` param, as for any record) -- except `mlflow.note.content`,
the run's description. The tags an earlier import added (`latentbridge.import_digest`,
`latentbridge.import_pending`, `latentbridge.imported_from`) are dropped too: import sets them afresh.

The record files hold nothing that changes between exports of the same run, so importing two
exports of one run finds the first import (import is idempotent by content). Exporting into a
folder that already holds the run's record replaces that record.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from registry.errors import RegistryError
from registry.facts import is_training_run
from registry.import_runs import DIGEST_TAG, PENDING_TAG, SOURCE_TAG
from registry.store import client, safe_uri, with_retries

log = logging.getLogger(__name__)

DEFAULT_SKIP = ("checkpoint",)
KEPT_MLFLOW_TAGS = frozenset({"mlflow.note.content"})
DROPPED_TAGS = frozenset({DIGEST_TAG, PENDING_TAG, SOURCE_TAG})
EXPORT_FILE = "export.json"


class ExportError(RegistryError):
    """Runs cannot be exported (unknown experiment or run, unwritable folder)."""


@dataclass(frozen=True)
class Exported:
    run_id: str
    name: str
    folder: Path
    status: str
    metric_points: int
    artifacts: int  # files written under artifacts/
    skipped: tuple[str, ...]  # top-level artifact paths left out


# --------------------------------------------------------------------------- what goes in a record
def folder_name(run: Run) -> str:
    """`<run name>-<run id[:8]>`, the name made safe as one path component."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", run.info.run_name or "").strip("._") or "run"
    return f"{name}-{run.info.run_id[:8]}"


def record_tags(tags: dict[str, str]) -> dict[str, str]:
    """The run's tags as a record keeps them (module doc: mlflow.* and import bookkeeping dropped)."""
    return {
        key: value
        for key, value in sorted(tags.items())
        if key not in DROPPED_TAGS and (not key.startswith("mlflow.") or key in KEPT_MLFLOW_TAGS)
    }


def metric_lines(mlflow_client, run: Run) -> list[dict]:
    """Every metric point of the run, {"key", "value", "step"}, in (step, key, time) order.

    Not time first: an imported run logs each step's metrics at one instant, so (step, key) order
    is what makes a re-export of it byte-identical; time orders the repeats of one (key, step).
    """
    points = []
    for key in sorted(run.data.metrics):
        history = with_retries(
            lambda k=key: mlflow_client.get_metric_history(run.info.run_id, k), "read metric history"
        )
        points.extend((m.step, m.timestamp, m.key, m.value) for m in history)
    points.sort(key=lambda p: (p[0], p[2], p[1]))  # stable: equal times keep the store's order
    return [{"key": key, "value": float(value), "step": int(step)} for step, _, key, value in points]


def _download_artifacts(mlflow_client, run_id: str, dest: Path, skip: frozenset[str]) -> tuple[int, tuple[str, ...]]:
    """Each top-level artifact entry not in `skip` into `dest`; (files written, skipped paths)."""
    dest.mkdir(parents=True, exist_ok=True)
    entries = with_retries(lambda: mlflow_client.list_artifacts(run_id), "list artifacts")
    skipped = []
    for entry in entries:
        if entry.path.split("/")[0] in skip:
            skipped.append(entry.path)
            continue
        with_retries(
            lambda e=entry: mlflow_client.download_artifacts(run_id, e.path, str(dest)), f"download {entry.path}"
        )
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    return files, tuple(skipped)


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- exporting
def export_run(run: Run, out: Path, *, experiment: str, skip: Iterable[str] = DEFAULT_SKIP) -> Exported:
    """Write one run's record into `out/<folder_name(run)>` (replacing an earlier export of it)."""
    mlflow_client = client()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / folder_name(run)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=out))
    try:
        _write_json(staging / "params.json", dict(sorted(run.data.params.items())))
        lines = metric_lines(mlflow_client, run)
        (staging / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        _write_json(staging / "tags.json", record_tags(dict(run.data.tags)))
        _write_json(
            staging / "status.json",
            {"status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time},
        )
        files, skipped = _download_artifacts(mlflow_client, run.info.run_id, staging / "artifacts", frozenset(skip))
        _write_json(
            staging / EXPORT_FILE,
            {
                "tracking_uri": safe_uri(mlflow_client.tracking_uri),
                "experiment": experiment,
                "experiment_id": run.info.experiment_id,
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "skipped_artifacts": list(skipped),
                "exported_at": int(time.time() * 1000),
            },
        )
        staging.chmod(0o755)  # mkdtemp makes it private
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported run %s to %s (%d metric points, %d artifact files)", run.info.run_id, target, len(lines), files)
    return Exported(run.info.run_id, run.info.run_name, target, run.info.status, len(lines), files, skipped)


def _experiment_runs(mlflow_client, experiment_id: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = with_retries(
            lambda t=token: mlflow_client.search_runs([experiment_id], max_results=1000, page_token=t,
                                                      order_by=["attributes.start_time ASC"]),
            "search runs",
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def select_runs(experiment: str, run_ids: Sequence[str] = (), run_names: Sequence[str] = ()) -> tuple[str, list[Run]]:
    """(experiment id, runs): the runs named by id (which must be in the experiment) and, for each
    of `run_names`, the newest FINISHED training run of that name; with neither, its training runs."""
    mlflow_client = client()
    found = with_retries(lambda: mlflow_client.get_experiment_by_name(experiment), "find experiment")
    if found is None:
        raise ExportError(f"no MLflow experiment named {experiment!r} in {safe_uri(mlflow_client.tracking_uri)}")
    training = [run for run in _experiment_runs(mlflow_client, found.experiment_id) if is_training_run(run)] if run_names or not run_ids else []
    if not run_ids and not run_names:
        return found.experiment_id, training
    for name in dict.fromkeys(run_names):
        finished = [r for r in training if r.info.run_name == name and r.info.status == "FINISHED"]
        if not finished:
            raise ExportError(f"experiment {experiment!r} holds no FINISHED training run named {name!r}")
        run_ids = [*run_ids, max(finished, key=lambda r: r.info.start_time).info.run_id]
    runs = []
    for run_id in dict.fromkeys(run_ids):
        try:
            run = with_retries(lambda r=run_id: mlflow_client.get_run(r), "read run")
        except MlflowException:
            raise ExportError(f"no MLflow run with id {run_id!r} in {safe_uri(mlflow_client.tracking_uri)}") from None
        if run.info.experiment_id != found.experiment_id:
            raise ExportError(f"run {run_id} is not in experiment {experiment!r}")
        runs.append(run)
    return found.experiment_id, runs


def export_runs(
    experiment: str, out: Path, run_ids: Sequence[str] = (), skip: Iterable[str] = DEFAULT_SKIP,
    run_names: Sequence[str] = (),
) -> list[Exported]:
    """Export the named runs of `experiment` (by id or name), or all its training runs, as records under `out`."""
    _, runs = select_runs(experiment, run_ids, run_names)
    if not runs:
        raise ExportError(f"experiment {experiment!r} holds no training run to export")
    skip = tuple(skip)
    return [export_run(run, Path(out), experiment=experiment, skip=skip) for run in runs]
