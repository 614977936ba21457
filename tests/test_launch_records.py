"""`python launch submit --records DIR`: runs on a machine with no MLflow store, each writing its
record for `python -m registry import`; the imported run is the one the MLflow path would give."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN, run_cli

from latentbridge.reporting import FileReporter
from launch import cli
from launch.monitor import RunState, reconcile_mlflow
from launch.record import RunEntry, Submission, find, new_run_record
from launch.suites import SUITES, Suite

pytestmark = pytest.mark.usefixtures("no_user_config")
REPO = Path(__file__).resolve().parents[1]

# Loaded by every Python process started with it on PYTHONPATH: mlflow cannot be imported there,
# and each such process leaves a mark (so the test knows the jobs ran under it).
NO_MLFLOW = """
import os, sys
sys.modules["mlflow"] = None
open(os.path.join(os.environ["NO_MLFLOW_MARKS"], str(os.getpid())), "w").close()
"""


def _tiny_base(tiny_pair) -> dict[str, str]:
    source, target = tiny_pair
    return {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target,
            "data.num_shots": "0"}


def test_records_mode_trains_without_mlflow_and_imports_as_the_run(tiny_pair, mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setitem(SUITES, "rec_one", Suite("rec_one", "one tiny run", _tiny_base(tiny_pair), {"main": {}}))
    runs_dir, records, marks, shim = (tmp_path / name for name in ("runs", "records", "marks", "no_mlflow"))
    marks.mkdir()
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_MLFLOW)
    argv = ["submit", "--suite", "rec_one", "--cluster", "local", "--runs-dir", str(runs_dir), "--records", str(records),
            "--wait-timeout", "240", "seed=5"]
    with monkeypatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])))
        patch.setenv("NO_MLFLOW_MARKS", str(marks))
        blocked = subprocess.run([sys.executable, "-c", "import mlflow"], capture_output=True, text=True)
        assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr  # the shim works
        before = set(marks.iterdir())
        rc, out = run_cli(argv)
    assert rc == 0, out
    assert set(marks.iterdir()) - before, "the job's processes did not run without mlflow"
    assert not (tmp_path / "mlflow.db").exists(), "the launcher touched the MLflow store"
    sub = find(runs_dir)
    [folder] = (records / "rec_one").iterdir()
    assert folder.name.startswith("main-") and sub.runs[0].record == str(folder)
    assert f"rec_one/main: FINISHED; record {folder}" in out
    assert f"python -m registry import {records / 'rec_one'}/* --experiment rec_one" in out, out
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "FINISHED" and 0 < status["start_time"] <= status["end_time"]
    for command in (["status"], ["wait", "--timeout", "30"]):  # read the jobs' results, not a store
        rc, out = run_cli([*command, "--runs-dir", str(runs_dir)])
        assert rc == 0 and "COMPLETED" in out, out
    # the launcher itself runs without mlflow too: `status` in a process that cannot import it
    # shows each run's recorded status from its record
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])),
           "NO_MLFLOW_MARKS": str(marks)}
    shown = subprocess.run([sys.executable, "launch", "status", "--runs-dir", str(runs_dir)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if line.strip().startswith("main ")]
    assert row.split()[2:5] == ["COMPLETED", "FINISHED", str(folder)], shown.stdout

    from registry.cli import main as registry_main
    from registry.store import client

    assert registry_main(["import", *map(str, (records / "rec_one").iterdir()), "--experiment", "rec_one"]) == 0
    mlflow_client = client()
    [run] = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("rec_one").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "main"
    assert run.data.params["seed"] == "5" and run.data.params["translator.num_tokens"] == "4"
    tags = run.data.tags
    assert tags["command"] == tags["reproduce_command"] == shlex.join(["python", "launch", *argv])
    assert json.loads(tags["config_diff"]) == {"seed": 5}
    assert (tags["suite"], tags["suite_member"], tags["submission"], tags["cluster"]) == ("rec_one", "main", sub.id, "local")
    assert tags["code_snapshot"] == tags["code_dir"] == sub.snapshot["root"]
    assert tags["git_commit"] == sub.snapshot["git_commit"] and tags["run_dir"] == sub.runs[0].run_dir
    assert [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 7))
    evals = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "evals")}
    jsonls = [p.name for p in (folder / "artifacts" / "evals").iterdir()]
    # the record's eval JSONLs, and the table of each that the import adds, as a live run has
    assert evals == {f"evals/{name}" for name in jsonls} | {f"evals/{name[:-6]}.table.json" for name in jsonls}
    assert any(path.endswith(".jsonl") for path in evals), evals
    assert "config.json" in {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}


def test_a_requeued_job_logs_each_step_once(tmp_path, mlflow_store):
    """The second start of a job re-runs the steps since its checkpoint: the record keeps the
    points it has (as an MLflow run does) and drops a line the kill cut short."""
    from registry.import_runs import import_record
    from registry.store import client

    folder = tmp_path / "record"
    first = FileReporter(folder)
    first.log_params({"name": "requeued", "suite": "rec"})
    for step in (1, 2, 3):
        first.log_metrics({"loss": float(step), "lr": 0.1}, step)
    with (folder / "metrics.jsonl").open("a") as handle:
        handle.write('{"key": "loss", "val')  # killed while writing step 4
    cut = shutil.copytree(folder, tmp_path / "cut")
    again = FileReporter(folder)  # the requeued job, resumed from step 1's checkpoint
    for step in (2, 3, 4):
        again.log_metrics({"loss": 10.0 * step, "lr": 0.1}, step)
    assert again.skipped == 4
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert sorted((p["key"], p["step"]) for p in lines) == sorted((k, s) for k in ("loss", "lr") for s in (1, 2, 3, 4))
    assert [(p["step"], p["value"]) for p in lines if p["key"] == "loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    history = client().get_metric_history(import_record(folder).run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    # a record whose job was killed mid-line and never resumed still imports, without that line
    history = client().get_metric_history(import_record(cut).run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_records_mode_refuses_preservation(tmp_path, monkeypatch):
    base = dict(item.split("=", 1) for item in TINY_RUN)
    monkeypatch.setitem(SUITES, "rec_keep", Suite("rec_keep", "preserves", base, preserve_each=True))
    rc, out = run_cli(["submit", "--suite", "rec_keep", "--cluster", "local", "--runs-dir", str(tmp_path / "runs"),
                       "--records", str(tmp_path / "records")])
    assert rc == cli.EXIT_USAGE and "preserves each run as it finishes, which needs the MLflow store" in out, out
    assert not (tmp_path / "records").exists() and not (tmp_path / "runs").exists()


def test_a_lost_job_closes_its_record_without_mlflow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "registry.runs", None)
    lost = new_run_record(tmp_path / "records", tmp_path / "a", "a", {"suite": "s"}, {"name": "a"})
    done = new_run_record(tmp_path / "records", tmp_path / "b", "b", {"suite": "s"}, {"name": "b"})
    FileReporter(done).set_status("FINISHED")
    sub = Submission(id="s/1", suite="s", folder=str(tmp_path), created="", cluster="local", resources={},
                     tracking_uri="", snapshot={}, submitit_folder="", records=str(tmp_path / "records"),
                     runs=[RunEntry("a", str(tmp_path / "a"), "", record=str(lost)),
                           RunEntry("b", str(tmp_path / "b"), "", record=str(done))])
    reconcile_mlflow(sub, [RunState("a", "1", "LOST", done=True), RunState("b", "2", "FAILED", done=True)])
    assert FileReporter(lost).status == "KILLED" and FileReporter(done).status == "FINISHED"
    assert json.loads((lost / "status.json").read_text())["end_time"] is not None
