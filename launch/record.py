"""The submission record: what `submit` leaves for `status`, `logs`, `wait` and `cancel`.

One submission = one folder `<runs_dir>/<suite>/<stamp>/` holding `submission.json`
(suite, cluster, resources, the code snapshot, the tracking URI, and per run: its run dir,
MLflow run id and job id), the code snapshot `code/`, submitit's logs and pickles
`submitit/`, and one folder per run. `<runs_dir>/LATEST` names the newest submission.
A submission is named by its id `<suite>/<stamp>`, its folder, or any of its job ids.

Records mode (`submit --records DIR`, for a machine without an MLflow store): each run has,
instead of an MLflow run, a run record `DIR/<suite>/<run name>-<short id>/` (`new_run_record`,
written by `latentbridge.reporting.FileReporter`) that `python -m registry import` replays.

The submission folder and its `submitit/` folder are made private to their owner (0700) when
created: `status`, `wait` and `resume` unpickle submitit's result and job files (which can
run code), so nobody else may write there. `load_own_pickle` reads such a file only if it is a
regular file owned by the current user and not writable by others (nor by the group, unless
its folder is private), and otherwise refuses it with an `UnsafeFileError`.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import secrets
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latentbridge.reporting import FileReporter

RECORD = "submission.json"
LATEST = "LATEST"


class RecordError(LookupError):
    """No submission matches, or its record is unreadable."""


class UnsafeFileError(RecordError):
    """A pickle under the runs folder that someone else could have written: not unpickled."""


PRIVATE_DIR_MODE = 0o700
SUBMITIT_DIR = "submitit"


@dataclass
class RunEntry:
    name: str
    run_dir: str
    mlflow_run_id: str
    job_id: str = ""
    earlier_job_ids: list[str] = field(default_factory=list)  # jobs it ran in before `resume`
    record: str = ""  # records mode: the run's record folder (it has no MLflow run)

    @property
    def where(self) -> str:
        """Where the run is recorded, for the output: its MLflow run, or its record folder."""
        return f"record {self.record}" if self.record else f"MLflow run id {self.mlflow_run_id}"

    def recorded_status(self) -> str:
        """The run's status where it is recorded: its record's status.json (records mode; "" when
        the folder is gone), else its MLflow run (the store must be reachable)."""
        if self.record:
            return FileReporter(Path(self.record)).status if Path(self.record).is_dir() else ""
        from registry.runs import run_status

        return run_status(self.mlflow_run_id)

    def record_status(self, status: str) -> None:
        """Set the run's status where it is recorded (see `recorded_status`)."""
        if self.record:
            FileReporter(Path(self.record)).set_status(status)
            return
        from registry.runs import set_status

        set_status(self.mlflow_run_id, status)


@dataclass
class Submission:
    id: str  # <suite>/<stamp>
    suite: str
    folder: str
    created: str
    cluster: str
    resources: dict[str, Any]
    tracking_uri: str
    snapshot: dict[str, Any]
    submitit_folder: str
    runs: list[RunEntry] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # run names cancelled through `cancel`
    records: str = ""  # records mode: DIR/<suite>, the folder of the runs' records (no MLflow store)
    parent_run_id: str = ""  # the submission's parent MLflow run (several runs, MLflow store)
    runs_per_device: int = 1  # local runs at once on each device (`submit --runs-per-device`); `resume` keeps it

    @property
    def job_ids(self) -> list[str]:
        return sorted({r.job_id for r in self.runs if r.job_id})

    @property
    def num_tasks(self) -> int:
        return int(self.resources.get("nodes", 1)) * int(self.resources.get("tasks_per_node", 1))

    def run(self, name: str) -> RunEntry:
        for entry in self.runs:
            if entry.name == name:
                return entry
        raise RecordError(f"submission {self.id} has no run {name!r}; runs: {[r.name for r in self.runs]}")

    def save(self) -> Path:
        path = Path(self.folder) / RECORD
        tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "Submission":
        path = Path(path)
        if path.is_dir():
            path = path / RECORD
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise RecordError(f"cannot read submission record {path}: {error}{_WAY_OUT.format(folder=path.parent)}") from None
        if not isinstance(data, dict):
            raise RecordError(f"submission record {path} is not a JSON object{_WAY_OUT.format(folder=path.parent)}")
        _check_fields(path, cls, data, "")
        runs = data.get("runs", [])
        if not isinstance(runs, list):
            raise RecordError(f"submission record {path}: 'runs' is not a list{_WAY_OUT.format(folder=path.parent)}")
        for index, run in enumerate(runs):
            if not isinstance(run, dict):
                raise RecordError(f"submission record {path}: runs[{index}] is not a JSON object"
                                  f"{_WAY_OUT.format(folder=path.parent)}")
            _check_fields(path, RunEntry, run, f"runs[{index}] ")
        data["runs"] = [RunEntry(**r) for r in runs]
        return cls(**data)


_WAY_OUT = ("; the record is damaged: restore {folder}/submission.json from a backup, or remove the folder {folder} "
            "(its MLflow runs stay in the store) and submit again")


def _check_fields(path: Path, kind: type, data: dict[str, Any], where: str) -> None:
    """RecordError naming the file and the fields if `data` cannot make a `kind`."""
    from dataclasses import MISSING, fields

    known = {f.name for f in fields(kind)}
    required = {f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING}
    missing, unknown = sorted(required - set(data)), sorted(set(data) - known)
    if missing or unknown:
        parts = ([f"missing field(s) {missing}"] if missing else []) + ([f"unknown field(s) {unknown}"] if unknown else [])
        raise RecordError(f"submission record {path}: {where}{' and '.join(parts)}{_WAY_OUT.format(folder=path.parent)}")


def new_folder(runs_dir: Path, suite: str) -> tuple[str, Path]:
    """A fresh `<runs_dir>/<suite>/<stamp>` folder (never reused) and its id."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        name = f"{stamp}-{secrets.token_hex(2)}"
        folder = Path(runs_dir) / suite / name
        try:
            folder.mkdir(parents=True, exist_ok=False, mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask; chmod is not
        (folder / SUBMITIT_DIR).mkdir(mode=PRIVATE_DIR_MODE)
        os.chmod(folder / SUBMITIT_DIR, PRIVATE_DIR_MODE)
        return f"{suite}/{name}", folder
    raise RecordError(f"could not make a fresh submission folder under {runs_dir}/{suite}")


def new_run_record(
    records: Path, run_dir: Path, name: str, tags: Mapping[str, str], params: Mapping[str, Any],
    artifacts: Sequence[tuple[Path, str | None]] = (),
) -> Path:
    """A fresh run record `records/<name>-<short id>/` for records mode, holding what the
    launcher gives an MLflow run at submit (`registry.runs.open_run`): status SCHEDULED, the
    tags (with the submitting host and the run dir), the params and the artifacts
    ((file, artifact path) pairs)."""
    folder = Path(records) / f"{name}-{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    record = FileReporter(folder)
    record.set_tags({"host": socket.gethostname(), "run_dir": str(Path(run_dir).resolve()), **tags})
    record.log_params(params)
    for path, artifact_path in artifacts:
        record.log_artifact(path, artifact_path)
    record.set_status("SCHEDULED")
    return folder


def mark_latest(runs_dir: Path, submission: Submission) -> None:
    path = Path(runs_dir) / LATEST
    tmp = path.with_name(f".{LATEST}.{os.getpid()}.tmp")
    tmp.write_text(submission.folder + "\n")
    tmp.replace(path)


def all_records(runs_dir: Path) -> list[Path]:
    """Every submission record under `runs_dir`, newest first."""
    found = list(Path(runs_dir).glob(f"*/*/{RECORD}"))
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find(runs_dir: Path, ref: str | None = None) -> Submission:
    """The submission named by `ref` (id, folder, record file or job id); the latest if None."""
    runs_dir = Path(runs_dir)
    if not ref:
        latest = runs_dir / LATEST
        if not latest.is_file():
            raise RecordError(f"no submission yet under {runs_dir} (no {LATEST} file); run `python launch submit`")
        return Submission.load(Path(latest.read_text().strip()))
    candidate = Path(ref).expanduser()
    for path in (candidate, runs_dir / ref):
        if (path.is_dir() and (path / RECORD).is_file()) or (path.is_file() and path.name == RECORD):
            return Submission.load(path)
    job = ref.strip()
    if job.replace("_", "").isdigit():
        base = job.split("_", 1)[0]
        for record in all_records(runs_dir):
            try:
                submission = Submission.load(record)
            except RecordError:  # a damaged record elsewhere must not hide this job's
                continue
            ids = [i for r in submission.runs for i in (r.job_id, *r.earlier_job_ids) if i]
            if any(i == job or i.split("_", 1)[0] == base for i in ids):
                return submission
    raise RecordError(f"no submission {ref!r} under {runs_dir} (give an id like suite/stamp, a folder or a job id)")


def _private_dir(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


def check_own_file(path: Path, st: os.stat_result | None = None) -> None:
    """Raise UnsafeFileError unless `path` is a regular file of this user that others cannot write."""
    path = Path(path)
    st = st or os.lstat(path)
    me = os.geteuid()
    way_out = f"check who else can write under {path.parent}, and delete the file if you do not trust it"
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"refusing to unpickle {path}: not a regular file (a link or device); {way_out}")
    if st.st_uid != me:
        raise UnsafeFileError(
            f"refusing to unpickle {path}: it is owned by uid {st.st_uid}, not by you (uid {me}), and unpickling "
            f"can run code; {way_out}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        raise UnsafeFileError(
            f"refusing to unpickle {path}: it is writable by everyone (mode {mode:o}), and unpickling can run "
            f"code; {way_out}"
        )
    if mode & stat.S_IWGRP:
        try:
            folder_private = _private_dir(os.stat(path.parent))
        except OSError:
            folder_private = False
        if not folder_private:
            raise UnsafeFileError(
                f"refusing to unpickle {path}: it is writable by its group (mode {mode:o}) in a folder others can "
                f"enter, and unpickling can run code; `chmod go-w {path}` if you trust it, else {way_out}"
            )


def load_own_pickle(path: Path):
    """Unpickle a submitit file (result or job), but only one this user wrote (`check_own_file`)."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if os.path.islink(path):
            raise UnsafeFileError(f"refusing to unpickle {path}: it is a symbolic link") from None
        raise RecordError(f"cannot read {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as handle:
        check_own_file(path, os.fstat(handle.fileno()))  # the file that is read, not one swapped in later
        return pickle.load(handle)
