"""End-to-end checks of the local single-node Slurm cluster (launch/local_slurm.sh).

Start it first with `launch/local_slurm.sh up`; these tests skip (with the reason) when
`sinfo` is not on PATH or `launch/local_slurm.sh status` fails. Every wait is bounded.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "local_slurm.sh"
TIMEOUT_S = 60

pytestmark = pytest.mark.slurm


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
