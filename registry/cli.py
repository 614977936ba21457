"""`python -m registry preserve|promote|list|reproduce|analyze|summarize|import`: the archive's command line.

  preserve RUN_ID...                     archive finished runs as registered model versions
  promote MODEL VERSION --alias NAME     set an alias; --force --reason "..." against the verdict
  list [--model NAME]                    the archive as a table
  reproduce models:/NAME@ALIAS           reload a version and re-answer its archived questions
  analyze --suite NAME --out DIR         tables, figures, LaTeX of a suite (--suite repeated: several as one), logged to MLflow
  summarize PATH...                      valid / invalid / correct answers per eval JSONL
  import FOLDER...                       replay FileReporter run records (folders, tarballs) into MLflow runs (idempotent)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from registry.errors import RegistryError


def _rules(args):
    from latentbridge.config import parse_assignments
    from registry.verdict import VerdictRules

    overrides = parse_assignments(args.set or [])
    return VerdictRules.load(Path(args.rules) if args.rules else None, **overrides)


def _add_rules(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", help="verdict rules JSON (default: registry/verdict_defaults.json)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one verdict threshold (repeatable)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of questions >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m registry", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("preserve", help="archive finished runs as registered model versions")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    _add_rules(p)

    p = commands.add_parser("promote", help="point an alias at a preserved version")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--alias", required=True, help="e.g. publishable, champion, control")
    p.add_argument("--force", action="store_true", help="promote although the verdict does not allow the alias")
    p.add_argument("--reason", help="why the verdict is overridden (required with --force; kept on the version)")
    p.add_argument("--policy", help="alias policy JSON (default: registry/verdict_defaults.json)")

    p = commands.add_parser("list", help="the archive as a table")
    p.add_argument("--model", help="only this registered model")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")

    p = commands.add_parser("reproduce", help="reload a preserved version and re-answer its archived questions")
    p.add_argument("uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--which", choices=["final", "best"], default="final")
    p.add_argument("--device", default="cpu")
    p.add_argument("--questions", type=_positive_int, default=None, metavar="N",
                   help="only the first N archived questions (a spot check on a slow machine)")

    p = commands.add_parser("analyze", help="a suite's tables, figures and LaTeX, logged to MLflow")
    p.add_argument("--suite", required=True, action="append",
                   help="the suite (repeatable: a study spanning suites, analysed as one; each run judged against its own suite's controls first)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the files as an MLflow analysis run")
    p.add_argument("--no-prompt-count", action="store_true", help="do not load tokenizers to count prompt tokens")
    p.add_argument("--pdf", action="store_true", help="also compile paper.pdf with pdflatex")
    p.add_argument("--include-unfinished", action="store_true",
                   help="also runs that did not finish but logged an evaluation, judged on their last one and"
                        " labelled '[<status> at step N of M]'")
    _add_rules(p)

    p = commands.add_parser("summarize", help="valid, invalid and correct answers per eval JSONL")
    p.add_argument("paths", nargs="+", metavar="PATH", help="eval JSONL files or folders")
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("import", help="replay FileReporter run records (params.json, metrics.jsonl, ...) into MLflow runs")
    p.add_argument("folders", nargs="+", metavar="FOLDER",
                   help="a record folder, a folder holding records below it, or a tarball (.tgz, .tar.gz, .tar) of either")
    p.add_argument("--experiment", help="MLflow experiment (default: each run's suite)")
    p.add_argument("--status", dest="statuses", action="append", metavar="STATUS",
                   help="import only records of this status (repeatable), e.g. --status FINISHED: not runs cut off while running")

    p = commands.add_parser("export", help="write MLflow runs out as FileReporter run records (the inverse of import)")
    p.add_argument("--experiment", required=True, help="the MLflow experiment (the suite's name for launched runs)")
    p.add_argument("--run-id", dest="run_ids", action="append", default=[], metavar="ID",
                   help="export this run only (repeatable; default: every training run of the experiment)")
    p.add_argument("--run", dest="run_names", action="append", default=[], metavar="NAME",
                   help="export the newest FINISHED training run of this name (repeatable)")
    p.add_argument("--out", required=True, help="records go to OUT/<run name>-<run id[:8]>/")
    p.add_argument("--skip-artifacts", nargs="*", default=["checkpoint"], metavar="PATH",
                   help="leave out artifacts whose first path component is one of these (default: checkpoint; "
                        "give the flag alone to export every artifact)")
    return parser


def _preserve(args) -> int:
    from registry.preserve import preserve

    rules = _rules(args)
    failures = 0
    for run_id in args.run_ids:
        try:
            done = preserve(run_id, rules)
        except RegistryError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        state = "preserved as" if done.created else "already preserved as"
        change = "" if done.created else " (nothing changed)"
        print(f"{run_id}: {state} {done.model} version {done.version}; verdict {done.verdict} (rule {done.rule}){change}")
    return 1 if failures else 0


def _promote(args) -> int:
    from registry.promote import promote

    done = promote(args.model, args.version, args.alias, force=args.force, reason=args.reason, policy_file=Path(args.policy) if args.policy else None)
    print(done.message)
    return 0


def _list(args) -> int:
    from registry.listing import archive_rows, format_table

    rows = archive_rows(args.model)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _reproduce(args) -> int:
    from registry.loading import reproduce

    done = reproduce(args.uri, which=args.which, device=args.device, questions=args.questions)
    print(f"{done.uri} ({done.which}): {done.matching}/{done.total} archived bridged answers reproduced"
          + (f"; differing question indexes: {done.mismatches}" if done.mismatches else ""))
    return 0 if done.ok else 1


def _analyze(args) -> int:
    from registry.analysis import analyze

    done = analyze(args.suite, Path(args.out), rules=_rules(args), log_to_mlflow=not args.no_mlflow,
                   count_prompt_tokens=not args.no_prompt_count, pdf=args.pdf,
                   include_unfinished=args.include_unfinished)
    for path in done.files:
        print(path)
    print(f"suite {done.data.suite}: {len(done.data.runs)} runs analysed"
          + (f"; files logged to MLflow run {done.run_id}" if done.run_id else ""))
    return 0


def _summarize(args) -> int:
    from registry.summarize import format_summaries, summarize

    summaries = summarize(args.paths)
    print(json.dumps([s.to_dict() for s in summaries], indent=2) if args.json else format_summaries(summaries))
    return 0


def _import(args) -> int:
    from registry.import_runs import import_records

    skipped: list[str] = []
    for done in import_records(args.folders, args.experiment, set(args.statuses or ()), skipped):
        state = "imported as" if done.created else "already imported as"
        print(f"{done.source}: {state} run {done.run_id} ({done.name}, {done.status})")
    for source in skipped:
        print(f"{source}: not imported (--status {' '.join(args.statuses)})")
    return 0


def _export(args) -> int:
    from registry.export_runs import export_runs

    for done in export_runs(args.experiment, Path(args.out), args.run_ids, args.skip_artifacts, args.run_names):
        skipped = f"; skipped artifacts: {', '.join(done.skipped)}" if done.skipped else ""
        print(f"{done.run_id}: exported to {done.folder} ({done.name}, {done.status}, "
              f"{done.metric_points} metric points, {done.artifacts} artifact files{skipped})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("mlflow", "alembic", "httpx", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    handler = {
        "preserve": _preserve, "promote": _promote, "list": _list, "reproduce": _reproduce,
        "analyze": _analyze, "summarize": _summarize, "import": _import, "export": _export,
    }[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `python -m registry list | head`: the reader has what it wanted
        return quiet_broken_pipe()
    except OSError as error:  # a path it cannot use: --out naming a file, a folder it may not write, ...
        said = f"{error.filename}: {error.strerror} (check the path: --out must be a folder that can be written)"
        print(f"error: {said if error.filename else error}", file=sys.stderr)
        return 2
    except (RegistryError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def quiet_broken_pipe() -> int:
    """After the reader of stdout went away: point stdout at /dev/null so that Python's exit
    flush raises nothing, and exit as a command killed by SIGPIPE would (141)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141
