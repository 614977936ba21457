"""The study on the embedded pair, on one GPU: `ablations` (1a 1b 2a 2b) and `phase2-swap`,
SmolLM2-135M <-> Gemma-3-270M in both directions, on GSM8K and on the synthetic task.

Each run is a member of a launch suite (`launch/suites.py`), built exactly as `python launch
submit --suite SUITE` builds it, then given this study's pair, task and budget overrides. The
runs are trained one after another (or, with --parallel N, in N worker processes that share the
GPU, each running its share one after another) and each writes its record with latentbridge's
`FileReporter` under OUT/records/<group>/<member>/: params.json, metrics.jsonl, tags.json,
status.json and artifacts/ (evals, test, translator.json). `python -m registry import
OUT/records` replays the records into MLflow runs.

Runs are grouped by direction and task; a group is the registry "suite" of its runs
(`embedded-s2g-gsm8k`, ...), so `python -m registry analyze --suite embedded-s2g-gsm8k` compares
the five runs that share a pair, a task and the same baselines. Each run's tags keep the launch
suite and member (`launch_suite`, `suite_member`, `fixes`).

The budget: `--steps` training steps (the suites' schedules -- warmup, eval_every,
checkpoint_every -- scaled by steps / the suite's steps), validation questions for model
selection, test questions for the final numbers. The text baselines (source-alone and
target-alone) do not depend on the translator: `latentbridge.baseline_cache` computes them once
per model, prompts and decoding settings and every later run reuses them.

Translator weights (~0.1-0.5 GB each) stay where the run ran: a record keeps translator.json and
the sha256 and size of the weights it had (`weights.json`), so records stay small enough to move.

    python results/embedded-pair/run_study.py --out /tmp/study --parallel 4 \
        --gguf smollm2-135m=/path/SmolLM2-135M-Instruct.Q4_1.gguf --gguf gemma3-270m=/path/gemma.gguf
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from latentbridge.config import RunConfig  # noqa: E402
from latentbridge.models import sha256_file  # noqa: E402
from latentbridge.reporting import FileReporter  # noqa: E402

log = logging.getLogger("run_study")

SCRIPT = "results/embedded-pair/run_study.py"
PAIRS = {
    "s2g": {"source_model": "smollm2-135m", "target_model": "gemma3-270m"},
    "g2s": {"source_model": "gemma3-270m", "target_model": "smollm2-135m"},
}
# sha256 of the embedded models' GGUF files (what `--gguf NAME=PATH` must hold)
EMBEDDED_SHA256 = {
    "smollm2-135m": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "gemma3-270m": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
}
DEFAULT_GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k"
TASKS = ("gsm8k", "synthetic")
MEMBERS = (("ablations", "1a"), ("ablations", "1b"), ("ablations", "2a"), ("ablations", "2b"),
           ("phase2-swap", "swap-prompt-teacher"))


# --------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Member:
    direction: str
    task: str
    suite: str  # the launch suite
    member: str  # its run name

    @property
    def group(self) -> str:
        return f"embedded-{self.direction}-{self.task}"

    @property
    def key(self) -> str:
        return f"{self.direction}/{self.task}/{self.member}"


def task_overrides(task: str, args) -> dict[str, object]:
    if task == "gsm8k":
        data = Path(args.gsm8k_dir)
        return {
            "data.source": "jsonl",
            "data.train_file": str(data / "train.jsonl"),
            "data.test_file": str(data / "test.jsonl"),
            "eval.max_new_tokens": args.gsm8k_max_new_tokens,
        }
    return {"data.source": "synthetic", "eval.max_new_tokens": args.synthetic_max_new_tokens}


def budget_overrides(args) -> dict[str, object]:
    return {
        "dtype": args.dtype,
        "train.steps": args.steps,
        "data.val_size": max(args.val_questions, 200),
        "eval.split": "validation",
        "eval.num_questions": args.val_questions,
        "eval.test_questions": args.test_questions,
        "eval.batch_size": args.eval_batch_size,
        "eval.baselines": True,
    }


def build_config(m: Member, args) -> tuple[RunConfig, dict[str, str]]:
    """The member's config as the launcher builds it, with the study's overrides; and its diff
    against the group's base (the `ablations` base with the same overrides)."""
    from launch.suites import get_suite

    overrides = {**PAIRS[m.direction], **task_overrides(m.task, args), **budget_overrides(args)}
    overrides.update(dict(o.split("=", 1) for o in args.overrides))
    suite = get_suite(m.suite)
    config = suite.configs({k: str(v) for k, v in overrides.items()})[m.member]
    # the suite's schedule, scaled to the study's step count (1b keeps its warmup of 0)
    scale = args.steps / float(suite.base.get("train.steps", 2000))
    flat = config.flat()
    config = config.override(*_schedule(flat, scale, args), f"suite={m.group}")
    base_suite = get_suite("ablations")
    base = RunConfig().override(*(f"{k}={v}" for k, v in {**base_suite.base, **{k: str(v) for k, v in overrides.items()}}.items()))
    base = base.override(*_schedule(base.flat(), scale, args))
    base_flat, run_flat = base.flat(), config.flat()
    diff = {k: str(v) for k, v in run_flat.items() if k not in ("name", "suite", "output_dir") and base_flat.get(k) != v}
    return config, diff


def _schedule(flat: dict, scale: float, args) -> list[str]:
    """Warmup scaled to the study's steps (0 stays 0); evaluations every --eval-every steps (else
    scaled too); a checkpoint only at the end (the study's runs are short and never requeued)."""
    warmup = int(flat["optim.warmup_steps"])
    eval_every = args.eval_every or max(1, round(int(flat["train.eval_every"]) * scale))
    return [f"optim.warmup_steps={max(1, round(warmup * scale)) if warmup else 0}",
            f"train.eval_every={eval_every}", f"train.checkpoint_every={args.steps}"]


def plan(args) -> list[Member]:
    members = [Member(d, t, s, n) for d in args.directions for t in args.tasks for s, n in MEMBERS]
    if args.only:
        wanted = set(args.only)
        members = [m for m in members if m.key in wanted or m.member in wanted or m.group in wanted
                   or f"{m.direction}/{m.task}" in wanted]
    return members


def reproduce_command(m: Member, args) -> str:
    parts = ["python", SCRIPT, "--out", "OUT", "--only", m.key, "--steps", str(args.steps),
             *(["--eval-every", str(args.eval_every)] if args.eval_every else []),
             "--val-questions", str(args.val_questions), "--test-questions", str(args.test_questions),
             "--eval-batch-size", str(args.eval_batch_size), "--dtype", args.dtype]
    if m.task == "gsm8k":
        parts += ["--gsm8k-dir", "../shared/data/gsm8k", "--gsm8k-max-new-tokens", str(args.gsm8k_max_new_tokens)]
    else:
        parts += ["--synthetic-max-new-tokens", str(args.synthetic_max_new_tokens)]
    parts += list(args.overrides)
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------- records
class RecordReporter(FileReporter):
    """`FileReporter` that keeps translator folders small: translator.json plus the weights'
    sha256 and size in weights.json (the weights stay in the run dir, where the run ran)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not (path.is_dir() and (path / "translator.safetensors").is_file()):
            return super().log_artifact(path, artifact_path)
        destination = self.folder / "artifacts" / (artifact_path or "")
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path / "translator.json", destination / "translator.json")
        weights = path / "translator.safetensors"
        (destination / "weights.json").write_text(json.dumps({
            "file": "translator.safetensors",
            "sha256": sha256_file(weights),
            "bytes": weights.stat().st_size,
            "note": "weights not moved off the machine that trained them (size); translator.json is the config",
        }, indent=2) + "\n")


def _status(result_status: str) -> str:
    return {"FINISHED": "FINISHED", "EARLY_STOPPED": "FINISHED", "INTERRUPTED": "KILLED"}.get(result_status, "FAILED")


# --------------------------------------------------------------------------- one worker
def load_models(names: set[str], ggufs: dict[str, str], dtype: str):
    import torch

    from latentbridge.models import load_frozen_lm
    from latentbridge.train import DTYPES

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {}
    for name in sorted(names):
        path = ggufs.get(name, name)
        if name in ggufs:
            found = sha256_file(Path(path))
            if name in EMBEDDED_SHA256 and found != EMBEDDED_SHA256[name]:
                raise SystemExit(f"{path} is not the embedded {name} (sha256 {found[:12]}...)")
        started = time.time()
        lm = load_frozen_lm(path, dtype=DTYPES[dtype], device=device)
        lm.name = name  # the embedded name: the same model, whatever file it came from
        models[name] = lm
        log.info("loaded %s from %s in %.1f s", name, path, time.time() - started)
    return models


def run_worker(members: list[Member], args) -> int:
    import torch

    from latentbridge.data import load_splits
    from latentbridge.train import Trainer

    out = Path(args.out)
    work_root = Path(args.work_dir) if args.work_dir else out / "work"
    ggufs = dict(g.split("=", 1) for g in args.gguf)
    deadline = args.deadline
    todo = [m for m in members if not (out / "records" / m.group / m.member / "status.json").is_file()]
    if not todo:
        return 0
    models = load_models({n for m in todo for n in PAIRS[m.direction].values()}, ggufs, args.dtype)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    splits_cache = {}
    durations: list[float] = []
    failures = 0
    for m in todo:
        left = deadline - time.time() if deadline else float("inf")
        need = (max(durations) * 1.1) if durations else args.first_run_estimate_s
        if left < need:
            log.warning("stopping before %s: %.0f s left, a run takes about %.0f s", m.key, left, need)
            print(json.dumps({"event": "skipped", "run": m.key, "left_s": round(left)}), flush=True)
            continue
        config, diff = build_config(m, args)
        record = out / "records" / m.group / m.member
        run_dir = work_root / m.group / m.member
        for folder in (record, run_dir):  # a record without status.json is incomplete: start again
            shutil.rmtree(folder, ignore_errors=True)
        reporter = RecordReporter(record)
        from launch.suites import get_suite

        suite_tags = get_suite(m.suite).tags(m.member)
        tags = {
            **{k: v for k, v in suite_tags.items() if k != "suite"},
            "suite": m.group,
            "launch_suite": m.suite,
            "direction": m.direction,
            "task": m.task,
            "config_diff": json.dumps(diff, sort_keys=True),
            "command": reproduce_command(m, args),
            "git_commit": args.git_commit or "unknown",
            "git_dirty": ("true" if args.git_dirty else "false") if args.git_commit not in ("", "unknown") else "unknown",
            "host": socket.gethostname(),
            "device": gpu,
            "study": "results/embedded-pair",
            "run_dir": str(run_dir),
        }
        reporter.set_tags(tags)
        data_key = json.dumps(dataclasses.asdict(config.data), sort_keys=True)
        if data_key not in splits_cache:
            splits_cache[data_key] = load_splits(config.data)
        started = time.time()
        print(json.dumps({"event": "start", "run": m.key, "t": round(started)}), flush=True)
        try:
            trainer = Trainer(config, run_dir, reporter, models=(models[config.source_model], models[config.target_model]),
                              splits=splits_cache[data_key])
            result = trainer.run()
            status, train_status = _status(result.status), result.status
        except Exception as error:  # noqa: BLE001 - one failed run must not stop the study
            log.exception("run %s failed", m.key)
            status, train_status = "FAILED", f"error: {type(error).__name__}: {error}"[:500]
            failures += 1
        ended = time.time()
        durations.append(ended - started)
        reporter.set_tags({"train_status": train_status, "wall_seconds": f"{ended - started:.1f}"})
        (record / "status.json").write_text(json.dumps({
            "status": status, "train_status": train_status,
            "start_time": int(started * 1000), "end_time": int(ended * 1000),
        }, indent=2) + "\n")
        shutil.rmtree(run_dir, ignore_errors=True)  # weights and checkpoints: sha256 kept in the record
        print(json.dumps({"event": "done", "run": m.key, "status": status, "train_status": train_status,
                          "seconds": round(ended - started, 1)}), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 1 if failures else 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="records go to OUT/records/<group>/<member>/")
    p.add_argument("--work-dir", default=None, help="run dirs (checkpoints, weights; deleted after each run); default OUT/work")
    p.add_argument("--directions", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--only", nargs="*", default=None,
                   help="members to run: direction/task/member (e.g. s2g/gsm8k/1a), a member name, a group or direction/task")
    p.add_argument("--gguf", action="append", default=[], metavar="NAME=PATH",
                   help="load embedded model NAME from this GGUF file (checked against its sha256)")
    p.add_argument("--gsm8k-dir", default=str(DEFAULT_GSM8K), help="folder with GSM8K train.jsonl and test.jsonl")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default: the suite's, scaled)")
    p.add_argument("--val-questions", type=int, default=200, help="validation questions (carved from train) per evaluation")
    p.add_argument("--test-questions", type=int, default=200, help="test questions for the best translator")
    p.add_argument("--eval-batch-size", type=int, default=200)
    p.add_argument("--gsm8k-max-new-tokens", type=int, default=200)
    p.add_argument("--synthetic-max-new-tokens", type=int, default=48)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--parallel", type=int, default=1, help="worker processes sharing the GPU (each runs its runs in turn)")
    p.add_argument("--deadline-s", type=float, default=None, help="start no run that would end after this many seconds")
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # absolute, for workers
    p.add_argument("--first-run-estimate-s", type=float, default=60.0)
    p.add_argument("--git-commit", default=os.environ.get("STUDY_GIT_COMMIT", ""))
    p.add_argument("--git-dirty", action="store_true", default=os.environ.get("STUDY_GIT_DIRTY", "") == "1")
    p.add_argument("--dry-run", action="store_true", help="print each run's config diff and command; train nothing")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra config overrides key=value, for every run")
    return p


def _git_state(args) -> None:
    if args.git_commit:
        return
    try:
        args.git_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                         text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
        args.git_dirty = bool(dirty.strip())
    except (OSError, subprocess.CalledProcessError):
        args.git_commit = "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _git_state(args)
    members = plan(args)
    if args.deadline is None and args.deadline_s is not None:
        args.deadline = time.time() + args.deadline_s
    if args.dry_run:
        for m in members:
            config, diff = build_config(m, args)
            print(f"{m.key} [{m.group}] {config.source_model} -> {config.target_model}: "
                  f"{json.dumps(diff, sort_keys=True)}\n    {reproduce_command(m, args)}")
        return 0
    if args.worker or args.parallel <= 1:
        return run_worker(members, args)
    shares = split_work(members, args.parallel)
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    procs = []
    for i, share in enumerate(shares):
        keys = [m.key for m in share]
        cmd = [sys.executable, str(Path(__file__).resolve()), *_strip(base), "--worker", "--deadline", str(args.deadline or 0),
               "--git-commit", args.git_commit, *(["--git-dirty"] if args.git_dirty else []), "--only", *keys]
        handle = (logs / f"worker{i}.log").open("w")
        procs.append((subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT), handle, keys))
        print(f"worker {i}: {' '.join(keys)} (log {logs / f'worker{i}.log'})", flush=True)
    seen = [0] * len(procs)
    while True:  # stream the workers' run events
        alive = [proc.poll() is None for proc, _, _ in procs]
        for i in range(len(procs)):
            lines = (logs / f"worker{i}.log").read_text(errors="replace").splitlines()
            for line in lines[seen[i]:]:
                if line.startswith('{"event"'):
                    print(f"[{time.strftime('%H:%M:%S')}] worker {i}: {line}", flush=True)
            seen[i] = len(lines)
        if not any(alive):
            break
        time.sleep(5)
    codes = []
    for proc, handle, keys in procs:
        codes.append(proc.wait())
        handle.close()
    print(f"workers exited {codes}", flush=True)
    return max(codes)


def split_work(members: list[Member], parallel: int) -> list[list[Member]]:
    """Whole groups (whose runs share baselines) to workers; with more workers than groups, the
    heaviest groups (GSM8K: long prompts and answers) are split in two, first runs first."""
    units: list[list[Member]] = []
    for m in members:
        if units and units[-1][0].group == m.group:
            units[-1].append(m)
        else:
            units.append([m])
    weight = lambda unit: len(unit) * (2 if unit[0].task == "gsm8k" else 1)  # noqa: E731
    while len(units) < parallel:
        heavy = max((u for u in units if len(u) > 1), key=weight, default=None)
        if heavy is None:
            break
        i, half = units.index(heavy), (len(heavy) + 1) // 2
        units[i:i + 1] = [heavy[:half], heavy[half:]]
    if len(units) > parallel:  # fewer workers than groups: deal the groups out
        shares: list[list[Member]] = [[] for _ in range(parallel)]
        for i, unit in enumerate(sorted(units, key=weight, reverse=True)):
            min(shares, key=lambda s: sum(2 if m.task == "gsm8k" else 1 for m in s)).extend(unit)
        return [s for s in shares if s]
    return units


def _strip(argv: list[str]) -> list[str]:
    """The command line without the options main() sets for each worker itself."""
    out, skip = [], 0
    drop_with_value = {"--parallel": 1, "--deadline-s": 1, "--git-commit": 1}
    for i, arg in enumerate(argv):
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in drop_with_value:
            skip = 0 if "=" in arg else drop_with_value[name]
            continue
        if name == "--only":  # its values run up to the next option
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            skip = j - i - 1
            continue
        if name == "--git-dirty":
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
