"""A corrupt mlflow.db and a damaged submission.json give clear errors naming the file and the way out."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from conftest import TINY_RUN

from launch import cli
from launch.record import RecordError, RunEntry, Submission, find
from launch.suites import SUITES, Suite


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    (tmp_path / "launch.toml").write_text("")
    monkeypatch.setenv("LATENTBRIDGE_LAUNCH_CONFIG", str(tmp_path / "launch.toml"))
    monkeypatch.delenv("NUM_GPUS", raising=False)


def _run(main, argv):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        rc = main(argv)
    return rc, buffer.getvalue()


@pytest.mark.parametrize("content", [b"this is not a database at all" * 50, b"SQLite format 3\x00" + b"\xff" * 4000],
                         ids=["not-sqlite", "bad-pages"])
def test_a_corrupt_mlflow_db_is_named_with_the_way_out(tmp_path, monkeypatch, tiny_pair, content):
    from registry import cli as registry_cli

    db = tmp_path / "mlflow.db"
    db.write_bytes(content)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("LATENTBRIDGE_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    rc, out = _run(registry_cli.main, ["list"])
    assert rc != 0 and str(db) in out and "mv " in out and "Traceback" not in out, out
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target}
    monkeypatch.setitem(SUITES, "corrupt_one", Suite("corrupt_one", "one tiny run", base, {"main": {}}, tasks=None))
    rc, out = _run(cli.main, ["submit", "--suite", "corrupt_one", "--cluster", "local",
                              "--runs-dir", str(tmp_path / "runs")])
    assert rc == cli.EXIT_USAGE and str(db) in out and "mv " in out and "Traceback" not in out, out
    assert db.read_bytes() == content  # never touched


def _record(tmp_path) -> Submission:
    folder = tmp_path / "runs" / "s" / "1"
    folder.mkdir(parents=True)
    sub = Submission(
        id="s/1", suite="s", folder=str(folder), created="", cluster="local", resources={}, tracking_uri="",
        snapshot={}, submitit_folder=str(folder / "submitit"), runs=[RunEntry("main", str(folder / "main"), "rid")],
    )
    sub.save()
    (tmp_path / "runs" / "LATEST").write_text(str(folder) + "\n")
    return sub


def test_a_submission_record_missing_fields_is_named_with_the_way_out(tmp_path):
    sub = _record(tmp_path)
    path = tmp_path / "runs" / "s" / "1" / "submission.json"
    data = json.loads(path.read_text())
    del data["cluster"], data["runs"][0]["mlflow_run_id"]
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"missing field\(s\) \['cluster'\]") as caught:
        find(tmp_path / "runs")
    assert str(path) in str(caught.value) and "remove the folder" in str(caught.value)
    rc, out = _run(cli.main, ["status", "--runs-dir", str(tmp_path / "runs")])
    assert rc == cli.EXIT_USAGE and str(path) in out and "TypeError" not in out, out
    data["cluster"] = "local"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"runs\[0\] missing field\(s\) \['mlflow_run_id'\]"):
        find(tmp_path / "runs", sub.folder)
    path.write_text("[1, 2]")
    with pytest.raises(RecordError, match="not a JSON object"):
        find(tmp_path / "runs")


# --------------------------------------------------------------------------- translator checkpoints
@pytest.fixture
def saved_translator(tiny_config, tmp_path):
    """A translator folder saved by a one-step run, and its weights."""
    from latentbridge.checkpoint import load_translator
    from latentbridge.train import Trainer

    Trainer(tiny_config.override("train.steps=1", "train.eval_every=1"), tmp_path / "run").run()
    folder = tmp_path / "run" / "translator"
    translator, _ = load_translator(folder)
    return folder, translator.state_dict()


@pytest.mark.parametrize("name, cut", [("translator.safetensors", 0.5), ("translator.safetensors", 0.0), ("translator.json", 0.5)])
def test_a_truncated_translator_is_named_in_one_line(saved_translator, name, cut):
    from latentbridge.checkpoint import CheckpointError, load_translator

    folder, _ = saved_translator
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="corrupt") as error:
        load_translator(folder)
    assert str(folder / name) in str(error.value) and "\n" not in str(error.value)


def test_a_save_cut_off_mid_write_keeps_the_translator_saved_before(saved_translator, monkeypatch):
    import latentbridge.checkpoint as checkpoint
    from latentbridge.checkpoint import TranslatorMeta, load_translator, save_translator

    folder, before = saved_translator
    translator, meta = load_translator(folder)
    real = checkpoint.save_file

    def cut_off(state, path):
        with open(path, "wb") as half:
            half.write(b"\x00" * 64)  # part of the new file is on disk when the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", cut_off)
    with torch.no_grad():
        next(iter(translator.parameters())).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_translator(folder, translator, TranslatorMeta(meta.config, meta.source_dim, meta.target_dim, meta.target_rms))
    assert sorted(p.name for p in folder.iterdir()) == ["translator.json", "translator.safetensors"]  # no temp file
    kept, _ = load_translator(folder)
    assert all(torch.equal(before[k], v) for k, v in kept.state_dict().items())
    monkeypatch.setattr(checkpoint, "save_file", real)
    save_translator(folder, translator, meta)
    after, _ = load_translator(folder)
    changed = [k for k in before if not torch.equal(before[k], after.state_dict()[k])]
    assert len(changed) == 1  # the new save is whole: exactly the parameter that moved differs
