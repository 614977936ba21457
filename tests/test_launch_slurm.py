"""End to end through submitit and sbatch on the local single-node Slurm cluster.

Start it with `launch/local_slurm.sh up`; these tests skip (saying why) when it is not up.
Every wait is bounded. What they show:
- an array of two 2-task jobs: `submit` returns at once with the job ids, `wait` collects
  them; in each job the two ranks form a gloo process group (no CUDA although Slurm sets
  CUDA_VISIBLE_DEVICES) and rank 0 logs to the MLflow run created at submit, from the
  frozen code snapshot; `status` and `logs` read the record;
- a job requeued mid-run (`scontrol requeue`) and then preempted by a higher-priority
  partition finishes in the same MLflow run, every step logged exactly once;
- a 2-task job whose rank 1 is SIGKILLed fails; `launch resume` sends it out again and it
  finishes the same MLflow run from its last periodic checkpoint, every step logged once;
- 16 jobs of one array log at once into one SQLite store: every metric point is there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from conftest import TINY_RUN

from launch import cli, slurm_queue
from launch.suites import SUITES, Suite

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "local_slurm.sh"
WAIT_S = 240

pytestmark = pytest.mark.slurm
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the 16-job writer below travels by value


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm clients (sinfo/sbatch) are not on PATH: run `bash launch/local_slurm.sh up`"
    try:
        res = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "launch/local_slurm.sh status timed out after 30 s"
    if res.returncode != 0:
        detail = ((res.stderr or res.stdout).strip().splitlines() or [""])[-1]
        return f"local Slurm cluster is not up (launch/local_slurm.sh status: {detail}); run it with `up`"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A private SQLite store and an empty launch config for this module."""
    root = tmp_path_factory.mktemp("slurm_store")
    (root / "launch.toml").write_text("")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("LATENTBRIDGE_ARTIFACT_ROOT", (root / "artifacts").as_uri())
        mp.setenv("LATENTBRIDGE_LAUNCH_CONFIG", str(root / "launch.toml"))
        yield root


def _tiny_base(tiny_pair, **extra) -> dict:
    source, target = tiny_pair
    base = dict(item.split("=", 1) for item in TINY_RUN)
    base.update({"source_model": source, "target_model": target, "data.num_shots": "0"})
    base.update({k.replace("__", "."): str(v) for k, v in extra.items()})
    return base


def _client():
    from registry.store import client

    return client()


def _steps(run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in _client().get_metric_history(run_id, key))


def _debug(sub) -> str:
    out = [subprocess.run(["squeue"], capture_output=True, text=True, timeout=30).stdout]
    for err in sorted(Path(sub.submitit_folder).glob("*_log.err"))[:4]:
        out.append(f"--- {err.name}\n" + "\n".join(err.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(out)


# --------------------------------------------------------------------------- array of 2-task jobs
@pytest.fixture(scope="module")
def array_submission(store, tiny_pair, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("array_runs")
    suite = Suite("e2e_array", "two tiny 2-task runs", _tiny_base(tiny_pair), {"a": {"seed": 1}, "b": {"seed": 2}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SUITES, suite.name, suite)
        t0 = time.monotonic()
        submit = run_cli(["submit", "--suite", suite.name, "--cluster", "slurm",
                                      "--gpus-per-node", "2", "--runs-dir", str(runs_dir)])
        submit_s = time.monotonic() - t0
        waited = run_cli(["wait", "--runs-dir", str(runs_dir), "--timeout", str(WAIT_S), "--poll", "1"])
    from launch.record import find

    return {"submit": submit, "submit_s": submit_s, "wait": waited, "runs_dir": runs_dir, "sub": find(runs_dir)}


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run `python launch ...` in this process, capturing what it prints."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        rc = cli.main(argv)
    return rc, buffer.getvalue()


def test_array_submit_returns_at_once_and_wait_collects(array_submission):
    rc, out = array_submission["submit"]
    sub = array_submission["sub"]
    assert rc == 0, out
    assert array_submission["submit_s"] < 30, "submit should not wait for an array"
    ids = [r.job_id for r in sub.runs]
    base = ids[0].split("_")[0]
    assert ids == [f"{base}_0", f"{base}_1"], ids  # ONE array job
    assert f"job {base}_0" in out and "python launch status" in out
    rc, out = array_submission["wait"]
    assert rc == 0, out + _debug(sub)
    assert out.count("FINISHED; MLflow run id") == 2, out


def test_two_tasks_form_a_gloo_group_and_log_to_mlflow(array_submission):
    from launch.monitor import read_result, task_paths

    sub = array_submission["sub"]
    assert array_submission["wait"][0] == 0, array_submission["wait"][1]
    for entry in sub.runs:
        kind, result = read_result(sub, entry)
        assert kind == "success", result
        assert (result.world_size, result.backend) == (2, "gloo")
        assert result.code_dir == sub.snapshot["root"]  # ran from the frozen code, not the work tree
        rank1 = task_paths(sub, entry.job_id, 1).stderr.read_text()
        assert "rank 1 of 2 (gloo)" in rank1
        run = _client().get_run(entry.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["world_size"] == "2" and run.data.tags["backend"] == "gloo"
        assert run.data.tags["git_commit"] == sub.snapshot["git_commit"]
        assert run.data.tags["git_dirty"] == str(sub.snapshot["dirty"]).lower()
        assert _steps(entry.mlflow_run_id, "loss") == list(range(1, 7))
        assert _steps(entry.mlflow_run_id, "bridged_accuracy") == [0, 3, 6]
        # the diff of tracked changes is logged when there is one (untracked files alone make the
        # tree dirty but write no diff unless LATENTBRIDGE_SNAPSHOT_DIFF_UNTRACKED=1)
        expected = ["code/uncommitted.diff"] if sub.snapshot["diff_file"] else []
        assert [a.path for a in _client().list_artifacts(entry.mlflow_run_id, "code")] == expected


def test_status_and_logs_read_the_submission_record(array_submission):
    runs_dir = str(array_submission["runs_dir"])
    sub = array_submission["sub"]
    rc, out = run_cli(["status", sub.id, "--runs-dir", runs_dir])
    assert rc == 0 and out.count("COMPLETED") == 2 and out.count("FINISHED") == 2, out
    rc, out = run_cli(["logs", sub.runs[0].job_id, "--runs-dir", runs_dir, "--run", "b", "--task", "1",
                                   "--err", "--tail", "0"])
    assert rc == 0 and "rank 1 of 2 (gloo)" in out, out


# --------------------------------------------------------------------------- requeue and preemption
def _submit_no_wait(suite: Suite, runs_dir: Path, gpus: int):
    """Submit a suite to the local Slurm cluster without waiting; its submission record."""
    from launch.record import find

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SUITES, suite.name, suite)
        rc, out = run_cli(["submit", "--suite", suite.name, "--cluster", "slurm", "--no-wait",
                           "--gpus-per-node", str(gpus), "--runs-dir", str(runs_dir)])
    assert rc == 0, out
    return find(runs_dir)


def _wait_for_step(run_id: str, at_least: int, sub, what: str, deadline_s: float = 120) -> int:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        steps = _steps(run_id, "loss")
        if steps and steps[-1] >= at_least:
            assert steps[-1] < 40, f"the run finished before {what}: cannot test it\n" + _debug(sub)
            return steps[-1]
        time.sleep(0.15)
    pytest.fail(f"loss never reached step {at_least} before {what}\n" + _debug(sub))


def test_requeued_and_preempted_job_finishes_in_the_same_run(store, tiny_pair, tmp_path):
    runs_dir = tmp_path / "runs"
    base = _tiny_base(tiny_pair, train__steps=40, train__checkpoint_every=5, train__eval_every=20)
    suite = Suite("e2e_requeue", "one tiny 2-task run, interrupted twice", base, {"main": {}})
    urgent = None
    sub = _submit_no_wait(suite, runs_dir, gpus=2)
    entry = sub.runs[0]
    try:
        first = _wait_for_step(entry.mlflow_run_id, 7, sub, "scontrol requeue")
        slurm_queue.requeue(entry.job_id)  # 1: an admin/user requeue (SIGTERM, job COMPLETING)
        second = _wait_for_step(entry.mlflow_run_id, 22, sub, "the preemption")
        urgent = subprocess.run(  # 2: a higher-priority partition needs all 4 GPUs: preemption
            ["sbatch", "--parsable", "-p", "urgent", "--gpus-per-node=4", "-n1", "--time=1",
             f"--output={tmp_path / 'urgent.out'}", "--wrap", "sleep 1"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()
        rc, out = run_cli(["wait", "--runs-dir", str(runs_dir), "--timeout", str(WAIT_S), "--poll", "1"])
    finally:
        slurm_queue.scancel([entry.job_id] + ([urgent] if urgent else []))
    assert rc == 0, out + _debug(sub)
    run = _client().get_run(entry.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["slurm_restarts"] == "2", run.data.tags
    # no step logged twice and none missing, although steps after each checkpoint were trained again
    history = [m.step for m in _client().get_metric_history(entry.mlflow_run_id, "loss")]
    assert sorted(history) == list(range(1, 41)), history
    assert _steps(entry.mlflow_run_id, "bridged_accuracy") == [0, 20, 40]
    log = Path(sub.submitit_folder, f"{entry.job_id}_0_log.err").read_text()
    resumes = [int(line.rsplit(" ", 1)[-1]) for line in log.splitlines() if "resumed from" in line]
    # the Trainer checkpoints at the signal: each restart resumes where the job was interrupted
    assert len(resumes) == 2 and first <= resumes[0] < second <= resumes[1] < 40, (first, second, resumes)
    assert "requeued by Slurm" in log and "preempted at" in log and "requeued job" in log


def _task_pid(submitit_folder: str, rank: int) -> int | None:
    """The pid of the job process of `rank` (SLURM_PROCID) running from `submitit_folder`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and str(submitit_folder).encode() in cmdline \
                and f"SLURM_PROCID={rank}".encode() in environ:
            return int(proc.name)
    return None


def test_a_job_with_a_killed_rank_resumes_with_launch_resume(store, tiny_pair, tmp_path):
    """SIGKILL one rank of a 2-task job: srun ends the job (--kill-on-bad-exit), the run is
    marked FAILED; `launch resume` sends the same job out again from the frozen code, and it
    continues the same MLflow run from its last periodic checkpoint."""
    import os
    import signal

    runs_dir = tmp_path / "runs"
    base = _tiny_base(tiny_pair, train__steps=40, train__checkpoint_every=5, train__eval_every=20)
    suite = Suite("e2e_kill_rank", "one tiny 2-task run, a rank killed", base, {"main": {}})
    from launch.record import find

    sub = _submit_no_wait(suite, runs_dir, gpus=2)
    entry, first_job = sub.runs[0], sub.runs[0].job_id
    try:
        killed_at = _wait_for_step(entry.mlflow_run_id, 12, sub, "killing rank 1")
        pid = _task_pid(sub.submitit_folder, rank=1)
        assert pid is not None, "rank 1's process not found\n" + _debug(sub)
        os.kill(pid, signal.SIGKILL)
        rc, out = run_cli(["wait", "--runs-dir", str(runs_dir), "--timeout", "120", "--poll", "1"])
        assert rc != 0 and _client().get_run(entry.mlflow_run_id).info.status == "FAILED", out
        rc, resumed = run_cli(["resume", "--runs-dir", str(runs_dir)])
        assert rc == 0 and f"(was {first_job})" in resumed, resumed
        sub = find(runs_dir)
        rc, out = run_cli(["wait", "--runs-dir", str(runs_dir), "--timeout", str(WAIT_S), "--poll", "1"])
    finally:
        slurm_queue.scancel([first_job, sub.runs[0].job_id])
    assert rc == 0, out + _debug(sub)
    assert sub.runs[0].earlier_job_ids == [first_job] and sub.runs[0].job_id != first_job
    assert find(runs_dir, first_job).id == sub.id  # the job id it had before still names it
    assert _client().get_run(entry.mlflow_run_id).info.status == "FINISHED"
    history = [m.step for m in _client().get_metric_history(entry.mlflow_run_id, "loss")]
    assert sorted(history) == list(range(1, 41)), history  # each step once, none missing
    log = Path(sub.submitit_folder, f"{sub.runs[0].job_id}_0_log.err").read_text()
    resumes = [int(line.rsplit(" ", 1)[-1]) for line in log.splitlines() if "resumed from" in line]
    # no signal reached the trainer: it resumes from the last periodic checkpoint before the kill
    assert len(resumes) == 1 and resumes[0] % 5 == 0 and killed_at - 5 <= resumes[0] <= killed_at + 5, (killed_at, resumes)
    rc, out = run_cli(["resume", "--runs-dir", str(runs_dir)])
    assert rc == 0 and "finished, nothing to resume" in out, out


# --------------------------------------------------------------------------- 16 writers, one store
def _log_many(run_dir: str, steps: int) -> tuple[str, float, float, int]:
    """One job: its own MLflow run, `steps` steps of 5 metrics, one batch per step."""
    import logging
    import time as _time
    from pathlib import Path as _Path

    from registry.reporter import MlflowReporter
    from registry.runs import open_run, set_status

    logging.basicConfig(level=logging.INFO)
    start = _time.time()
    run_id = open_run(_Path(run_dir), _Path(run_dir).name, "e2e_many", {"writer": _Path(run_dir).name})
    reporter = MlflowReporter(run_id)
    reporter.log_params({f"p{i}": i for i in range(20)})
    for step in range(steps):
        reporter.log_metrics({f"m{k}": step * 10 + k for k in range(5)}, step)
    set_status(run_id, "FINISHED")
    return run_id, start, _time.time(), reporter.skipped


def test_sixteen_jobs_log_to_one_store_and_nothing_is_lost(store, tmp_path):
    from launch.cluster import Resources, make_executor
    from launch.monitor import Monitor, wait
    from launch.record import RunEntry, Submission
    from launch.snapshot import run_from, take_snapshot
    from registry.store import ensure_store, experiment_id, tracking_uri

    n, steps = 16, 60
    ensure_store()
    experiment_id("e2e_many")  # as `submit` does: the store and experiment exist before the fan-out
    snap = take_snapshot(REPO, tmp_path / "code")
    res = Resources(cluster="slurm", tasks_per_node=1, gpus_per_node=0, time_min=10, array_parallelism=n)
    executor = make_executor(res, tmp_path / "submitit", "lb-many", snap.root)
    with run_from(snap.root):
        jobs = executor.map_array(_log_many, [str(tmp_path / f"w{i:02d}") for i in range(n)], [steps] * n)
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array
    sub = Submission(
        id="many", suite="many", folder=str(tmp_path), created="", cluster="slurm", resources=res.to_dict(),
        tracking_uri=tracking_uri(), snapshot={}, submitit_folder=str(tmp_path / "submitit"),
        runs=[RunEntry(f"w{i:02d}", "", "", j.job_id) for i, j in enumerate(jobs)],
    )
    try:
        states, timed_out = wait(Monitor(sub), WAIT_S, poll_s=1.0, echo=lambda line: None)
    finally:
        slurm_queue.scancel([j.job_id for j in jobs if not Path(j.paths.result_pickle).exists()])
    assert not timed_out and all(s.ok for s in states), [s.line() for s in states if not s.ok]
    results = [s.result for s in states]
    client = _client()
    for run_id, _, _, skipped in results:
        assert skipped == 0
        for k in range(5):
            points = client.get_metric_history(run_id, f"m{k}")
            assert sorted((m.step, m.value) for m in points) == [(s, float(s * 10 + k)) for s in range(steps)]
        assert len(client.get_run(run_id).data.params) == 20
    # they really overlapped: the most jobs writing at the same moment
    events = sorted([(start, 1) for _, start, _, _ in results] + [(end, -1) for _, _, end, _ in results])
    most, now = 0, 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    print(f"{n} jobs, {n * steps * 5} metric points, at most {most} jobs logging at once")
    assert most >= 4


# --------------------------------------------------------------------------- cancel
def test_cancel_stops_the_job_and_marks_the_run_killed(store, tiny_pair, tmp_path):
    runs_dir = tmp_path / "runs"
    base = _tiny_base(tiny_pair, train__steps=400, train__checkpoint_every=50, train__eval_every=200)
    suite = Suite("e2e_cancel", "one long tiny run", base, {"main": {}})
    sub = _submit_no_wait(suite, runs_dir, gpus=1)
    _wait_for_step(sub.runs[0].mlflow_run_id, 2, sub, "the cancel", deadline_s=120)
    rc, out = run_cli(["cancel", "--runs-dir", str(runs_dir), "--timeout", "90"])
    assert rc == 0, out + _debug(sub)
    assert "main: CANCELLED" in out, out
    assert _client().get_run(sub.runs[0].mlflow_run_id).info.status == "KILLED"
    log = Path(sub.submitit_folder, f"{sub.runs[0].job_id}_0_log.err").read_text()
    assert "cancelled" in log
    rc, out = run_cli(["status", "--runs-dir", str(runs_dir)])
    assert "CANCELLED" in out and "KILLED" in out, out
