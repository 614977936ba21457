"""`python launch submit --cluster local`: through submitit's local executor, waiting for the result."""

from __future__ import annotations


import pytest
from conftest import TINY_RUN, run_cli

from launch import cli
from launch.record import find
from launch.suites import SUITES, Suite


pytestmark = pytest.mark.usefixtures("no_user_config")
_cli = run_cli


def test_local_submit_waits_and_prints_the_mlflow_run(tiny_pair, mlflow_store, tmp_path, monkeypatch):
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target,
            "data.num_shots": "0"}
    monkeypatch.setitem(SUITES, "local_one", Suite("local_one", "one tiny run", base, {"main": {}}, tasks=None))
    runs_dir = tmp_path / "runs"
    rc, out = _cli(["submit", "--suite", "local_one", "--cluster", "local", "--runs-dir", str(runs_dir),
                    "--wait-timeout", "240"])
    assert rc == 0, out
    sub = find(runs_dir)
    run_id = sub.runs[0].mlflow_run_id
    assert f"local_one/main: FINISHED; MLflow run id {run_id}" in out
    assert f"mlflow ui --backend-store-uri {mlflow_store}" in out
    assert "1 task(s) (default (no GPU found" in out  # NUM_GPUS, nvidia-smi, torch, then 1

    from registry.store import client

    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["code_dir"] == sub.snapshot["root"] == run.data.tags["code_snapshot"]
    assert sorted(m.step for m in client().get_metric_history(run_id, "loss")) == list(range(1, 7))
    rc, out = _cli(["status", "--runs-dir", str(runs_dir)])
    assert rc == 0 and "COMPLETED" in out and "FINISHED" in out, out
    # a finished run has nothing to resume; a run name the submission lacks is a clear error
    rc, out = _cli(["resume", "--runs-dir", str(runs_dir)])
    assert rc == 0 and "local_one/main: finished, nothing to resume" in out and "nothing to resume in" in out, out
    rc, out = _cli(["resume", "--runs-dir", str(runs_dir), "--run", "nope"])
    assert rc == cli.EXIT_USAGE and "has no run 'nope'" in out, out


def test_local_parallel_runs_share_the_machine_and_only_keeps_later_overrides(tiny_pair, mlflow_store, tmp_path, monkeypatch):
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target,
            "data.num_shots": "0"}
    runs = {"a": {}, "b": {"seed": 7}, "c": {}}
    monkeypatch.setitem(SUITES, "local_three", Suite("local_three", "three tiny runs", base, runs, tasks=None))
    runs_dir = tmp_path / "runs"
    # `--only` takes one value: the override after it is an override, not a run name
    rc, out = _cli(["submit", "--suite", "local_three", "--cluster", "local", "--runs-dir", str(runs_dir),
                    "--local-parallel", "2", "--wait-timeout", "300", "--only", "a,b", "train.steps=3"])
    assert rc == 0, out
    sub = find(runs_dir)
    assert [e.name for e in sub.runs] == ["a", "b"]
    from registry.store import client

    a, b = (client().get_run(e.mlflow_run_id) for e in sub.runs)
    assert a.data.params["train.steps"] == b.data.params["train.steps"] == "3"
    # both went out together: b was started before a was seen to complete (one after another,
    # a completes first)
    assert out.index("started local_three/b") < out.index("local_three/a: COMPLETED"), out
    assert "what crossed the bridge: content/bits_transmitted = " in out, out
    rc, out = _cli(["submit", "--suite", "local_three", "--cluster", "local", "--runs-dir", str(runs_dir),
                    "--local-parallel", "0"])
    assert rc == cli.EXIT_USAGE and "--local-parallel 0 must be >= 1" in out, out
