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

The digest tag is set last, once everything else (status included) is in the run: a run without
it is not an import. An import that fails deletes its run; one killed outright leaves a run
tagged `latentbridge.import_pending` with the digest, which the next import of the record
deletes before it starts again. A record folder holding a symbolic link is refused (its target,
anywhere on the machine, would be uploaded).
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

from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException

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
from registry.store import DEFAULT_EXPERIMENT, ExperimentNameError, client, exclusive, experiment_id, with_retries

log = logging.getLogger(__name__)

DIGEST_TAG = "latentbridge.import_digest"  # set last: the run holds the whole record
PENDING_TAG = "latentbridge.import_pending"  # the digest, from the run's start until it holds the whole record
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


def _json(path: Path) -> dict:
    """The JSON object in record file `path` ({} when the record has no such file)."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as error:  # not JSON, or not text
        raise RecordError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise RecordError(
            f"{path}: expected a JSON object ({{\"key\": value, ...}}), found {type(value).__name__} "
            f"{json.dumps(value)[:80]}; write it as FileReporter does, or export the run again"
        )
    return value


def _time(status_record: dict, key: str, path: Path) -> int | None:
    """status.json's `key` in ms since the epoch (None when it records none), checked before
    the import starts, so that a bad value does not stop it half done."""
    value = status_record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(
            f"{path}: {key} {value!r} is not a time in ms since the epoch (a whole number, or null); "
            f"correct it, or remove {key} to import the run without it"
        )
    return value or None


def refuse_links(folder: Path) -> None:
    """RecordError if the record folder holds symbolic links: reading it follows them, so a link
    in artifacts/ would upload whatever file it points at (a key, say) into the store."""
    links = sorted(p for p in Path(folder).rglob("*") if p.is_symlink())
    if links:
        shown = ", ".join(p.relative_to(folder).as_posix() for p in links[:3])
        more = f" and {len(links) - 3} more" if len(links) > 3 else ""
        raise RecordError(
            f"{folder} holds symbolic links ({shown}{more}); a record is imported only from the files it holds: "
            "copy it with its links dereferenced (`cp -rL`) and import the copy, or import its tarball"
        )


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
def _tagged_runs(tag: str, digest: str, max_results: int) -> list[Run]:
    """The active runs, in every experiment, whose tag `tag` is `digest`."""
    mlflow_client = client()
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    if not experiments:
        return []
    return with_retries(
        lambda: mlflow_client.search_runs(experiments, filter_string=f"tags.`{tag}` = '{digest}'", max_results=max_results),
        "search imported runs",
    )


def find_imported(digest: str) -> str | None:
    """The id of the run already imported (whole) from a record with this digest, if any."""
    runs = _tagged_runs(DIGEST_TAG, digest, 5)
    return min(runs, key=lambda r: r.info.start_time or 0).info.run_id if runs else None


def _discard(mlflow_client, run_id: str) -> None:
    """Delete a half-imported run. If that fails too it is logged, so that the error that stopped
    the import stays the one raised; the run keeps its pending tag, and the next import deletes it."""
    try:
        with_retries(lambda: mlflow_client.delete_run(run_id), "delete half-imported run")
    except Exception as error:  # noqa: BLE001 - MLflow, SQL, network: the import's own error matters more
        log.error("cannot delete the half-imported run %s (%s); the next import of its record deletes it", run_id, error)


def discard_leftovers(digest: str) -> list[str]:
    """Delete the runs that imports of this record started and never finished (killed before
    the digest tag): the ids deleted.

    Deleted rather than left: such a run is a partial copy of the record (RUNNING, metrics or
    artifacts missing) that the runs table and analysis would show beside the whole import, and
    nothing else will ever finish or remove it. Deleting is safe because only runs tagged with
    this record's digest as pending are touched -- never a run that merely has the same name --
    and the caller holds the record's import lock, so no import of it is still under way (from
    this host: two hosts importing one record into one tracking server at the same moment can
    still collide). A deleted run can be restored (`mlflow runs restore --run-id ID`) until the
    store is garbage-collected."""
    mlflow_client = client()
    gone = []
    for run in _tagged_runs(PENDING_TAG, digest, 1000):
        if DIGEST_TAG in run.data.tags:  # whole; only its pending tag was left behind
            continue
        log.warning("deleting run %s: a half-imported copy of this record, from an import that did not finish", run.info.run_id)
        with_retries(lambda r=run.info.run_id: mlflow_client.delete_run(r), "delete half-imported run")
        gone.append(run.info.run_id)
    return gone


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
    refuse_links(folder)
    params = _json(folder / PARAMS_FILE)
    # an earlier import's bookkeeping (a record exported before export dropped it) is set afresh
    tags = {str(k): str(v) for k, v in _json(folder / TAGS_FILE).items() if k not in (DIGEST_TAG, PENDING_TAG)}
    status_record = _json(folder / STATUS_FILE)
    status = _status(status_record)
    if status not in STATUSES:
        raise RecordError(f"{folder}/status.json: unknown run status {status!r}")
    start, end = (_time(status_record, key, folder / STATUS_FILE) for key in ("start_time", "end_time"))
    metrics = read_metrics(folder / METRICS_FILE)
    name = str(params.get("name") or folder.name)
    digest = record_digest(folder)
    with exclusive(f"import-{digest}"):  # one import of a record at a time; a second finds the first's run
        existing = find_imported(digest)
        if existing:
            found = with_retries(lambda: client().get_run(existing), "read run")
            return Imported(folder, existing, False, found.info.status, name, source)
        discard_leftovers(digest)
        exp = str(experiment or params.get("suite") or tags.get("suite") or DEFAULT_EXPERIMENT)
        try:
            exp_id = experiment_id(exp)
        except ExperimentNameError as error:
            raise RecordError(f"{folder}: {'' if experiment else 'its suite, '}{error}") from None
        mlflow_client = client()
        run_tags = {**tags, PENDING_TAG: digest, SOURCE_TAG: source}
        run = with_retries(
            lambda: mlflow_client.create_run(exp_id, start_time=start, run_name=name,
                                             tags={k: v for k, v in run_tags.items() if v != ""}),
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
            if status in TERMINAL_STATUSES:
                with_retries(lambda: mlflow_client.set_terminated(run_id, status=status, end_time=end), "close run")
            else:
                with_retries(lambda: mlflow_client.update_run(run_id, status=status), "set status")
            # last: from here on the run is the record's import (find_imported); before, a run killed
            # midway is not taken for one, and its pending tag lets the next import delete it
            with_retries(lambda: mlflow_client.set_tag(run_id, DIGEST_TAG, digest), "tag the run imported")
        except BaseException:
            _discard(mlflow_client, run_id)
            raise
    try:
        with_retries(lambda: mlflow_client.delete_tag(run_id, PENDING_TAG), "drop the run's pending tag")
    except (MlflowException, OSError) as error:  # harmless: a run with its digest tag is whole
        log.warning("run %s is imported but keeps its tag %s (%s)", run_id, PENDING_TAG, error)
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
                refuse_links(folder)  # before anything in it is read
                status = _status(_json(folder / STATUS_FILE)) if wanted is not None else None
                if status is not None and status not in wanted:
                    if skipped is not None:
                        skipped.append(f"{source or folder} ({status})")
                    continue
                done.append(import_record(folder, experiment, source))
    return done
