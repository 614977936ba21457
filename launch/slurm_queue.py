"""Reading Slurm's queue ourselves (squeue, scontrol): there may be no accounting (sacct).

submitit asks `sacct` for job states; without accounting it reports UNKNOWN for a job that
has left the queue and can wait for ever. These helpers ask `squeue` for the jobs still
queued and `scontrol show job` for jobs that just ended (Slurm keeps them MinJobAge, 300 s
by default); a job neither knows has left the queue. `sbatch_refusal` asks sbatch, without
submitting, whether it would take a job script.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass

TIMEOUT_S = 30
ACTIVE = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
     "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
)
FINAL_OK = frozenset({"COMPLETED"})
# What Slurm says of a job it no longer knows: "Invalid job id specified" (a plain job), and
# "Job 277_0 not found" (an element of an array whose other elements are still queued, once it
# was cancelled while pending or purged).
FORGOTTEN = re.compile(r"invalid job id|\bjob \S+ not found", re.IGNORECASE)


class SlurmCommandError(RuntimeError):
    """squeue/scontrol/scancel failed (Slurm down?)."""


@dataclass(frozen=True)
class QueueEntry:
    job_id: str  # "123" or "123_4" (array element)
    state: str  # Slurm state, e.g. PENDING, RUNNING, COMPLETED, CANCELLED
    reason: str = ""
    restarts: int = 0
    exit_code: str = ""
    preempt_time: str = ""  # set while a preempted job is in its grace time

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def _run(
    cmd: list[str], timeout: float = TIMEOUT_S, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except FileNotFoundError as error:
        raise SlurmCommandError(f"{cmd[0]} is not installed: {error}") from None
    except subprocess.TimeoutExpired:
        raise SlurmCommandError(f"{' '.join(cmd)} did not answer within {timeout} s") from None


def _failure(cmd: list[str], res: subprocess.CompletedProcess[str]) -> SlurmCommandError:
    """The error of a Slurm command that failed, never with an empty message: its exit code and
    all it printed (scontrol prints some errors on stdout), and the way to look further."""
    said = " ".join(" ".join(text.split()) for text in (res.stderr, res.stdout) if text.strip())
    return SlurmCommandError(
        f"{' '.join(cmd)} failed with exit code {res.returncode}: {said or '(it printed nothing)'}; "
        "check that Slurm answers (sinfo, squeue) and run the command by hand to see more"
    )


def _forgotten(res: subprocess.CompletedProcess[str]) -> bool:
    """Slurm answered that it does not know the job (any more), rather than failing."""
    return bool(FORGOTTEN.search(res.stderr + res.stdout))


def base_id(job_id: str) -> str:
    return str(job_id).split("_", 1)[0]


def squeue(job_ids: list[str]) -> dict[str, QueueEntry]:
    """Queued (pending/running/completing) jobs among `job_ids`, array elements one by one."""
    bases = sorted({base_id(j) for j in job_ids if j})
    if not bases:
        return {}
    cmd = ["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%r"]
    res = _run(cmd)
    if res.returncode != 0:
        if _forgotten(res):
            return {}  # none of them is known any more
        raise _failure(cmd, res)
    out = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2:
            out[parts[0]] = QueueEntry(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    return out


def scontrol_job(job_id: str, timeout: float = TIMEOUT_S) -> QueueEntry | None:
    """What `scontrol show job` knows of one job (or array element); None once forgotten (the
    caller then goes by the job's result file and the run's record, as for a job long gone)."""
    cmd = ["scontrol", "show", "job", "-o", str(job_id)]
    res = _run(cmd, timeout)
    if res.returncode != 0 or not res.stdout.strip():
        if _forgotten(res):
            return None
        raise _failure(cmd, res)
    fields = dict(item.split("=", 1) for item in res.stdout.split() if "=" in item)
    return QueueEntry(
        job_id=str(job_id),
        state=fields.get("JobState", "UNKNOWN"),
        reason=fields.get("Reason", ""),
        restarts=int(fields.get("Restarts", "0") or 0),
        exit_code=fields.get("ExitCode", ""),
        preempt_time="" if fields.get("PreemptTime", "None") in ("None", "Unknown") else fields["PreemptTime"],
    )


def scancel(job_ids: list[str]) -> None:
    ids = [j for j in job_ids if j]
    if not ids:
        return
    cmd = ["scancel", *ids]
    res = _run(cmd)
    problems = [
        line for line in res.stderr.splitlines()
        if line.strip() and "already completing or completed" not in line.lower() and not FORGOTTEN.search(line)
    ]
    if res.returncode != 0 and (problems or not res.stderr.strip()):
        raise _failure(cmd, res)


def requeue(job_id: str) -> None:
    cmd = ["scontrol", "requeue", str(job_id)]
    res = _run(cmd)
    if res.returncode != 0:
        raise _failure(cmd, res)


def sbatch_refusal(script: str, env: dict[str, str] | None = None) -> str:
    """What sbatch says against a batch script without submitting it (`sbatch --test-only`: it
    checks the partition, account, memory, options...), one line; "" when it would take it.
    Run before anything is created, so that a refused option leaves nothing behind; `env`: the
    environment the real submission will have (sbatch reads SBATCH_* and SLURM_* variables)."""
    with tempfile.NamedTemporaryFile("w", prefix="lb-test-only-", suffix=".sh") as handle:
        handle.write(script)
        handle.flush()
        res = _run(["sbatch", "--test-only", handle.name], env=env)
    if res.returncode == 0:
        return ""
    lines = [line.strip() for line in (res.stderr + "\n" + res.stdout).splitlines()
             if line.strip() and not line.startswith('Try "sbatch --help"')]
    return " / ".join(lines) or f"sbatch --test-only exited with code {res.returncode} and printed nothing"
