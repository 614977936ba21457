"""Where the MLflow store is, and opening it safely from many processes.

Default: the SQLite file `mlflow.db` at the repo root, artifacts in `mlartifacts/` beside
it. `MLFLOW_TRACKING_URI` overrides it (e.g. `http://host:5000`, a tracking server). A tracking
server keeps the artifacts too: experiments are created with no artifact location of the
project's own, so the server's default (`mlflow-artifacts:/`, proxied to its
`--artifacts-destination`) holds them; `LATENTBRIDGE_ARTIFACT_ROOT` still wins where it is set
(the launch config's `artifact_root` is exported as it: see `launch.user_config`). Uploads go
through `registry.artifacts`.

Many jobs log into one SQLite store at once, safely, because:
- the schema is created exactly once, under an exclusive file lock (`<db>.lock`): many
  processes migrating an empty SQLite file at the same moment leave it unusable;
- the database runs in WAL mode (readers never block the one writer) and MLflow gives every
  session a 20 s busy timeout, so a writer waits for the lock instead of failing;
- every write goes through `with_retries`, which retries "database is locked" and dropped
  connections with exponential backoff and jitter, and each write is one `log_batch`
  transaction (all of it lands or none of it; a retried batch is idempotent).

SQLite must sit on a local disk: its locks (and WAL's shared-memory index, which requires
every process to be on the same host) do not work on NFS/Lustre/GPFS, where concurrent
writers can corrupt the file. `check_local_disk` refuses such a path; there, run an
`mlflow server` on one host and point `MLFLOW_TRACKING_URI` at it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import re
import sqlite3
import tempfile
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlparse, urlsplit, urlunsplit

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import RegistryError, StoreError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "latentbridge"
T = TypeVar("T")

# Filesystems on which SQLite's locking is unreliable (network or cluster filesystems).
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph", "cephfs",
     "glusterfs", "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "9p", "afs", "panfs", "wekafs"}
)
ALLOW_NETWORK_FS_ENV = "LATENTBRIDGE_SQLITE_ON_NETWORK_FS"  # "1": skip the check (at your own risk)
_TRANSIENT = ("locked", "busy", "connection", "timed out", "timeout", "temporarily", "503", "502", "429")
_READY: set[str] = set()  # sqlite URIs this process has already prepared
ARTIFACT_ROOT_ENV = "LATENTBRIDGE_ARTIFACT_ROOT"  # an explicit artifact root; "" or unset: the store's default
# URI schemes (SQLAlchemy dialects without their driver) of stores this process writes itself,
# artifacts included; any other scheme is a tracking server.
DIRECT_STORES = frozenset({"", "file", "sqlite", "postgresql", "mysql", "mssql"})


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def safe_uri(uri: str) -> str:
    """The tracking URI without a password in it: what messages and files may show."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


def is_server(uri: str | None = None) -> bool:
    """Whether `uri` is a tracking server (http(s), databricks...), which stores the artifacts
    itself, rather than a store this process writes directly (a folder, SQLite or a database)."""
    uri = uri or tracking_uri()
    return uri == "databricks" or urlparse(uri).scheme.split("+")[0].lower() not in DIRECT_STORES


def artifact_root(uri: str | None = None) -> str:
    """Where new experiments of store `uri` keep their artifacts: `LATENTBRIDGE_ARTIFACT_ROOT`
    where set; else "" for a tracking server (its own artifact store) and `mlartifacts/` at the
    repo root for any other store."""
    explicit = os.environ.get(ARTIFACT_ROOT_ENV)
    if explicit:
        return explicit
    return "" if is_server(uri) else (REPO_ROOT / "mlartifacts").as_uri()


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def filesystem_type(path: Path) -> str:
    """The type (from /proc/mounts) of the filesystem holding `path`; "" if unknown."""
    target = Path(path).resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    best, fstype = "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = str(target) == mount or str(target).startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, parts[2]
    return fstype


def check_local_disk(uri: str | None = None) -> None:
    """Raise StoreError if the SQLite store of `uri` sits on a network/cluster filesystem."""
    path = sqlite_path(uri or tracking_uri())
    if path is None or os.environ.get(ALLOW_NETWORK_FS_ENV) == "1":
        return
    fstype = filesystem_type(path.parent)
    if fstype in NETWORK_FILESYSTEMS:
        raise StoreError(
            f"the MLflow SQLite store {path} is on a {fstype} filesystem, where SQLite's file locks "
            "are unreliable and concurrent jobs can corrupt it. Start a tracking server on one host "
            "(`mlflow server --backend-store-uri sqlite:////local/disk/mlflow.db --artifacts-destination "
            "/shared/mlartifacts --host 0.0.0.0`; see the README) and "
            f"set MLFLOW_TRACKING_URI=http://<host>:5000 (or tracking_uri in the launch config); "
            f"{ALLOW_NETWORK_FS_ENV}=1 skips this check."
        )


def _store_ready(path: Path) -> bool:
    """The schema exists and the file is in WAL mode."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='alembic_version'")
            has_schema = rows.fetchone() is not None
            return has_schema and conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    except sqlite3.Error:
        return False


SQLITE_HEADER = b"SQLite format 3\x00"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _corrupt_way_out(path: Path) -> str:
    return (
        f"move it aside to start a new, empty store (`mv {path} {path}.corrupt`, and its -wal/-shm files if any), "
        f"or restore it from a backup; `sqlite3 {path} .recover | sqlite3 {path}.recovered` may save the runs of a "
        "partly damaged file; or point MLFLOW_TRACKING_URI (tracking_uri in the launch config) at another store"
    )


def _refuse_corrupt(path: Path) -> None:
    """StoreError if `path` holds something that is not a readable SQLite database (empty or absent is fine)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as error:
        raise StoreError(f"cannot read the MLflow store {path}: {error.strerror or error}") from None
    if header != SQLITE_HEADER:
        raise StoreError(f"the MLflow store {path} is not an SQLite database (corrupt or another file); "
                         f"{_corrupt_way_out(path)}")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            conn.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.Error as error:
        if is_transient(error):
            return  # locked by a writer: not corrupt
        raise StoreError(f"the MLflow store {path} is corrupt ({error}); {_corrupt_way_out(path)}") from None


def ensure_store(uri: str | None = None) -> str:
    """Create the store's schema once (under a file lock) and switch SQLite to WAL. Idempotent."""
    uri = uri or tracking_uri()
    path = sqlite_path(uri)
    if path is None or uri in _READY:
        return uri
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _store_ready(path):
        _refuse_corrupt(path)
        with open(path.with_name(path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process migrates; the others wait, then see it done
            try:
                if not _store_ready(path):
                    log.info("preparing the MLflow store %s (schema, WAL)", path)
                    try:
                        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # runs the migrations
                        with closing(sqlite3.connect(path, timeout=30)) as conn:
                            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
                    except Exception as error:  # noqa: BLE001 - SQLAlchemy, alembic, sqlite3: say which file
                        if is_transient(error):
                            raise
                        raise StoreError(
                            f"cannot prepare the MLflow store {path}: {_first_line(error)}; {_corrupt_way_out(path)}"
                        ) from None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    _READY.add(uri)
    return uri


def lock_folder(uri: str | None = None) -> Path:
    """Where the store's named locks live: `<db>-locks/` beside a SQLite store; for a tracking
    server, a folder of this host's temp dir named after its URI (it serialises this host only)."""
    uri = uri or tracking_uri()
    path = sqlite_path(uri)
    if path is not None:
        return path.with_name(path.name + "-locks")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"latentbridge-locks-{os.geteuid()}-{digest}"


@contextmanager
def exclusive(name: str, uri: str | None = None) -> Iterator[Path]:
    """Hold the store's exclusive lock `name` (a file lock: across processes and threads) while the block runs."""
    folder = lock_folder(uri)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:200] + ".lock")
    with open(path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def client() -> MlflowClient:
    """A client on the project's store (schema created and WAL set on first use)."""
    uri = ensure_store(tracking_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_transient(error: BaseException) -> bool:
    text = str(error).lower()
    return any(word in text for word in _TRANSIENT)


def with_retries(action: Callable[[], T], what: str, attempts: int = 10) -> T:
    """Retry a store call that failed on a locked database or a dropped connection.

    Backoff 0.5 s, 1 s, 2 s ... capped at 15 s, with jitter so that jobs that collided do
    not collide again; about two minutes in all before the error is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (MlflowException, OSError, sqlite3.Error) as error:
            if not is_transient(error) or attempt == attempts:
                raise
            delay = min(0.25 * 2**attempt, 15.0) * random.uniform(0.5, 1.5)
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, error, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# MLflow 3 opens an experiment in its GenAI view (traces) unless this tag names another kind;
# with it the UI opens the model-training view, where runs, metrics and charts are.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
# A new experiment's artifacts go to `<artifact root>/<name>`, so its name must be one plain path
# component: no `/`, no `..`, no leading `.` or `-`, nothing a shell or URL reads differently.
# Every name the project makes fits: suites (`phase2-swap`, `e2e_many`), `+` as in the name of
# several suites analysed as one (`ablations+phase2-swap`).
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


class ExperimentNameError(RegistryError):
    """A new experiment's name is not safe as the folder of its artifacts."""


def check_experiment_name(name: str) -> str:
    """`name`, or ExperimentNameError naming it when a new experiment may not be called so."""
    if not isinstance(name, str) or not EXPERIMENT_NAME.fullmatch(name):
        raise ExperimentNameError(
            f"{name!r} cannot name a new MLflow experiment (its artifacts would go to a folder of that name): "
            "a name is 1-200 letters, digits and . _ + -, starting with a letter or digit; "
            "give another one (`python -m registry import --experiment NAME`)"
        )
    return name


def experiment_id(name: str = DEFAULT_EXPERIMENT) -> str:
    """The id of experiment `name`, created if missing (under `artifact_root()`; for a tracking
    server by default in its own artifact store), and tagged to open in the MLflow UI's
    model-training view. Only a safe name (`check_experiment_name`) makes a new experiment; one
    that exists is used whatever its name."""
    mlflow_client = client()
    found = with_retries(lambda: mlflow_client.get_experiment_by_name(name), "find experiment")
    if found is None:
        check_experiment_name(name)
        root = artifact_root()
        try:
            return mlflow_client.create_experiment(
                name, artifact_location=f"{root}/{name}" if root else None, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND}
            )
        except MlflowException:  # another process created it first, or the store refused it
            found = with_retries(lambda: mlflow_client.get_experiment_by_name(name), "find experiment")
            if found is None:
                raise
    if EXPERIMENT_KIND_TAG not in found.tags:  # made before the tag, or by another tool: a user's choice stays
        mlflow_client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return found.experiment_id
