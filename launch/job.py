"""What one submitted job does: join the process group, open the MLflow run, train.

`TrainJob` is a submitit Checkpointable. Every start of a job -- the first, a requeue
after preemption or `scontrol requeue`, a resubmission after a timeout -- does the same
thing: continue the MLflow run whose id the launcher wrote into the run dir, and train,
which resumes from `run_dir/checkpoint/state.pt` (saved every `train.checkpoint_every`
steps). Steps between that checkpoint and the kill are trained again; the reporter skips
the (metric, step) points the run already has, so the run's history has each step once.

Records mode (`JobSpec.record` set; `submit --records`): the job continues the run record the
launcher made instead, through `FileReporter` (status in its status.json), and never imports
mlflow: the machine needs no store and no MLflow.

Signals. The Trainer catches SIGTERM and USR2 itself: it finishes the current step, saves
its state (so the resume point is the interruption step, not the last periodic checkpoint),
returns INTERRUPTED and then calls the handler that was there before -- submitit's for USR2,
this module's for SIGTERM. What Slurm 22.05 does here, and what the job then does:
- time limit: submitit asks for USR2 90 s before it; its handler requeues the job (at most
  `max_timeouts` times) and exits; the run is marked SCHEDULED (waiting to resume).
- preemption (PreemptMode=REQUEUE): SIGTERM while the job still RUNS (with a PreemptTime);
  SIGKILL and a requeue after the partition's GraceTime. A job that exits by itself inside
  the grace time is NOT requeued by Slurm, so rank 0 marks the run SCHEDULED and requeues
  its own job (`scontrol requeue`); if Slurm refuses, it waits to be killed (and requeued).
- `scontrol requeue`: SIGTERM with the job COMPLETING and its restart count already
  raised: mark the run SCHEDULED and exit; Slurm starts the job again.
- `scancel`: SIGTERM with the job COMPLETING and the same restart count: mark it KILLED.
- Slurm does not answer: exit without a result, run SCHEDULED (if it was a cancel, `launch
  status` later marks it KILLED). SIGKILL with no warning: the periodic checkpoint is the
  resume point and already-logged steps are skipped on the re-run.
Only rank 0 decides; every rank stops at the same step (the Trainer broadcasts the stop)
and the other ranks exit with status 0 and no result (a non-zero exit would make srun's
--kill-on-bad-exit kill rank 0 before it has requeued the job).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from latentbridge import distributed
from latentbridge.config import RunConfig
from latentbridge.reporting import FileReporter, Reporter
from latentbridge.train import train

log = logging.getLogger(__name__)
CODE_DIR = str(Path(__file__).resolve().parents[1])  # the snapshot this job runs from
WAIT_FOR_KILL_S = 900  # a preempted job that cannot requeue itself waits this long for SIGKILL
# The Trainer's result status -> the MLflow run status.
RUN_STATUS = {"FINISHED": "FINISHED", "EARLY_STOPPED": "FINISHED", "NAN_LOSS": "FAILED"}


@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs, fixed at submit time."""

    config: dict[str, Any]
    run_dir: str
    experiment: str
    tracking_uri: str
    artifact_root: str  # where new experiments keep artifacts; "": the store's default (a tracking server's own)
    tags: dict[str, str] = field(default_factory=dict)
    preserve: bool = False  # archive the run in the model registry once it finishes
    record: str = ""  # records mode: the run's record folder; no MLflow (tracking_uri, artifact_root unused)


@dataclass(frozen=True)
class JobResult:
    run_id: str  # records mode: the run's record folder
    status: str
    run_dir: str
    metrics: dict[str, float]
    world_size: int = 1
    backend: str = ""
    code_dir: str = ""
    restarts: int = 0
    preserved: str = ""  # "MODEL version N: verdict" when the run was preserved
    detail: str = ""  # why a run that ended by itself did not finish (e.g. the loss became NaN)


def _failure_detail(result: Any) -> str:
    if result.status == "NAN_LOSS":
        return (f"the loss became NaN or infinite at step {result.step}; the run stopped and its MLflow run is FAILED "
                "(tag stop_reason); lower optim.lr or set optim.grad_clip, then submit again")
    return ""


class Interrupted(BaseException):
    """SIGTERM on rank 0: stop training now. `action` is what to do with the job.

    A BaseException so that submitit writes no error result for a job that will run again.
    """

    def __init__(self, action: str, why: str) -> None:
        super().__init__(f"{why} ({action})")
        self.action = action  # "requeue" (requeue the job ourselves), "resume" (Slurm requeues it), "kill"


_stopping = False


def _slurm_job_id() -> str | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def classify_sigterm() -> tuple[str, str] | None:
    """(action, why) for a SIGTERM, from Slurm's view of this job; None: keep going."""
    job_id = _slurm_job_id()
    if job_id is None:
        return "kill", "terminated (not a Slurm job)"
    from launch.slurm_queue import SlurmCommandError, scontrol_job

    try:
        info = scontrol_job(job_id, timeout=8)  # well inside a preemption's grace time
    except SlurmCommandError as error:
        log.warning("SIGTERM, and Slurm does not answer (%s): training on until killed", error)
        return None
    if info is None:
        return None
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if info.state == "RUNNING" and info.preempt_time:
        return "requeue", f"preempted at {info.preempt_time}"
    if info.restarts > restarts:
        return "resume", f"requeued by Slurm (restart {info.restarts})"
    if info.state in ("COMPLETING", "CANCELLED", "TIMEOUT", "DEADLINE", "FAILED", "NODE_FAIL"):
        return "kill", f"{'cancelled' if info.state != 'TIMEOUT' else 'timed out'} ({info.state})"
    log.warning("SIGTERM with the job %s (%s): training on until killed", info.state, job_id)
    return None


def _on_sigterm(signum: int, frame: Any) -> None:
    global _stopping
    if _stopping or not distributed.is_main():
        log.warning("ignoring %s", signal.Signals(signum).name)
        return
    decision = classify_sigterm()
    if decision is None:
        return
    _stopping = True
    raise Interrupted(*decision)


def export_distributed_env() -> None:
    """Set MASTER_ADDR/PORT, RANK, LOCAL_RANK, WORLD_SIZE from the submitit/Slurm job."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job: a plain single process
        return
    if env.num_tasks > 1:
        # Keep every GPU visible to every rank (distributed.device() picks cuda:LOCAL_RANK);
        # with no usable CUDA (Slurm still sets CUDA_VISIBLE_DEVICES) the ranks run on the
        # CPU and join over gloo: distributed.init_from_env picks the backend.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))


def _backend() -> str:
    if not distributed.is_distributed():
        return "none"
    import torch.distributed as dist

    return str(dist.get_backend())


def _requeue_self() -> None:
    """Requeue this job; if Slurm refuses, wait for the preemption's SIGKILL (Slurm requeues then)."""
    from launch.slurm_queue import SlurmCommandError, requeue

    job_id = _slurm_job_id()
    try:
        requeue(job_id)
        log.warning("requeued job %s", job_id)
    except SlurmCommandError as error:
        log.warning("could not requeue job %s (%s); waiting to be killed and requeued by Slurm", job_id, error)
        time.sleep(WAIT_FOR_KILL_S)


class TrainJob(submitit.helpers.Checkpointable):
    """Train one run; safe to start again (requeue) any number of times."""

    def make_reporter(self, run_id: str):
        from registry.reporter import MlflowReporter

        return MlflowReporter(run_id)

    def start_run(self, spec: JobSpec, name: str) -> tuple[str, Reporter, Callable[[str], None]]:
        """Rank 0: (run id, reporter, status setter) of the run, now RUNNING: its MLflow run,
        or in records mode its record (the id is the record folder)."""
        if spec.record:
            record = FileReporter(Path(spec.record))
            record.set_status("RUNNING")
            return spec.record, record, record.set_status
        from registry.runs import open_run, set_status

        run_id = open_run(Path(spec.run_dir), name, spec.experiment, spec.tags, status="RUNNING")
        return run_id, self.make_reporter(run_id), functools.partial(set_status, run_id)

    def __call__(self, spec: JobSpec) -> JobResult:
        global _stopping
        _stopping = False
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        if not spec.record:
            os.environ["MLFLOW_TRACKING_URI"] = spec.tracking_uri
            os.environ["LATENTBRIDGE_ARTIFACT_ROOT"] = spec.artifact_root  # "" too: no local default on a server
        run_config = RunConfig.from_dict(spec.config)
        export_distributed_env()
        distributed.init_from_env()
        signal.signal(signal.SIGTERM, _on_sigterm)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        path = Path(spec.run_dir)
        run_id, reporter, set_status = None, None, None
        if distributed.is_main():
            run_id, reporter, set_status = self.start_run(spec, run_config.name)
            reporter.set_tags(
                {
                    "slurm_job_id": os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "")),
                    "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
                    "slurm_restarts": str(restarts),
                    "world_size": str(distributed.world_size()),
                    "backend": _backend(),
                    "code_dir": CODE_DIR,
                }
            )
        run_id = distributed.broadcast_from_main(run_id)
        log.info("run %s: rank %d of %d (%s), code %s, restart %d", run_id, distributed.rank(),
                 distributed.world_size(), _backend(), CODE_DIR, restarts)
        try:
            result = train(run_config, path, reporter)
        except Interrupted as stop:  # rank 0 only
            _stopping = True
            log.warning("stopping: %s", stop)
            set_status("KILLED" if stop.action == "kill" else "SCHEDULED")
            if stop.action == "requeue":
                _requeue_self()
            raise SystemExit(f"interrupted: {stop}") from None
        except (SystemExit, KeyboardInterrupt) as stop:
            # submitit's timeout handler requeued the job (USR2) and exits
            _stopping = True
            log.warning("stopping (%r); the run resumes from its last checkpoint", stop)
            if distributed.is_main():
                set_status("SCHEDULED")
                raise
            raise SystemExit(0) from None
        except Exception:
            _stopping = True
            if distributed.is_main():
                set_status("FAILED")
            raise
        _stopping = True  # from here on a late SIGTERM must not turn success into an interruption
        if result.status == "INTERRUPTED":  # a signal whose handler chose to let the job go on
            if distributed.is_main():
                set_status("SCHEDULED")
            raise SystemExit(0 if not distributed.is_main() else "interrupted: Slurm gave no decision")
        preserved = ""
        if distributed.is_main():
            set_status(RUN_STATUS.get(result.status, "FINISHED"))
            if spec.preserve and RUN_STATUS.get(result.status) == "FINISHED":
                from registry.preserve import preserve

                try:
                    archived = preserve(run_id)
                    preserved = f"{archived.model} version {archived.version}: {archived.verdict} ({archived.rule})"
                    log.info("preserved as %s", preserved)
                except Exception as error:  # noqa: BLE001 - the run itself succeeded; say why it was not archived
                    preserved = f"NOT preserved: {error}"
                    log.exception("preserving run %s failed", run_id)
        world, backend = distributed.world_size(), _backend()
        if distributed.is_distributed():
            import torch.distributed as dist

            dist.destroy_process_group()
        return JobResult(
            run_id=run_id,
            status=result.status,
            run_dir=spec.run_dir,
            metrics=result.final_metrics,
            world_size=world,
            backend=backend,
            code_dir=CODE_DIR,
            restarts=restarts,
            preserved=preserved,
            detail=_failure_detail(result),
        )
