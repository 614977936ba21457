"""submitit's result and job pickles are unpickled by `launch status|wait|resume`: the runs
folder is private to its owner, and a pickle someone else could have written is refused
without being run."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import stat

import pytest

from launch import cli
from launch.monitor import Monitor, read_result, task_paths
from launch.record import RunEntry, Submission, UnsafeFileError, load_own_pickle, mark_latest, new_folder

IS_ROOT = os.geteuid() == 0
DEAD_PID = "4194304"  # above Linux's pid_max: never a live process


class _RunsACommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    (tmp_path / "launch.toml").write_text("")
    monkeypatch.setenv("LATENTBRIDGE_LAUNCH_CONFIG", str(tmp_path / "launch.toml"))


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cli(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        rc = cli.main(argv)
    return rc, buffer.getvalue()


def _write_pickle(path, value, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        pickle.dump(value, out)
    os.chmod(path, mode)


def _submission(runs_dir, mlflow_store) -> Submission:
    sub_id, folder = new_folder(runs_dir, "sec")
    sub = Submission(
        id=sub_id, suite="sec", folder=str(folder), created="", cluster="local",
        resources={"nodes": 1, "tasks_per_node": 1}, tracking_uri=mlflow_store, snapshot={"root": str(folder)},
        submitit_folder=str(folder / "submitit"), runs=[RunEntry("main", str(folder / "main"), "no-such-run", DEAD_PID)],
    )
    sub.save()
    mark_latest(runs_dir, sub)
    return sub


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000])
def test_the_submission_and_submitit_folders_are_private(tmp_path, umask):
    with _umask(umask):
        _, folder = new_folder(tmp_path / "runs", "suite")
    assert _mode(folder) == 0o700
    assert _mode(folder / "submitit") == 0o700


def test_own_result_files_are_read(tmp_path, mlflow_store):
    sub = _submission(tmp_path / "runs", mlflow_store)
    path = task_paths(sub, DEAD_PID).result_pickle
    _write_pickle(path, ("success", 42), mode=0o644)
    assert read_result(sub, sub.runs[0]) == ("success", 42)
    os.chmod(path, 0o664)  # group-writable, but in a folder only its owner can enter
    assert read_result(sub, sub.runs[0]) == ("success", 42)


def test_a_result_file_writable_by_others_is_refused_and_not_run(tmp_path, mlflow_store):
    marker = tmp_path / "pwned"
    sub = _submission(tmp_path / "runs", mlflow_store)
    path = task_paths(sub, DEAD_PID).result_pickle
    _write_pickle(path, ("success", _RunsACommand(marker)), mode=0o666)
    kind, message = read_result(sub, sub.runs[0])
    assert kind == "error" and f"refusing to unpickle {path}: it is writable by everyone" in message
    assert not marker.exists()

    # group-writable in a folder others can enter: refused too
    os.chmod(path, 0o664)
    os.chmod(path.parent, 0o755)
    with pytest.raises(UnsafeFileError, match="writable by its group"):
        load_own_pickle(path)
    assert not marker.exists()


@pytest.mark.skipif(not IS_ROOT, reason="giving a file to another user needs root")
def test_status_refuses_a_result_file_owned_by_someone_else(tmp_path, mlflow_store):
    marker = tmp_path / "pwned"
    runs_dir = tmp_path / "runs"
    sub = _submission(runs_dir, mlflow_store)
    path = task_paths(sub, DEAD_PID).result_pickle
    _write_pickle(path, ("success", _RunsACommand(marker)), mode=0o644)
    os.chown(path, 4321, 4321)
    rc, out = _cli(["status", "--runs-dir", str(runs_dir)])
    assert not marker.exists(), "unpickling the result file ran a command"
    assert rc == 0 and "FAILED" in out, out
    assert f"refusing to unpickle {path}: it is owned by uid 4321, not by you" in out, out
    assert "Traceback" not in out
    state = Monitor(sub).states()[0]
    assert state.state == "FAILED" and not state.ok and "owned by uid 4321" in state.detail


def test_a_symlinked_result_file_is_refused(tmp_path, mlflow_store):
    marker = tmp_path / "pwned"
    sub = _submission(tmp_path / "runs", mlflow_store)
    elsewhere = tmp_path / "elsewhere.pkl"
    _write_pickle(elsewhere, ("success", _RunsACommand(marker)))
    path = task_paths(sub, DEAD_PID).result_pickle
    path.symlink_to(elsewhere)
    kind, message = read_result(sub, sub.runs[0])
    assert kind == "error" and "symbolic link" in message and str(path) in message
    assert not marker.exists()


def test_resume_refuses_a_job_pickle_others_could_write(tmp_path, mlflow_store):
    marker = tmp_path / "pwned"
    runs_dir = tmp_path / "runs"
    sub = _submission(runs_dir, mlflow_store)
    paths = task_paths(sub, DEAD_PID)
    _write_pickle(paths.result_pickle, ("error", "Traceback ...\nRuntimeError: boom"))
    _write_pickle(paths.submitted_pickle, _RunsACommand(marker), mode=0o646)
    rc, out = _cli(["resume", "--runs-dir", str(runs_dir)])
    assert not marker.exists(), "unpickling the job file ran a command"
    assert rc == cli.EXIT_USAGE, out
    assert "error: refusing to unpickle" in out and str(paths.submitted_pickle) in out, out
    assert "Traceback" not in out
