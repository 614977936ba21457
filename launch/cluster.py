"""Where jobs run and with what: the cluster, the resources of one job, the submitit executor.

One task per GPU: a Slurm job gets `gpus_per_node` GPUs and as many tasks per node (a
suite that fixes `tasks` gets that many tasks and as many GPUs). Local runs count GPUs in
this order: $NUM_GPUS, `nvidia-smi -L`, torch, else 1 task on the CPU.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

CLUSTERS = ("auto", "slurm", "local", "debug")
# Every task of a job dies when one fails (a dead rank would leave the others blocked in a collective).
SRUN_ARGS = ("--kill-on-bad-exit=1",)


class ResourceError(ValueError):
    """A resource setting is invalid (bad time, unknown cluster, ...)."""


def resolve_cluster(name: str) -> str:
    """`auto` becomes `slurm` when Slurm's `srun` is on PATH, else `local`."""
    if name not in CLUSTERS:
        raise ResourceError(f"unknown cluster {name!r}; choose one of {list(CLUSTERS)}")
    if name != "auto":
        return name
    return "slurm" if shutil.which("srun") else "local"


def detect_local_gpus() -> tuple[int, str]:
    """(number of GPUs, where the number came from): NUM_GPUS, nvidia-smi, torch, else 1 (CPU)."""
    env = os.environ.get("NUM_GPUS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ResourceError(f"NUM_GPUS={env!r} must be a positive integer")
        return int(env), "NUM_GPUS"
    if shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
            count = sum(1 for line in res.stdout.splitlines() if line.startswith("GPU "))
            if res.returncode == 0 and count:
                return count, "nvidia-smi"
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count():
            return torch.cuda.device_count(), "torch"
    except ImportError:
        pass
    return 1, "default (no GPU found: 1 task on the CPU)"


_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def parse_slurm_time(value: str | int) -> int:
    """Slurm's --time formats to whole minutes (rounded up).

    "90" = 90 min, "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS".
    """
    text = str(value).strip()
    match = _TIME.match(text)
    if not match:
        raise ResourceError(f"--time {text!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days = int(match["days"] or 0)
    parts = [int(p) for p in (match["a"], match["b"], match["c"]) if p is not None]
    if match["days"] is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:  # MM:SS
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts
    total = days * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
    if total < 1:
        raise ResourceError(f"--time {text!r} must be at least one minute")
    return total


def parse_slurm_args(items: list[str] | None) -> dict[str, Any]:
    """`--slurm-arg mail-type=END --slurm-arg exclusive` -> {"mail-type": "END", "exclusive": True}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.lstrip("-").partition("=")
        if not key:
            raise ResourceError(f"--slurm-arg {item!r} should be KEY=VALUE or KEY (an sbatch option)")
        out[key.replace("_", "-")] = value if sep else True
    return out


@dataclass(frozen=True)
class Resources:
    """What one job of a submission asks for."""

    cluster: str  # slurm, local or debug (resolved)
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    constraint: str | None = None
    cpus_per_task: int | None = None
    array_parallelism: int = 64
    max_timeouts: int = 3
    slurm_args: dict[str, Any] = field(default_factory=dict)
    gpu_source: str = ""  # how local GPUs were counted

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resources_for(settings: dict[str, Any], suite_tasks: int | None, cluster: str) -> Resources:
    """The resources of each job, from the resolved settings and the suite's `tasks`."""
    nodes = int(settings["nodes"])
    if nodes < 1:
        raise ResourceError("--nodes must be >= 1")
    gpus_per_node = int(settings["gpus_per_node"])
    if gpus_per_node < 0:
        raise ResourceError("--gpus-per-node must be >= 0")
    gpu_source = ""
    if cluster == "slurm":
        tasks = suite_tasks or max(1, gpus_per_node)  # one task per GPU
        gpus = min(gpus_per_node, tasks) if suite_tasks else gpus_per_node
    else:  # local and debug: this machine's GPUs, one node
        if nodes != 1:
            raise ResourceError(f"--nodes {nodes} needs Slurm; --cluster {cluster} runs on this machine")
        count, gpu_source = detect_local_gpus()
        tasks = suite_tasks or count
        gpus = 0 if gpu_source.startswith("default") else min(count, tasks)
        if cluster == "debug":
            tasks = 1  # the debug executor runs the job in this very process
    parallelism = int(settings["array_parallelism"])
    if parallelism < 1:
        raise ResourceError("--array-parallelism must be >= 1")
    max_timeouts = int(settings["max_timeouts"])
    if max_timeouts < 0:
        raise ResourceError("--max-timeouts must be >= 0")
    return Resources(
        cluster=cluster,
        nodes=nodes,
        tasks_per_node=tasks,
        gpus_per_node=gpus,
        time_min=parse_slurm_time(settings["time"]),
        partition=settings.get("partition"),
        account=settings.get("account"),
        qos=settings.get("qos"),
        mem=settings.get("mem"),
        constraint=settings.get("constraint"),
        cpus_per_task=settings.get("cpus_per_task"),
        array_parallelism=parallelism,
        max_timeouts=max_timeouts,
        slurm_args=dict(settings.get("slurm_args") or {}),
        gpu_source=gpu_source,
    )


def local_gpu_ids() -> list[int]:
    """This machine's GPU ids as CUDA numbers them for a child process: CUDA_VISIBLE_DEVICES when
    it lists ids, else 0..count-1; none without a GPU."""
    count, source = detect_local_gpus()
    if source.startswith("default"):
        return []
    listed = [item.strip() for item in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if item.strip()]
    if listed and all(item.isdigit() for item in listed):
        return [int(item) for item in listed][:count]
    return list(range(count))


def device_slots(res: Resources, runs_per_device: int, gpu_ids: list[int]) -> list[tuple[int, ...]]:
    """The local runs that may run at once, as the GPUs each sees: the machine's GPUs cut into
    groups of one job's width (`gpus_per_node`), each group shared by `runs_per_device` runs,
    spread over the groups first; without GPUs, `runs_per_device` runs on the CPU (empty tuples)."""
    if runs_per_device < 1:
        raise ResourceError(f"--runs-per-device {runs_per_device} must be >= 1")
    width = res.gpus_per_node
    if width == 0 or not gpu_ids:
        return [()] * runs_per_device
    groups = [tuple(gpu_ids[i : i + width]) for i in range(0, len(gpu_ids) - width + 1, width)]
    return [group for _ in range(runs_per_device) for group in groups]


def pin_gpus(executor: submitit.LocalExecutor, gpus: tuple[int, ...]) -> None:
    """Jobs this executor submits from now on see exactly `gpus` (unchanged when empty)."""
    if gpus:
        executor.update_parameters(visible_gpus=list(gpus))


def slurm_parameters(res: Resources, job_name: str, workdir: str | None = None) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch option names) for `res`."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": res.time_min,
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks_per_node,
        "array_parallelism": res.array_parallelism,
        "srun_args": list(SRUN_ARGS),
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "mem", "constraint", "cpus_per_task"):
        value = getattr(res, key)
        if value not in (None, ""):
            params[key] = value
    extra = dict(res.slurm_args)
    if workdir:
        extra.setdefault("chdir", workdir)  # jobs start in the code snapshot
    if extra:
        params["additional_parameters"] = extra
    return params


def make_executor(
    res: Resources, folder: Path, job_name: str, workdir: str | None = None
) -> submitit.AutoExecutor | submitit.LocalExecutor:
    """A submitit executor for `res`, its logs and pickles under `folder`: submitit's own
    LocalExecutor for local runs (it can pin a job to chosen GPUs: `pin_gpus`), else an
    AutoExecutor."""
    if res.cluster == "local":
        local = submitit.LocalExecutor(folder=folder, max_num_timeout=res.max_timeouts)
        local.update_parameters(
            timeout_min=res.time_min, nodes=1, tasks_per_node=res.tasks_per_node, gpus_per_node=res.gpus_per_node
        )
        return local
    executor = submitit.AutoExecutor(
        folder=folder,
        cluster=res.cluster,
        slurm_max_num_timeout=res.max_timeouts,
        local_max_num_timeout=res.max_timeouts,
    )
    if res.cluster == "slurm":
        executor.update_parameters(**{f"slurm_{k}": v for k, v in slurm_parameters(res, job_name, workdir).items()})
    else:
        executor.update_parameters(
            name=job_name,
            timeout_min=res.time_min,
            nodes=1,
            tasks_per_node=res.tasks_per_node,
            gpus_per_node=res.gpus_per_node,
        )
    return executor


# Words of sbatch's refusals -> the launcher options (or launch config settings) they are about;
# "node configuration" is what sbatch says of a job larger than any node, whichever size is too big.
SBATCH_WORDS = {
    "partition": ("--partition",), "account": ("--account",), "qos": ("--qos",), "mem": ("--mem",),
    "feature": ("--constraint",), "constraint": ("--constraint",), "cpus-per-task": ("--cpus-per-task",),
    "time": ("--time",), "gres": ("--gpus-per-node",), "gpu": ("--gpus-per-node",), "array": ("--array-parallelism",),
    "node configuration": ("--nodes", "--gpus-per-node", "--cpus-per-task", "--mem"),
}
RESOURCE_OPTIONS = "--partition, --account, --qos, --mem, --constraint, --cpus-per-task, --time or a --slurm-arg"


# the launcher option -> the Resources field that holds its value
OPTION_FIELDS = {
    "--partition": "partition", "--account": "account", "--qos": "qos", "--mem": "mem", "--constraint": "constraint",
    "--cpus-per-task": "cpus_per_task", "--time": "time_min", "--nodes": "nodes", "--gpus-per-node": "gpus_per_node",
    "--array-parallelism": "array_parallelism",
}


def _given(res: Resources, message: str) -> list[str]:
    """The options (with the values given) that sbatch's `message` is about; unset ones left out."""
    lower = message.lower()
    options = dict.fromkeys(option for word, named in SBATCH_WORDS.items() if word in lower for option in named)
    given = [f"{option} {getattr(res, OPTION_FIELDS[option])!r}" for option in options
             if getattr(res, OPTION_FIELDS[option]) not in (None, "")]
    for key, value in res.slurm_args.items():
        if key.lower() in lower:
            given.append(f"--slurm-arg {key!r}" if value is True else f"--slurm-arg {f'{key}={value}'!r}")
    return given


SUBMIT_AGAIN = "(on the command line, or in the launch config file's [submit] table) and submit again"


def sbatch_refused(res: Resources, message: str, where: str = SUBMIT_AGAIN) -> ResourceError:
    """sbatch's refusal as one line naming the options its message is about, with the values
    given (`--time` in minutes), and the way out: fix them `where` they were set."""
    text = " ".join(message.split())
    given = _given(res, text)
    fix = f"fix {'one of ' if len(given) > 1 else ''}{', '.join(given)}" if given else f"check {RESOURCE_OPTIONS}"
    return ResourceError(f"sbatch refuses the job: {text or '(no message)'}; {fix} {where}")


def check_sbatch(res: Resources, folder: Path, job_name: str, runs: int, workdir: str | None = None) -> None:
    """Ask sbatch (`--test-only`, nothing submitted) whether it takes the script this submission
    would write: a bad partition, memory or extra option is refused before any snapshot, run or
    record is made (after, it would leave runs no job will ever close). It sees the environment
    the submission will (`run_from`: an enclosing job's variables hidden)."""
    from launch import slurm_queue
    from launch.snapshot import hidden_while_submitting

    hidden = set(hidden_while_submitting(os.environ))
    env = {name: value for name, value in os.environ.items() if name not in hidden}
    refusal = slurm_queue.sbatch_refusal(sbatch_preview(res, folder, job_name, runs, workdir), env)
    if refusal:
        raise sbatch_refused(res, refusal)


def sbatch_preview(res: Resources, folder: Path, job_name: str, runs: int, workdir: str | None = None) -> str:
    """The sbatch script the submission would write (for --dry-run; needs no Slurm)."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's own renderer

    params = slurm_parameters(res, job_name, workdir)
    if runs > 1:
        params["map_count"] = runs
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)
