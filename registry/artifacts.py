"""Uploading a run's artifacts, file by file, with a clear error when a file does not get there.

Through a tracking server each file is one streamed HTTP PUT to its artifact proxy, which
writes it into the server's `--artifacts-destination` as it arrives (a checkpoint of hundreds
of MB is never held in memory). MLflow can also send a large file in parts
(`MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true`: files of at least
`MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE` bytes, default 500 MiB, in parts of
`MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE`, default 10 MiB), but only where the destination is a
cloud bucket (S3, GCS, Azure): the server hands out presigned URLs and each node sends its
parts to the bucket itself. A destination on a local or shared disk has no multipart upload:
the server declines it and MLflow sends the file whole, in one PUT.

A file that fails to upload, after the store's retries, raises `ArtifactUploadError` naming
the file, its size, where it was going and the way out; HTTP 413 (the server, or a proxy in
front of it such as nginx with its `client_max_body_size`, refuses the file as too large) gets
its own way out. After each upload to a tracking server the size the server lists is compared
with the file's, so that a cut-off upload is caught now, not when an archive is read back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import StoreError
from registry.store import is_server, with_retries

log = logging.getLogger(__name__)

TOO_LARGE = 413


class ArtifactUploadError(StoreError):
    """A file could not be uploaded to the run's artifacts (the message says which and why)."""


def upload(mlflow_client: MlflowClient, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Log file or folder `path` under `artifact_path` of run `run_id` (a folder keeps its layout)."""
    path = Path(path)
    if not path.is_dir():
        _upload_file(mlflow_client, run_id, path, artifact_path)
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        inside = file.parent.relative_to(path).as_posix()
        folder = "/".join(part for part in (artifact_path, inside) if part and part != ".") or None
        _upload_file(mlflow_client, run_id, file, folder)


def _upload_file(mlflow_client: MlflowClient, run_id: str, file: Path, folder: str | None) -> None:
    size = file.stat().st_size
    try:
        with_retries(lambda: mlflow_client.log_artifact(run_id, str(file), folder), f"upload {file.name}")
    except (MlflowException, OSError) as error:
        raise ArtifactUploadError(_failure(error, file, size, _where(run_id, folder))) from error
    if is_server(mlflow_client.tracking_uri):
        _check_stored_size(mlflow_client, run_id, file, size, folder)


def _check_stored_size(mlflow_client: MlflowClient, run_id: str, file: Path, size: int, folder: str | None) -> None:
    """ArtifactUploadError if the server holds the file with another size than it has here."""
    name = f"{folder}/{file.name}" if folder else file.name
    listed = with_retries(lambda: mlflow_client.list_artifacts(run_id, folder), f"list {folder or 'artifacts'}")
    stored = next((entry.file_size for entry in listed if entry.path == name), None)
    if stored is None:
        log.warning("run %s: the server does not list the size of %s; its upload is not checked", run_id, name)
    elif stored != size:
        raise ArtifactUploadError(
            f"{file} ({_size(size)}) reached the tracking server cut off ({_size(stored)}) in "
            f"{_where(run_id, folder)}; upload it again, and if it keeps happening look for a proxy or "
            "timeout between the node and the server"
        )


def _where(run_id: str, folder: str | None) -> str:
    return f"run {run_id}'s artifacts {folder or '(top level)'}"


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _failure(error: BaseException, file: Path, size: int, where: str) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    if _status(error) == TOO_LARGE or "413" in text and "too large" in text.lower():
        return (
            f"the tracking server refused {file} ({_size(size)}) for {where} as too large (HTTP 413): "
            "a limit on request bodies, of the server or of a proxy in front of it (nginx: raise "
            "client_max_body_size, e.g. `client_max_body_size 0;` for none). Or send large files in parts "
            "(MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true, MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE and "
            "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE in bytes: only where the server's --artifacts-destination is "
            "S3, GCS or Azure), or give the jobs an artifact store they write themselves (artifact_root in "
            f"the launch config). The error: {text}"
        )
    return f"cannot upload {file} ({_size(size)}) to {where}: {text}"
