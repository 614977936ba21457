"""`python launch submit|status|logs|wait|cancel|resume|list`: the command line of the launcher.

`submit` freezes the code (a snapshot of the repo as it is on disk), creates one MLflow run
per run of the suite (status SCHEDULED, with the git commit and the uncommitted diff),
and sends the suite out through submitit: on Slurm as ONE job array (one job per run, one
task per GPU), locally one run after another (or `--runs-per-device N` at once on each GPU,
each pinned to its own). A suite of several runs gets one parent MLflow run holding them as
children. It leaves a record that `status`, `logs`, `wait` and `cancel` read later (they
default to the latest submission). `--grid NAME` (repeatable) runs the suite once per label of
each grid (launch/suites.py: `direction`, `task`), e.g. the study on the embedded pair:
`submit --suite ablations --grid direction --grid task` (40 runs, `s2g-synthetic-1a`, ...).

Records mode (`--records DIR`, a machine without the MLflow store): no MLflow run is opened
and nothing imports mlflow; each run writes its record (params, tags, metrics, artifacts,
status) to DIR/<suite>/<run>-<id>/ for `python -m registry import`, which submit prints.

Provenance: every MLflow run is tagged when it is opened with `command` (the submit command
line as typed, shell-quoted), `reproduce_command` (that command narrowed to the run with
`--only NAME`, or the same command when it submitted this run alone) and `config_diff` (JSON:
each dotted key whose value differs from the suite's base, the member's changes and the
overrides); the resolved config is logged as its artifact `config.json`.

Waiting: `submit` waits for the results when the jobs run on this machine
(--cluster local/debug: they are children of this process) or when the suite has a single
run (e.g. the demo); otherwise it returns at once with the job ids. --wait / --no-wait
override that on Slurm. Every wait has a limit (--wait-timeout / wait --timeout); when it
passes, the jobs keep running and `python launch status` follows them.

Resuming: preemption, requeues and timeouts resume by themselves; a job that ends otherwise
(a rank killed, a node lost, a crash, a cancel) is sent out again with `resume` (local runs
through the same pool as at submit: the submission keeps its `--runs-per-device`).

Refusals: on Slurm, `submit` first asks `sbatch --test-only` whether it takes the job script,
so that an option it refuses (a bad --partition, --mem, --slurm-arg) is one line naming it and
leaves nothing made; a refusal at the submission itself closes the runs it made FAILED and
leaves LATEST naming the submission before.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from latentbridge.config import ConfigError, RunConfig, check_questions_fit, parse_assignments
from launch.cluster import (
    CLUSTERS,
    SUBMIT_AGAIN,
    ResourceError,
    Resources,
    check_sbatch,
    parse_slurm_args,
    resolve_cluster,
    resources_for,
    sbatch_preview,
    sbatch_refused,
)
from launch.record import (
    RecordError,
    RunEntry,
    Submission,
    all_records,
    find,
    load_own_pickle,
    mark_latest,
    new_folder,
    new_run_record,
)
from launch.suites import GRIDS, SUITES, config_diff, expand, get_grid, get_suite
from launch.user_config import (
    CONFIG_ENV,
    DEFAULT_PATH,
    UserConfigError,
    export_environment,
    load_user_config,
    resolve,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PROG = "python launch"
CONFIG_ARTIFACT = "config.json"
EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 3


# --------------------------------------------------------------------------- parser
def at_least(minimum: float, kind: type = int, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number of `kind` >= `minimum` (> with `strict`). A negative count
    or poll would otherwise do something surprising far from the command line (`--tail -1` drops
    the first line, `--poll -1` is a traceback, `--poll 0` polls without pause)."""
    bound = f"{'>' if strict else '>='} {minimum:g}"
    noun = "whole number" if kind is int else "number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun} {bound}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun} {bound}")
        return value

    parse.__name__ = f"{noun} {bound}"
    return parse


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=None, help="where submissions live (default: runs/ in the repo)")
    parser.add_argument("--config", default=None,
                        help=f"launch config file (default: ${CONFIG_ENV} or {DEFAULT_PATH})")


def _add_ref(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", nargs="?", default=None,
                        help="submission id (suite/stamp), its folder, or a job id; default: the latest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser(
        "submit",
        help="run a suite as jobs (Slurm, or this machine without it)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("--suite", required=True, help=f"one of {sorted(SUITES)}")
    submit.add_argument("--cluster", default=None, choices=CLUSTERS,
                        help="auto (default): slurm when srun is on PATH, else local; debug runs in this process")
    res = submit.add_argument_group("resources (defaults from the launch config file, then built in)")
    res.add_argument("--nodes", type=int, default=None, help="nodes per job (default 1)")
    res.add_argument("--gpus-per-node", type=int, default=None,
                     help="GPUs per node, one task each (default 4; 0 = CPU-only); a suite that fixes its "
                          "task count uses that many. Local runs count GPUs: $NUM_GPUS, nvidia-smi, torch, else 1")
    res.add_argument("--partition", default=None)
    res.add_argument("--account", default=None)
    res.add_argument("--qos", default=None)
    res.add_argument("--time", default=None, help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default 60)")
    res.add_argument("--mem", default=None, help="memory per node, as sbatch --mem (e.g. 64G)")
    res.add_argument("--constraint", default=None)
    res.add_argument("--cpus-per-task", type=int, default=None)
    res.add_argument("--slurm-arg", action="append", default=None, metavar="KEY[=VALUE]",
                     help="any other sbatch option, repeatable: --slurm-arg mail-type=END --slurm-arg exclusive")
    res.add_argument("--array-parallelism", type=int, default=None,
                     help="at most this many runs of the array at once (default 64)")
    res.add_argument("--max-timeouts", type=int, default=None,
                     help="how many times a job that hits its time limit is requeued (default 3)")
    wait = submit.add_argument_group("waiting")
    wait.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                      help="wait for the results (default: yes for local/debug and single-run suites, "
                           "no for arrays on Slurm)")
    wait.add_argument("--wait-timeout", type=float, default=None,
                      help="seconds to wait at most (default 3600); the jobs go on after it")
    submit.add_argument("--dry-run", action="store_true",
                        help="print each run's config, the resources and the sbatch script; submit nothing")
    submit.add_argument("--only", action="append", default=None, metavar="NAME[,NAME...]",
                        help="run only these members of the suite, started in the order named (repeatable, or "
                             "comma-separated; it takes one value, so overrides after it stay overrides)")
    submit.add_argument("--runs-per-device", type=int, default=1, metavar="N",
                        help="local runs: N at once on each GPU (each run pinned to its own GPUs, a job's width), "
                             "or N at once on the CPU; the next starts as one ends (default 1); for small "
                             "models on a large GPU. Slurm jobs get their own GPUs: 1 there")
    submit.add_argument("--records", default=None, metavar="DIR",
                        help="no MLflow store (none here, or mlflow not installed): each run writes its record to "
                             "DIR/<suite>/<run>-<id>/ for `python -m registry import` where the store is")
    submit.add_argument("--grid", action="append", default=[], metavar="NAME",
                        help="run the suite once per label of this grid (repeatable: every combination), named "
                             "<label>-<run> and tagged <grid>=<label>: "
                             + "; ".join(f"{g.name} ({', '.join(g.values)}: {g.description})" for g in GRIDS.values()))
    submit.add_argument("overrides", nargs="*", help="config overrides key=value")
    _add_common(submit)

    status = commands.add_parser("status", help="state of each run of a submission (Slurm queue, result, MLflow)")
    _add_ref(status)
    _add_common(status)

    logs = commands.add_parser("logs", help="print a run's job log (stdout; --err for stderr)")
    _add_ref(logs)
    logs.add_argument("--run", default=None, help="which run (default: the first)")
    logs.add_argument("--task", type=at_least(0), default=0, help="which task/rank (default 0)")
    logs.add_argument("--err", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--tail", type=at_least(0), default=100, help="last N lines (0: all)")
    _add_common(logs)

    wait_cmd = commands.add_parser("wait", help="wait until every run of a submission is done (with a limit)")
    _add_ref(wait_cmd)
    wait_cmd.add_argument("--timeout", type=float, default=None, help="seconds (default 3600)")
    wait_cmd.add_argument("--poll", type=at_least(0, float, strict=True), default=5.0,
                          help="seconds between looks at the queue (> 0)")
    _add_common(wait_cmd)

    cancel = commands.add_parser("cancel", help="cancel a submission's jobs (or --run NAME ones)")
    _add_ref(cancel)
    cancel.add_argument("--run", action="append", default=None, help="only this run (repeatable)")
    cancel.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the jobs to end")
    _add_common(cancel)

    resume = commands.add_parser(
        "resume", help="resubmit runs that ended unfinished (failed, killed, lost): same code, same MLflow run")
    _add_ref(resume)
    resume.add_argument("--run", action="append", default=None, help="only this run (repeatable)")
    _add_common(resume)

    listing = commands.add_parser("list", help="recent submissions")
    listing.add_argument("-n", type=at_least(0), default=10, help="how many, newest first (default 10)")
    _add_common(listing)
    return parser


# --------------------------------------------------------------------------- helpers
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    file_settings, _ = load_user_config(args.config)
    cli = {
        key: getattr(args, key, None)
        for key in ("cluster", "nodes", "gpus_per_node", "partition", "account", "qos", "time", "mem",
                    "constraint", "cpus_per_task", "array_parallelism", "max_timeouts", "runs_dir")
    }
    # `is not None`: a --wait-timeout 0 must reach the check (> 0), not become the default
    wait_timeout = getattr(args, "wait_timeout", None)
    cli["wait_timeout"] = wait_timeout if wait_timeout is not None else getattr(args, "timeout", None)
    cli["slurm_args"] = parse_slurm_args(getattr(args, "slurm_arg", None))
    settings = resolve(cli, file_settings)
    export_environment(settings)  # tracking_uri, artifact_root: the environment wins over the file
    return settings


def _runs_dir(settings: dict[str, Any]) -> Path:
    return Path(settings.get("runs_dir") or REPO_ROOT / "runs").expanduser().resolve()


def _ui_hint(uri: str) -> str:
    """How to browse the runs: a tracking server's own page, else `mlflow ui` on the store."""
    if uri.lower().startswith(("http://", "https://")):
        return f"browse the runs: open {uri} in a browser"
    return f"browse the runs: mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"


def _runs_hint(sub: Submission) -> str:
    """How to see the runs: the MLflow UI, or in records mode the import of the records into a store."""
    if not sub.records:
        return _ui_hint(sub.tracking_uri)
    return ("once the jobs have ended, import their records where the MLflow store is:\n"
            f"  python -m registry import {shlex.quote(sub.records)}/* --experiment {shlex.quote(sub.suite)}")


def _describe(sub: Submission) -> str:
    snap = sub.snapshot
    code = f"{snap.get('git_commit', 'unknown')[:12]}" + (" + uncommitted diff" if snap.get("dirty") else "")
    jobs = ", ".join(sorted({j.split('_')[0] for j in sub.job_ids})) or "none"
    head = f"submission {sub.id}: {sub.cluster}, {len(sub.runs)} run(s), job(s) {jobs}, code {code}"
    return f"{head}\n  folder {sub.folder}"


def _follow_hint(sub: Submission) -> str:
    return "\n".join(
        [
            "follow it with:",
            f"  python launch status {sub.id}",
            f"  python launch logs {sub.id} --run {sub.runs[0].name}",
            f"  python launch wait {sub.id} --timeout 3600",
            f"  python launch cancel {sub.id}",
        ]
    )


def content_line(metrics: dict[str, float]) -> str:
    """What crossed the bridge at the final evaluation, in one line ('' when not measured)."""
    from latentbridge.metric_names import BITS, BITS_HIGH, BITS_LOW, FRACTION, FRACTION_MISMATCHED, RETRIEVAL, RETRIEVAL_CHANCE

    if BITS not in metrics:
        return ""
    low, high = metrics.get(BITS_LOW, float("nan")), metrics.get(BITS_HIGH, float("nan"))
    verdict = "question-specific content crosses" if low > 0 else "no question-specific content shown"
    return (
        f"what crossed the bridge: {BITS} = {metrics[BITS]:.3f} bits a question, 95% interval [{low:.3f}, {high:.3f}]"
        f" ({verdict}); fraction recovered {metrics.get(FRACTION, float('nan')):.3f} (another question's soft tokens:"
        f" {metrics.get(FRACTION_MISMATCHED, float('nan')):.3f}); retrieval top-1"
        f" {metrics.get(RETRIEVAL, float('nan')):.3f} (chance {metrics.get(RETRIEVAL_CHANCE, float('nan')):.3f})"
    )


def _result_failed(result: Any) -> bool:
    """A job that returned, but whose run did not finish (NAN_LOSS: MLflow says FAILED)."""
    from launch.job import RUN_STATUS

    return RUN_STATUS.get(getattr(result, "status", "FINISHED"), "FINISHED") != "FINISHED"


def _result_why(result: Any) -> str:
    detail = getattr(result, "detail", "")
    if detail:
        return detail
    if getattr(result, "status", "") == "NAN_LOSS":
        return "the loss became NaN or infinite; the run stopped and its MLflow run is FAILED (tag stop_reason)"
    return f"the run ended as {getattr(result, 'status', '?')}"


def _report(sub: Submission, states) -> int:
    failures = 0
    for state in states:
        entry = sub.run(state.name)
        if state.ok and state.result is not None:
            result = state.result
            metrics = json.dumps({k: round(v, 4) for k, v in (getattr(result, "metrics", {}) or {}).items()})
            print(f"{sub.suite}/{state.name}: {result.status}; {entry.where}; {metrics}")
            if _result_failed(result):
                failures += 1
                print(f"  failed: {_result_why(result)}")
                print(f"  logs: python launch logs {sub.id} --run {state.name} --err")
                continue
            crossed = content_line(getattr(result, "metrics", {}) or {})
            if crossed:
                print(f"  {crossed}")
            if getattr(result, "preserved", ""):
                print(f"  preserved in the model registry as {result.preserved} (python -m registry list)")
        else:
            failures += 1
            print(f"{sub.suite}/{state.name}: {state.state}; {entry.where}; {state.detail}")
            print(f"  logs: python launch logs {sub.id} --run {state.name} --err")
    return failures


def _finish_wait(sub: Submission, states, timed_out: bool, timeout: float) -> int:
    from launch.monitor import reconcile_mlflow

    reconcile_mlflow(sub, states)
    if timed_out:
        running = [s.name for s in states if not s.done]
        print(f"still running after {timeout:.0f} s: {running}; the jobs go on (python launch status {sub.id})")
    failures = _report(sub, [s for s in states if s.done])
    print(_runs_hint(sub))
    if failures:
        return EXIT_FAILED
    return EXIT_TIMEOUT if timed_out else 0


# --------------------------------------------------------------------------- submit
def shell_command(argv: Sequence[str]) -> str:
    """`python launch ARGV`, shell-quoted so that it can be pasted."""
    return shlex.join([*PROG.split(), *argv])


def narrowed_to(argv: Sequence[str], name: str) -> list[str]:
    """A `submit` command line (`argv`, "submit" first) that runs only the member `name`: its
    --only options (or the abbreviations argparse takes for it, --o, --on, --onl) are replaced
    by `--only NAME` after "submit"; everything else stays as it was."""
    kept: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":  # the rest are overrides
            kept += [token, *tokens]
            break
        option, has_value, _ = token.partition("=")
        if len(option) >= 3 and "--only".startswith(option):
            if not has_value:
                next(tokens, None)  # its value
            continue
        kept.append(token)
    return [kept[0], "--only", name, *kept[1:]]


def provenance_tags(argv: Sequence[str], name: str, alone: bool, diff: dict[str, Any]) -> dict[str, str]:
    """What the run records of its submit: the command as typed, the command that reproduces
    this run alone (`alone`: the submit ran no other run) and its config diff against the
    suite's base (JSON)."""
    from registry.tags import COMMAND_TAG, CONFIG_DIFF_TAG, REPRODUCE_TAG

    return {
        COMMAND_TAG: shell_command(argv),
        REPRODUCE_TAG: shell_command(argv if alone else narrowed_to(argv, name)),
        CONFIG_DIFF_TAG: json.dumps(diff, sort_keys=True),
    }


def _write_config(run_dir: Path, config: RunConfig) -> Path:
    """The resolved config, written to the run dir as the run's artifact `config.json`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_ARTIFACT
    path.write_text(config.to_json())
    return path


def _open_parent_run(folder: Path, sub_id: str, suite: str, argv: Sequence[str]) -> str:
    """The submission's parent MLflow run: its members are its children in the UI; it ends when
    they all have (`launch.monitor.reconcile_mlflow`)."""
    from registry.runs import open_run
    from registry.tags import COMMAND_TAG, RUN_KIND_TAG, SUBMISSION_KIND

    tags = {RUN_KIND_TAG: SUBMISSION_KIND, "suite": suite, "submission": sub_id, COMMAND_TAG: shell_command(argv)}
    return open_run(folder / "parent_run", sub_id, suite, tags)


def _log_config(run_id: str, run_dir: Path, config: RunConfig) -> None:
    """The resolved config, as the run's artifact `config.json` (also left in the run dir)."""
    from registry.artifacts import upload
    from registry.store import client

    upload(client(), run_id, _write_config(run_dir, config))


def _only(values: list[str], configs: dict[str, RunConfig], suite: str) -> dict[str, RunConfig]:
    """The members `--only` names (repeated or comma-separated), in the order named. One that
    names none (`--only ,`, `--only ''`) is refused: it would make a submission with no run."""
    names = [name.strip() for item in values for name in item.split(",") if name.strip()]
    if not names:
        given = " ".join(f"--only {shlex.quote(value)}" for value in values)
        raise ConfigError(f"{given} names no run; name one or more runs of suite {suite!r} (comma-separated), "
                          f"or leave --only out for all of them: {sorted(configs)}")
    unknown = sorted(set(names) - set(configs))
    if unknown:
        raise ConfigError(f"--only names runs not in suite {suite!r}: {unknown}; runs: {sorted(configs)}")
    return {name: configs[name] for name in dict.fromkeys(names)}


def submit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    suite = expand(get_suite(args.suite), [get_grid(name) for name in args.grid])
    configs = suite.configs(parse_assignments(args.overrides))
    if args.runs_per_device < 1:
        raise ConfigError(f"--runs-per-device {args.runs_per_device} must be >= 1")
    if args.only is not None:
        configs = _only(args.only, configs, suite.name)
    from latentbridge.data import planned_split_sizes

    for name, config in configs.items():  # what the config alone says of its splits, before anything is made
        try:
            check_questions_fit(config, planned_split_sizes(config.data))
        except ConfigError as error:
            raise ConfigError(f"{suite.name}/{name}: {error}") from None
    cluster = resolve_cluster(settings["cluster"])
    resources = resources_for(settings, suite.tasks, cluster)
    if suite.sequential:  # one run after another (on Slurm: an array of width 1)
        resources = dataclasses.replace(resources, array_parallelism=1)
    local = cluster in ("local", "debug")
    wait = args.wait if args.wait is not None else (local or len(configs) == 1)
    if local and args.wait is False:
        print(f"note: --cluster {cluster} runs the jobs as children of this command, so it waits for them")
        wait = True
    wait_timeout = float(settings["wait_timeout"])
    runs_dir = _runs_dir(settings)
    job_name = f"lb-{suite.name}"

    if args.dry_run:
        base = suite.base_config()
        for name, config in configs.items():
            diff = config_diff(config, base)
            changes = ", ".join(f"{k}={v}" for k, v in sorted(diff.items())) or "nothing (the base)"
            print(f"# {suite.name}/{name}: changes against the suite's base: {changes}\n{config.to_json()}")
        print(f"# resources ({cluster}): {json.dumps(resources.to_dict(), sort_keys=True)}")
        if resources.gpus_per_node == 0:
            from latentbridge.models import EMBEDDED_MODELS

            hub = sorted({m for c in configs.values() for m in (c.source_model, c.target_model)} - set(EMBEDDED_MODELS))
            if hub:
                print(f"# warning: no GPU here, and this suite loads models beyond the embedded ones {hub}; the "
                      f"reference pair (7B/8B) takes hours a step on a CPU: submit it to a GPU cluster "
                      f"(--cluster slurm), or try the demo suite")
        print(f"# waits for the results: {'yes' if wait else 'no'} (timeout {wait_timeout:.0f} s)")
        if cluster == "slurm":
            folder = runs_dir / suite.name / "<stamp>"
            print("# sbatch script:")
            print(sbatch_preview(resources, folder / "submitit", job_name, len(configs), str(folder / "code")))
        return 0

    from launch.cluster import make_executor
    from launch.job import JobSpec
    from launch.monitor import Monitor
    from launch.monitor import wait as wait_for
    from launch.snapshot import take_snapshot

    # records mode: no MLflow store and no mlflow import; each run gets a record under `records`
    records = Path(args.records).expanduser().resolve() / suite.name if args.records else None
    if records is not None and suite.preserve_each:
        raise ConfigError(f"suite {suite.name!r} preserves each run as it finishes, which needs the MLflow store: "
                          "submit it without --records, or import the records and then preserve each run "
                          "(python -m registry preserve RUN_ID)")
    if cluster == "slurm":  # before anything is made: an option sbatch refuses leaves nothing behind
        planned = runs_dir / suite.name / "<stamp>"
        check_sbatch(resources, planned / "submitit", job_name, len(configs), str(planned / "code"))
    uri, root = "", ""
    if records is None:
        from registry.runs import open_run, record_code
        from registry.store import artifact_root, check_local_disk, ensure_store, experiment_id, tracking_uri

        uri, root = tracking_uri(), artifact_root()
        check_local_disk(uri)
        ensure_store(uri)
        experiment_id(suite.name)  # create the store and experiment once, before jobs fan out
    sub_id, folder = new_folder(runs_dir, suite.name)
    snapshot = take_snapshot(REPO_ROOT, folder / "code")
    diff = Path(snapshot.diff_file) if snapshot.diff_file else None
    base = suite.base_config()
    from registry.tags import PARENT_RUN_TAG

    parent = _open_parent_run(folder, sub_id, suite.name, args.argv) if records is None and len(configs) > 1 else ""
    entries, specs = [], []
    for name, config in configs.items():
        run_dir = folder / name
        tags = {**suite.tags(name), "submission": sub_id, "cluster": cluster, **snapshot.tags(),
                **provenance_tags(args.argv, name, len(configs) == 1, config_diff(config, base)),
                **({PARENT_RUN_TAG: parent} if parent else {})}
        if records is None:
            run_id = open_run(run_dir, name, suite.name, tags, status="SCHEDULED")
            record_code(run_id, {}, diff)
            _log_config(run_id, run_dir, config)
            entry = RunEntry(name=name, run_dir=str(run_dir), mlflow_run_id=run_id)
        else:
            artifacts = [(_write_config(run_dir, config), None), *([(diff, "code")] if diff else [])]
            record = new_run_record(records, run_dir, name, tags, config.flat(), artifacts)
            entry = RunEntry(name=name, run_dir=str(run_dir), mlflow_run_id="", record=str(record))
        entries.append(entry)
        specs.append(JobSpec(config.to_dict(), str(run_dir), suite.name, uri, root, tags, suite.preserve_each,
                             record=entry.record))
    sub = Submission(
        id=sub_id, suite=suite.name, folder=str(folder), created=snapshot.taken_at, cluster=cluster,
        resources=resources.to_dict(), tracking_uri=uri, snapshot={k: v for k, v in vars(snapshot).items()},
        submitit_folder=str(folder / "submitit"), runs=entries, command=[*PROG.split(), *args.argv],
        records=str(records or ""), parent_run_id=parent, runs_per_device=args.runs_per_device,
    )
    sub.save()
    executor = make_executor(resources, Path(sub.submitit_folder), job_name, snapshot.root)
    if resources.gpu_source:
        print(f"local GPUs: {resources.tasks_per_node} task(s) ({resources.gpu_source})")

    if cluster == "slurm":
        try:
            jobs = _sbatch(executor, specs, resources, snapshot.root)
        except ResourceError as error:
            _close_unsubmitted(sub)
            raise ResourceError(f"{error}; submission {sub.id} queued nothing: its run(s) are closed FAILED and "
                                "LATEST still names the submission before it") from None
        for entry, job in zip(entries, jobs):
            entry.job_id = str(job.job_id)
        sub.save()
        mark_latest(runs_dir, sub)  # only now: LATEST never names a submission without jobs
        print(_describe(sub))
        for entry in entries:
            print(f"submitted {suite.name}/{entry.name}: job {entry.job_id}, {entry.where}, run dir {entry.run_dir}")
        if not wait:
            print(_follow_hint(sub))
            print(_runs_hint(sub))
            return 0
        print(f"waiting for the results (at most {wait_timeout:.0f} s; Ctrl-C stops waiting, not the jobs)")
        states, timed_out = wait_for(Monitor(sub), wait_timeout)
        return _finish_wait(sub, states, timed_out, wait_timeout)

    mark_latest(runs_dir, sub)  # local / debug: the runs start one by one below; `status` follows them meanwhile
    print(_describe(sub))
    live, timed_out = _run_here(sub, list(zip(entries, specs)), executor, wait_timeout)
    if cluster == "debug":
        return _debug_report(sub, live)
    return _finish_wait(sub, Monitor(sub, live).states(), timed_out, wait_timeout)


def _sbatch(
    executor: Any, specs: Sequence[Any], resources: Resources, workdir: str, where: str = SUBMIT_AGAIN
) -> list[Any]:
    """The jobs of `specs` sent to Slurm as ONE array, from the code snapshot `workdir`. sbatch
    refusing them (what `check_sbatch` could not foresee: a limit of the account, a partition
    gone since) is a ResourceError naming its message and the option to fix (`where`), not
    submitit's traceback; submitit's own print of sbatch's message is kept out (the error has it)."""
    from submitit.core.utils import FailedJobError

    from launch.job import TrainJob
    from launch.snapshot import run_from

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), run_from(workdir), executor.batch():
            jobs = [executor.submit(TrainJob(), spec) for spec in specs]
    except FailedJobError as error:
        raise sbatch_refused(resources, str(error) or said.getvalue(), where) from None
    sys.stderr.write(said.getvalue())
    return jobs


def _close_unsubmitted(sub: Submission) -> None:
    """Close the runs (and the parent run) of a submission sbatch refused: FAILED, not left
    SCHEDULED with no job to ever end them. Nothing is deleted: the record, which names the
    MLflow runs (or records) and the command that made them, stays; LATEST is not moved to it."""
    for entry in sub.runs:
        entry.record_status("FAILED")
    if sub.parent_run_id:
        from registry.runs import set_status

        set_status(sub.parent_run_id, "FAILED")


def _run_here(
    sub: Submission, todo: Sequence[tuple[RunEntry, Any]], executor: Any, timeout: float
) -> tuple[dict[str, Any], bool]:
    """Run `todo` ((run entry, job spec) pairs) on this machine, for `submit` and `resume` alike:
    a pool of device slots (the submission's `runs_per_device` runs on each group of GPUs of
    one job's width, each run pinned to its own, or on the CPU), the next run starting as soon
    as one ends; debug runs each in this process, one by one. A run that had a job before is
    resumed: its earlier job id is kept and its record SCHEDULED again. Returns (the jobs by
    run name, whether `timeout` passed before every run ended)."""
    from launch.cluster import device_slots, local_gpu_ids, pin_gpus
    from launch.job import TrainJob
    from launch.monitor import Monitor
    from launch.monitor import wait as wait_for
    from launch.snapshot import run_from

    local = sub.cluster == "local"
    slots = device_slots(Resources(**sub.resources), sub.runs_per_device, local_gpu_ids()) if local else [()]
    queue, busy, live, seen = list(todo), {}, {}, {}  # busy: slot -> run name; seen: the states echoed
    deadline = time.monotonic() + timeout
    while queue or busy:
        for slot, gpus in enumerate(slots):
            if slot in busy or not queue:
                continue
            entry, spec = queue.pop(0)
            if local:
                pin_gpus(executor, gpus)
            with run_from(sub.snapshot["root"]):
                job = executor.submit(TrainJob(), spec)
            earlier = entry.job_id
            if earlier:
                entry.earlier_job_ids.append(earlier)
            entry.job_id, live[entry.name], busy[slot] = str(job.job_id), job, entry.name
            if earlier:
                entry.record_status("SCHEDULED")
            sub.save()
            where = f", GPU {','.join(map(str, gpus))}" if gpus else ""
            if earlier:
                print(f"resumed {sub.suite}/{entry.name}: job {entry.job_id} ({sub.cluster}{where}; was {earlier}), "
                      f"{entry.where}, from its last checkpoint in {entry.run_dir}")
            else:
                print(f"started {sub.suite}/{entry.name}: job {entry.job_id} ({sub.cluster}{where}), {entry.where}")
            if not local:  # debug: the job runs in this process, now
                try:
                    job.result()
                except Exception as error:  # noqa: BLE001 - reported below from the record
                    print(f"{sub.suite}/{entry.name}: failed in-process: {error}")
        if not local:
            busy.clear()
            continue
        states, timed_out = wait_for(
            Monitor(sub, live, only=set(busy.values())), max(deadline - time.monotonic(), 0.0),
            until=lambda states: any(s.done for s in states), seen=seen,
        )
        if timed_out:
            return live, True
        ended = {s.name for s in states if s.done}
        busy = {slot: name for slot, name in busy.items() if name not in ended}
    return live, False


def _debug_report(sub: Submission, live: dict[str, Any]) -> int:
    failures = 0
    for entry in [e for e in sub.runs if e.name in live]:
        try:
            result = live[entry.name].result()
        except Exception as error:  # noqa: BLE001
            failures += 1
            print(f"{sub.suite}/{entry.name}: FAILED; {entry.where}; {error}")
            continue
        metrics = json.dumps({k: round(v, 4) for k, v in result.metrics.items()})
        print(f"{sub.suite}/{entry.name}: {result.status}; {entry.where}; {metrics}")
        if _result_failed(result):
            failures += 1
            print(f"  failed: {_result_why(result)}")
    print(_runs_hint(sub))
    return EXIT_FAILED if failures else 0


# --------------------------------------------------------------------------- status, logs, wait, cancel
def _load(args: argparse.Namespace) -> tuple[Submission, dict[str, Any]]:
    settings = _settings(args)
    sub = find(_runs_dir(settings), args.submission)
    os.environ.setdefault("MLFLOW_TRACKING_URI", sub.tracking_uri)
    return sub, settings


def status(args: argparse.Namespace) -> int:
    from launch.monitor import Monitor, reconcile_mlflow

    sub, _ = _load(args)
    states = Monitor(sub).states()
    reconcile_mlflow(sub, states)
    print(_describe(sub))
    rows = [("RUN", "JOB", "STATE", "RECORDED", "MLFLOW RUN ID / RECORD", "DETAIL")]
    for state in states:
        entry = sub.run(state.name)
        try:
            recorded = entry.recorded_status()
        except Exception as error:  # noqa: BLE001 - show what we know even if the store is down
            recorded = f"? ({type(error).__name__})"
        rows.append((state.name, state.job_id or "-", state.state, recorded, entry.record or entry.mlflow_run_id, state.detail))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        print("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row[:5], widths)) + f"  {row[5]}")
    return 0


def logs(args: argparse.Namespace) -> int:
    from launch.monitor import task_paths

    sub, _ = _load(args)
    entry = sub.run(args.run) if args.run else sub.runs[0]
    if not entry.job_id:
        print(f"{sub.suite}/{entry.name} has no job yet")
        return EXIT_FAILED
    paths = task_paths(sub, entry.job_id, args.task)
    path = paths.stderr if args.err else paths.stdout
    print(f"==> {path} <==")
    if not path.is_file():
        print("(no log yet: the job has not started, or this task does not exist)")
        return EXIT_FAILED
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.tail :] if args.tail else lines))
    return 0


def wait(args: argparse.Namespace) -> int:
    from launch.monitor import Monitor
    from launch.monitor import wait as wait_for

    sub, settings = _load(args)
    timeout = float(args.timeout if args.timeout is not None else settings["wait_timeout"])
    print(_describe(sub))
    states, timed_out = wait_for(Monitor(sub), timeout, poll_s=args.poll)
    return _finish_wait(sub, states, timed_out, timeout)


def cancel(args: argparse.Namespace) -> int:
    from launch import slurm_queue
    from launch.monitor import Monitor, interrupt_local_job, reconcile_mlflow
    from launch.monitor import wait as wait_for

    sub, _ = _load(args)
    chosen = [sub.run(name) for name in args.run] if args.run else list(sub.runs)
    ids = [e.job_id for e in chosen if e.job_id]
    if sub.cluster == "slurm":
        whole = not args.run and ids
        slurm_queue.scancel(sorted({i.split("_")[0] for i in ids}) if whole else ids)
    elif sub.cluster == "local":
        for job_id in ids:
            print(f"  job {job_id}: {interrupt_local_job(job_id)}")
    sub.cancelled = sorted(set(sub.cancelled) | {e.name for e in chosen})
    sub.save()
    print(f"cancelled {[e.name for e in chosen]} of {sub.id} (jobs {ids or 'none'})")
    names = {e.name for e in chosen}
    # wait for the cancelled runs only: the others of the submission may stay queued for hours
    states, timed_out = wait_for(Monitor(sub, only=names), args.timeout, poll_s=1.0, echo=lambda line: None)
    reconcile_mlflow(sub, states)
    for state in states:
        print(f"  {state.line()}")
    return EXIT_TIMEOUT if timed_out else 0


def resume(args: argparse.Namespace) -> int:
    """Send the runs of a submission that ended without finishing (a rank killed, a node lost,
    a failure, a cancel) out again: each job is the one submitted first (its pickled spec),
    from the same frozen code, into the same run dir, so it continues the same MLflow run from
    its last checkpoint. Runs still queued or running, and finished ones, are left alone.
    The job files are unpickled only if this user owns them and others cannot write them."""
    from launch.cluster import make_executor
    from launch.monitor import Monitor, reconcile_mlflow, task_paths

    sub, settings = _load(args)
    chosen = [sub.run(name) for name in args.run] if args.run else list(sub.runs)
    states = {s.name: s for s in Monitor(sub).states()}
    reconcile_mlflow(sub, list(states.values()))
    todo = []
    for entry in chosen:
        state = states[entry.name]
        if not state.done:
            print(f"  {sub.suite}/{entry.name}: {state.state}, not resumed (still in the queue)")
        elif state.ok:
            print(f"  {sub.suite}/{entry.name}: finished, nothing to resume")
        elif not entry.job_id:
            print(f"  {sub.suite}/{entry.name}: never submitted, nothing to resume from")
        else:
            todo.append(entry)
    if not todo:
        print(f"nothing to resume in {sub.id}")
        return 0
    specs = [load_own_pickle(task_paths(sub, entry.job_id).submitted_pickle).args[0] for entry in todo]
    resources = Resources(**sub.resources)
    executor = make_executor(resources, Path(sub.submitit_folder), f"lb-{sub.suite}", sub.snapshot["root"])
    if sub.cluster == "slurm":  # one array
        where = (f"in the resources kept by the submission ({Path(sub.folder) / 'submission.json'}) and resume "
                 "again, or submit the runs anew with it fixed")
        try:
            jobs = _sbatch(executor, specs, resources, sub.snapshot["root"], where)
        except ResourceError as error:
            raise ResourceError(f"{error}; nothing was resubmitted: the runs of {sub.id} are as they were") from None
        for entry, job in zip(todo, jobs):
            print(f"resumed {sub.suite}/{entry.name}: job {job.job_id} (was {entry.job_id}), "
                  f"{entry.where}, from its last checkpoint in {entry.run_dir}")
            entry.earlier_job_ids.append(entry.job_id)
            entry.job_id = str(job.job_id)
            entry.record_status("SCHEDULED")
    if sub.parent_run_id:
        from registry.runs import set_status

        set_status(sub.parent_run_id, "RUNNING")
    sub.cancelled = sorted(set(sub.cancelled) - {e.name for e in todo})
    sub.save()
    if sub.cluster == "slurm":
        print(_follow_hint(sub))
        return 0
    # local / debug: the jobs are children of this process, started as `submit` does (the same
    # slot pool, `runs_per_device` a device); wait for them
    timeout = float(settings["wait_timeout"])
    live, timed_out = _run_here(sub, list(zip(todo, specs)), executor, timeout)
    if sub.cluster == "debug":
        return _debug_report(sub, live)
    return _finish_wait(sub, Monitor(sub, live, only=set(live)).states(), timed_out, timeout)


def list_submissions(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for record in all_records(_runs_dir(settings))[: args.n]:
        try:
            sub = Submission.load(record)
        except RecordError as error:
            print(f"  {record}: {error}")
            continue
        print(f"  {sub.id}  {sub.cluster}  {len(sub.runs)} run(s)  jobs {','.join(sub.job_ids) or '-'}  {sub.created}")
    return 0


COMMANDS = {"submit": submit, "status": status, "logs": logs, "wait": wait, "cancel": cancel, "resume": resume,
            "list": list_submissions}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as typed, for the runs' provenance
    from launch.slurm_queue import SlurmCommandError
    from registry.cli import quiet_broken_pipe
    from registry.errors import StoreError

    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `python launch status | head`
        return quiet_broken_pipe()
    except (ConfigError, KeyError, ResourceError, UserConfigError, RecordError, StoreError, SlurmCommandError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: the jobs keep running; see `python launch status`", file=sys.stderr)
        return 130
