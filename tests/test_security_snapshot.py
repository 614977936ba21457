"""The code snapshot never takes secrets, keeps untracked files out of the diff unless asked,
does not follow links out of the repo, and keeps private files private."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from launch.snapshot import DIFF_FILE, DIFF_UNTRACKED_ENV, looks_secret, take_snapshot

SECRET = "hunter2-very-secret-token"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv(DIFF_UNTRACKED_ENV, raising=False)
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@t")
    _git(repo, "config", "user.name", "t")
    _write(repo / ".gitignore", "runs/\n")
    _write(repo / "pkg" / "mod.py", "X = 1\n")
    _write(repo / "deploy.key", "old key\n")  # a tracked file that looks like a secret
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "init")
    return repo


def _every_file_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


SECRET_FILES = [".env", ".env.local", "config/prod.env", "certs/server.pem", "tls.key", "id_rsa", "id_ed25519.pub",
                "credentials.json", ".netrc", "tools/.pypirc", "store.p12", ".ssh/config", ".aws/config"]


def test_secret_looking_files_are_never_taken(repo, tmp_path):
    for rel in SECRET_FILES:
        _write(repo / rel, f"token={SECRET}\n", 0o600)
    _write(repo / "deploy.key", f"new key {SECRET}\n")  # tracked and edited: not in the copy nor the diff
    _write(repo / "pkg" / "mod.py", "X = 2\n")
    for diff_untracked in (False, True):
        sub = tmp_path / f"sub{diff_untracked}"
        snap = take_snapshot(repo, sub / "code", diff_untracked=diff_untracked)
        code = Path(snap.root)
        for rel in [*SECRET_FILES, "deploy.key"]:
            assert not (code / rel).exists(), rel
            assert any(entry.startswith(f"{rel} (looks like a secret)") for entry in snap.refused), (rel, snap.refused)
        assert (code / "pkg" / "mod.py").read_text() == "X = 2\n"
        assert SECRET not in _every_file_text(sub)  # not in the copy, the diff or CODE_SNAPSHOT.json
        assert "X = 2" in (sub / DIFF_FILE).read_text()


@pytest.mark.parametrize("name", [".env", ".ENV", ".env.production", "a/b/key.pem", "id_rsa", "id_rsa.pub", "credentials",
                                  "credentials.json", ".netrc", "_netrc", ".pypirc", "cert.p12", ".ssh/known_hosts"])
def test_secret_names(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["environment.py", "pkg/env.py", "keys.py", "README.md", "monkey.py", "setup.cfg"])
def test_ordinary_names_are_not_secrets(name):
    assert not looks_secret(name)


def test_untracked_files_stay_out_of_the_diff_unless_asked(repo, tmp_path, monkeypatch):
    _write(repo / "pkg" / "mod.py", "X = 2\n")
    _write(repo / "pkg" / "new.py", "Y = 3  # untracked\n")
    snap = take_snapshot(repo, tmp_path / "plain" / "code")
    assert (Path(snap.root) / "pkg" / "new.py").read_text() == "Y = 3  # untracked\n"  # still copied: jobs need it
    assert snap.untracked == ["pkg/new.py"] and snap.dirty and not snap.diff_untracked
    diff = (tmp_path / "plain" / DIFF_FILE).read_text()
    assert "X = 2" in diff and "Y = 3" not in diff and "new.py" not in diff
    assert _mode(tmp_path / "plain" / DIFF_FILE) == 0o640  # only public tracked edits in it

    opted = take_snapshot(repo, tmp_path / "opted" / "code", diff_untracked=True)
    assert opted.diff_untracked and "Y = 3" in (tmp_path / "opted" / DIFF_FILE).read_text()
    assert _mode(tmp_path / "opted" / DIFF_FILE) == 0o600  # untracked contents went in

    monkeypatch.setenv(DIFF_UNTRACKED_ENV, "1")
    by_env = take_snapshot(repo, tmp_path / "env" / "code")
    assert by_env.diff_untracked and "Y = 3" in (tmp_path / "env" / DIFF_FILE).read_text()


def test_only_untracked_files_still_make_the_snapshot_dirty(repo, tmp_path):
    _write(repo / "pkg" / "new.py", "Y = 3\n")
    snap = take_snapshot(repo, tmp_path / "sub" / "code")
    assert snap.dirty and snap.tags()["git_dirty"] == "true"
    assert snap.diff_file is None and not (tmp_path / "sub" / DIFF_FILE).exists()


def test_links_out_of_the_repo_are_not_followed(repo, tmp_path):
    home = tmp_path / "home"
    outside = _write(home / "netrc", f"machine example.com password {SECRET}\n", 0o600)
    (repo / "settings.txt").symlink_to(outside)  # untracked link to a file outside
    (repo / "pkg" / "shared").symlink_to(home)  # a link to a folder outside
    _write(repo / "pkg" / "real.py", "Z = 1\n")
    (repo / "pkg" / "alias.py").symlink_to("real.py")  # a link inside the repo: fine
    os.symlink(outside, repo / "tracked_link.cfg")
    _git(repo, "add", "tracked_link.cfg")
    _git(repo, "commit", "-qm", "a tracked link out of the repo")

    sub = tmp_path / "sub"
    snap = take_snapshot(repo, sub / "code", diff_untracked=True)
    code = Path(snap.root)
    assert not os.path.lexists(code / "settings.txt") and not os.path.lexists(code / "tracked_link.cfg")
    assert not os.path.lexists(code / "pkg" / "shared")
    assert "settings.txt (symlink to outside the repo)" in snap.refused
    assert "tracked_link.cfg (symlink to outside the repo)" in snap.refused
    assert (code / "pkg" / "alias.py").read_text() == "Z = 1\n" and not (code / "pkg" / "alias.py").is_symlink()
    assert SECRET not in _every_file_text(sub)


def test_private_sources_give_private_copies_and_a_private_diff(repo, tmp_path):
    _write(repo / "pkg" / "mod.py", "X = 2  # edited\n", 0o600)  # a private tracked file, edited
    (repo / "private").mkdir(mode=0o700)
    os.chmod(repo / "private", 0o700)
    _write(repo / "private" / "notes.py", "N = 1\n", 0o600)
    _write(repo / "pkg" / "public.py", "P = 1\n", 0o644)
    _write(repo / "pkg" / "tool.sh", "echo hi\n", 0o755)

    sub = tmp_path / "sub"
    snap = take_snapshot(repo, sub / "code")
    code = Path(snap.root)
    assert _mode(code / "pkg" / "mod.py") == 0o400
    assert _mode(code / "private" / "notes.py") == 0o400
    assert _mode(code / "private") == 0o700
    assert _mode(code / "pkg" / "public.py") == 0o444  # read-only, as readable as its source
    assert _mode(code / "pkg" / "tool.sh") == 0o555  # still executable
    assert _mode(sub / DIFF_FILE) == 0o600  # a private source went into it
    assert "X = 2  # edited" in (sub / DIFF_FILE).read_text()


def test_the_diff_logged_to_mlflow_stays_private(repo, tmp_path, mlflow_store):
    from urllib.parse import urlparse

    from registry.runs import open_run, record_code
    from registry.store import client

    _write(repo / "pkg" / "mod.py", "X = 2\n", 0o600)
    snap = take_snapshot(repo, tmp_path / "sub" / "code")
    run_id = open_run(tmp_path / "run", "main", "sec", tags={})
    record_code(run_id, {}, Path(snap.diff_file))
    stored = Path(urlparse(client().get_run(run_id).info.artifact_uri).path) / "code" / DIFF_FILE
    assert stored.read_text() == Path(snap.diff_file).read_text()
    assert not _mode(stored) & 0o077
