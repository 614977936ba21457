"""`registry list --model NAME` with a name the archive lacks says so and lists the known ones (issue 13)."""

from __future__ import annotations

import pytest

from registry.errors import RegistryError


@pytest.fixture
def archive(mlflow_store, tmp_path):
    from registry.store import client

    mlflow_client = client()
    for name in ("latentbridge-b", "latentbridge-a"):
        mlflow_client.create_registered_model(name)
        mlflow_client.create_model_version(name, source=(tmp_path / name).as_uri())
    return mlflow_client


def test_unknown_model_names_it_and_lists_the_known_ones(archive) -> None:
    from registry.listing import archive_rows

    with pytest.raises(RegistryError, match=r"no model named 'nosuch'.*latentbridge-a, latentbridge-b"):
        archive_rows("nosuch")
    assert [row["model"] for row in archive_rows("latentbridge-a")] == ["latentbridge-a"]


def test_cli_list_unknown_model_is_an_error_not_an_empty_archive(archive, capsys) -> None:
    from registry.cli import main

    assert main(["list", "--model", "nosuch"]) != 0
    captured = capsys.readouterr()
    assert "no model named 'nosuch'" in captured.err and "latentbridge-a" in captured.err
    assert "archive is empty" not in captured.out + captured.err


def test_unknown_model_in_an_empty_archive_says_it_is_empty(mlflow_store) -> None:
    from registry.listing import archive_rows

    with pytest.raises(RegistryError, match="no model named 'nosuch'.*empty"):
        archive_rows("nosuch")
    assert archive_rows() == []


# --------------------------------------------------------------------------- a run whose record was cut down
def _imported_run(tmp_path, params: dict, translator_json: str | None) -> str:
    """A FINISHED training run imported from a small hand-made record: `params` over the usual
    ones, one eval JSONL, and a translator/translator.json holding `translator_json` (none when None)."""
    import json

    from latentbridge.reporting import FileReporter
    from registry.import_runs import import_record

    folder = tmp_path / "records" / "cut-down"
    reporter = FileReporter(folder)
    full = {"name": "cut-down", "suite": "bad-input", "translator.num_tokens": 4, "source_model": "org/src",
            "target_model": "org/tgt", "translator.kind": "transformer", **params}
    reporter.log_params({k: v for k, v in full.items() if v is not None})  # None: a param the record lacks
    reporter.log_metrics({"bridged_accuracy": 1.0}, 3)
    answer = {"output": "The answer is 4", "answer": "4", "correct": True}
    record = {"step": 3, "index": 0, "question": "2+2?", "gold": "4",
              **{system: answer for system in ("source", "target", "bridged", "mismatched")}}
    (folder / "artifacts" / "evals").mkdir(parents=True)
    (folder / "artifacts" / "evals" / "eval_step_3.jsonl").write_text(json.dumps(record) + "\n")
    if translator_json is not None:
        (folder / "artifacts" / "translator").mkdir()
        (folder / "artifacts" / "translator" / "translator.json").write_text(translator_json)
    reporter.set_status("FINISHED")
    return import_record(folder).run_id


def test_preserve_of_a_run_whose_params_lack_its_model_names_the_run_and_the_way_out(mlflow_store, tmp_path) -> None:
    from registry.errors import PreserveError
    from registry.preserve import preserve

    run_id = _imported_run(tmp_path, {"source_model": None}, '{"config": {}}')
    with pytest.raises(PreserveError, match=rf"run {run_id}: its params \(params\.json.*no 'source_model'.*export the run again"):
        preserve(run_id)


@pytest.mark.parametrize("translator_json", ["not json", '{"kind": "transformer"}', '["config"]', '{"config": 3}'])
def test_preserve_of_a_run_with_a_bad_translator_json_names_the_run_and_the_way_out(mlflow_store, tmp_path, translator_json) -> None:
    from registry.errors import PreserveError
    from registry.preserve import preserve

    run_id = _imported_run(tmp_path, {}, translator_json)
    with pytest.raises(PreserveError, match=rf"run {run_id}: its translator/translator\.json holds no run config.*export the run again"):
        preserve(run_id)


# --------------------------------------------------------------------------- paths the CLI cannot use
def test_export_to_an_out_that_is_a_file_is_a_one_line_error(mlflow_store, tmp_path, capsys) -> None:
    from registry.cli import main

    _imported_run(tmp_path, {}, '{"config": {}}')
    out = tmp_path / "taken"
    out.write_text("a file, not a folder")
    assert main(["export", "--experiment", "bad-input", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: ") and "--out must be a folder" in err and len(err.strip().splitlines()) == 1


def test_analyze_to_an_out_that_is_a_file_fails_before_collecting(mlflow_store, tmp_path, capsys, monkeypatch) -> None:
    import importlib

    from registry.cli import main

    def collect(*args, **kwargs):
        raise AssertionError("collected before --out was checked")

    # the module, which the package's `analyze` function hides
    monkeypatch.setattr(importlib.import_module("registry.analysis.analyze"), "collect", collect)
    out = tmp_path / "taken"
    out.write_text("a file, not a folder")
    assert main(["analyze", "--suite", "any", "--out", str(out), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: ") and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- a password in the tracking URI
SECRET_URI = "https://alice:hunter2@mlflow.example:5000"


def test_an_unknown_run_id_names_the_store_without_its_password() -> None:
    from mlflow.exceptions import MlflowException

    from registry.errors import PreserveError
    from registry.facts import get_run

    class Store:
        tracking_uri = SECRET_URI

        def get_run(self, run_id):
            raise MlflowException(f"Run '{run_id}' not found")

    with pytest.raises(PreserveError) as raised:
        get_run(Store(), "nosuch")
    assert "alice@mlflow.example:5000" in str(raised.value) and "hunter2" not in str(raised.value)


def test_a_suite_without_runs_names_the_store_without_its_password(mlflow_store, monkeypatch) -> None:
    import importlib

    from registry.store import client

    class Store:
        tracking_uri = SECRET_URI

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

    real = client()
    collect_module = importlib.import_module("registry.analysis.collect")
    monkeypatch.setattr(collect_module, "client", lambda: Store(real))
    with pytest.raises(RegistryError) as raised:
        collect_module.collect("nosuch")
    assert "alice@mlflow.example:5000" in str(raised.value) and "hunter2" not in str(raised.value)
