"""Reading Slurm's queue ourselves (squeue, scontrol): there may be no accounting (sacct).

submitit asks `sacct` for job states; without accounting it reports UNKNOWN for a job that
has left the queue and can wait for ever. These helpers ask `squeue` for the jobs still
queued and `scontrol show job` for jobs that just ended (Slurm keeps them MinJobAge, 300 s
by default); a job neither knows has left the queue.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

TIMEOUT_S = 30
ACTIVE = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
     "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
)
FINAL_OK = frozenset({"COMPLETED"})


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


def _run(cmd: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as error:
        raise SlurmCommandError(f"{cmd[0]} is not installed: {error}") from None
    except subprocess.TimeoutExpired:
        raise SlurmCommandError(f"{' '.join(cmd)} did not answer within {timeout} s") from None


def base_id(job_id: str) -> str:
    return str(job_id).split("_", 1)[0]


def squeue(job_ids: list[str]) -> dict[str, QueueEntry]:
    """Queued (pending/running/completing) jobs among `job_ids`, array elements one by one."""
    bases = sorted({base_id(j) for j in job_ids if j})
    if not bases:
        return {}
    res = _run(["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%r"])
    if res.returncode != 0:
        if "invalid job id" in res.stderr.lower():
            return {}  # none of them is known any more
        raise SlurmCommandError(f"squeue failed: {res.stderr.strip()}")
    out = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2:
            out[parts[0]] = QueueEntry(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    return out


def scontrol_job(job_id: str, timeout: float = TIMEOUT_S) -> QueueEntry | None:
    """What `scontrol show job` knows of one job (or array element); None once forgotten."""
    res = _run(["scontrol", "show", "job", "-o", str(job_id)], timeout)
    if res.returncode != 0 or not res.stdout.strip():
        if "invalid job id" in (res.stderr + res.stdout).lower():
            return None
        raise SlurmCommandError(f"scontrol show job {job_id} failed: {res.stderr.strip()}")
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
    res = _run(["scancel", *ids])
    harmless = ("already completing or completed", "invalid job id")
    problems = [
        line for line in res.stderr.splitlines() if line.strip() and not any(h in line.lower() for h in harmless)
    ]
    if res.returncode != 0 and problems:
        raise SlurmCommandError(f"scancel {' '.join(ids)} failed: {' '.join(problems)}")


def requeue(job_id: str) -> None:
    res = _run(["scontrol", "requeue", str(job_id)])
    if res.returncode != 0:
        raise SlurmCommandError(f"scontrol requeue {job_id} failed: {res.stderr.strip()}")
