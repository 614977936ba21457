"""End-to-end checks of the local single-node Slurm cluster (launch/local_slurm.sh).

Start it first with `launch/local_slurm.sh up`; these tests skip (with the reason) when
`sinfo` is not on PATH or `launch/local_slurm.sh status` fails. Every wait is bounded.
Besides the cluster itself: a 4-task training job (4 fake GPUs, gloo on the CPU) requeued
mid-run resumes each rank's own data order and ends with the same weights on every rank.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from conftest import TINY_RUN, run_cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "local_slurm.sh"
TIMEOUT_S = 60
TRAIN_WAIT_S = 300  # a 4-task job on 2 cores, started twice

pytestmark = pytest.mark.slurm
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # RecordingJob travels to the job by value


def _run(cmd: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _cluster_problem() -> str | None:
    """Why the cluster cannot be used, or None when it is up."""
    if shutil.which("sinfo") is None:
        return "Slurm client `sinfo` is not on PATH (run launch/local_slurm.sh up)"
    try:
        res = _run(["bash", str(SCRIPT), "status"], timeout=30)
    except subprocess.TimeoutExpired:
        return "launch/local_slurm.sh status timed out after 30 s"
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
        return f"local Slurm cluster is not up (launch/local_slurm.sh status: {detail[0]})"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem is not None:
        pytest.skip(problem)


def _job_debug(job_id: str) -> str:
    parts = []
    for cmd in (["squeue"], ["scontrol", "show", "job", job_id]):
        try:
            res = _run(cmd, timeout=15)
            parts.append(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
        except subprocess.TimeoutExpired:
            parts.append(f"$ {' '.join(cmd)}\n(timed out)")
    return "\n".join(parts)


def test_srun_four_tasks_each_rank_once() -> None:
    res = _run(
        [
            "srun",
            "-N1",
            "-n4",
            "--gpus-per-node=4",
            f"--time={max(1, TIMEOUT_S // 60)}",
            "bash",
            "-c",
            'echo "$SLURM_PROCID $SLURM_NTASKS $CUDA_VISIBLE_DEVICES"',
        ]
    )
    assert res.returncode == 0, f"srun failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    rows = [line.split() for line in res.stdout.splitlines() if line.strip()]
    ranks = sorted(int(row[0]) for row in rows)
    assert ranks == [0, 1, 2, 3], res.stdout
    assert all(row[1] == "4" for row in rows), res.stdout
    # The 4 fake gres GPUs are handed to every task, as on a real 4-GPU node.
    assert all(len(row) == 3 and row[2] == "0,1,2,3" for row in rows), res.stdout


def test_sbatch_job_writes_file(tmp_path: Path) -> None:
    marker = tmp_path / "sbatch_marker.txt"
    log = tmp_path / "slurm-%j.out"
    res = _run(
        [
            "sbatch",
            "--parsable",
            "--time=1",
            f"--output={log}",
            "--wrap",
            f'echo "job $SLURM_JOB_ID ok" > {marker}.tmp && mv {marker}.tmp {marker}',
        ]
    )
    assert res.returncode == 0, f"sbatch failed:\n{res.stdout}\n{res.stderr}"
    job_id = res.stdout.strip().split(";")[0]
    assert job_id.isdigit(), res.stdout

    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not marker.exists():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"job {job_id} did not write {marker} within {TIMEOUT_S} s\n"
                    + _job_debug(job_id)
                )
            time.sleep(0.2)
    finally:
        if not marker.exists():
            _run(["scancel", job_id], timeout=15)
    assert marker.read_text().strip() == f"job {job_id} ok"


# --------------------------------------------------------------------------- a requeued 4-task job
class RecordingJob(submitit.helpers.Checkpointable):
    """launch.job.TrainJob that also writes, per rank, each step's batch and the final weights."""

    def __call__(self, spec):
        import os

        import torch

        import latentbridge.train as train_module
        from launch.job import TrainJob

        rank, restart = int(os.environ["SLURM_PROCID"]), os.environ.get("SLURM_RESTART_COUNT", "0")
        folder = Path(spec.run_dir) / "recorded"
        folder.mkdir(exist_ok=True)
        compute_losses, finish = train_module.compute_losses, train_module.Trainer.finish

        def recording(bridge, batch, step, model):
            with open(folder / f"draws_rank{rank}.jsonl", "a") as out:
                out.write(json.dumps({"restart": restart, "step": step + 1, "questions": [ex.question for ex in batch]}) + "\n")
            return compute_losses(bridge, batch, step, model)

        def saving_final_weights(trainer):  # before finish() puts the best weights back
            weights = {k: v.detach().clone() for k, v in trainer.translator.state_dict().items()}
            torch.save(weights, folder / f"final_rank{rank}.pt")
            finish(trainer)

        train_module.compute_losses, train_module.Trainer.finish = recording, saving_final_weights
        return TrainJob()(spec)


def _loss_steps(run_id: str) -> list[int]:
    from registry.store import client

    return [m.step for m in client().get_metric_history(run_id, "loss")]


def _unbroken_draws(config, rank: int) -> dict[int, list[str]]:
    """The questions rank `rank` of an uninterrupted run trains on, step by step: its own data
    order, `random.Random(seed + rank)` drawing batches from the train split."""
    from latentbridge.data import load_splits

    train, sampler = load_splits(config.data).train, random.Random(config.seed + rank)
    batch = config.train.batch_size
    return {step: [sampler.choice(train).question for _ in range(batch)] for step in range(1, config.train.steps + 1)}


def test_requeued_four_task_job_resumes_every_rank(tiny_pair, mlflow_store, no_user_config, tmp_path, monkeypatch):
    import torch

    import launch.job
    from latentbridge.checkpoint import load_translator
    from launch import slurm_queue
    from launch.record import find
    from launch.suites import SUITES, Suite
    from registry.store import client

    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target}
    base.update({"data.num_shots": "0", "train.steps": "30", "train.checkpoint_every": "5", "train.eval_every": "30",
                 "eval.num_questions": "2", "eval.baselines": "false", "eval.content_metrics": "false"})
    suite = Suite("e2e_requeue_4", "one tiny 4-task run, requeued", base, {"main": {}})
    config = suite.configs()["main"]
    monkeypatch.setitem(SUITES, suite.name, suite)
    monkeypatch.setattr(launch.job, "TrainJob", RecordingJob)
    runs_dir = tmp_path / "runs"
    rc, out = run_cli(["submit", "--suite", suite.name, "--cluster", "slurm", "--no-wait", "--gpus-per-node", "4",
                       "--runs-dir", str(runs_dir)])
    assert rc == 0, out
    sub = find(runs_dir)
    entry = sub.runs[0]
    try:
        deadline = time.monotonic() + TRAIN_WAIT_S
        while not any(step >= 6 for step in _loss_steps(entry.mlflow_run_id)):
            if time.monotonic() > deadline:
                pytest.fail(f"job {entry.job_id} never logged step 6\n" + _job_debug(entry.job_id))
            time.sleep(0.2)
        requeued_at = max(_loss_steps(entry.mlflow_run_id))
        assert requeued_at < 30, "the run finished before the requeue: cannot test it"
        slurm_queue.requeue(entry.job_id)
        rc, out = run_cli(["wait", "--runs-dir", str(runs_dir), "--timeout", str(TRAIN_WAIT_S), "--poll", "1"])
    finally:
        slurm_queue.scancel([entry.job_id])
    assert rc == 0, out + _job_debug(entry.job_id)
    run = client().get_run(entry.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["slurm_restarts"] == "1", run.data.tags
    assert run.data.tags["world_size"] == "4" and run.data.tags["backend"] == "gloo"
    assert sorted(_loss_steps(entry.mlflow_run_id)) == list(range(1, 31))  # each step logged exactly once

    log = Path(sub.submitit_folder, f"{entry.job_id}_0_log.err").read_text()
    resumes = [int(line.rsplit(" ", 1)[-1]) for line in log.splitlines() if "resumed from" in line]
    assert len(resumes) == 1 and requeued_at <= resumes[0] < 30, (requeued_at, resumes)
    recorded = Path(entry.run_dir) / "recorded"
    final = torch.load(recorded / "final_rank0.pt")
    saved, _ = load_translator(Path(entry.run_dir) / "translator")
    for key, value in saved.state_dict().items():
        assert torch.equal(final[key], value), key
    for rank in range(4):
        draws = [json.loads(line) for line in (recorded / f"draws_rank{rank}.jsonl").read_text().splitlines()]
        assert {d["restart"] for d in draws} == {"0", "1"}, f"rank {rank} did not train in both attempts"
        assert sorted({d["step"] for d in draws}) == list(range(1, 31))
        unbroken = _unbroken_draws(config, rank)
        assert all(d["questions"] == unbroken[d["step"]] for d in draws), f"rank {rank} drew other batches"
        weights = torch.load(recorded / f"final_rank{rank}.pt")
        for key, value in final.items():
            assert torch.equal(weights[key], value), f"rank {rank}: {key}"
    first = _unbroken_draws(config, 0)
    assert all(_unbroken_draws(config, rank) != first for rank in range(1, 4))  # the ranks' batches differ
