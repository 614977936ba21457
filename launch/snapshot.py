"""Freeze the code at submit time, so that later edits never change queued or requeued jobs.

`take_snapshot` copies the repo's code as it is on disk -- every file git tracks plus the
untracked files git does not ignore (new modules not yet committed) -- into the submission
folder, and the jobs run from that copy (it is their working directory, hence first on
`sys.path`). Files are made read-only; untracked files over 2 MB (results, data) are left
out and listed. The copy records its git state in CODE_SNAPSHOT.json
(commit, branch, dirty) and `uncommitted.diff` holds every change against the commit
(tracked edits and new files), so `git checkout <commit> && git apply uncommitted.diff`
rebuilds exactly the code that ran. submitit's `helpers.RsyncSnapshot` was not used: it
needs rsync, makes a git clone, and leaves out untracked files, so a job would crash on a
module that is written but not yet committed.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import stat
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from registry.runs import CODE_SNAPSHOT_FILE

DIFF_FILE = "uncommitted.diff"
MAX_UNTRACKED_BYTES = 2_000_000  # bigger untracked files (results, data) are left out and listed
# Without git, copy these (the packages and the build files).
FALLBACK_ITEMS = ("latentbridge", "launch", "registry", "setup.cfg", "pyproject.toml")


@dataclass
class Snapshot:
    root: str  # the frozen copy; jobs run from here
    source: str  # the repo it was taken from
    git_commit: str
    git_branch: str
    dirty: bool
    untracked: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # untracked files too big to copy
    files: int = 0
    bytes: int = 0
    diff_file: str | None = None
    taken_at: str = ""

    def tags(self) -> dict[str, str]:
        """What the MLflow run records about its code."""
        return {
            "git_commit": self.git_commit,
            "git_branch": self.git_branch,
            "git_dirty": str(self.dirty).lower(),
            "code_snapshot": self.root,
        }


def _git(repo: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    res = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if res.returncode not in ok:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {res.stderr.strip()}")
    return res.stdout


def is_git_repo(repo: Path) -> bool:
    try:
        return _git(repo, "rev-parse", "--show-toplevel").strip() == str(Path(repo).resolve())
    except (RuntimeError, OSError):
        return False


def code_files(repo: Path) -> tuple[list[str], list[str]]:
    """(all files to copy, the untracked ones among them), relative to `repo`."""
    tracked = [p for p in _git(repo, "ls-files", "-z", "--cached").split("\0") if p]
    untracked = [p for p in _git(repo, "ls-files", "-z", "--others", "--exclude-standard").split("\0") if p]
    small = [p for p in untracked if (repo / p).is_file() and (repo / p).stat().st_size <= MAX_UNTRACKED_BYTES]
    keep = [p for p in dict.fromkeys(tracked + small) if (repo / p).is_file()]  # drops deleted files
    return keep, sorted(small)


def large_untracked(repo: Path) -> list[str]:
    untracked = [p for p in _git(repo, "ls-files", "-z", "--others", "--exclude-standard").split("\0") if p]
    return sorted(p for p in untracked if (repo / p).is_file() and (repo / p).stat().st_size > MAX_UNTRACKED_BYTES)


def _fallback_files(repo: Path) -> list[str]:
    out = []
    for item in FALLBACK_ITEMS:
        path = repo / item
        if path.is_file():
            out.append(item)
        elif path.is_dir():
            out += [str(p.relative_to(repo)) for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return out


def uncommitted_diff(repo: Path, untracked: list[str]) -> str:
    """Every change against HEAD: tracked edits (staged or not) and new untracked files."""
    diff = _git(repo, "diff", "HEAD", "--binary")
    for path in untracked:
        diff += _git(repo, "diff", "--no-index", "--binary", "/dev/null", path, ok=(0, 1))
    return diff


def _freeze(path: Path) -> None:
    mode = path.stat().st_mode
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def take_snapshot(repo: Path, dest: Path) -> Snapshot:
    """Copy the code of `repo` into `dest` (which must not exist) and describe it."""
    repo, dest = Path(repo).resolve(), Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=False)
    if is_git_repo(repo):
        files, untracked = code_files(repo)
        commit = _git(repo, "rev-parse", "HEAD").strip()
        branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
        diff = uncommitted_diff(repo, untracked)
        left_out = large_untracked(repo)
    else:
        files, untracked, commit, branch, diff = _fallback_files(repo), [], "unknown", "unknown", ""
        left_out = []
    total = 0
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target, follow_symlinks=True)
        total += target.stat().st_size
        _freeze(target)
    diff_file = None
    if diff:
        diff_path = dest.parent / DIFF_FILE
        diff_path.write_text(diff)
        diff_file = str(diff_path)
    snapshot = Snapshot(
        root=str(dest),
        source=str(repo),
        git_commit=commit,
        git_branch=branch,
        dirty=bool(diff),
        untracked=untracked,
        left_out=left_out,
        files=len(files),
        bytes=total,
        diff_file=diff_file,
        taken_at=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    record = dest / CODE_SNAPSHOT_FILE
    record.write_text(json.dumps(asdict(snapshot), indent=2))
    _freeze(record)
    return snapshot


def python_path_for(snapshot_root: str | Path) -> str:
    """PYTHONPATH that puts the snapshot first (kept behind anything the user set)."""
    rest = os.environ.get("PYTHONPATH", "")
    return str(snapshot_root) + (os.pathsep + rest if rest else "")


@contextmanager
def run_from(snapshot_root: str | Path) -> Iterator[None]:
    """While submitting: cwd and PYTHONPATH point at the snapshot, Slurm/torch.distributed
    variables of an enclosing job are hidden; the jobs inherit this environment."""
    import submitit

    old_cwd, old_path = os.getcwd(), os.environ.get("PYTHONPATH")
    with submitit.helpers.clean_env():
        os.environ["PYTHONPATH"] = python_path_for(snapshot_root)
        os.chdir(snapshot_root)
        try:
            yield
        finally:
            os.chdir(old_cwd)
            if old_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old_path
