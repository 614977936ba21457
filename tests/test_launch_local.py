"""`python launch submit --cluster local`: through submitit's local executor, waiting for the result.

Each MLflow run records its submit when it is opened: the command as typed, the command that
reproduces it alone, its config diff against the suite's base and the resolved config.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import TINY_RUN, run_cli

from launch import cli
from launch.cluster import ResourceError
from launch.record import find
from launch.suites import SUITES, Suite


pytestmark = pytest.mark.usefixtures("no_user_config")
_cli = run_cli


def test_local_submit_waits_and_prints_the_mlflow_run(tiny_pair, mlflow_store, tmp_path, monkeypatch):
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target,
            "data.num_shots": "0"}
    monkeypatch.setitem(SUITES, "local_one", Suite("local_one", "one tiny run", base, {"main": {}}, tasks=None))
    runs_dir = tmp_path / "runs"
    argv = ["submit", "--suite", "local_one", "--cluster", "local", "--runs-dir", str(runs_dir), "--wait-timeout", "240"]
    rc, out = _cli(argv)
    assert rc == 0, out
    sub = find(runs_dir)
    run_id = sub.runs[0].mlflow_run_id
    assert f"local_one/main: FINISHED; MLflow run id {run_id}" in out
    assert f"mlflow ui --backend-store-uri {mlflow_store}" in out
    assert "1 task(s) (default (no GPU found" in out  # NUM_GPUS, nvidia-smi, torch, then 1

    from registry.store import client

    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["code_dir"] == sub.snapshot["root"] == run.data.tags["code_snapshot"]
    # the suite's only run, no override: the command reproduces it as typed; it is the base
    assert run.data.tags["command"] == run.data.tags["reproduce_command"] == shlex.join(["python", "launch", *argv])
    assert json.loads(run.data.tags["config_diff"]) == {}
    assert sorted(m.step for m in client().get_metric_history(run_id, "loss")) == list(range(1, 7))
    rc, out = _cli(["status", "--runs-dir", str(runs_dir)])
    assert rc == 0 and "COMPLETED" in out and "FINISHED" in out, out
    # a finished run has nothing to resume; a run name the submission lacks is a clear error
    rc, out = _cli(["resume", "--runs-dir", str(runs_dir)])
    assert rc == 0 and "local_one/main: finished, nothing to resume" in out and "nothing to resume in" in out, out
    rc, out = _cli(["resume", "--runs-dir", str(runs_dir), "--run", "nope"])
    assert rc == cli.EXIT_USAGE and "has no run 'nope'" in out, out


def test_runs_per_device_share_the_machine_and_only_keeps_later_overrides(tiny_pair, mlflow_store, tmp_path, monkeypatch):
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target,
            "data.num_shots": "0"}
    runs = {"a": {}, "b": {"seed": 7}, "c": {}}
    monkeypatch.setitem(SUITES, "local_three", Suite("local_three", "three tiny runs", base, runs, tasks=None))
    runs_dir = tmp_path / "runs"
    # `--only` takes one value: the override after it is an override, not a run name
    argv = ["submit", "--suite", "local_three", "--cluster", "local", "--runs-dir", str(runs_dir),
            "--runs-per-device", "2", "--wait-timeout", "300", "--only", "a,b", "train.steps=3"]
    rc, out = _cli(argv)
    assert rc == 0, out
    sub = find(runs_dir)
    assert [e.name for e in sub.runs] == ["a", "b"]
    from registry.store import client

    a, b = (client().get_run(e.mlflow_run_id) for e in sub.runs)
    assert a.data.params["train.steps"] == b.data.params["train.steps"] == "3"
    # one parent run per submission, its members as children; it ended when they had
    parent = client().get_run(sub.parent_run_id)
    assert a.data.tags["mlflow.parentRunId"] == b.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == "FINISHED" and parent.data.tags["latentbridge.run_kind"] == "submission"
    from registry.facts import suite_runs

    members = suite_runs(client(), [parent.info.experiment_id], "local_three")
    assert {r.info.run_id for r in members} == {a.info.run_id, b.info.run_id}  # the parent is no training run
    # what was known at submit: the diff against the base (the member's change and the
    # override), the command as typed, and that command narrowed to the run
    assert json.loads(a.data.tags["config_diff"]) == {"train.steps": 3}
    assert json.loads(b.data.tags["config_diff"]) == {"seed": 7, "train.steps": 3}
    typed = shlex.join(["python", "launch", *argv])
    assert a.data.tags["command"] == b.data.tags["command"] == typed
    only_b = ["submit", "--only", "b", *argv[1:-3], "train.steps=3"]
    assert b.data.tags["reproduce_command"] == shlex.join(["python", "launch", *only_b])
    (tmp_path / "dl").mkdir()
    config = json.loads(Path(client().download_artifacts(b.info.run_id, "config.json", str(tmp_path / "dl"))).read_text())
    assert config["seed"] == 7 and config["train"]["steps"] == 3 and config["name"] == "b"
    # the archived note reproduces b alone, with the override
    from registry.preserve import preserve

    archived = preserve(b.info.run_id)
    note = client().get_model_version(archived.model, archived.version).description
    reproduce = note.split("## Reproduce\n", 1)[1].split("\n", 1)[0]
    assert reproduce.startswith(f"`{b.data.tags['reproduce_command']}`: the command it was submitted with, `{typed}`"), note
    assert "train.steps=3" in reproduce and "narrowed to this one with `--only b`" in reproduce
    assert "Config diff against the suite's base (recorded at submit):\n- `seed = 7`\n- `train.steps = 3`" in note
    # both went out together: b was started before a was seen to complete (one after another,
    # a completes first)
    assert out.index("started local_three/b") < out.index("local_three/a: COMPLETED"), out
    assert "what crossed the bridge: content/bits_transmitted = " in out, out
    rc, out = _cli(["submit", "--suite", "local_three", "--cluster", "local", "--runs-dir", str(runs_dir),
                    "--runs-per-device", "0"])
    assert rc == cli.EXIT_USAGE and "--runs-per-device 0 must be >= 1" in out, out


def test_a_pool_starts_the_next_run_when_one_ends(tiny_pair, mlflow_store, tmp_path, monkeypatch):
    source, target = tiny_pair
    base = {**dict(item.split("=", 1) for item in TINY_RUN), "source_model": source, "target_model": target,
            "data.num_shots": "0", "train.steps": "2", "eval.content_metrics": "false"}
    runs = {"a": {}, "b": {"seed": 7}, "c": {"seed": 8}}
    monkeypatch.setitem(SUITES, "local_pool", Suite("local_pool", "three tiny runs", base, runs, tasks=None))
    rc, out = _cli(["submit", "--suite", "local_pool", "--cluster", "local", "--runs-dir", str(tmp_path / "runs"),
                    "--runs-per-device", "2", "--wait-timeout", "300"])
    assert rc == 0, out
    started = {name: out.index(f"started local_pool/{name}") for name in "abc"}
    completed = sorted(out.index(f"local_pool/{name}: COMPLETED") for name in "abc")
    # two slots: a and b start together, c only once one of them has ended
    assert started["b"] < completed[0] < started["c"], out


def test_device_slots_pin_each_run_to_its_own_gpus(tmp_path):
    from launch.cluster import Resources, device_slots, make_executor, pin_gpus

    one_gpu_runs = Resources(cluster="local", tasks_per_node=1, gpus_per_node=1)
    assert device_slots(one_gpu_runs, 2, [0, 1]) == [(0,), (1,), (0,), (1,)]  # spread first, then shared
    assert device_slots(Resources(cluster="local", tasks_per_node=2, gpus_per_node=2), 1, [4, 5, 6, 7]) == [(4, 5), (6, 7)]
    assert device_slots(Resources(cluster="local"), 3, []) == [(), (), ()]  # the CPU
    with pytest.raises(ResourceError, match="--runs-per-device 0"):
        device_slots(one_gpu_runs, 0, [0])
    executor = make_executor(one_gpu_runs, tmp_path / "submitit", "lb-pin")
    pin_gpus(executor, (1,))
    assert executor.parameters["visible_gpus"] == [1] and executor.parameters["gpus_per_node"] == 1


def test_a_run_out_of_gpu_memory_is_told_the_way_out():
    from launch.monitor import failure_detail

    oom = ("Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB."
           " GPU 0 has a total capacity of 139.80 GiB of which 871.75 MiB is free.")
    detail = failure_detail(oom, "embedded-carry/20261203-061321-f4fb")
    assert detail.startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert "--runs-per-device" in detail and "python launch resume embedded-carry/20261203-061321-f4fb" in detail
    cublas = "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    assert "--runs-per-device" in failure_detail(cublas, "s/1")
    assert failure_detail("Traceback ...\nValueError: bad value", "s/1") == "ValueError: bad value"


# --------------------------------------------------------------------------- cancel: only our own processes
def _dead_pid() -> int:
    """The pid of a process that has ended (and that no process has taken since)."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not Path(f"/proc/{gone.pid}").exists()
    return gone.pid


def _local_submission(tmp_path: Path, job_ids: dict[str, str]):
    """A local submission whose runs have these job ids and records (no MLflow), saved in tmp_path/sub."""
    from launch.record import RunEntry, Submission, new_run_record

    folder = tmp_path / "sub"
    (folder / "submitit").mkdir(parents=True, exist_ok=True)
    records = tmp_path / "records"
    runs = [RunEntry(name, str(folder / name), "", job_id=job_id,
                     record=str(new_run_record(records, folder / name, name, {"suite": "s"}, {"name": name})))
            for name, job_id in job_ids.items()]
    sub = Submission(id="s/1", suite="s", folder=str(folder), created="", cluster="local", resources={"cluster": "local"},
                     tracking_uri="", snapshot={"root": str(tmp_path)}, submitit_folder=str(folder / "submitit"),
                     runs=runs, records=str(records))
    sub.save()
    return sub


def test_cancel_never_interrupts_a_process_that_reuses_the_pid_and_reaches_orphaned_tasks(tmp_path):
    """Job a's controller is gone and its pid now belongs to an unrelated process: that process is
    left alone. Job b's controller is gone (SIGKILLed) but its task runs on: the task is interrupted."""
    import os
    import subprocess
    import sys

    stranger = subprocess.Popen(["sleep", "300"])  # holds the pid job a's controller had
    orphan_of = str(_dead_pid())
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                              env={**os.environ, "SUBMITIT_LOCAL_JOB_ID": orphan_of})  # a task of job b
    try:
        sub = _local_submission(tmp_path, {"a": str(stranger.pid), "b": orphan_of})
        rc, out = _cli(["cancel", sub.folder, "--timeout", "60"])
        assert rc == 0, out
        assert stranger.poll() is None, "cancel interrupted a process that only reuses the job's pid"
        assert f"job {stranger.pid}: already gone" in out, out
        assert f"job {orphan_of}: its controller is gone; interrupted its 1 task(s) [{orphan.pid}]" in out, out
        assert orphan.wait(timeout=60) != 0  # the task stopped (KeyboardInterrupt)
        assert "a: CANCELLED" in out and "b: CANCELLED" in out, out
    finally:
        for process in (stranger, orphan):
            if process.poll() is None:
                process.kill()
                process.wait()


# --------------------------------------------------------------------------- resume: the submit's slot pool
class _Job:
    """A local job that has ended once it is first asked (`done`)."""

    def __init__(self, job_id: str) -> None:
        self.job_id, self.ended = job_id, False

    def done(self) -> bool:
        self.ended = True
        return True


class _Executor:
    """Stands for submitit's LocalExecutor: records each start (the spec's run, the GPUs it was
    pinned to, the runs still running then) and leaves the job file `resume` reads."""

    ids = iter(f"fake{i}" for i in range(1000))

    def __init__(self) -> None:
        self.gpus: tuple[int, ...] = ()
        self.jobs: list[_Job] = []
        self.starts: list[tuple[str, tuple[int, ...], list[str]]] = []
        self.folder: Path | None = None

    def update_parameters(self, visible_gpus) -> None:
        self.gpus = tuple(visible_gpus)

    def submit(self, function, spec):
        import pickle
        from types import SimpleNamespace

        from submitit.core.utils import JobPaths

        running = [j.job_id for j in self.jobs if not j.ended]
        job = _Job(next(self.ids))
        path = JobPaths(self.folder, job_id=job.job_id).submitted_pickle
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(SimpleNamespace(args=(spec,))))
        self.starts.append((Path(spec.run_dir).name, self.gpus, running))
        self.jobs.append(job)
        return job


def test_local_resume_runs_the_runs_per_device_pool_of_its_submit(tmp_path, monkeypatch):
    """`--runs-per-device` is kept in the submission, and `resume` starts the runs as `submit`
    did: two at once on the one GPU, the third once one has ended (it started all at once on GPU 0)."""
    import launch.cluster

    base = dict(item.split("=", 1) for item in TINY_RUN)
    monkeypatch.setitem(SUITES, "local_pool3", Suite("local_pool3", "three runs", base, {"a": {}, "b": {}, "c": {}}))
    monkeypatch.setenv("NUM_GPUS", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executors: list[_Executor] = []

    def make_executor(res, folder, job_name, workdir=None):
        executors.append(_Executor())
        executors[-1].folder = folder
        return executors[-1]

    monkeypatch.setattr(launch.cluster, "make_executor", make_executor)
    runs_dir = tmp_path / "runs"
    rc, out = _cli(["submit", "--suite", "local_pool3", "--cluster", "local", "--runs-dir", str(runs_dir),
                    "--records", str(tmp_path / "records"), "--runs-per-device", "2", "--wait-timeout", "60"])
    assert rc == cli.EXIT_FAILED and out.count(": LOST;") == 3, out  # the fake jobs leave no result
    sub = find(runs_dir)
    assert sub.runs_per_device == 2
    pool = [("a", (0,), []), ("b", (0,), [executors[0].jobs[0].job_id]), ("c", (0,), [])]
    assert executors[0].starts == pool, executors[0].starts
    submitted = [e.job_id for e in sub.runs]

    rc, out = _cli(["resume", "--runs-dir", str(runs_dir)])
    assert rc == cli.EXIT_FAILED, out
    pool = [("a", (0,), []), ("b", (0,), [executors[1].jobs[0].job_id]), ("c", (0,), [])]
    assert executors[1].starts == pool, executors[1].starts
    sub = find(runs_dir)
    assert [e.earlier_job_ids for e in sub.runs] == [[job_id] for job_id in submitted]
    assert f"resumed local_pool3/a: job {sub.runs[0].job_id} (local, GPU 0; was {submitted[0]})" in out, out
