"""A local job whose process is killed (SIGKILL) is seen as dead: LOST at once, MLflow KILLED, a non-zero
exit, the same in `status` from a fresh process, and `resume` takes it."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from conftest import TINY_RUN, run_cli

from launch import cli
from launch.record import RecordError, find
from launch.suites import SUITES, Suite


pytestmark = pytest.mark.usefixtures("no_user_config")
_cli = run_cli


def _tasks_of(job_id: str) -> list[int]:
    marker = f"SUBMITIT_LOCAL_JOB_ID={job_id}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _kill_first_task(runs_dir: Path, done: threading.Event, killed: list[int]) -> None:
    while not done.is_set():
        try:
            entry = find(runs_dir).runs[0]
        except (RecordError, OSError, ValueError):
            entry = None
        if entry is not None and entry.job_id:
            for pid in _tasks_of(entry.job_id):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            if killed:
                return
        done.wait(0.05)


def test_a_killed_local_job_is_lost_marked_killed_and_resumed(tiny_pair, mlflow_store, tmp_path, monkeypatch):
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target,
            "data.num_shots": "0"}
    monkeypatch.setitem(SUITES, "kill_one", Suite("kill_one", "one tiny run", base, {"main": {}}, tasks=None))
    runs_dir = tmp_path / "runs"
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_task, args=(runs_dir, done, killed), daemon=True)
    killer.start()
    try:
        rc, out = _cli(["submit", "--suite", "kill_one", "--cluster", "local", "--runs-dir", str(runs_dir),
                        "--wait-timeout", "240"])
    finally:
        done.set()
        killer.join(10)
    assert killed, out
    assert rc == cli.EXIT_FAILED, out
    assert "kill_one/main: LOST" in out and "ended without a result" in out, out
    sub = find(runs_dir)
    run_id = sub.runs[0].mlflow_run_id
    from registry.store import client

    assert client().get_run(run_id).info.status == "KILLED"
    # a fresh look (another process: no memory of the job) sees it dead too, not ENDING
    rc, out = _cli(["status", "--runs-dir", str(runs_dir)])
    assert "LOST" in out and "ENDING" not in out and "KILLED" in out, out
    rc, out = _cli(["wait", "--runs-dir", str(runs_dir), "--timeout", "60"])
    assert rc == cli.EXIT_FAILED and "LOST" in out, out
    # resume takes it, and the same MLflow run finishes
    rc, out = _cli(["resume", "--runs-dir", str(runs_dir)])
    assert rc == 0 and "resumed kill_one/main" in out and "kill_one/main: FINISHED" in out, out
    assert client().get_run(run_id).info.status == "FINISHED"
