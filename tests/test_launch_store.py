"""The MLflow store from many processes, the resume-safe reporter, and the code snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from launch.snapshot import DIFF_FILE, take_snapshot
from registry import store
from registry.reporter import MlflowReporter
from registry.runs import CODE_SNAPSHOT_FILE, open_run, run_status, set_status

REPO = Path(__file__).resolve().parents[1]


def _history(run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in store.client().get_metric_history(run_id, key))


def test_reporter_skips_steps_the_run_already_has(mlflow_store, tmp_path):
    run_id = open_run(tmp_path / "run", "r", "exp")
    first = MlflowReporter(run_id)
    for step in range(1, 6):
        first.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step)
    first.log_metrics({"accuracy": 0.5}, 5)
    # a requeued job resumes from the checkpoint at step 3 and logs steps 4.. again
    again = MlflowReporter(run_id)
    for step in range(4, 9):
        again.log_metrics({"loss": 9.0, "lr": 0.1}, step)
    again.log_metrics({"accuracy": 0.75}, 5)  # (accuracy, 5) exists: skipped
    again.log_metrics({"accuracy": 0.8}, 8)
    assert _history(run_id, "loss") == list(range(1, 9))
    assert _history(run_id, "lr") == list(range(1, 9))
    assert _history(run_id, "accuracy") == [5, 8]
    kept = {m.step: m.value for m in store.client().get_metric_history(run_id, "loss")}
    assert kept[5] == pytest.approx(0.2) and kept[6] == 9.0  # the first logged value of a step stays
    assert again.skipped == 2 * 2 + 1


def test_open_run_continues_the_recorded_run(mlflow_store, tmp_path):
    run_id = open_run(tmp_path / "run", "r", "exp", {"suite": "s"}, status="SCHEDULED")
    assert run_status(run_id) == "SCHEDULED"
    assert open_run(tmp_path / "run", "r", "exp") == run_id
    assert run_status(run_id) == "RUNNING"
    set_status(run_id, "FINISHED")
    assert store.client().get_run(run_id).info.end_time is not None


def test_transient_store_errors_are_retried(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert store.with_retries(flaky, "test") == "ok" and len(calls) == 3
    with pytest.raises(MlflowException, match="bad param"):
        store.with_retries(lambda: (_ for _ in ()).throw(MlflowException("bad param")), "test")


def test_sqlite_store_on_nfs_is_refused(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(store, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(store.StoreError, match="tracking server"):
        store.check_local_disk(uri)
    monkeypatch.setenv(store.ALLOW_NETWORK_FS_ENV, "1")
    store.check_local_disk(uri)
    store.check_local_disk("http://mlflow-host:5000")  # a server is always fine


WRITER = textwrap.dedent(
    """
    import sys, time
    start = float(sys.argv[2])
    from registry.runs import open_run
    from registry.reporter import MlflowReporter
    while time.time() < start:  # everyone opens the EMPTY store at the same instant
        time.sleep(0.005)
    run_id = open_run(__import__("pathlib").Path(sys.argv[1]), "w", "many")
    reporter = MlflowReporter(run_id)
    for step in range(50):
        reporter.log_metrics({"a": step, "b": -step}, step)
    print(run_id)
    """
)


def test_many_processes_create_and_fill_one_empty_store(tmp_path):
    """The known failure: jobs migrating an empty SQLite file at once. The schema lock prevents it."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh.db'}",
           "LATENTBRIDGE_ARTIFACT_ROOT": (tmp_path / "art").as_uri(), "PYTHONPATH": str(REPO)}
    start = time.time() + 6
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / f"run{i}"), str(start)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(6)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    run_ids = [out.strip().splitlines()[-1] for out, _ in outs]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    for run_id in run_ids:
        assert sorted(m.step for m in client.get_metric_history(run_id, "a")) == list(range(50))
    import sqlite3

    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_snapshot_freezes_the_code_as_it_is_on_disk(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@t")
    _git(repo, "config", "user.name", "t")
    (repo / ".gitignore").write_text("runs/\n*.log\n")
    (repo / "pkg" / "mod.py").write_text("X = 1\n")
    (repo / "gone.py").write_text("old\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "init")
    commit = _git(repo, "rev-parse", "HEAD").strip()
    (repo / "pkg" / "mod.py").write_text("X = 2\n")  # uncommitted edit
    (repo / "pkg" / "new.py").write_text("Y = 3\n")  # untracked, not ignored
    (repo / "debug.log").write_text("ignored\n")
    (repo / "big.bin").write_bytes(b"0" * 2_100_000)  # untracked but too big: left out, listed
    (repo / "gone.py").unlink()

    snap = take_snapshot(repo, tmp_path / "sub" / "code", diff_untracked=True)
    code = Path(snap.root)
    assert (code / "pkg" / "mod.py").read_text() == "X = 2\n"
    assert (code / "pkg" / "new.py").read_text() == "Y = 3\n"
    assert not (code / "debug.log").exists() and not (code / "gone.py").exists()
    assert not (code / "big.bin").exists() and snap.left_out == ["big.bin"]
    assert not (code / "pkg" / "mod.py").stat().st_mode & 0o222  # read-only
    record = json.loads((code / CODE_SNAPSHOT_FILE).read_text())
    assert record["git_commit"] == commit and record["dirty"] and record["untracked"] == ["pkg/new.py"]
    assert snap.tags()["git_dirty"] == "true"
    # commit + recorded diff rebuild exactly the frozen code
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))
    _git(clone, "checkout", "-q", commit)
    _git(clone, "apply", str(tmp_path / "sub" / DIFF_FILE))
    assert (clone / "pkg" / "mod.py").read_text() == "X = 2\n"
    assert (clone / "pkg" / "new.py").read_text() == "Y = 3\n"
    assert not (clone / "gone.py").exists()
    # later edits do not reach the snapshot
    (repo / "pkg" / "mod.py").write_text("X = 99\n")
    assert (code / "pkg" / "mod.py").read_text() == "X = 2\n"
