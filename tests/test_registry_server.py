"""Runs logged through a real `mlflow server`: the server's artifact store holds every artifact.

One server for the module, on loopback, with a SQLite backend and `--artifacts-destination`
in a temp folder; it is killed at the end. Every test makes its own experiment.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import train_tiny_run
from mlflow_server import Server, files_under, listed_artifacts, running_server

from latentbridge.metric_names import BRIDGED_ACCURACY, SOURCE_ACCURACY


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """A running tracking server: its URL and its artifacts destination."""
    with running_server(tmp_path_factory.mktemp("mlflow_server")) as running:
        yield running


@pytest.fixture
def on_server(server, monkeypatch) -> Server:
    """The project's store is the server; no artifact root set."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.delenv("LATENTBRIDGE_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return server


def _experiment() -> str:
    return f"server-{uuid.uuid4().hex[:8]}"


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
    logged = listed_artifacts(run_id)
    assert {"evals/eval_step3.jsonl", "evals/eval_step3.table.json", "accuracy_and_content_by_step.png"} <= logged
    stored = on_server.dest / experiment.experiment_id / run_id / "artifacts"
    assert files_under(stored) == logged
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
    assert not any(on_server.dest.rglob(run_id))


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


BIG_TRANSLATOR = ("translator.width=512", "translator.depth=2")  # a translator.safetensors of about 30 MB


@pytest.fixture
def multipart_attempts(monkeypatch) -> list[str]:
    """Multipart upload on for files of 1 MiB or more; each attempt's outcome, as MLflow's client saw it."""
    from mlflow.exceptions import _UnsupportedMultipartUploadException
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(2**20))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(5 * 2**20))
    attempts: list[str] = []
    original = HttpArtifactRepository._try_multipart_upload

    def spy(self, local_file, artifact_path=None):
        try:
            original(self, local_file, artifact_path)
        except _UnsupportedMultipartUploadException:
            attempts.append(f"declined {Path(local_file).name}")
            raise
        attempts.append(f"multipart {Path(local_file).name}")

    monkeypatch.setattr(HttpArtifactRepository, "_try_multipart_upload", spy)
    return attempts


def test_a_30_mb_translator_goes_through_the_proxy_and_loads_back_checked(
    on_server, multipart_attempts, tmp_path, tiny_pair, monkeypatch
):
    """Train (a 30 MB translator), preserve and load through the server from another folder;
    the server's local-disk destination declines multipart, so the file goes whole; a changed
    byte in the stored archive is refused by the sha256 manifest."""
    import registry
    from latentbridge.bridge import Bridge
    from latentbridge.models import sha256_file
    from registry.errors import TamperedArchiveError
    from registry.preserve import preserve
    from registry.store import REPO_ROOT, client

    run_id, _ = train_tiny_run(tmp_path, tiny_pair, _experiment(), overrides=BIG_TRANSLATOR)
    local = tmp_path / "run" / "translator" / "translator.safetensors"
    assert local.stat().st_size > 25 * 2**20
    stored = on_server.dest / client().get_run(run_id).info.experiment_id / run_id / "artifacts"
    assert sha256_file(stored / "translator" / "translator.safetensors") == sha256_file(local)
    assert "declined translator.safetensors" in multipart_attempts, multipart_attempts
    assert not any(a.startswith("multipart") for a in multipart_attempts)  # no multipart on a local disk

    archived = preserve(run_id)
    archived_file = stored / "archive" / "translator" / "translator.safetensors"
    assert sha256_file(archived_file) == sha256_file(local)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"models:/{archived.model}/{archived.version}"
    bridge = registry.load(uri)
    assert isinstance(bridge, Bridge)
    assert not any((REPO_ROOT / "mlartifacts").rglob(run_id)) and not any(elsewhere.iterdir())

    with open(archived_file, "r+b") as handle:  # one byte changed in the server's copy
        handle.seek(archived_file.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(TamperedArchiveError, match="translator/translator.safetensors fails its sha256 check"):
        registry.load(uri)


def test_a_file_refused_as_too_large_is_named_with_its_size_and_the_way_out(on_server, tmp_path, monkeypatch):
    from mlflow_server import behind_a_body_limit

    from registry.artifacts import ArtifactUploadError
    from registry.reporter import MlflowReporter
    from registry.runs import open_run

    big = tmp_path / "translator.safetensors"
    big.write_bytes(b"\0" * (3 * 2**20))
    with behind_a_body_limit(on_server, limit=2**20) as proxy:  # the server behind a 1 MiB body limit
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy)
        run_id = open_run(tmp_path / "run", "tiny", _experiment())
        reporter = MlflowReporter(run_id)
        reporter.log_artifact(_eval_jsonl(tmp_path), "evals")  # small files pass
        with pytest.raises(ArtifactUploadError) as refused:
            reporter.log_artifact(big, "translator")
    message = str(refused.value)
    assert f"refused {big} (3.0 MiB)" in message and "HTTP 413" in message
    assert f"run {run_id}'s artifacts translator" in message
    assert "client_max_body_size" in message and "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true" in message
    assert "artifact_root in the launch config" in message


def test_an_upload_cut_off_on_the_way_is_caught(on_server, tmp_path, monkeypatch):
    """The server lists the file shorter than it is here (a proxy cut it off): an error, not a silent loss."""
    from mlflow.entities import FileInfo
    from mlflow.tracking import MlflowClient

    from registry.artifacts import ArtifactUploadError
    from registry.reporter import MlflowReporter
    from registry.runs import open_run

    def short(self, run_id, path=None):
        return [FileInfo(f"{path}/weights.bin", False, 1000)]

    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\1" * 4096)
    run_id = open_run(tmp_path / "run", "tiny", _experiment())
    reporter = MlflowReporter(run_id)
    monkeypatch.setattr(MlflowClient, "list_artifacts", short)
    with pytest.raises(ArtifactUploadError, match=r"weights.bin \(4096 bytes\) reached the tracking server cut off \(1000 bytes\)"):
        reporter.log_artifact(weights, "translator")


# --------------------------------------------------------------------------- artifact_root in the launch config
def _launch_config(tmp_path: Path, monkeypatch, **settings: str) -> Path:
    path = tmp_path / "launch.toml"
    path.write_text("[submit]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    monkeypatch.setenv("LATENTBRIDGE_LAUNCH_CONFIG", str(path))
    return path


@pytest.mark.parametrize(("value", "says"), [
    ("", "is empty: leave the setting out for the store's default"),
    ("mlartifacts", "is a relative path, which each job would read from its own folder"),
    ("file:mlartifacts", "is not an absolute file URI: write file:///absolute/path"),
])
def test_a_bad_artifact_root_is_refused_with_the_way_out(tmp_path, monkeypatch, value, says):
    from launch.user_config import UserConfigError, load_user_config

    path = _launch_config(tmp_path, monkeypatch, artifact_root=value)
    with pytest.raises(UserConfigError) as refused:
        load_user_config()
    assert f"{path}: submit.artifact_root = {value!r} {says}" in str(refused.value)


def test_the_artifact_root_setting_is_exported_unless_the_environment_sets_it(tmp_path, monkeypatch):
    from launch.user_config import export_environment, load_user_config

    _launch_config(tmp_path, monkeypatch, artifact_root=str(tmp_path / "mine"), tracking_uri="http://127.0.0.1:5099")
    settings, _ = load_user_config()
    assert settings["artifact_root"] == (tmp_path / "mine").as_uri()  # an absolute path becomes a file URI
    monkeypatch.setenv("LATENTBRIDGE_ARTIFACT_ROOT", "")  # unset (and restored after the test)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-wins:5000")
    export_environment(settings)
    assert os.environ["LATENTBRIDGE_ARTIFACT_ROOT"] == (tmp_path / "mine").as_uri()
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://env-wins:5000"  # the environment wins over the file
    monkeypatch.setenv("LATENTBRIDGE_ARTIFACT_ROOT", "s3://bucket/env")
    export_environment(settings)
    assert os.environ["LATENTBRIDGE_ARTIFACT_ROOT"] == "s3://bucket/env"


def test_submit_with_artifact_root_in_the_launch_config(server, tmp_path, tiny_pair, monkeypatch):
    """Only the launch config names the server and the artifact root: submit and its job use both."""
    from conftest import TINY_RUN, run_cli

    from launch.record import find
    from launch.suites import SUITES, Suite
    from registry.store import client

    for name in ("MLFLOW_TRACKING_URI", "LATENTBRIDGE_ARTIFACT_ROOT"):
        monkeypatch.setenv(name, "")  # unset; submit exports the config's values, restored after the test
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.delenv("NUM_GPUS", raising=False)
    mine = tmp_path / "mine"
    _launch_config(tmp_path, monkeypatch, tracking_uri=server.url, artifact_root=str(mine))
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target}
    suite = Suite(_experiment(), "one tiny run", base, {"main": {}})
    monkeypatch.setitem(SUITES, suite.name, suite)
    rc, out = run_cli(["submit", "--suite", suite.name, "--cluster", "local", "--runs-dir", str(tmp_path / "runs"),
                       "--wait-timeout", "240"])
    assert rc == 0, out
    assert f"open {server.url} in a browser" in out
    run_id = find(tmp_path / "runs").runs[0].mlflow_run_id
    run = client().get_run(run_id)  # found on the server
    assert run.info.status == "FINISHED"
    assert client().get_experiment(run.info.experiment_id).artifact_location == f"{mine.as_uri()}/{suite.name}"
    assert (mine / suite.name / run_id / "artifacts" / "translator" / "translator.safetensors").is_file()
    assert not any(server.dest.rglob(run_id))
