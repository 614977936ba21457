"""What one submitted job does: join the process group, open the MLflow run, train.

`TrainJob` is a submitit Checkpointable: on preemption or timeout submitit requeues it with
the same arguments, and the run resumes from its last checkpoint into the same MLflow run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import submitit

from latentbridge import distributed
from latentbridge.config import RunConfig
from latentbridge.train import train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    run_id: str
    status: str
    run_dir: str
    metrics: dict[str, float]


def export_distributed_env() -> None:
    """Set MASTER_ADDR/PORT, RANK, LOCAL_RANK, WORLD_SIZE from the submitit/Slurm job."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job: a plain single process
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))


class TrainJob(submitit.helpers.Checkpointable):
    def __call__(self, config: dict, run_dir: str, tags: dict[str, str] | None = None) -> JobResult:
        from registry.reporter import MlflowReporter
        from registry.runs import close_run, open_run

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        run_config = RunConfig.from_dict(config)
        export_distributed_env()
        distributed.init_from_env()
        path = Path(run_dir)
        run_id = None
        if distributed.is_main():
            run_id = open_run(path, run_config.name, run_config.suite or "latentbridge", tags)
        run_id = distributed.broadcast_from_main(run_id)
        reporter = MlflowReporter(run_id) if distributed.is_main() else None
        try:
            result = train(run_config, path, reporter)
        except BaseException:
            if distributed.is_main():
                close_run(run_id, "FAILED")
            raise
        if distributed.is_main():
            close_run(run_id, "FINISHED")
        return JobResult(run_id=run_id, status=result.status, run_dir=run_dir, metrics=result.final_metrics)
