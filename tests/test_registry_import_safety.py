"""`python -m registry import` on records that are hostile, badly shaped, or whose import was cut
short: refused by name before anything is written, and never left half-imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentbridge.reporting import FileReporter


def _record(folder: Path, suite: str = "import-safety", status: dict | None = None) -> Path:
    """A small record: params, two metric points, an eval JSONL and a translator file."""
    reporter = FileReporter(folder)
    reporter.log_params({"name": folder.name, "suite": suite, "translator.num_tokens": 4})
    reporter.log_metrics({"loss": 2.0}, 1)
    reporter.log_metrics({"loss": 1.0}, 2)
    (folder / "artifacts" / "translator").mkdir(parents=True)
    (folder / "artifacts" / "translator" / "translator.json").write_text(json.dumps({"config": {}}))
    (folder / "status.json").write_text(json.dumps(status or {"status": "FINISHED", "start_time": 1_700_000_000_000,
                                                             "end_time": 1_700_000_060_000}))
    return folder


def _active_runs():
    from registry.store import client

    mlflow_client = client()
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    return mlflow_client.search_runs(experiments) if experiments else []


# --------------------------------------------------------------------------- 1: the suite names an experiment
def test_a_suite_that_is_no_safe_experiment_name_is_refused_and_writes_nothing(tmp_path, mlflow_store):
    """The suite becomes the experiment, whose artifacts go to <artifact root>/<name>: a suite of
    `../escaped` would write them beside the artifact root."""
    from registry.import_runs import RecordError, import_record

    folder = _record(tmp_path / "records" / "evil", suite="../escaped")
    with pytest.raises(RecordError, match=r"evil: its suite, '\.\./escaped' cannot name a new MLflow experiment.*--experiment NAME"):
        import_record(folder)
    assert not (tmp_path / "escaped").exists() and _active_runs() == []
    done = import_record(folder, experiment="chosen")  # the way out the error names
    assert done.created and (tmp_path / "artifacts" / "chosen").is_dir() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("name", ["demo", "phase2-swap", "e2e_many", "ablations+phase2-swap", "embedded-carry", "v1.2", "x" * 200])
def test_the_names_the_project_gives_experiments_are_accepted(name):
    from registry.store import check_experiment_name

    assert check_experiment_name(name) == name


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "-x", "", "a b", "x" * 201, "s\\t", "a\nb"])
def test_unsafe_experiment_names_are_refused_by_name(name):
    from registry.store import ExperimentNameError, check_experiment_name

    with pytest.raises(ExperimentNameError, match="cannot name a new MLflow experiment"):
        check_experiment_name(name)


def test_an_existing_experiment_is_used_whatever_its_name(mlflow_store):
    """Only new experiments are checked: one made by another tool keeps working."""
    from registry.store import client, experiment_id

    made = client().create_experiment("made elsewhere")
    assert experiment_id("made elsewhere") == made


# --------------------------------------------------------------------------- 2: symbolic links
def test_a_record_folder_holding_symbolic_links_is_refused(tmp_path, mlflow_store, capsys):
    """A link in artifacts/ would upload what it points at (a key, say) into the store."""
    from registry.cli import main
    from registry.import_runs import RecordError, import_record

    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    (tmp_path / "secrets").mkdir()
    folder = _record(tmp_path / "records" / "linked")
    (folder / "artifacts" / "evals").mkdir()
    (folder / "artifacts" / "evals" / "leak.txt").symlink_to(secret)
    with pytest.raises(RecordError, match=r"linked holds symbolic links \(artifacts/evals/leak\.txt\).*cp -rL.*tarball"):
        import_record(folder)
    for extra in ("a", "b", "c"):
        (folder / "artifacts" / extra).symlink_to(tmp_path / "secrets", target_is_directory=True)
    assert main(["import", str(tmp_path / "records"), "--status", "FINISHED"]) == 2
    err = capsys.readouterr().err
    assert "symbolic links (artifacts/a, artifacts/b, artifacts/c and 1 more)" in err and "Traceback" not in err
    assert _active_runs() == []


# --------------------------------------------------------------------------- 3: cut-short imports
@pytest.mark.parametrize("key", ["start_time", "end_time"])
def test_a_status_time_that_is_not_ms_is_refused_before_any_run(tmp_path, mlflow_store, key):
    from registry.import_runs import RecordError, import_record

    status = {"status": "FINISHED", "start_time": 1_700_000_000_000, "end_time": 1_700_000_060_000, key: "yesterday"}
    folder = _record(tmp_path / "records" / "dated", status=status)
    with pytest.raises(RecordError, match=rf"dated/status\.json: {key} 'yesterday' is not a time in ms"):
        import_record(folder)
    assert _active_runs() == []


def test_an_import_whose_close_fails_leaves_no_run_and_imports_again(tmp_path, mlflow_store, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from registry.import_runs import import_record
    from registry.store import client

    folder = _record(tmp_path / "records" / "closing")

    def refuse(*args, **kwargs):
        raise MlflowException("the store refused the close")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_terminated", refuse)
        with pytest.raises(MlflowException, match="refused the close"):
            import_record(folder)
    assert _active_runs() == []
    done = import_record(folder)
    assert done.created and client().get_run(done.run_id).info.status == "FINISHED"
    assert [r.info.run_id for r in _active_runs()] == [done.run_id]


def test_when_the_failed_import_cannot_delete_its_run_the_next_import_does(tmp_path, mlflow_store, monkeypatch):
    """The close fails and so does the delete: the close's error is the one raised, and the run
    left behind is not taken for the import; the next import deletes it and imports the record."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from registry.import_runs import import_record
    from registry.store import client

    folder = _record(tmp_path / "records" / "stuck")

    def refuse(what):
        def call(*args, **kwargs):
            raise MlflowException(f"the store refused the {what}")
        return call

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_terminated", refuse("close"))
        patch.setattr(MlflowClient, "delete_run", refuse("delete"))
        with pytest.raises(MlflowException, match="refused the close"):
            import_record(folder)
    (left,) = _active_runs()
    done = import_record(folder)
    assert done.created and done.run_id != left.info.run_id
    assert client().get_run(left.info.run_id).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in _active_runs()] == [done.run_id]


KILLED_IMPORT = """
import os, sys
import registry.import_runs as import_runs

def killed(*args, **kwargs):
    os._exit(9)  # as a kill -9 mid-upload: no except, no finally

import_runs.upload = killed
import_runs.import_record(sys.argv[1])
"""


def test_an_import_killed_midway_is_not_taken_for_done_and_its_leftover_goes(tmp_path, mlflow_store):
    """Killed after it made its run, before the artifacts: the next import does not call the
    record imported, deletes the half-imported run, and imports it whole."""
    from registry.import_runs import DIGEST_TAG, import_record
    from registry.store import client

    folder = _record(tmp_path / "records" / "killed")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", KILLED_IMPORT, str(folder)], env=env, cwd=repo, timeout=300)
    assert killed.returncode == 9
    (leftover,) = _active_runs()
    assert leftover.info.status == "RUNNING" and DIGEST_TAG not in leftover.data.tags
    done = import_record(folder)
    assert done.created and done.run_id != leftover.info.run_id
    assert client().get_run(leftover.info.run_id).info.lifecycle_stage == "deleted"
    (run,) = _active_runs()
    assert run.info.run_id == done.run_id and run.info.status == "FINISHED"
    assert run.data.tags[DIGEST_TAG] and "latentbridge.import_pending" not in run.data.tags
    assert "translator/translator.json" in {a.path for a in client().list_artifacts(done.run_id, "translator")}
    assert not import_record(folder).created


def test_a_run_of_the_same_name_not_from_this_record_is_left_alone(tmp_path, mlflow_store):
    """Only a run pending with this record's digest is a leftover; a run that shares its name is not."""
    from registry.import_runs import import_record
    from registry.runs import open_run

    folder = _record(tmp_path / "records" / "shared")
    other = open_run(tmp_path / "run", "shared", "import-safety")
    done = import_record(folder)
    assert done.created and {r.info.run_id for r in _active_runs()} == {other, done.run_id}


# --------------------------------------------------------------------------- 4: badly shaped record files
@pytest.mark.parametrize("name", ["params.json", "tags.json", "status.json"])
def test_a_record_file_that_is_not_a_json_object_is_named(tmp_path, mlflow_store, capsys, name):
    from registry.cli import main
    from registry.import_runs import RecordError, import_record

    folder = _record(tmp_path / "records" / "shaped")
    (folder / name).write_text(json.dumps(["a", "b"]))
    with pytest.raises(RecordError, match=rf"shaped/{name}: expected a JSON object .*found list"):
        import_record(folder)
    assert main(["import", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{name}: expected a JSON object" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _active_runs() == []
