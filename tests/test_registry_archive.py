"""Preserve, promote, list and load archived runs, against one private MLflow store.

One tiny run is trained once for the module (about 10 s on 2 cores); every test reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import private_store, train_tiny_run


REPO = Path(__file__).resolve().parents[1]
SUITE = "archive-suite"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_pair):
    """A private store holding one FINISHED tiny run and one still RUNNING."""
    root = tmp_path_factory.mktemp("registry_archive")
    with private_store(root):
        from registry.runs import open_run

        run_id, config = train_tiny_run(root, tiny_pair, SUITE, {"slurm_job_id": "4242"}, ("eval.test_questions=5",))
        running = open_run(root / "running", "still-going", SUITE, tags={"suite": SUITE})
        yield {"root": root, "finished": run_id, "running": running, "config": config, "env": dict(os.environ)}


@pytest.fixture(scope="module")
def preserved(store):
    from registry.preserve import preserve

    return preserve(store["finished"])


def test_unknown_run_is_refused_with_a_clear_error(store):
    from registry.errors import PreserveError
    from registry.preserve import preserve

    with pytest.raises(PreserveError, match="no MLflow run with id 'nope'"):
        preserve("nope")


def test_unfinished_run_is_refused(store, capsys):
    from registry.cli import main
    from registry.errors import PreserveError
    from registry.preserve import preserve

    with pytest.raises(PreserveError, match="is RUNNING, not FINISHED: only finished runs can be preserved"):
        preserve(store["running"])
    assert main(["preserve", store["running"]]) == 1
    assert "only finished runs can be preserved" in capsys.readouterr().err


def test_preserved_version_holds_archive_tags_and_note(store, preserved):
    from registry.preserve import verify_manifest
    from registry.store import client

    assert preserved.created and preserved.version == "1"
    assert preserved.model == "source__to__target__cross_attention"
    version = client().get_model_version(preserved.model, preserved.version)
    tags = version.tags
    for key in ("source", "target", "K", "compression_ratio", "steps", "seed", "git_commit", "slurm_job",
                "source_alone", "target_alone", "bridged_peak", "bridged_final", "invalid_rate", "verdict"):
        assert key in tags, key
    assert tags["K"] == "4" and tags["steps"] == "6" and tags["slurm_job"] == "4242"
    assert tags["verdict"] in ("ablation", "unstable", "negative", "control")
    assert float(tags["compression_ratio"]) > 1  # the few-shot prompt is far longer than K=4
    note = version.description
    assert f"suite `{SUITE}`" in note
    # trained without the launcher: what it would have recorded at submit is said missing, not guessed
    assert "Config diff against the suite's base (not recorded at submit)" in note
    assert "The submit command was not recorded at submit" in note and "python launch" not in note
    assert f"Verdict: **{tags['verdict']}**" in note and f"rule `{tags['verdict_rule']}`" in note
    # validation selects and judges; the held-out test reports, beside it, with intervals and paired tests
    test_section = note.split("## Held-out test (5 questions; the translator selected on validation, step ", 1)[1]
    assert "- bridged vs target-alone: " in test_section and "McNemar p=" in test_section
    baselines = note.split("## Bridged against the baselines and controls (final validation, same questions;", 1)[1]
    assert "- vs target-alone (the untrained model reading the few-shot text): " in baselines
    assert "- vs source-alone (the untrained model reading the few-shot text): " in baselines
    assert tags["test_n_questions"] == "5" and 0 <= float(tags["test_bridged"]) <= 1
    folder = Path(client().download_artifacts(store["finished"], "archive", str(store["root"] / "dl")))
    manifest = verify_manifest(folder, tags["manifest_sha256"])
    assert {"translator/translator.safetensors", "translator/translator.json", "config.json", "metrics.json",
            "NOTE.md", "evals/eval_step_000006.jsonl", "test/test_eval.jsonl"} <= set(manifest)
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["test"]["n"] == 5 and set(summary["test"]["comparisons"]) == {"target", "source"}
    assert summary["final"]["step"] == 6 and summary["verdict"]["verdict"] == tags["verdict"]
    assert json.loads((folder / "config.json").read_text()) == store["config"].to_dict()


def test_preserving_twice_changes_nothing(store, preserved, capsys):
    from registry.cli import main
    from registry.preserve import preserve
    from registry.store import client

    again = preserve(store["finished"])
    assert (again.model, again.version, again.created) == (preserved.model, preserved.version, False)
    assert main(["preserve", store["finished"]]) == 0
    assert "already preserved as" in capsys.readouterr().out
    assert len(client().search_model_versions(f"name='{preserved.model}'")) == 1


def test_promotion_follows_the_verdict_unless_forced_with_a_reason(store, preserved, capsys):
    from registry.cli import main
    from registry.errors import PromoteError
    from registry.promote import promote
    from registry.store import client

    verdict = client().get_model_version(preserved.model, preserved.version).tags["verdict"]
    assert verdict != "headline"  # a 6-question tiny run can never be a headline
    with pytest.raises(PromoteError, match=f"verdict '{verdict}', and alias 'publishable' needs one of \\['headline'\\]"):
        promote(preserved.model, preserved.version, "publishable")
    assert main(["promote", preserved.model, preserved.version, "--alias", "champion"]) == 2
    assert "refused" in capsys.readouterr().err
    with pytest.raises(PromoteError, match="needs --reason"):
        promote(preserved.model, preserved.version, "publishable", force=True)

    done = promote(preserved.model, preserved.version, "publishable", force=True, reason="smoke test of the archive")
    assert done.changed and done.forced
    model = client().get_registered_model(preserved.model)
    assert model.aliases == {"publishable": 1}
    record = json.loads(client().get_model_version(preserved.model, "1").tags["promotion.publishable"])
    assert record["forced"] and record["reason"] == "smoke test of the archive" and record["verdict"] == verdict

    again = promote(preserved.model, preserved.version, "publishable", force=True, reason="another reason")
    assert not again.changed and "nothing changed" in again.message
    assert json.loads(client().get_model_version(preserved.model, "1").tags["promotion.publishable"]) == record
    assert main(["promote", preserved.model, "1", "--alias", "candidate"]) == 0  # no policy for it: any verdict
    assert client().get_registered_model(preserved.model).aliases == {"publishable": 1, "candidate": 1}
    with pytest.raises(PromoteError, match="has no version '7'"):
        promote(preserved.model, "7", "candidate")
    with pytest.raises(PromoteError, match="no registered model 'missing'"):
        promote("missing", "1", "candidate")


def test_list_shows_the_archive(store, preserved, capsys):
    from registry.cli import main
    from registry.promote import promote

    promote(preserved.model, preserved.version, "listed")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    assert header.split()[:5] == ["model", "v", "aliases", "verdict", "suite"]
    assert row.startswith(preserved.model) and "listed" in row and " 4 " in row
    assert f" {SUITE} " in row  # runs of different suites share a model: the suite tells them apart
    # what crossed the bridge, with its interval, as the version's tags hold it
    assert "bits 95% CI" in header and "recovered" in header and "retrieval" in header
    assert "val final" in header and "test bridged" in header  # validation and test, labelled
    from registry.store import client

    version = client().get_model_version(preserved.model, preserved.version)
    assert version.tags["bits_transmitted_interval"] in row and version.tags["bits_transmitted_interval"].startswith("[")


def test_cli_runs_as_a_module(store, preserved):
    done = subprocess.run([sys.executable, "-m", "registry", "list", "--json"], cwd=REPO, env=store["env"], check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["model"], r["version"]) for r in rows] == [(preserved.model, "1")]


def test_load_reproduces_the_archived_answers(store, preserved):
    import registry
    from latentbridge.bridge import Bridge
    from latentbridge.evaluate import bridged_answers
    from registry.loading import load_with_archive, reproduce
    from registry.promote import promote

    promote(preserved.model, preserved.version, "repro")
    bridge = registry.load(f"models:/{preserved.model}@repro")
    assert isinstance(bridge, Bridge)
    _, archive = load_with_archive(f"models:/{preserved.model}/1")
    records = archive.records("final")
    outputs = bridged_answers(bridge, archive.examples("final"), bridge.config.eval)
    assert outputs == [r["bridged"]["output"] for r in records]
    best = reproduce(f"models:/{preserved.model}@repro", which="best")
    assert best.ok and best.total == 6
    spot = reproduce(f"models:/{preserved.model}@repro", questions=2)  # a spot check: the first 2
    assert spot.ok and spot.total == 2


def test_reproduce_refuses_a_question_count_below_one(capsys):
    from registry.cli import main

    with pytest.raises(SystemExit):
        main(["reproduce", "models:/any/1", "--questions", "0"])
    assert "'0' is not a whole number of questions >= 1" in capsys.readouterr().err


def test_bad_uris_are_refused(store, preserved):
    from registry.errors import LoadError
    from registry.loading import load

    with pytest.raises(LoadError, match="has no alias 'nope'"):
        load(f"models:/{preserved.model}@nope")
    with pytest.raises(LoadError, match="no registered model 'other'"):
        load("models:/other@champion")
    with pytest.raises(LoadError, match="not a model URI"):
        load("runs:/abc/translator")


def _archived_file(store, name: str) -> Path:
    from registry.store import client

    uri = client().get_run(store["finished"]).info.artifact_uri
    return Path(urlparse(uri).path) / "archive" / name


def test_tampered_archive_is_refused(store, preserved):
    from registry.errors import TamperedArchiveError
    from registry.loading import load
    from registry.preserve import write_manifest

    weights = _archived_file(store, "translator/translator.safetensors")
    original = weights.read_bytes()
    backup = store["root"] / "backup"
    shutil.copytree(weights.parents[1], backup)
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(TamperedArchiveError, match="translator/translator.safetensors fails its sha256 check"):
            load(f"models:/{preserved.model}/1")
        write_manifest(weights.parents[1])  # a forger who also rewrites the manifest
        with pytest.raises(TamperedArchiveError, match="manifest.json .* fails its sha256 check against the model version's tag"):
            load(f"models:/{preserved.model}/1")
    finally:
        shutil.rmtree(weights.parents[1])
        shutil.copytree(backup, weights.parents[1])


def test_config_diff_is_read_from_the_launchers_tag_only():
    from registry.facts import NOT_RECORDED, config_diff

    assert config_diff({"config_diff": '{"seed": 7, "optim.lr": 0.001}'}) == ({"seed": "7", "optim.lr": "0.001"}, "recorded at submit")
    assert config_diff({}) == ({}, NOT_RECORDED)
    diff, basis = config_diff({"config_diff": "[1, 2]"})  # an old or damaged tag: read, not a crash
    assert diff == {} and basis.startswith(NOT_RECORDED)


def test_a_record_without_its_final_translator_is_preserved_only_when_the_best_is_the_final(store, tmp_path, preserved):
    """`device.sh weights` brings a run home with best_translator but not translator/: when the
    peak evaluation is the run's last step the two are the same weights; otherwise refused."""
    from registry.errors import PreserveError
    from registry.export_runs import export_runs
    from registry.import_runs import import_record
    from registry.preserve import preserve
    from registry.store import client

    (exported,) = export_runs(SUITE, tmp_path / "records", run_ids=[store["finished"]], skip=("translator", "checkpoint"))
    record = exported.folder
    assert not (record / "artifacts" / "translator").exists() and (record / "artifacts" / "best_translator").is_dir()
    steps = int(json.loads((record / "params.json").read_text())["train.steps"])
    lines = [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]

    def imported_with_curve(name: str, value, best_step: int) -> str:
        """The record with another bridged-accuracy curve, and the best step the trainer would have logged."""
        folder = tmp_path / name
        shutil.copytree(record, folder)
        changed = {"bridged_accuracy": lambda m: value(m["step"]), "best_step": lambda m: float(best_step)}
        curve = [dict(m, value=changed[m["key"]](m)) if m["key"] in changed else m for m in lines]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in curve))
        return import_record(folder, SUITE).run_id

    assert any(m["key"] == "best_step" for m in lines)
    falling = imported_with_curve("falling", lambda step: 1 - step / steps, 0)  # peak at step 0
    with pytest.raises(PreserveError, match=r"missing its translator/ artifacts, and its best_translator \(peak at step 0.*without --skip-artifacts translator"):
        preserve(falling)
    rising = imported_with_curve("rising", lambda step: step / steps, steps)  # peak at the last step
    version = preserve(rising)
    archive = Path(urlparse(client().get_run(rising).info.artifact_uri).path) / "archive"
    best = record / "artifacts" / "best_translator"
    for name in ("translator.safetensors", "translator.json"):
        assert (archive / "translator" / name).read_bytes() == (best / name).read_bytes()
    assert version.created and version.model == preserved.model
