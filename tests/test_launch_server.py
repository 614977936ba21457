"""A suite on the local Slurm cluster logging into a real `mlflow server` on loopback.

The launch config names only the server's URL (no store path, no artifact root), as a node of a
multi-node cluster would have it. What the tests show:
- a suite of two runs logs both runs into the server, and every artifact lands in the server's
  `--artifacts-destination`, none in the checkout or the frozen code;
- `registry preserve` and `registry.load` work from another working directory, writing nothing there;
- a job requeued mid-run (`scontrol requeue`) continues the same MLflow run through the server,
  every step logged once.
Skipped (saying why) when the local Slurm cluster is not up, as tests/test_launch_slurm.py is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow_server import files_under, listed_artifacts, running_server
from test_launch_slurm import WAIT_S, _debug, _steps, _submit_no_wait, _tiny_base, _wait_for_step, run_cli
from test_launch_slurm import slurm_cluster  # noqa: F401 - the module's skip when Slurm is not up

from launch import slurm_queue
from launch.suites import SUITES, Suite

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def server_only(tmp_path_factory):
    """A server, and a launch config whose only setting is its URL; no store in the environment."""
    root = tmp_path_factory.mktemp("slurm_server")
    with running_server(root) as server, pytest.MonkeyPatch.context() as mp:
        (root / "launch.toml").write_text(f'[submit]\ntracking_uri = "{server.url}"\n')
        mp.setenv("LATENTBRIDGE_LAUNCH_CONFIG", str(root / "launch.toml"))
        for name in ("MLFLOW_TRACKING_URI", "LATENTBRIDGE_ARTIFACT_ROOT"):
            mp.setenv(name, "")  # unset: submit exports the config's URL (restored after the module)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield server


def _client():
    from registry.store import client

    return client()


@pytest.fixture(scope="module")
def two_runs(server_only, tiny_pair, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("server_runs")
    suite = Suite(f"srv_{uuid.uuid4().hex[:6]}", "two tiny runs", _tiny_base(tiny_pair), {"a": {"seed": 1}, "b": {"seed": 2}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SUITES, suite.name, suite)
        submit = run_cli(["submit", "--suite", suite.name, "--cluster", "slurm", "--gpus-per-node", "1",
                          "--runs-dir", str(runs_dir)])
        waited = run_cli(["wait", "--runs-dir", str(runs_dir), "--timeout", str(WAIT_S), "--poll", "1"])
    from launch.record import find

    return {"submit": submit, "wait": waited, "sub": find(runs_dir)}


def test_two_runs_log_into_the_server_and_its_destination_holds_every_artifact(server_only, two_runs):
    sub = two_runs["sub"]
    assert two_runs["submit"][0] == 0, two_runs["submit"][1]
    assert two_runs["wait"][0] == 0, two_runs["wait"][1] + _debug(sub)
    assert sub.tracking_uri == server_only.url and f"open {server_only.url} in a browser" in two_runs["wait"][1]
    for entry in sub.runs:
        run = _client().get_run(entry.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert _steps(entry.mlflow_run_id, "loss") == list(range(1, 7))
        experiment = _client().get_experiment(run.info.experiment_id)
        assert experiment.artifact_location.startswith("mlflow-artifacts:/")
        listed = listed_artifacts(entry.mlflow_run_id)
        assert {"config.json", "translator/translator.safetensors", "evals/eval_step_000006.jsonl"} <= listed, listed
        stored = server_only.dest / run.info.experiment_id / entry.mlflow_run_id / "artifacts"
        assert files_under(stored) == listed
        for checkout in (REPO, Path(sub.snapshot["root"])):  # the work tree and the code the jobs ran from
            assert not any((checkout / "mlartifacts").rglob(entry.mlflow_run_id))
            assert not (checkout / "mlruns").exists()


def test_preserve_and_load_from_another_working_directory(server_only, two_runs, tmp_path):
    run_id = two_runs["sub"].runs[0].mlflow_run_id
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_only.url, "PYTHONPATH": str(REPO)}
    preserved = subprocess.run([sys.executable, "-m", "registry", "preserve", run_id], cwd=elsewhere, env=env,
                               capture_output=True, text=True, timeout=300)
    assert preserved.returncode == 0, preserved.stderr[-3000:]
    model, version = preserved.stdout.split(" preserved as ")[1].split(";")[0].split(" version ")
    load = ("import registry; from latentbridge.bridge import Bridge; "
            f"assert isinstance(registry.load('models:/{model}/{version}'), Bridge); print('loaded')")
    loaded = subprocess.run([sys.executable, "-c", load], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "loaded", loaded.stderr[-3000:]
    experiment_id = _client().get_run(run_id).info.experiment_id
    assert (server_only.dest / experiment_id / run_id / "artifacts" / "archive" / "manifest.json").is_file()
    assert not any(elsewhere.iterdir())  # no mlruns/, mlartifacts/ or mlflow.db where they ran


def test_a_requeued_job_continues_its_run_through_the_server(server_only, tiny_pair, tmp_path):
    runs_dir = tmp_path / "runs"
    base = _tiny_base(tiny_pair, train__steps=40, train__checkpoint_every=5, train__eval_every=20)
    suite = Suite(f"srv_requeue_{uuid.uuid4().hex[:6]}", "one tiny run, requeued", base, {"main": {}})
    sub = _submit_no_wait(suite, runs_dir, gpus=1)
    entry = sub.runs[0]
    try:
        _wait_for_step(entry.mlflow_run_id, 7, sub, "scontrol requeue")
        slurm_queue.requeue(entry.job_id)
        rc, out = run_cli(["wait", "--runs-dir", str(runs_dir), "--timeout", str(WAIT_S), "--poll", "1"])
    finally:
        slurm_queue.scancel([entry.job_id])
    assert rc == 0, out + _debug(sub)
    run = _client().get_run(entry.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["slurm_restarts"] == "1", run.data.tags
    runs = _client().search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [entry.mlflow_run_id]  # the restart opened no other run
    history = [m.step for m in _client().get_metric_history(entry.mlflow_run_id, "loss")]
    assert sorted(history) == list(range(1, 41)), history  # each step once, none missing
    assert _steps(entry.mlflow_run_id, "bridged_accuracy") == [0, 20, 40]
    log = Path(sub.submitit_folder, f"{entry.job_id}_0_log.err").read_text()
    assert sum("resumed from" in line for line in log.splitlines()) == 1, log[-3000:]
