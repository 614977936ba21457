"""`registry promote` reads the verdict from the checked archive, not from the editable tag,
and a forced promotion shows in its tag, in `registry list` and at the top of the note."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import private_store, train_tiny_run


SUITE = "security-suite"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_pair):
    """A private store holding one preserved tiny run (a control/negative verdict: 6 questions)."""
    root = tmp_path_factory.mktemp("registry_security")
    with private_store(root):
        from registry.preserve import preserve

        run_id, _ = train_tiny_run(root, tiny_pair, SUITE)
        preserved = preserve(run_id)
        yield {"root": root, "run_id": run_id, "preserved": preserved}


def _version(store):
    from registry.store import client

    p = store["preserved"]
    return client().get_model_version(p.model, p.version)


def _aliases(store) -> dict:
    from registry.store import client

    return dict(client().get_registered_model(store["preserved"].model).aliases or {})


def _drop_alias(store, alias: str) -> None:
    from registry.store import client

    if alias in _aliases(store):
        client().delete_registered_model_alias(store["preserved"].model, alias)


def test_an_edited_verdict_tag_does_not_let_a_version_be_published(store, capsys):
    from registry.cli import main
    from registry.errors import PromoteError
    from registry.promote import promote
    from registry.store import client

    p = store["preserved"]
    real = _version(store).tags["verdict"]
    assert real != "headline"
    client().set_model_version_tag(p.model, p.version, "verdict", "headline")  # anyone with UI access can
    try:
        with pytest.raises(PromoteError, match=f"has verdict '{real}' \\(its `verdict` tag says 'headline', which does "
                                               "not match its verified archive: the tag was edited\\)"):
            promote(p.model, p.version, "publishable")
        assert main(["promote", p.model, p.version, "--alias", "publishable"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: refused:") and "--force" in err and "Traceback" not in err
        assert "publishable" not in _aliases(store)
    finally:
        client().set_model_version_tag(p.model, p.version, "verdict", real)


def test_a_forged_archived_verdict_is_refused(store):
    from registry.errors import PromoteError
    from registry.promote import promote
    from registry.store import client

    p = store["preserved"]
    archive = Path(urlparse(client().get_run(store["run_id"]).info.artifact_uri).path) / "archive"
    backup = store["root"] / "archive-backup"
    shutil.copytree(archive, backup)
    try:
        metrics = json.loads((archive / "metrics.json").read_text())
        metrics["verdict"]["verdict"] = "headline"
        (archive / "metrics.json").write_text(json.dumps(metrics))
        with pytest.raises(PromoteError, match="archive of .* fails its check.*metrics.json fails its sha256 check"):
            promote(p.model, p.version, "publishable")
        assert "publishable" not in _aliases(store)
    finally:
        shutil.rmtree(archive)
        shutil.copytree(backup, archive)


def test_a_forced_promotion_is_visible_in_tag_list_and_note(store, capsys):
    from registry.cli import main
    from registry.listing import archive_rows
    from registry.promote import FORCED_NOTE, FORCED_TAG, promote

    p = store["preserved"]
    verdict = _version(store).tags["verdict"]
    done = promote(p.model, p.version, "publishable", force=True, reason="demo for the reviewers")
    assert done.forced and done.changed
    version = _version(store)
    assert version.tags[FORCED_TAG] == "publishable: demo for the reviewers"
    first = version.description.splitlines()[0]
    assert first.startswith(f"{FORCED_NOTE} to @publishable over the archived verdict '{verdict}'")
    assert first.endswith(": demo for the reviewers")
    assert "## Verdict" in version.description  # the note is still there, below

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(p.model))
    assert "publishable(forced)" in row
    assert f"  {p.model} v{p.version} @publishable: demo for the reviewers" in out
    (listed,) = [r for r in archive_rows() if r["version"] == p.version]
    assert listed[FORCED_TAG] == "@publishable: demo for the reviewers"

    # a second forced alias adds to the tag; an alias the verdict allows is not marked
    promote(p.model, p.version, "champion", force=True, reason="second look")
    promote(p.model, p.version, "candidate")
    version = _version(store)
    assert version.tags[FORCED_TAG] == "publishable: demo for the reviewers | champion: second look"
    assert version.description.startswith(f"{FORCED_NOTE} to @champion")
    (listed,) = [r for r in archive_rows() if r["version"] == p.version]
    assert listed["aliases"] == "candidate,champion(forced),publishable(forced)"
    for alias in ("publishable", "champion", "candidate"):
        _drop_alias(store, alias)
    (listed,) = [r for r in archive_rows() if r["version"] == p.version]
    assert listed["aliases"] == "" and listed[FORCED_TAG] == ""  # only aliases it still carries are shown


def test_an_edited_verdict_tag_does_not_change_what_the_analysis_reports(store, tmp_path):
    from registry.analysis import analyze
    from registry.store import client

    p = store["preserved"]
    real = _version(store).tags["verdict"]
    client().set_model_version_tag(p.model, p.version, "verdict", "headline")  # anyone with UI access can
    try:
        result = analyze(SUITE, tmp_path / "out", log_to_mlflow=False, count_prompt_tokens=False)
    finally:
        client().set_model_version_tag(p.model, p.version, "verdict", real)
    (run,) = result.data.runs
    assert run.verdict == real != "headline"
    assert run.verdict_source == f"computed (preserved as {p.model} v{p.version}, tagged headline)"
    assert "headline" not in (tmp_path / "out" / "tables" / "main_results.tex").read_text()
