"""Replay run records written by `latentbridge.reporting.FileReporter` into MLflow runs.

A record is a folder, written where no MLflow store could be reached (a GPU machine, say;
`python launch submit --records DIR` writes one per run under DIR/<suite>/):

    params.json     the flat run config (the params)
    metrics.jsonl   one {"key", "value", "step"} a line, with the steps the run logged
    tags.json       tags (optional)
    status.json     {"status", "start_time", "end_time"} (optional; times in ms since the epoch)
    artifacts/      files the run logged, under their artifact paths (evals/, test/, ...)

A tarball of records (`.tgz`, `.tar.gz`, `.tar`: what `results/device.sh collect` brings home)
is unpacked into a temporary folder (tarfile's `data` filter: no links or paths leaving it, no
special files or set-id bits) and read as a folder of records; each run's source tag names the
tarball and the record's path in it.

`import_record` makes one new MLflow run from it in the project store (experiment: the run's
suite, as the launcher names them, unless one is given): params, every metric point at its
original step (when a step was logged twice, the last line wins; a last line cut short by a
kill is dropped), tags, artifacts, and the recorded status (FINISHED when the folder records none).

Importing is idempotent: the run carries the tag `latentbridge.import_digest`, a sha256 over the
record's contents (params, metrics, tags, status and every artifact file, by relative path), so
importing the same record again -- from any path or machine -- finds that run and changes
nothing. A record whose contents changed is a different record and becomes a new run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import RunStatus

from latentbridge.reporting import (
    ARTIFACTS_DIR,
    METRICS_FILE,
    PARAMS_FILE,
    STATUS_FILE,
    TAGS_FILE,
    TERMINAL_STATUSES,
)
from registry.errors import RegistryError
from registry.reporter import CURVES_FIGURE, EVAL_FOLDERS, MlflowReporter
from registry.artifacts import upload
from registry.store import DEFAULT_EXPERIMENT, client, experiment_id, with_retries

log = logging.getLogger(__name__)

DIGEST_TAG = "latentbridge.import_digest"
SOURCE_TAG = "latentbridge.imported_from"
RECORD_FILES = (PARAMS_FILE, METRICS_FILE, TAGS_FILE, STATUS_FILE)
TARBALL_SUFFIXES = (".tgz", ".tar.gz", ".tar")
STATUSES = sorted(RunStatus.to_string(s) for s in RunStatus.all_status())  # FAILED, FINISHED, KILLED, ...


class RecordError(RegistryError):
    """A folder is not a readable run record."""


@dataclass(frozen=True)
class Imported:
    folder: Path
    run_id: str
    created: bool  # False: the record was imported before; nothing changed
    status: str
    name: str
    source: str = ""  # where the record came from, as tagged (a tarball's: "<tarball>:<path in it>")


# --------------------------------------------------------------------------- reading a record
def is_record(folder: Path) -> bool:
    return (Path(folder) / PARAMS_FILE).is_file()


def find_records(paths: list[Path] | tuple[Path, ...]) -> list[Path]:
    """Each path that is a record, and every record below each path that is not (sorted)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise RecordError(f"{path} does not exist")
        if is_record(path):
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob(PARAMS_FILE) if ARTIFACTS_DIR not in p.relative_to(path).parts)
        if not below:
            raise RecordError(f"{path} holds no run record (no params.json in it or below it)")
        found.extend(below)
    return found


def _json(path: Path, default):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not valid JSON ({error})") from None


def read_metrics(path: Path) -> list[tuple[str, float, int]]:
    """(key, value, step) in file order, the last line winning for a repeated (key, step)."""
    if not path.is_file():
        return []
    points: dict[tuple[str, int], float] = {}
    text = path.read_text()
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key, value, step = str(record["key"]), float(record["value"]), int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            if number == len(lines) and not text.endswith("\n"):  # cut short by a kill while it was written
                log.warning("%s:%d: dropping a metric line cut short (%s)", path, number, line[:80])
                break
            raise RecordError(f"{path}:{number}: not a metric line ({error})") from None
        points.pop((key, step), None)  # re-insert: keeps the order of the last occurrence
        points[(key, step)] = value
    return [(key, value, step) for (key, step), value in points.items()]


def record_digest(folder: Path) -> str:
    """sha256 over the record's files (names and bytes): the record's identity."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = [folder / name for name in RECORD_FILES if (folder / name).is_file()]
    artifacts = folder / ARTIFACTS_DIR
    if artifacts.is_dir():
        files += sorted(p for p in artifacts.rglob("*") if p.is_file())
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# --------------------------------------------------------------------------- importing
def find_imported(digest: str) -> str | None:
    """The id of the run already imported from a record with this digest, if any."""
    mlflow_client = client()
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    if not experiments:
        return None
    runs = with_retries(
        lambda: mlflow_client.search_runs(experiments, filter_string=f"tags.`{DIGEST_TAG}` = '{digest}'", max_results=5),
        "search imported runs",
    )
    return min(runs, key=lambda r: r.info.start_time or 0).info.run_id if runs else None


def _log_views(reporter: MlflowReporter, artifacts: Path) -> None:
    """What the MLflow reporter shows beside eval JSONLs when a run logs live: a table of each
    and the run's curves, each unless the record brought it (so export + import is exact)."""
    jsonls = [p for folder in EVAL_FOLDERS for p in sorted((artifacts / folder).glob("*.jsonl"))]
    for path in jsonls:
        if not path.with_suffix(".table.json").exists():
            reporter.log_eval_table(path, path.parent.name)
    if jsonls and not (artifacts / CURVES_FIGURE).exists():  # an exported run brings its own
        reporter.log_curves()


def import_record(folder: Path, experiment: str | None = None, source: str | None = None) -> Imported:
    """One MLflow run from the record in `folder` (or the run it already became); `source` is
    what its source tag says (default: the folder's path)."""
    folder = Path(folder)
    source = source or str(folder.resolve())
    if not is_record(folder):
        raise RecordError(f"{folder} is not a run record (no params.json)")
    params = _json(folder / PARAMS_FILE, {})
    tags = {str(k): str(v) for k, v in _json(folder / TAGS_FILE, {}).items()}
    status_record = _json(folder / STATUS_FILE, {})
    status = _status(status_record)
    if status not in STATUSES:
        raise RecordError(f"{folder}/status.json: unknown run status {status!r}")
    metrics = read_metrics(folder / METRICS_FILE)
    name = str(params.get("name") or folder.name)
    digest = record_digest(folder)
    existing = find_imported(digest)
    if existing:
        found = with_retries(lambda: client().get_run(existing), "read run")
        return Imported(folder, existing, False, found.info.status, name, source)

    mlflow_client = client()
    exp = experiment or params.get("suite") or tags.get("suite") or DEFAULT_EXPERIMENT
    run_tags = {**tags, DIGEST_TAG: digest, SOURCE_TAG: source}
    start = status_record.get("start_time")
    run = with_retries(
        lambda: mlflow_client.create_run(experiment_id(exp), start_time=int(start) if start else None,
                                         tags={k: v for k, v in run_tags.items() if v != ""}, run_name=name),
        "create run",
    )
    run_id = run.info.run_id
    try:
        reporter = MlflowReporter(run_id)
        if params:
            reporter.log_params(params)
        by_step: dict[int, dict[str, float]] = {}
        for key, value, step in metrics:
            by_step.setdefault(step, {})[key] = value
        for step in sorted(by_step):
            reporter.log_metrics(by_step[step], step)
        artifacts = folder / ARTIFACTS_DIR
        if artifacts.is_dir() and any(artifacts.iterdir()):
            upload(mlflow_client, run_id, artifacts)
            _log_views(reporter, artifacts)
    except BaseException:
        with_retries(lambda: mlflow_client.delete_run(run_id), "delete half-imported run")
        raise
    end = status_record.get("end_time")
    if status in TERMINAL_STATUSES:
        with_retries(lambda: mlflow_client.set_terminated(run_id, status=status, end_time=int(end) if end else None),
                     "close run")
    else:
        with_retries(lambda: mlflow_client.update_run(run_id, status=status), "set status")
    log.info("imported %s as run %s (%s, %d metric points)", folder, run_id, status, len(metrics))
    return Imported(folder, run_id, True, status, name, source)


def is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.endswith(TARBALL_SUFFIXES)


def _unpack(tarball: Path, into: Path) -> None:
    """Extract `tarball` under `into`, refusing what the `data` filter refuses."""
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise RecordError(f"{tarball}: not a tarball of run records that unpacks safely ({error})") from None


def _status(status_record: dict) -> str:
    """The status a record's status.json says it ended in (FINISHED when it says none)."""
    return str(status_record.get("status", "FINISHED")).upper()


def import_records(paths, experiment: str | None = None, statuses: set[str] | None = None,
                   skipped: list[str] | None = None) -> list[Imported]:
    """Every record in `paths`: record folders, folders holding records, tarballs of either.
    With `statuses`, only the records whose status is one of them (e.g. {"FINISHED"}: not a run
    cut off while it ran); the sources of the others are appended to `skipped`."""
    wanted = {s.upper() for s in statuses} if statuses else None
    for status in sorted(wanted or ()):
        if status not in STATUSES:
            raise RecordError(f"unknown run status {status!r} (one of {', '.join(STATUSES)})")
    done: list[Imported] = []
    with ExitStack() as stack:
        for path in map(Path, paths):
            if is_tarball(path):
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="latentbridge-records-")))
                _unpack(path, root)
                found = [(folder, f"{path.resolve()}:{folder.relative_to(root)}") for folder in find_records([root])]
            else:
                found = [(folder, None) for folder in find_records([path])]
            for folder, source in found:
                status = _status(_json(folder / STATUS_FILE, {})) if wanted is not None else None
                if status is not None and status not in wanted:
                    if skipped is not None:
                        skipped.append(f"{source or folder} ({status})")
                    continue
                done.append(import_record(folder, experiment, source))
    return done
