"""A run that stops on a NaN loss is a failure for `launch submit`/`wait`: non-zero exit, and why."""

from __future__ import annotations


import pytest
from conftest import TINY_RUN, run_cli

from launch import cli
from launch.job import JobResult
from launch.monitor import RunState
from launch.record import RunEntry, Submission, find
from launch.suites import SUITES, Suite


pytestmark = pytest.mark.usefixtures("no_user_config")
_cli = run_cli


def _submission(tmp_path) -> Submission:
    return Submission(
        id="s/1", suite="s", folder=str(tmp_path), created="", cluster="local", resources={}, tracking_uri="",
        snapshot={}, submitit_folder=str(tmp_path / "submitit"),
        runs=[RunEntry("main", str(tmp_path / "main"), "rid", job_id="123")],
    )


def test_a_nan_loss_result_counts_as_a_failure_and_says_why(tmp_path, capsys):
    sub = _submission(tmp_path)
    result = JobResult(run_id="rid", status="NAN_LOSS", run_dir=str(tmp_path), metrics={})  # an older result too
    state = RunState("main", "123", "COMPLETED", done=True, ok=True, result=result)
    assert cli._report(sub, [state]) == 1
    out = capsys.readouterr().out
    assert "s/main: NAN_LOSS" in out and "NaN" in out and "FAILED" in out, out
    assert cli._finish_wait(sub, [state], False, 10.0) == cli.EXIT_FAILED
    finished = JobResult(run_id="rid", status="FINISHED", run_dir=str(tmp_path), metrics={})
    assert cli._report(sub, [RunState("main", "123", "COMPLETED", done=True, ok=True, result=finished)]) == 0


def test_debug_submit_of_a_nan_run_exits_non_zero(tiny_pair, mlflow_store, tmp_path, monkeypatch):
    import latentbridge.train as train_module

    real = train_module.compute_losses

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(train_module, "compute_losses", poisoned)
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target,
            "data.num_shots": "0"}
    monkeypatch.setitem(SUITES, "nan_one", Suite("nan_one", "one tiny run", base, {"main": {}}, tasks=None))
    runs_dir = tmp_path / "runs"
    rc, out = _cli(["submit", "--suite", "nan_one", "--cluster", "debug", "--runs-dir", str(runs_dir),
                    "--wait-timeout", "240"])
    assert rc == cli.EXIT_FAILED, out
    assert "nan_one/main: NAN_LOSS" in out and "the loss became NaN or infinite at step 0" in out, out
    from registry.store import client

    assert client().get_run(find(runs_dir).runs[0].mlflow_run_id).info.status == "FAILED"
