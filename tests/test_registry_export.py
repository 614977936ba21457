"""`python -m registry export`: MLflow runs written out as FileReporter records, and back in by import."""

from __future__ import annotations

import json
import math

import pytest

SUITE = "export-suite"


def _use_store(monkeypatch, root) -> str:
    """Point the registry at the SQLite store (and artifact root) under `root`."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LATENTBRIDGE_ARTIFACT_ROOT", (root / "artifacts").as_uri())
    return uri


def _histories(client, run) -> dict[str, list[tuple[int, float | str]]]:
    """{key: sorted (step, value)}, NaN as "nan" so that equal histories compare equal."""
    return {key: sorted((m.step, "nan" if math.isnan(m.value) else m.value)
                        for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_tags(tags: dict[str, str]) -> dict[str, str]:
    from registry.import_runs import DIGEST_TAG, SOURCE_TAG

    return {k: v for k, v in tags.items()
            if (not k.startswith("mlflow.") or k == "mlflow.note.content") and k not in (DIGEST_TAG, SOURCE_TAG)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pair):
    """A store holding one finished tiny training run (with a checkpoint artifact) and an analysis run."""
    from conftest import TINY_RUN

    from latentbridge.config import RunConfig
    from latentbridge.train import train
    from registry.facts import RUN_KIND_TAG
    from registry.reporter import MlflowReporter
    from registry.runs import close_run, open_run
    from registry.store import client, experiment_id

    root = tmp_path_factory.mktemp("registry_export")
    with pytest.MonkeyPatch.context() as patch:
        _use_store(patch, root / "first")
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        source, target = tiny_pair
        config = RunConfig().override(f"source_model={source}", f"target_model={target}", *TINY_RUN,
                                      "name=tiny", f"suite={SUITE}")
        run_id = open_run(root / "run", "tiny", SUITE, tags={"suite": SUITE, "slurm_job_id": "4242"})
        reporter = MlflowReporter(run_id)
        assert train(config, root / "run", reporter).status == "FINISHED"
        reporter.set_tags({"mlflow.note.content": "a note kept by export", "extra": "x"})
        state = root / "state.pt"
        state.write_bytes(b"not exported")
        reporter.log_artifact(state, "checkpoint")
        close_run(run_id, "FINISHED")
        mlflow_client = client()
        analysis = mlflow_client.create_run(experiment_id(SUITE), run_name="analysis-x", tags={RUN_KIND_TAG: "analysis"})
        mlflow_client.set_terminated(analysis.info.run_id, "FINISHED")
        yield {"run_id": run_id, "analysis_id": analysis.info.run_id, "root": root}


def test_export_then_import_into_another_store_keeps_the_run(trained, tmp_path, monkeypatch):
    from registry.export_runs import export_runs
    from registry.import_runs import import_record
    from registry.store import client

    original = client().get_run(trained["run_id"])
    original_history = _histories(client(), original)
    original_artifacts = {a.path for a in client().list_artifacts(trained["run_id"])}
    assert "checkpoint" in original_artifacts

    done = export_runs(SUITE, tmp_path / "out")
    assert [d.run_id for d in done] == [trained["run_id"]]  # the analysis run is not a training run
    folder = done[0].folder
    assert folder == tmp_path / "out" / f"tiny-{trained['run_id'][:8]}"
    assert done[0].skipped == ("checkpoint",) and not (folder / "artifacts" / "checkpoint").exists()
    export = json.loads((folder / "export.json").read_text())
    assert export["run_id"] == trained["run_id"] and export["experiment"] == SUITE
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == sum(len(h) for h in original_history.values()) == done[0].metric_points
    assert [line["step"] for line in lines] == sorted(line["step"] for line in lines)

    _use_store(monkeypatch, tmp_path / "second")
    imported = import_record(folder)
    assert imported.created and imported.name == "tiny"
    mlflow_client = client()
    run = mlflow_client.get_run(imported.run_id)
    assert mlflow_client.get_experiment(run.info.experiment_id).name == SUITE
    assert run.data.params == original.data.params
    assert _histories(mlflow_client, run) == original_history
    assert _user_tags(run.data.tags) == _user_tags(original.data.tags)
    assert run.data.tags["mlflow.note.content"] == "a note kept by export"
    assert (run.info.status, run.info.start_time, run.info.end_time) == (
        original.info.status, original.info.start_time, original.info.end_time)
    assert {a.path for a in mlflow_client.list_artifacts(imported.run_id)} == original_artifacts - {"checkpoint"}
    second_copy = tmp_path / "second-copy"
    second_copy.mkdir()
    mlflow_client.download_artifacts(imported.run_id, "", str(second_copy))
    assert _files(second_copy) == _files(folder / "artifacts")

    # the imported run exports to the same record, which import recognises
    again = export_runs(SUITE, tmp_path / "out-again")
    assert len(again) == 1
    first, second = _files(folder), _files(again[0].folder)
    first.pop("export.json"), second.pop("export.json")
    assert first == second
    assert not import_record(again[0].folder).created


def test_cli_export_run_ids_skip_nothing_and_errors(trained, tmp_path, capsys):
    from registry.cli import main

    out = tmp_path / "cli"
    assert main(["export", "--experiment", SUITE, "--run-id", trained["analysis_id"], "--run-id", trained["run_id"],
                 "--out", str(out), "--skip-artifacts"]) == 0
    printed = capsys.readouterr().out
    assert f"{trained['run_id']}: exported to" in printed and "skipped" not in printed
    folders = sorted(p.name for p in out.iterdir())
    assert folders == sorted([f"analysis-x-{trained['analysis_id'][:8]}", f"tiny-{trained['run_id'][:8]}"])
    assert (out / f"tiny-{trained['run_id'][:8]}" / "artifacts" / "checkpoint" / "state.pt").read_bytes() == b"not exported"
    # exporting again replaces the record rather than mixing into it
    assert main(["export", "--experiment", SUITE, "--run-id", trained["run_id"], "--out", str(out)]) == 0
    assert not (out / f"tiny-{trained['run_id'][:8]}" / "artifacts" / "checkpoint").exists()
    capsys.readouterr()

    assert main(["export", "--experiment", "no-such-suite", "--out", str(out)]) == 2
    assert "no MLflow experiment named 'no-such-suite'" in capsys.readouterr().err
    assert main(["export", "--experiment", SUITE, "--run-id", "0" * 32, "--out", str(out)]) == 2
    assert "no MLflow run with id" in capsys.readouterr().err

    by_name = tmp_path / "by-name"  # --run NAME: the finished training run of that name (not the analysis run)
    assert main(["export", "--experiment", SUITE, "--run", "tiny", "--out", str(by_name)]) == 0
    assert sorted(p.name for p in by_name.iterdir()) == [f"tiny-{trained['run_id'][:8]}"]
    capsys.readouterr()
    assert main(["export", "--experiment", SUITE, "--run", "analysis-x", "--out", str(by_name)]) == 2
    assert "no FINISHED training run named 'analysis-x'" in capsys.readouterr().err


def test_repeated_steps_keep_their_order_and_import_keeps_the_last(tmp_path, monkeypatch):
    """A (key, step) the store holds twice is exported twice, in logging order; import keeps the later."""
    from mlflow.entities import Metric, Param

    from registry.export_runs import export_runs
    from registry.import_runs import import_record
    from registry.store import client, experiment_id

    _use_store(monkeypatch, tmp_path / "first")
    mlflow_client = client()
    run = mlflow_client.create_run(experiment_id(SUITE), run_name="resumed", tags={"mlflow.user": "someone", "k": "v"})
    run_id = run.info.run_id
    mlflow_client.log_batch(run_id, params=[Param("translator.num_tokens", "4")],
                            metrics=[Metric("loss", 3.0, 1000, 1), Metric("loss", 2.0, 1001, 2),
                                     Metric("loss", 2.5, 1002, 2), Metric("acc", 0.5, 1000, 2)])
    mlflow_client.update_run(run_id, status="FAILED")
    (folder,) = [d.folder for d in export_runs(SUITE, tmp_path / "out")]
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"key": "loss", "value": 3.0, "step": 1}, {"key": "acc", "value": 0.5, "step": 2},
                     {"key": "loss", "value": 2.0, "step": 2}, {"key": "loss", "value": 2.5, "step": 2}]
    assert json.loads((folder / "tags.json").read_text()) == {"k": "v"}
    assert json.loads((folder / "status.json").read_text())["status"] == "FAILED"

    _use_store(monkeypatch, tmp_path / "second")
    imported = import_record(folder)
    assert imported.status == "FAILED" and imported.name == folder.name  # no `name` param: the folder names it
    assert sorted((m.step, m.value) for m in client().get_metric_history(imported.run_id, "loss")) == [(1, 3.0), (2, 2.5)]
