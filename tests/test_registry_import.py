"""`python -m registry import`: FileReporter records replayed into MLflow runs, idempotently."""

from __future__ import annotations

import json
import shutil

import pytest

from latentbridge.reporting import FileReporter


@pytest.fixture
def record(tmp_path, tiny_config):
    """A tiny run trained with FileReporter: the record a GPU machine without MLflow writes."""
    from latentbridge.train import train

    folder = tmp_path / "records" / "tiny"
    config = tiny_config.override("name=tiny", "suite=import-suite")
    reporter = FileReporter(folder)
    reporter.set_tags({"suite": "import-suite", "device": "test"})
    result = train(config, tmp_path / "run", reporter)
    assert result.status == "FINISHED"
    return folder


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_import_replays_params_metrics_tags_and_artifacts(record, mlflow_store):
    from registry.import_runs import DIGEST_TAG, import_record
    from registry.store import client

    done = import_record(record)
    assert done.created and done.status == "FINISHED" and done.name == "tiny"
    mlflow_client = client()
    run = mlflow_client.get_run(done.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert mlflow_client.get_experiment(run.info.experiment_id).name == "import-suite"
    params = json.loads((record / "params.json").read_text())
    assert run.data.params == {k: str(v) for k, v in params.items()}
    assert run.data.tags["device"] == "test" and run.data.tags[DIGEST_TAG]
    # every metric point at its original step
    lines = [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]
    for key in ("bridged_accuracy", "loss", "prompt_tokens_mean"):
        expected = sorted((p["step"], p["value"]) for p in lines if p["key"] == key)
        got = _history(mlflow_client, done.run_id, key)
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected])
    assert [s for s, _ in _history(mlflow_client, done.run_id, "bridged_accuracy")] == [0, 3, 6]
    listed = {a.path for a in mlflow_client.list_artifacts(done.run_id, "evals")}
    jsonls = sorted(p.name for p in (record / "artifacts" / "evals").iterdir())
    # the record's files, and beside each eval JSONL the table the UI shows, as a live run gets them
    assert listed == {f"evals/{name}" for name in jsonls} | {f"evals/{name[:-6]}.table.json" for name in jsonls}
    assert "accuracy_and_content_by_step.png" in {a.path for a in mlflow_client.list_artifacts(done.run_id)}
    assert {a.path for a in mlflow_client.list_artifacts(done.run_id, "translator")} >= {"translator/translator.json"}


def test_import_is_idempotent_by_content_not_path(record, mlflow_store, tmp_path):
    from registry.import_runs import import_record
    from registry.store import client

    first = import_record(record)
    again = import_record(record)
    copy = shutil.copytree(record, tmp_path / "elsewhere" / "tiny")
    moved = import_record(copy)
    assert not again.created and not moved.created
    assert first.run_id == again.run_id == moved.run_id
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()])
    assert len(runs) == 1


def test_recorded_status_and_a_repeated_step(tmp_path, mlflow_store):
    """status.json decides the status; a (key, step) logged twice keeps its last value."""
    from registry.import_runs import import_record
    from registry.store import client

    folder = tmp_path / "failed"
    reporter = FileReporter(folder)
    reporter.log_params({"name": "broken", "suite": "import-suite", "translator.num_tokens": 4})
    reporter.log_metrics({"loss": 3.0}, 1)
    reporter.log_metrics({"loss": 2.0}, 2)
    reporter.log_metrics({"loss": 2.5}, 2)  # a resumed run logging step 2 again
    (folder / "status.json").write_text(json.dumps({"status": "FAILED", "start_time": 1_700_000_000_000,
                                                    "end_time": 1_700_000_060_000}))
    done = import_record(folder)
    run = client().get_run(done.run_id)
    assert run.info.status == "FAILED" and done.status == "FAILED"
    assert run.info.start_time == 1_700_000_000_000 and run.info.end_time == 1_700_000_060_000
    assert _history(client(), done.run_id, "loss") == [(1, 3.0), (2, 2.5)]


def test_cli_imports_every_record_below_a_folder_and_preserve_accepts_it(record, mlflow_store, tmp_path, capsys):
    from registry.cli import main
    from registry.import_runs import import_record
    from registry.preserve import preserve

    assert main(["import", str(record.parent)]) == 0
    out = capsys.readouterr().out
    assert "imported as run" in out and "already" not in out
    assert main(["import", str(record)]) == 0
    assert "already imported as run" in capsys.readouterr().out
    done = preserve(import_record(record).run_id)  # an imported run is a normal finished run
    assert done.created and done.verdict


def test_not_a_record_is_refused(tmp_path, mlflow_store):
    from registry.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["import", str(tmp_path / "empty")]) == 2


def test_a_tarball_of_records_imports_as_its_folder_would(record, mlflow_store, tmp_path, capsys):
    """What `device.sh collect` brings home, a .tgz of records, imports without unpacking by
    hand; its runs name the tarball and the record's path in it, and the same record from its
    folder is the run already imported."""
    import tarfile

    from registry.cli import main
    from registry.import_runs import SOURCE_TAG, import_record
    from registry.store import client

    tarball = tmp_path / "records.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(record.parent, arcname="records")
    assert main(["import", str(tarball)]) == 0
    out = capsys.readouterr().out
    assert f"{tarball}:records/tiny: imported as run" in out
    run_id = out.split("imported as run ")[1].split()[0]
    assert client().get_run(run_id).data.tags[SOURCE_TAG] == f"{tarball}:records/tiny"
    again = import_record(record)
    assert not again.created and again.run_id == run_id


def test_a_tarball_reaching_outside_its_folder_is_refused(tmp_path, mlflow_store, capsys):
    import io
    import tarfile
    import tempfile
    from pathlib import Path

    from registry.cli import main

    tarball = tmp_path / "hostile.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        data = json.dumps({"name": "evil"}).encode()
        member = tarfile.TarInfo("../escaped/params.json")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    assert main(["import", str(tarball)]) == 2
    assert "not a tarball of run records that unpacks safely" in capsys.readouterr().err
    assert not (Path(tempfile.gettempdir()) / "escaped").exists()  # beside the folder it unpacks into


def test_status_filter_imports_only_the_records_of_those_statuses(tmp_path, mlflow_store, capsys):
    """`--status FINISHED` leaves out a run cut off while it ran (its record says RUNNING) and
    says so; an unknown status is refused by name, with the statuses there are."""
    from registry.cli import main
    from registry.store import client

    for name, status in (("done", "FINISHED"), ("cut-off", "RUNNING")):
        reporter = FileReporter(tmp_path / "records" / name)
        reporter.log_params({"name": name, "suite": "import-suite"})
        reporter.log_metrics({"loss": 1.0}, 1)
        (tmp_path / "records" / name / "status.json").write_text(json.dumps({"status": status}))
    assert main(["import", str(tmp_path / "records"), "--status", "finished"]) == 0
    out = capsys.readouterr().out
    assert "(done, FINISHED)" in out and f"{tmp_path / 'records' / 'cut-off'} (RUNNING): not imported" in out
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()])
    assert [r.info.run_name for r in runs] == ["done"]
    assert main(["import", str(tmp_path / "records"), "--status", "FINISHD"]) == 2
    assert "unknown run status 'FINISHD' (one of FAILED, FINISHED, KILLED, RUNNING, SCHEDULED)" in capsys.readouterr().err
