"""Runs logged through a real `mlflow server`: the server's artifact store holds every artifact.

One server for the module, on loopback, with a SQLite backend and `--artifacts-destination`
in a temp folder; it is killed at the end. Every test makes its own experiment.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import train_tiny_run

from latentbridge.metric_names import BRIDGED_ACCURACY, SOURCE_ACCURACY

START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, Path | str]]:
    """A running tracking server: its URL and its artifacts destination."""
    root = tmp_path_factory.mktemp("mlflow_server")
    url, dest, log_file = f"http://127.0.0.1:{_free_port()}", root / "dest", root / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'srv.db'}",
               "--artifacts-destination", str(dest)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job workers: a faster start
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_file.read_text(errors="replace")[-1500:]
                pytest.skip(f"`mlflow server` did not answer on {url}/health within {START_TIMEOUT_S} s "
                            f"(exit code {process.poll()}); its log ends:\n{tail}")
            time.sleep(0.5)
        yield {"url": url, "dest": dest}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and its workers (its own session)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def on_server(server, monkeypatch) -> dict[str, Path | str]:
    """The project's store is the server; no artifact root set."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    monkeypatch.delenv("LATENTBRIDGE_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return server


def _experiment() -> str:
    return f"server-{uuid.uuid4().hex[:8]}"


def _artifact_paths(run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of the run, as listed by the store."""
    from registry.store import client

    found: set[str] = set()
    for entry in client().list_artifacts(run_id, path):
        found |= _artifact_paths(run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def _eval_jsonl(folder: Path) -> Path:
    answer = {"output": "The answer is 4", "answer": "4", "correct": True}
    record = {"step": 3, "index": 0, "question": "2+2?", "gold": "4",
              **{system: answer for system in ("source", "target", "bridged", "mismatched")}}
    path = folder / "eval_step3.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def test_every_artifact_lands_in_the_servers_artifact_store(on_server, tmp_path):
    from registry.reporter import MlflowReporter
    from registry.runs import open_run
    from registry.store import REPO_ROOT, artifact_root, client

    name = _experiment()
    assert artifact_root() == ""  # the server's default
    run_id = open_run(tmp_path / "run", "tiny", name)
    reporter = MlflowReporter(run_id)
    reporter.log_params({"translator.width": 32})
    reporter.log_metrics({SOURCE_ACCURACY: 0.5, BRIDGED_ACCURACY: 0.25}, step=3)
    reporter.log_artifact(_eval_jsonl(tmp_path), "evals")

    run = client().get_run(run_id)
    experiment = client().get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    assert run.data.params == {"translator.width": "32"} and run.data.metrics[BRIDGED_ACCURACY] == 0.25
    logged = _artifact_paths(run_id)
    assert {"evals/eval_step3.jsonl", "evals/eval_step3.table.json", "accuracy_and_content_by_step.png"} <= logged
    stored = on_server["dest"] / experiment.experiment_id / run_id / "artifacts"
    assert {p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()} == logged
    assert not (REPO_ROOT / "mlartifacts" / name).exists()
    assert not any((REPO_ROOT / "mlartifacts").rglob(run_id))


def test_an_explicit_artifact_root_wins_over_the_servers(on_server, tmp_path, monkeypatch):
    from registry.reporter import MlflowReporter
    from registry.runs import open_run
    from registry.store import client

    mine = (tmp_path / "mine").as_uri()
    monkeypatch.setenv("LATENTBRIDGE_ARTIFACT_ROOT", mine)
    name = _experiment()
    run_id = open_run(tmp_path / "run", "tiny", name)
    MlflowReporter(run_id).log_artifact(_eval_jsonl(tmp_path), "evals")

    experiment = client().get_experiment(client().get_run(run_id).info.experiment_id)
    assert experiment.artifact_location == f"{mine}/{name}"
    assert (tmp_path / "mine" / name / run_id / "artifacts" / "evals" / "eval_step3.jsonl").is_file()
    assert not any(on_server["dest"].rglob(run_id))


def test_a_job_keeps_the_servers_default(monkeypatch):
    """The launcher hands a job "" for the server's default; the job sets it and must not fall back."""
    from registry.store import REPO_ROOT, artifact_root, is_server

    monkeypatch.setenv("LATENTBRIDGE_ARTIFACT_ROOT", "")  # what TrainJob sets from such a JobSpec
    assert is_server("https://mlflow.example.org") and is_server("databricks")
    assert artifact_root("http://127.0.0.1:5099") == ""
    for local in ("sqlite:////tmp/mlflow.db", "/tmp/mlruns", "file:///tmp/mlruns", "postgresql+psycopg2://u@h/db"):
        assert not is_server(local)
        assert artifact_root(local) == (REPO_ROOT / "mlartifacts").as_uri()


def test_the_closing_hint_opens_a_server_in_a_browser():
    from launch.cli import _ui_hint

    assert _ui_hint("http://127.0.0.1:5099") == "browse the runs: open http://127.0.0.1:5099 in a browser"
    assert "mlflow ui --backend-store-uri sqlite:////tmp/mlflow.db" in _ui_hint("sqlite:////tmp/mlflow.db")


def test_train_preserve_and_load_through_the_server(on_server, tmp_path, tiny_pair, monkeypatch):
    import registry
    from latentbridge.bridge import Bridge
    from registry.preserve import preserve
    from registry.store import REPO_ROOT, client

    run_id, _ = train_tiny_run(tmp_path, tiny_pair, _experiment())
    archived = preserve(run_id)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert isinstance(registry.load(f"models:/{archived.model}/{archived.version}"), Bridge)
    stored = on_server["dest"] / client().get_run(run_id).info.experiment_id / run_id / "artifacts"
    assert (stored / "archive").is_dir() and (stored / "evals").is_dir()
    assert not any((REPO_ROOT / "mlartifacts").rglob(run_id)) and not any(elsewhere.iterdir())
