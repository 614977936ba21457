"""`python launch submit|...`: the command line of the launcher."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import submitit

from launch.suites import SUITES, get_suite
from latentbridge.config import ConfigError, parse_assignments

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python launch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="run a suite as jobs (Slurm, or local without it)")
    submit.add_argument("--suite", required=True, help=f"one of {sorted(SUITES)}")
    submit.add_argument("--cluster", default="auto", choices=["auto", "slurm", "local", "debug"])
    submit.add_argument("--dry-run", action="store_true", help="print each run's resolved config and stop")
    submit.add_argument("--runs-dir", default=str(REPO_ROOT / "runs"), help="where run folders go")
    submit.add_argument("--only", nargs="*", default=None, help="run only these members of the suite")
    submit.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser


def _executor(cluster: str, folder: Path, tasks: int) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "auto" else cluster)
    executor.update_parameters(timeout_min=60, tasks_per_node=tasks, nodes=1)
    return executor


def submit(args: argparse.Namespace) -> int:
    suite = get_suite(args.suite)
    configs = suite.configs(parse_assignments(args.overrides))
    if args.only:
        unknown = sorted(set(args.only) - set(configs))
        if unknown:
            raise ConfigError(f"--only names runs not in suite {suite.name!r}: {unknown}; runs: {sorted(configs)}")
        configs = {k: v for k, v in configs.items() if k in args.only}
    if args.dry_run:
        for name, config in configs.items():
            print(f"# {suite.name}/{name}\n{config.to_json()}")
        return 0
    from launch.job import TrainJob
    from registry.store import experiment_id, tracking_uri

    experiment_id(suite.name)  # create the store and experiment once, before jobs fan out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(args.runs_dir) / suite.name / stamp
    executor = _executor(args.cluster, base / "submitit", suite.tasks or 1)
    jobs = []
    for name, config in configs.items():
        run_dir = base / name
        job = executor.submit(TrainJob(), config.to_dict(), str(run_dir), {"suite": suite.name})
        print(f"submitted {suite.name}/{name}: job {job.job_id} ({executor.cluster}), run dir {run_dir}")
        jobs.append((name, job))
    failures = 0
    for name, job in jobs:
        try:
            result = job.result()
        except Exception as error:  # noqa: BLE001 - report every job, then fail
            failures += 1
            print(f"{suite.name}/{name}: FAILED: {error}")
            continue
        metrics = json.dumps({k: round(v, 4) for k, v in result.metrics.items()})
        print(f"{suite.name}/{name}: {result.status}; MLflow run id {result.run_id}; {metrics}")
    print(f"browse the runs: mlflow ui --backend-store-uri {tracking_uri()}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return submit(args)
    except (ConfigError, KeyError) as error:
        print(f"error: {error}")
        return 2
