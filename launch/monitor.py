"""The state of a submission's runs, and waiting for them (always with a time limit).

A run's state comes from, in order: Slurm's queue (squeue) while the job is queued or
running; then the job's submitit result file (success or the error's traceback); then
`scontrol show job` for a job that ended without a result (cancelled, node failure, time
limit); and a job that neither knows "left the queue without a result" (LOST). Local jobs
are processes of this machine (their job id is the controller's pid): one whose controller and
tasks are all gone without a result file was killed or crashed, and is LOST at once. Runs that
ended badly but whose MLflow run still says RUNNING/SCHEDULED are marked KILLED (cancelled,
lost) or FAILED (in records mode: their records' status.json).

Result files are pickles, and unpickling can run code: they are read with
`launch.record.load_own_pickle`, which refuses a file not owned by this user or writable by
others; a refused file makes the run FAILED with the reason, and nothing in it is run.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from submitit.core.utils import JobPaths

from launch import slurm_queue
from launch.record import RunEntry, Submission, UnsafeFileError, load_own_pickle

log = logging.getLogger(__name__)

LOST_GRACE_S = 10.0  # a job gone from the queue gets this long for its result file to appear
OPEN_STATUSES = ("RUNNING", "SCHEDULED")  # a run in these whose job has ended was left open


@dataclass
class RunState:
    name: str
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, LOST, ...
    done: bool
    ok: bool = False
    detail: str = ""
    result: Any = None

    def line(self) -> str:
        return f"{self.name}: {self.state}" + (f" ({self.detail})" if self.detail else "")


def task_paths(submission: Submission, job_id: str, task: int = 0) -> JobPaths:
    return JobPaths(submission.submitit_folder, job_id=job_id, task_id=task)


def read_result(submission: Submission, entry: RunEntry) -> tuple[str, Any] | None:
    """("success", result) or ("error", traceback) from the job's result files; None if none yet.

    Task 0's result decides; an error from any other task counts too.
    """
    if not entry.job_id:
        return None
    outcome = None
    for task in range(max(1, submission.num_tasks)):
        path = task_paths(submission, entry.job_id, task).result_pickle
        if not path.is_file():
            continue
        try:
            kind, value = load_own_pickle(path)
        except UnsafeFileError as error:  # someone else's file: never unpickled
            return "error", str(error)
        except Exception as error:  # noqa: BLE001 - a half-written or foreign file
            kind, value = "error", f"unreadable result file {path}: {error}"
        if kind == "error":
            return kind, value
        if task == 0:
            outcome = (kind, value)
    return outcome


def _last_line(trace: str) -> str:
    lines = [line for line in str(trace).strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "error"


# What a run that ran out of accelerator memory says (torch, and cuBLAS failing to create its handle)
OUT_OF_DEVICE_MEMORY = ("OutOfMemoryError", "CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED")


def failure_detail(trace: str, submission_id: str) -> str:
    """The failure's last line; for a run that ran out of GPU memory, also the way out (on one
    GPU shared by 20 runs, six died so)."""
    detail = _last_line(trace)
    if any(marker in str(trace) for marker in OUT_OF_DEVICE_MEMORY):
        detail += (" -- out of GPU memory: run fewer runs a GPU (--runs-per-device) or lower train.batch_size /"
                   f" eval.batch_size; `python launch resume {submission_id}` continues it from its last checkpoint")
    return detail


def _pid_alive(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _controller_alive(job_id: str) -> bool:
    """The local job's submitit controller (its pid is the job id) still runs (a reused pid does not count)."""
    if not _pid_alive(job_id):
        return False
    try:
        cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return True  # alive, but its command line cannot be read: assume it is ours
    return b"submitit" in cmdline


def _task_pids(job_id: str) -> list[int]:
    """Live processes of this user that are tasks of local job `job_id` (submitit sets SUBMITIT_LOCAL_JOB_ID)."""
    marker = f"SUBMITIT_LOCAL_JOB_ID={job_id}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.stat().st_uid != os.geteuid():
                continue
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and _pid_alive(proc.name):
            found.append(int(proc.name))
    return found


def interrupt_local_job(job_id: str) -> str:
    """Interrupt (SIGINT) local job `job_id`, as Ctrl-C would: its submitit controller while it
    runs (it stops its tasks), else the tasks it left running (a controller killed with SIGKILL
    leaves them); never a process that merely reuses the controller's old pid. What was done,
    in words, for the command to print."""
    if _controller_alive(job_id):
        targets, what = [int(job_id)], "interrupted its controller (it stops the tasks)"
    else:
        targets = _task_pids(job_id)
        what = f"its controller is gone; interrupted its {len(targets)} task(s) {targets}"
    sent = []
    for pid in targets:
        try:
            os.kill(pid, signal.SIGINT)
            sent.append(pid)
        except ProcessLookupError:  # it ended meanwhile
            continue
    if not sent:
        return "already gone (no process of it runs any more): nothing to interrupt"
    return what


class Monitor:
    """Computes run states; remembers when each job was first seen gone (for LOST)."""

    def __init__(
        self, submission: Submission, live_jobs: dict[str, Any] | None = None, only: set[str] | None = None
    ) -> None:
        self.submission = submission
        self.live_jobs = live_jobs if live_jobs is not None else {}  # run name -> submitit Job (local)
        self.only = only  # watch only these runs (None: all)
        self.gone_since: dict[str, float] = {}

    def states(self) -> list[RunState]:
        sub = self.submission
        queue = slurm_queue.squeue(sub.job_ids) if sub.cluster == "slurm" and sub.job_ids else {}
        return [self._state(entry, queue) for entry in sub.runs if self.only is None or entry.name in self.only]

    def _state(self, entry: RunEntry, queue: dict[str, slurm_queue.QueueEntry]) -> RunState:
        sub = self.submission
        if not entry.job_id:
            return RunState(entry.name, "", "NOT SUBMITTED", done=True, detail="no job was submitted for it")
        result = read_result(sub, entry)
        queued = queue.get(entry.job_id)
        if sub.cluster == "slurm" and queued and queued.active and not (result and queued.state == "COMPLETING"):
            detail = queued.reason if queued.state == "PENDING" and queued.reason not in ("", "None") else ""
            return RunState(entry.name, entry.job_id, queued.state, done=False, detail=detail)
        if sub.cluster == "local":
            if self._local_running(entry):
                return RunState(entry.name, entry.job_id, "RUNNING", done=False)
            # its processes are gone; a task writes its result before it exits, so read it again now
            result = read_result(sub, entry)
            if result is None:
                return self._local_lost(entry)
        if result is not None:
            kind, value = result
            if kind == "success":
                return RunState(entry.name, entry.job_id, "COMPLETED", done=True, ok=True, result=value)
            return RunState(entry.name, entry.job_id, "FAILED", done=True, detail=failure_detail(value, sub.id))
        return self._ended_without_result(entry)

    def _local_running(self, entry: RunEntry) -> bool:
        """A local job runs while its controller (pid = job id) or any of its tasks is alive.

        The tasks are checked too: a controller killed with SIGKILL leaves its tasks running."""
        job = self.live_jobs.get(entry.name)
        if job is not None and not job.done():
            return True
        return _controller_alive(entry.job_id) or bool(_task_pids(entry.job_id))

    def _local_lost(self, entry: RunEntry) -> RunState:
        """A local job whose processes are all gone and that left no result: killed or crashed."""
        sub = self.submission
        if entry.name in sub.cancelled:
            return RunState(entry.name, entry.job_id, "CANCELLED", done=True, detail="cancelled with `launch cancel`")
        return RunState(
            entry.name, entry.job_id, "LOST", done=True,
            detail=(f"its processes (job {entry.job_id}) ended without a result: killed (kill -9, a SIGTERM before "
                    f"it could stop cleanly, out of memory) or crashed; see `python launch logs {sub.id} --run "
                    f"{entry.name} --err`; `python launch resume {sub.id}` continues it from its last checkpoint"),
        )

    def _ended_without_result(self, entry: RunEntry) -> RunState:
        sub = self.submission
        cancelled = entry.name in sub.cancelled
        if sub.cluster == "slurm":
            info = slurm_queue.scontrol_job(entry.job_id)
            if info is not None and info.active:
                return RunState(entry.name, entry.job_id, info.state, done=False, detail=info.reason)
            if info is not None and info.state != "COMPLETED":
                return RunState(entry.name, entry.job_id, info.state, done=True, detail=f"exit code {info.exit_code}")
        if cancelled:
            return RunState(entry.name, entry.job_id, "CANCELLED", done=True, detail="cancelled with `launch cancel`")
        first = self.gone_since.setdefault(entry.name, time.monotonic())
        if time.monotonic() - first < LOST_GRACE_S:
            return RunState(entry.name, entry.job_id, "ENDING", done=False, detail="waiting for its result file")
        return RunState(
            entry.name, entry.job_id, "LOST", done=True,
            detail="left the queue without a result (killed, cancelled or node failure); see `launch logs`",
        )


def reconcile_mlflow(submission: Submission, states: list[RunState]) -> None:
    """Close runs whose job ended without closing them (killed, lost, failed): their MLflow runs,
    or in records mode their records' status.json (no store, no mlflow import)."""
    ended = {s.name: _closing_status(s) for s in states if s.done and not s.ok}
    if not submission.records:
        os.environ.setdefault("MLFLOW_TRACKING_URI", submission.tracking_uri)
    for name, status in ended.items():
        entry = submission.run(name)
        try:
            if entry.recorded_status() in OPEN_STATUSES:
                entry.record_status(status)
        except Exception:  # noqa: BLE001 - the store may be unreachable; status still prints
            continue
    names = {s.name for s in states}
    if submission.parent_run_id and names == {e.name for e in submission.runs} and all(s.done for s in states):
        _close_parent(submission.parent_run_id, "FINISHED" if all(s.ok for s in states) else "FAILED")


def _close_parent(run_id: str, status: str) -> None:
    """End the submission's parent run once every member has ended."""
    from registry.runs import run_status, set_status

    try:
        if run_status(run_id) in OPEN_STATUSES:
            set_status(run_id, status)
    except Exception:  # noqa: BLE001 - the store may be unreachable; status still prints
        log.warning("could not close the parent run %s", run_id)


def _closing_status(state: RunState) -> str:
    killed = state.state in ("CANCELLED", "LOST", "PREEMPTED", "NODE_FAIL", "TIMEOUT", "DEADLINE")
    return "KILLED" if killed else "FAILED"


def wait(
    monitor: Monitor,
    timeout_s: float,
    poll_s: float = 2.0,
    echo: Callable[[str], None] = print,
    until: Callable[[list[RunState]], bool] = lambda states: all(s.done for s in states),
    seen: dict[str, str] | None = None,
) -> tuple[list[RunState], bool]:
    """Poll until `until(states)` (default: every run is done) or `timeout_s` passes:
    (states, timed_out). Never cancels. Each run's state is echoed when it changes (`seen`:
    the last state echoed per run, shared across calls)."""
    if not poll_s > 0:  # a negative pause is a traceback in time.sleep, 0 a busy loop
        raise ValueError(f"poll_s = {poll_s!r}: the pause between looks must be > 0 seconds")
    deadline = time.monotonic() + timeout_s
    seen = {} if seen is None else seen
    while True:
        states = monitor.states()
        for state in states:
            key = f"{state.state}|{state.detail}"
            if seen.get(state.name) != key:
                seen[state.name] = key
                job = f" [job {state.job_id}]" if state.job_id else ""
                echo(f"  {monitor.submission.suite}/{state.line()}{job}")
        if until(states):
            return states, False
        if time.monotonic() >= deadline:
            return states, True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or 0.01)
