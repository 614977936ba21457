"""Slurm refusing a submission, or forgetting a job, on the local Slurm cluster: no traceback,
nothing left half made. Nothing here trains: the jobs are held (`--slurm-arg hold`) and cancelled.

Start the cluster with `launch/local_slurm.sh up`; these tests skip (saying why) when it is not up.
- an element of a queued array cancelled while pending is one Slurm no longer knows ("Job N_0
  not found"): `status`, `wait`, `resume` and `cancel` go on, the run CANCELLED;
- an option sbatch refuses (`--partition`, `--mem`, `--slurm-arg`, `--cpus-per-task`) is one line
  naming sbatch's message and the option with its value, and nothing is made (`sbatch --test-only`
  first); when sbatch refuses only at the submission itself, the runs made are closed FAILED and
  LATEST is not moved to the submission without jobs; `resume` refused changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from test_launch_slurm import _cluster_problem

from launch import cli, slurm_queue
from launch.record import LATEST, Submission, all_records, find

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("no_user_config")]
PAIR = ["--suite", "positive-control", "--only", "smollm2-self,gemma3-self"]


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


def _submit(tmp_path: Path, *extra: str, records: bool = True) -> tuple[int, str]:
    recording = ["--records", str(tmp_path / "records")] if records else []
    return run_cli(["submit", *PAIR, "--cluster", "slurm", "--no-wait", "--runs-dir", str(tmp_path / "runs"),
                    *recording, *extra])


def _scancel_all(runs_dir: Path) -> None:
    for record in all_records(runs_dir):
        sub = Submission.load(record)
        slurm_queue.scancel([i for e in sub.runs for i in (e.job_id, *e.earlier_job_ids)])


def _row(out: str, name: str) -> list[str]:
    [row] = [line.split() for line in out.splitlines() if line.strip().startswith(f"{name} ")]
    return row


def test_a_cancelled_element_of_a_queued_array_is_cancelled_not_an_error(tmp_path):
    runs_dir = tmp_path / "runs"
    rc, out = _submit(tmp_path, "--slurm-arg", "hold")
    assert rc == 0, out
    sub = find(runs_dir)
    first = sub.runs[0].job_id
    assert first.endswith("_0"), first  # one array, its element 0
    common = ["--runs-dir", str(runs_dir)]
    try:
        rc, out = run_cli(["cancel", *common, "--run", "smollm2-self", "--timeout", "60"])
        assert rc == 0 and "smollm2-self: CANCELLED" in out, out
        rc, out = run_cli(["status", *common])  # was: "scontrol show job N_0 failed: " (Job N_0 not found)
        assert rc == 0, out
        assert _row(out, "smollm2-self")[2:4] == ["CANCELLED", "KILLED"], out
        assert _row(out, "gemma3-self")[2:4] == ["PENDING", "SCHEDULED"], out
        rc, out = run_cli(["wait", *common, "--timeout", "1", "--poll", "0.5"])
        assert rc == cli.EXIT_FAILED and "still running after 1 s: ['gemma3-self']" in out, out  # cancelled: not ok
        assert "positive-control/smollm2-self: CANCELLED; record" in out, out
        # resume refused by sbatch (the partition is gone since): one line, nothing changed
        record = Path(sub.folder) / "submission.json"
        saved, now = record.read_text(), find(runs_dir)
        now.resources["partition"] = "gone"
        now.save()
        rc, out = run_cli(["resume", *common, "--run", "smollm2-self"])
        assert rc == cli.EXIT_USAGE, out
        assert out.strip().splitlines()[-1].startswith("error: sbatch refuses the job: ") and "--partition 'gone'" in out
        assert "submission.json) and resume again" in out and "nothing was resubmitted" in out, out
        assert find(runs_dir).runs[0].job_id == first
        record.write_text(saved)
        rc, out = run_cli(["resume", *common, "--run", "smollm2-self"])
        assert rc == 0 and "resumed positive-control/smollm2-self: job " in out and f"(was {first})" in out, out
        resumed = find(runs_dir).runs[0]
        assert resumed.earlier_job_ids == [first] and resumed.job_id != first
        rc, out = run_cli(["cancel", *common, "--timeout", "60"])
        assert rc == 0 and out.count(": CANCELLED") == 2, out
    finally:
        _scancel_all(runs_dir)


@pytest.mark.parametrize("option, fix", [
    (["--partition", "nope"], "fix --partition 'nope'"),
    (["--mem", "lots"], "fix --mem 'lots'"),
    (["--slurm-arg", "bogus=1"], "fix --slurm-arg 'bogus=1'"),
    (["--cpus-per-task", "-3"], "fix --cpus-per-task -3"),
])
def test_an_option_sbatch_refuses_is_one_line_and_makes_nothing(tmp_path, option, fix):
    rc, out = _submit(tmp_path, *option)
    assert rc == cli.EXIT_USAGE, out
    [line] = out.strip().splitlines()
    assert line.startswith("error: sbatch refuses the job: sbatch: ") and fix in line, line
    assert "launch config file's [submit] table" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "records").exists()  # no snapshot, no record


def test_the_check_sees_the_environment_the_submission_will(tmp_path, monkeypatch):
    """Inside a job, its SBATCH_*/SLURM_* variables are hidden while submitting (`run_from`):
    the `--test-only` check hides them too, or an enclosing job's partition would refuse a
    submission that sbatch takes."""
    monkeypatch.setenv("SBATCH_PARTITION", "enclosing-jobs-partition")
    monkeypatch.setenv("SLURM_JOB_ID", "424242")
    rc, out = _submit(tmp_path, "--slurm-arg", "hold")
    try:
        assert rc == 0 and "submitted positive-control/smollm2-self" in out, out
    finally:
        _scancel_all(tmp_path / "runs")


def test_a_refusal_at_submission_closes_the_runs_made_and_leaves_latest(tmp_path, mlflow_store, monkeypatch):
    """When sbatch takes the script in `--test-only` but refuses the submission itself (a limit
    of the account, a partition removed meanwhile), the MLflow runs already opened are closed
    FAILED, the parent too; the record stays (it names them), and LATEST is not moved to it."""
    monkeypatch.setattr(cli, "check_sbatch", lambda *args, **kwargs: None)  # as if --test-only had let it through
    runs_dir = tmp_path / "runs"
    rc, out = _submit(tmp_path, "--partition", "nope", records=False)
    try:
        assert rc == cli.EXIT_USAGE, out
        last = out.strip().splitlines()[-1]
        assert last.startswith("error: sbatch refuses the job: sbatch: error: invalid partition specified: nope"), out
        assert "fix --partition 'nope'" in last and "queued nothing: its run(s) are closed FAILED" in last, out
        assert "Traceback" not in out
        assert not (runs_dir / LATEST).exists()
        [record] = all_records(runs_dir)
        sub = Submission.load(record)
        assert sub.job_ids == [] and sub.parent_run_id
        from registry.store import client

        statuses = [client().get_run(run_id).info.status for run_id in [e.mlflow_run_id for e in sub.runs]]
        assert statuses == ["FAILED", "FAILED"] and client().get_run(sub.parent_run_id).info.status == "FAILED"
        rc, out = run_cli(["status", sub.id, "--runs-dir", str(runs_dir)])
        assert rc == 0 and out.count("NOT SUBMITTED") == 2, out
    finally:
        _scancel_all(runs_dir)
