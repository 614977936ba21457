"""Freeze the code at submit time, so that later edits never change queued or requeued jobs.

`take_snapshot` copies the repo's code as it is on disk -- every file git tracks plus the
untracked files git does not ignore (new modules not yet committed) -- into the submission
folder, and the jobs run from that copy (it is their working directory, hence first on
`sys.path`). Files are made read-only; untracked files over 2 MB (results, data) are left
out and listed. The copy records its git state in CODE_SNAPSHOT.json (commit, branch,
dirty, the untracked files copied, what was left out or refused) and `uncommitted.diff`
holds the tracked changes against the commit, so `git checkout <commit> && git apply
uncommitted.diff` (plus the untracked files, which are in the copy) rebuilds the code that
ran. submitit's `helpers.RsyncSnapshot` was not used: it needs rsync, makes a git clone,
and leaves out untracked files, so a job would crash on a module that is written but not
yet committed.

What is never taken, and who can read what:

- Files that look like secrets (`SECRET_PATTERNS`: .env, .env.*, *.pem, *.key, id_rsa*,
  credentials*, .netrc, .pypirc, *.p12, ..., and anything under .ssh/, .aws/, .gnupg/) are
  neither copied nor put in the diff, tracked or not; they are listed in `refused`.
- A symlink is followed only when it resolves to a file inside the repo; a link that leaves
  the repo (to ~/.netrc, say) is refused and listed.
- Untracked files are copied, but kept out of `uncommitted.diff` (which is also logged to
  MLflow as `code/uncommitted.diff`) unless the user opts in: `take_snapshot(...,
  diff_untracked=True)` or the environment variable `LATENTBRIDGE_SNAPSHOT_DIFF_UNTRACKED=1`.
- Each copied file keeps its source's read and execute bits (write bits removed), and each
  folder of the copy its source folder's, so a private (0600) source gives a private copy.
  The diff is written 0600 when an untracked file or a source file not readable by group and
  others went into it, else 0640.

Submitting (`run_from`): jobs inherit the submitting process's environment, so the variables
of an enclosing Slurm job or torch.distributed process group are hidden while submitting
(`hidden_while_submitting`); the Slurm client settings in `SLURM_CLIENT_VARS` are kept.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import shutil
import stat
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping

from latentbridge.config import env_flag
from registry.tags import CODE_SNAPSHOT_FILE

DIFF_FILE = "uncommitted.diff"
MAX_UNTRACKED_BYTES = 2_000_000  # bigger untracked files (results, data) are left out and listed
# Without git, copy these (the packages and the build files).
FALLBACK_ITEMS = ("latentbridge", "launch", "registry", "setup.cfg", "pyproject.toml")
DIFF_UNTRACKED_ENV = "LATENTBRIDGE_SNAPSHOT_DIFF_UNTRACKED"
# File names (matched case-insensitively against the last path component) never copied or diffed.
SECRET_PATTERNS = (
    ".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
    "*.ppk", "*.kdbx", "*.gpg", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "credentials*",
    "*credentials.json", ".netrc", "_netrc", ".pypirc", ".npmrc", ".git-credentials", ".pgpass",
    ".htpasswd", "secrets.*", "*.secret", "*.secrets", "*service-account*.json", "*service_account*.json",
)
SECRET_DIRS = (".ssh", ".aws", ".gnupg", ".docker", ".kube")  # nothing under these is taken
DIFF_MODE_PRIVATE, DIFF_MODE_SHARED = 0o600, 0o640

# Hidden while submitting: what an enclosing Slurm job, srun step or submitit job sets
# (SLURM_JOB_ID, SLURM_PROCID, SLURM_NTASKS, ...; a job submitted with them would inherit
# the enclosing job's shape) and torch.distributed's rendezvous of an enclosing process group.
ENCLOSING_JOB_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SUBMITIT_")
DISTRIBUTED_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# Kept while submitting: the input variables of sbatch/squeue (sbatch(1), INPUT ENVIRONMENT
# VARIABLES) that locate or configure the Slurm client and describe no job. Slurm sets none of
# them in a job, except SLURM_CONF, which slurmd sets to the config it runs with (on a
# configless cluster the only config there is). The other SBATCH_* inputs (SBATCH_ACCOUNT,
# SBATCH_TIMELIMIT, SBATCH_OUTPUT, ...) stay hidden: sbatch lets them override the #SBATCH
# lines submitit writes (log paths, array, time, GPUs); the launcher's --account, --qos,
# --partition and --slurm-arg (or the launch config file) set those instead.
SLURM_CLIENT_VARS = frozenset(
    {
        "SLURM_CONF",  # where slurm.conf is, when not at the compiled-in default path
        "SLURM_CLUSTERS",  # which cluster(s) the clients talk to (sbatch/squeue --clusters)
        "SBATCH_CLUSTERS",  # the same, for sbatch alone
        "SLURM_DEBUG_FLAGS",  # the clients' DebugFlags
        "SBATCH_DEBUG",  # sbatch --verbose
        "SLURM_EXIT_ERROR",  # the exit code of a Slurm error
    }
)


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
    refused: list[str] = field(default_factory=list)  # "path (why)": secret-looking files, links out of the repo
    diff_untracked: bool = False  # whether the untracked files' contents went into the diff

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


def looks_secret(rel: str) -> bool:
    """Whether a repo-relative path names a file that looks like it holds a secret."""
    parts = [part.lower() for part in PurePosixPath(rel).parts]
    if not parts:
        return False
    if any(part in SECRET_DIRS for part in parts[:-1]):
        return True
    return any(fnmatch.fnmatchcase(parts[-1], pattern) for pattern in SECRET_PATTERNS)


def diff_untracked_default() -> bool:
    return env_flag(DIFF_UNTRACKED_ENV, default=False)


@dataclass
class _Selection:
    files: dict[str, Path] = field(default_factory=dict)  # relative path in the copy -> real source file
    untracked: list[str] = field(default_factory=list)  # copied untracked files
    left_out: list[str] = field(default_factory=list)  # untracked files too big
    refused: dict[str, str] = field(default_factory=dict)  # path -> why

    def refused_lines(self) -> list[str]:
        return [f"{rel} ({why})" for rel, why in sorted(self.refused.items())]


def _check(repo: Path, rel: str) -> tuple[Path | None, str | None]:
    """(the real file to copy for `rel`, None) or (None, why it is refused); (None, None): no file."""
    if looks_secret(rel):
        return None, "looks like a secret"
    path = repo / rel
    if not os.path.lexists(path):
        return None, None  # deleted
    real = Path(os.path.realpath(path))
    if real != repo and repo not in real.parents:
        return None, "symlink to outside the repo"
    if real != path and looks_secret(real.relative_to(repo).as_posix()):
        return None, "symlink to a file that looks like a secret"
    if not real.is_file():
        return None, None  # a link to a folder, a dangling link, a submodule
    return real, None


def _select(repo: Path, tracked: list[str], untracked: list[str]) -> _Selection:
    chosen = _Selection()
    tracked_set = set(tracked)
    for rel in dict.fromkeys(tracked + untracked):
        real, why = _check(repo, rel)
        if why:
            chosen.refused[rel] = why
            continue
        if real is None:
            continue
        if rel not in tracked_set:
            if real.stat().st_size > MAX_UNTRACKED_BYTES:
                chosen.left_out.append(rel)
                continue
            chosen.untracked.append(rel)
        chosen.files[rel] = real
    chosen.untracked.sort()
    chosen.left_out.sort()
    return chosen


def _ls(repo: Path, *args: str) -> list[str]:
    return [p for p in _git(repo, "ls-files", "-z", *args).split("\0") if p]


def code_files(repo: Path) -> tuple[list[str], list[str]]:
    """(all files to copy, the untracked ones among them), relative to `repo`."""
    chosen = _select(Path(repo).resolve(), _ls(repo, "--cached"), _ls(repo, "--others", "--exclude-standard"))
    return list(chosen.files), chosen.untracked


def large_untracked(repo: Path) -> list[str]:
    return _select(Path(repo).resolve(), [], _ls(repo, "--others", "--exclude-standard")).left_out


def _fallback_files(repo: Path) -> list[str]:
    out = []
    for item in FALLBACK_ITEMS:
        path = repo / item
        if path.is_file():
            out.append(item)
        elif path.is_dir():
            out += [str(p.relative_to(repo)) for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return out


def _is_private(path: Path) -> bool:
    """Not readable by both group and others."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o044 != 0o044
    except OSError:
        return False


def uncommitted_diff(repo: Path, untracked: list[str], *, exclude: list[str] = ()) -> tuple[str, bool]:
    """(the changes against HEAD, whether a private source went in): tracked edits (staged or
    not) except the `exclude`d paths, then the given untracked files as new files."""
    repo = Path(repo)
    changed = [p for p in _git(repo, "diff", "HEAD", "--name-only", "-z").split("\0") if p]
    skip = set(exclude) | {p for p in changed if looks_secret(p)}
    pathspec = (["--", "."] + [f":(exclude,literal){p}" for p in sorted(skip)]) if skip else []
    diff = _git(repo, "diff", "HEAD", "--binary", *pathspec)
    private = any(_is_private(repo / p) for p in changed if p not in skip)
    for path in untracked:
        diff += _git(repo, "diff", "--no-index", "--binary", "/dev/null", path, ok=(0, 1))
        private = True  # untracked contents are whatever lies in the work tree: keep the diff private
    return diff, private


def _dir_mode(source: Path) -> int:
    try:
        return (stat.S_IMODE(os.stat(source).st_mode) & 0o755) | 0o700
    except OSError:
        return 0o700


def _make_dirs(repo: Path, dest: Path, rel_dir: PurePosixPath, made: set[Path]) -> None:
    """Create `dest/rel_dir` folder by folder, each with its source folder's read bits."""
    src, dst = repo, dest
    for part in rel_dir.parts:
        src, dst = src / part, dst / part
        if dst in made:
            continue
        dst.mkdir(exist_ok=True)
        os.chmod(dst, _dir_mode(src))
        made.add(dst)


def _copy_file(real: Path, target: Path) -> int:
    """Copy the contents of `real` to a new `target` (never through a link), mode = the source's
    read and execute bits; the file is never readable by others while it is written."""
    st = os.stat(real)
    source_fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    target_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(source_fd, "rb") as src, os.fdopen(target_fd, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(target, (stat.S_IMODE(st.st_mode) & 0o555) | stat.S_IRUSR)
    return target.stat().st_size


def _write_private(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), mode)
        out.write(text)


def _freeze(path: Path) -> None:
    mode = path.stat().st_mode
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def take_snapshot(repo: Path, dest: Path, *, diff_untracked: bool | None = None) -> Snapshot:
    """Copy the code of `repo` into `dest` (which must not exist) and describe it.

    `diff_untracked`: put the untracked files' contents into `uncommitted.diff` too (default:
    the `LATENTBRIDGE_SNAPSHOT_DIFF_UNTRACKED` environment variable, else no).
    """
    repo, dest = Path(repo).resolve(), Path(dest).resolve()
    if diff_untracked is None:
        diff_untracked = diff_untracked_default()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.mkdir(exist_ok=False)
    os.chmod(dest, _dir_mode(repo))
    private_diff = False
    if is_git_repo(repo):
        chosen = _select(repo, _ls(repo, "--cached"), _ls(repo, "--others", "--exclude-standard"))
        commit = _git(repo, "rev-parse", "HEAD").strip()
        branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
        untracked_in_diff = chosen.untracked if diff_untracked else []
        diff, private_diff = uncommitted_diff(repo, untracked_in_diff, exclude=list(chosen.refused))
    else:
        chosen = _Selection()
        for rel in _fallback_files(repo):
            real, why = _check(repo, rel)
            if why:
                chosen.refused[rel] = why
            elif real is not None:
                chosen.files[rel] = real
        commit, branch, diff = "unknown", "unknown", ""
    total = 0
    made: set[Path] = set()
    for rel, real in chosen.files.items():
        target = dest / rel
        _make_dirs(repo, dest, PurePosixPath(rel).parent, made)
        total += _copy_file(real, target)
    diff_file = None
    if diff:
        diff_path = dest.parent / DIFF_FILE
        _write_private(diff_path, diff, DIFF_MODE_PRIVATE if private_diff else DIFF_MODE_SHARED)
        diff_file = str(diff_path)
    snapshot = Snapshot(
        root=str(dest),
        source=str(repo),
        git_commit=commit,
        git_branch=branch,
        dirty=bool(diff) or bool(chosen.untracked),
        untracked=chosen.untracked,
        left_out=chosen.left_out,
        files=len(chosen.files),
        bytes=total,
        diff_file=diff_file,
        taken_at=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        refused=chosen.refused_lines(),
        diff_untracked=bool(diff_untracked),
    )
    record = dest / CODE_SNAPSHOT_FILE
    _write_private(record, json.dumps(asdict(snapshot), indent=2), 0o600 | (_dir_mode(repo) & 0o044))
    _freeze(record)
    return snapshot


def python_path_for(snapshot_root: str | Path) -> str:
    """PYTHONPATH that puts the snapshot first (kept behind anything the user set)."""
    rest = os.environ.get("PYTHONPATH", "")
    return str(snapshot_root) + (os.pathsep + rest if rest else "")


def hidden_while_submitting(environ: Mapping[str, str]) -> list[str]:
    """The names in `environ` to hide while submitting: those of an enclosing Slurm/submitit
    job or torch.distributed process group, but never a Slurm client setting (`SLURM_CLIENT_VARS`)."""
    return sorted(
        name
        for name in environ
        if (name.startswith(ENCLOSING_JOB_PREFIXES) or name in DISTRIBUTED_VARS) and name not in SLURM_CLIENT_VARS
    )


@contextmanager
def run_from(snapshot_root: str | Path) -> Iterator[None]:
    """While submitting: cwd and PYTHONPATH point at the snapshot, and the variables
    `hidden_while_submitting` names are hidden; the jobs inherit this environment."""
    old_cwd, old_path = os.getcwd(), os.environ.get("PYTHONPATH")
    hidden = {name: os.environ.pop(name) for name in hidden_while_submitting(os.environ)}
    try:
        os.environ["PYTHONPATH"] = python_path_for(snapshot_root)
        os.chdir(snapshot_root)
        yield
    finally:
        os.chdir(old_cwd)
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path
        os.environ.update(hidden)
