"""Submitting keeps the user's Slurm client settings and hides an enclosing job's variables.

Clusters whose slurm.conf is not at the compiled-in default path name it with SLURM_CONF;
hiding it while submitting made sbatch die with "Could not establish a configuration
source". The unit tests check the filter (`launch.snapshot.hidden_while_submitting`) and
`run_from`; the cluster test submits through `run_from` to the local Slurm cluster from a
private mount namespace in which /etc/slurm is an empty folder, so that SLURM_CONF is the
only way sbatch can find the config (nothing outside that process sees the mount).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launch.snapshot import hidden_while_submitting, run_from

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "local_slurm.sh"
DEFAULT_CONF_DIR = Path("/etc/slurm")
WAIT_S = 120

# What a process inside a 7-task Slurm job step (rank 3 of a torch.distributed group) sees,
# plus the user's client settings.
ENCLOSING_JOB = {
    "SLURM_JOB_ID": "424242",
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "7",
    "SLURM_MEM_PER_NODE": "1024",
    "SLURMD_NODENAME": "node7",
    "SRUN_DEBUG": "3",
    "SUBMITIT_EXECUTOR": "slurm",
    "SBATCH_TIMELIMIT": "5",
    "MASTER_ADDR": "10.255.255.1",
    "MASTER_PORT": "29500",
    "RANK": "3",
    "WORLD_SIZE": "7",
    "LOCAL_RANK": "3",
    "LOCAL_WORLD_SIZE": "7",
}
CLIENT_SETTINGS = {
    "SLURM_CONF": "/opt/site/slurm.conf",
    "SLURM_CLUSTERS": "lab",
    "SBATCH_CLUSTERS": "lab",
    "SLURM_DEBUG_FLAGS": "Gres",
    "SBATCH_DEBUG": "1",
    "SLURM_EXIT_ERROR": "3",
}


def test_the_filter_hides_the_enclosing_job_and_keeps_the_client_settings() -> None:
    env = {**ENCLOSING_JOB, **CLIENT_SETTINGS, "PATH": "/usr/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0"}
    assert hidden_while_submitting(env) == sorted(ENCLOSING_JOB)


def test_run_from_hides_and_restores_the_environment(monkeypatch, tmp_path) -> None:
    for name, value in {**ENCLOSING_JOB, **CLIENT_SETTINGS}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    before, cwd = dict(os.environ), os.getcwd()
    with run_from(tmp_path):
        assert not set(ENCLOSING_JOB) & set(os.environ)
        assert {k: os.environ[k] for k in CLIENT_SETTINGS} == CLIENT_SETTINGS
        assert os.environ["PYTHONPATH"] == str(tmp_path) and os.getcwd() == str(tmp_path)
    assert dict(os.environ) == before and os.getcwd() == cwd


# --------------------------------------------------------------------------- the local cluster
def _cluster_conf() -> Path:
    """The local cluster's own slurm.conf (its copy at /etc/slurm is what the namespace hides)."""
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm clients are not on PATH: run `bash launch/local_slurm.sh up`")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding /etc/slurm in a private mount namespace needs root and unshare")
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=30)
    if status.returncode != 0:
        pytest.skip("the local Slurm cluster is not up: run `bash launch/local_slurm.sh up`")
    env = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, timeout=30, check=True)
    conf = Path(next(line.split("=", 1)[1] for line in env.stdout.splitlines() if "SLURM_CONF=" in line))
    assert conf.is_file() and conf.parent != DEFAULT_CONF_DIR, conf
    return conf


# Run in the namespace: submit one job through `run_from`, wait for it (bounded), print what
# the job saw. Any failure to submit (sbatch's error) ends the script with a traceback.
SUBMIT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    from launch import slurm_queue
    from launch.cluster import Resources, make_executor
    from launch.snapshot import run_from

    def job_env():
        import os
        return {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "MASTER_ADDR", "RANK")}

    folder = Path(sys.argv[1])
    resources = Resources(cluster="slurm", tasks_per_node=1, gpus_per_node=0, time_min=5)
    executor = make_executor(resources, folder / "submitit", "lb-slurm-conf", str(folder))
    with run_from(folder):
        job = executor.submit(job_env)
    deadline = time.monotonic() + float(sys.argv[2])
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not job.done():
        slurm_queue.scancel([job.job_id])
        sys.exit(f"job {job.job_id} did not finish in {sys.argv[2]} s")
    print(json.dumps({"job_id": job.job_id, "env": job.result()}))
    """
)
# Bind an empty folder over /etc/slurm (private to this namespace), check that the clients then
# find no config without SLURM_CONF, and run the script.
IN_NAMESPACE = (
    'mount --bind "$1" /etc/slurm || exit 90; '
    'if env -u SLURM_CONF sinfo >/dev/null 2>&1; then echo "sinfo found a config without SLURM_CONF"; exit 91; fi; '
    'shift; exec "$@"'
)


@pytest.mark.slurm
def test_submit_with_the_config_named_by_slurm_conf_only(tmp_path) -> None:
    conf = _cluster_conf()
    if not DEFAULT_CONF_DIR.is_dir():
        pytest.skip(f"{DEFAULT_CONF_DIR} does not exist: nothing to hide")
    empty, folder = tmp_path / "empty", tmp_path / "submission"
    empty.mkdir()
    folder.mkdir()
    script = tmp_path / "submit.py"
    script.write_text(SUBMIT)
    env = {**os.environ, **ENCLOSING_JOB, "SLURM_CONF": str(conf), "PYTHONPATH": str(REPO)}
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_NAMESPACE, "sh", str(empty),
           sys.executable, str(script), str(folder), str(WAIT_S)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=WAIT_S + 60)
    if res.returncode == 90:
        pytest.skip(f"cannot bind-mount over {DEFAULT_CONF_DIR} in a private namespace: {res.stderr.strip()}")
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-3000:]}"
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    # the job is a job of its own: none of the enclosing job's variables reached it
    assert seen["env"]["SLURM_JOB_ID"] == seen["job_id"] != ENCLOSING_JOB["SLURM_JOB_ID"]
    assert seen["env"]["SLURM_NTASKS"] != ENCLOSING_JOB["SLURM_NTASKS"]
    assert seen["env"]["MASTER_ADDR"] is None and seen["env"]["RANK"] is None
