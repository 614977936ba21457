"""The study's table, from the MLflow store: every run of the four groups.

For each run: status, K, compression (the target's few-shot prompt tokens, as the trainer logged
them, divided by K), source-alone, target-alone, bridged peak and final on the validation
questions (model selection), the best translator's test numbers, invalid rates, 95% bootstrap
intervals (`registry.verdict.accuracy_interval` with the registry's rules and seed), paired
bridged-minus-baseline intervals and exact McNemar p-values on the test questions, how many
distinct outputs the bridged target wrote, and the verdict the registry gave when it preserved
the run (read back from the version's tags and its archived metrics.json). Writes summary.json
and summary.md here.

    python results/embedded-pair/summarize.py            # the project store (mlflow.db)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from registry.facts import download_eval, run_facts, suite_runs  # noqa: E402
from registry.store import client  # noqa: E402
from registry.verdict import VerdictRules, accuracy_interval, mcnemar_p, paired_bootstrap  # noqa: E402

GROUPS = ("embedded-s2g-gsm8k", "embedded-g2s-gsm8k", "embedded-s2g-synthetic", "embedded-g2s-synthetic")
SYSTEMS = ("source", "target", "bridged")
MEMBER_ORDER = ("1a", "1b", "2a", "2b", "swap-prompt-teacher")


def _column(records, system):
    return [bool(r[system]["correct"]) for r in records]


def _scores(records, rules):
    """Accuracy, 95% interval, invalid rate and distinct outputs of each system on these records."""
    out = {"n": len(records)}
    for system in SYSTEMS:
        if not all(system in r for r in records):
            continue
        correct = _column(records, system)
        answers = Counter(r[system]["answer"] for r in records)
        top_answer, top_count = answers.most_common(1)[0]
        out[system] = {
            "correct": sum(correct),
            "accuracy": sum(correct) / len(correct),
            "ci95": list(accuracy_interval(correct, rules.bootstrap_samples, rules.confidence, rules.seed)),
            "invalid_rate": sum(r[system]["answer"] == "[invalid]" for r in records) / len(records),
            "distinct_outputs": len({r[system]["output"] for r in records}),
            "most_common_answer": [top_answer, top_count],
        }
    if "bridged" in out:  # how much of the bridged score a constant guess explains
        answers = Counter(r["bridged"]["answer"] for r in records)
        top3 = {a for a, _ in answers.most_common(3)}
        top = answers.most_common(1)[0][0]
        out["bridged"]["correct_in_top3_answers"] = sum(r["bridged"]["correct"] and r["bridged"]["answer"] in top3 for r in records)
        out["bridged"]["constant_guess_correct"] = sum(r["gold"] == top for r in records)
    return out


def _paired(records, rules):
    """Bridged minus each baseline on the same questions: paired bootstrap interval and McNemar p."""
    if not all(all(s in r for s in SYSTEMS) for r in records):
        return {}
    bridged = _column(records, "bridged")
    out = {}
    for baseline in ("target", "source"):
        other = _column(records, baseline)
        out[f"bridged_minus_{baseline}"] = {
            "diff": (sum(bridged) - sum(other)) / len(records),
            "ci95": list(paired_bootstrap(bridged, other, rules.bootstrap_samples, rules.confidence, rules.seed)),
            "mcnemar_p": mcnemar_p(bridged, other),
        }
    return out


def _archived_verdict(mlflow_client, run_id, tmp):
    """The verdict block preserve() wrote into the version's archive/metrics.json."""
    try:
        path = mlflow_client.download_artifacts(run_id, "archive/metrics.json", str(Path(tmp) / run_id / "archive"))
    except Exception:  # noqa: BLE001 - an unpreserved run has no archive
        return None
    return json.loads(Path(path).read_text()).get("verdict")


def collect() -> list[dict]:
    mlflow_client = client()
    rules = VerdictRules.load()
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for group in GROUPS:
            for run in suite_runs(mlflow_client, experiments, group):
                facts = run_facts(mlflow_client, run)
                tags = facts.tags
                row = {
                    "group": group, "run": facts.name, "launch_suite": tags.get("launch_suite", ""),
                    "run_id": facts.run_id, "status": facts.status, "train_status": tags.get("train_status", ""),
                    "K": facts.K, "steps": facts.steps, "kind": facts.kind,
                    "source_model": facts.source_model, "target_model": facts.target_model,
                    "prompt_tokens_mean": facts.prompt_tokens_mean,
                    "compression": facts.compression_ratio,
                    "config_diff": facts.config_diff,
                    "trainer_collapse_flags": tags.get("collapse_flags", ""),
                    "wall_seconds": float(tags["wall_seconds"]) if tags.get("wall_seconds") else None,
                    "device": tags.get("device", ""),
                    "command": tags.get("command", ""),
                }
                versions = mlflow_client.search_model_versions(f"run_id='{facts.run_id}'")
                if versions:
                    v = min(versions, key=lambda v: int(v.version))
                    row.update(preserved=f"{v.name}/{v.version}", verdict=v.tags.get("verdict"),
                               verdict_rule=v.tags.get("verdict_rule"))
                    archived = _archived_verdict(mlflow_client, facts.run_id, tmp)
                    if archived:
                        row["verdict_reason"] = archived.get("rule")
                if facts.status == "FINISHED" and facts.final_eval:
                    final = download_eval(mlflow_client, facts.run_id, facts.final_eval, Path(tmp) / facts.run_id / "final")
                    row["validation_final"] = {"step": facts.final_step, **_scores(final, rules), "paired": _paired(final, rules)}
                    row["validation_peak"] = {"step": facts.peak_step, "bridged_accuracy": facts.peak}
                    peak_file = facts.eval_at(facts.peak_step)
                    if peak_file:
                        peak = download_eval(mlflow_client, facts.run_id, peak_file, Path(tmp) / facts.run_id / "peak")
                        row["validation_peak"].update(_scores(peak, rules)["bridged"])
                    row["validation_curve"] = facts.history.get("bridged_accuracy", [])
                    try:
                        test = download_eval(mlflow_client, facts.run_id, "test/test_eval.jsonl", Path(tmp) / facts.run_id / "test")
                    except Exception:  # noqa: BLE001 - a run without a test evaluation
                        row["test_best"] = None
                    else:
                        row["test_best"] = {"best_step": int(facts.metrics.get("best_step", -1)),
                                            "translator_step": test[0].get("step") if test else None,
                                            **_scores(test, rules), "paired": _paired(test, rules)}
                rows.append(row)
    order = {name: i for i, name in enumerate(MEMBER_ORDER)}
    return sorted(rows, key=lambda r: (GROUPS.index(r["group"]), order.get(r["run"], 99), r["run_id"]))


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def _acc(block, system):
    if not block or system not in block:
        return "–"
    s = block[system]
    return f"{_pct(s['accuracy'])} [{_pct(s['ci95'][0])}, {_pct(s['ci95'][1])}]"


def _member(name):
    return "swap" if name == "swap-prompt-teacher" else name


def markdown(rows: list[dict]) -> str:
    lines = [
        "| group | run | status | K | compression | source-alone val / test | target-alone val / test "
        "| bridged peak val (step) | bridged final val | bridged test (best step) | bridged invalid final val / test "
        "| verdict (rule) | run id |",
        "|---|---|---|---:|---:|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val, test, peak = r.get("validation_final"), r.get("test_best"), r.get("validation_peak")
        comp = f"{r['compression']:.1f}x" if r.get("compression") else "–"
        peak_cell = "–"
        if peak and peak.get("bridged_accuracy") is not None:
            ci = f" [{_pct(peak['ci95'][0])}, {_pct(peak['ci95'][1])}]" if "ci95" in peak else ""
            peak_cell = f"{_pct(peak['bridged_accuracy'])}{ci} ({peak['step']})"
        invalid = "–"
        if val:
            invalid = f"{_pct(val['bridged']['invalid_rate'])} / {_pct(test['bridged']['invalid_rate']) if test else '–'}"
        why = r["train_status"].removeprefix("error: ").split(". ")[0]
        status = r["status"] if r["status"] == "FINISHED" else f"{r['status']} ({why})"
        verdict = f"{r['verdict']} ({r['verdict_rule']})" if r.get("verdict") else "not preserved"
        test_cell = f"{_acc(test, 'bridged')} ({test['best_step']})" if test else "–"
        lines.append(
            f"| {r['group'].replace('embedded-', '')} | {_member(r['run'])} | {status} | {r['K']} | {comp} "
            f"| {_acc(val, 'source')} / {_acc(test, 'source')} | {_acc(val, 'target')} / {_acc(test, 'target')} "
            f"| {peak_cell} | {_acc(val, 'bridged')} | {test_cell} | {invalid} | {verdict} | `{r['run_id'][:8]}` |"
        )
    return "\n".join(lines) + "\n"


def _diff(block, baseline):
    d = (block or {}).get("paired", {}).get(f"bridged_minus_{baseline}")
    if not d:
        return "–"
    return f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}] p={d['mcnemar_p']:.2f}"


def details(rows: list[dict]) -> str:
    lines = [
        "| group | run | registered version | wall s | trainer flags | distinct bridged outputs val / test "
        "| most common bridged test answer | bridged correct: all / in its 3 commonest answers / its commonest answer given always, val; test | test: bridged − target (pts) | test: bridged − source (pts) | verdict reason |",
        "|---|---|---|---:|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val, test = r.get("validation_final") or {}, r.get("test_best") or {}
        distinct = f"{val.get('bridged', {}).get('distinct_outputs', '–')} / {test.get('bridged', {}).get('distinct_outputs', '–')}"
        top = test.get("bridged", {}).get("most_common_answer")
        top_cell = f"`{top[0]}` ×{top[1]}" if top else "–"
        wall = f"{r['wall_seconds']:.0f}" if r.get("wall_seconds") else "–"
        guess = "; ".join(
            f"{b['correct']} / {b['correct_in_top3_answers']} / {b['constant_guess_correct']}" if b else "–"
            for b in (val.get("bridged"), test.get("bridged"))
        )
        lines.append(
            f"| {r['group'].replace('embedded-', '')} | {_member(r['run'])} | {r.get('preserved', '–').replace('/', ' v')} | {wall} "
            f"| {r['trainer_collapse_flags'] or '–'} | {distinct} | {top_cell} | {guess} | {_diff(test, 'target')} | {_diff(test, 'source')} "
            f"| {r.get('verdict_reason', '–')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    rows = collect()
    (HERE / "summary.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (HERE / "summary.md").write_text(
        "# The study's runs (generated by summarize.py from the MLflow store)\n\n"
        "Accuracies in % with 95% bootstrap intervals (2000 resamples, seed 0); val = the 200 validation "
        "questions carved from GSM8K train / the synthetic train set (model selection; the final validation "
        "evaluation is what the registry judged), test = the best-on-validation translator and both text "
        "baselines on the first 200 test questions. Compression = the target's mean few-shot prompt tokens / K.\n\n"
        + markdown(rows)
        + "\n## Details\n\nPaired differences on the 200 test questions: bridged minus baseline in points, "
        "95% paired bootstrap interval, exact McNemar p. Trainer flags: collapse flags the trainer raised "
        "during training (any flag makes the registry's verdict `unstable`). The guess column: questions the "
        "bridged target got right, how many of those it got with one of its three most common answers, and how many "
        "it would get by giving its single most common answer to every question (out of 200).\n\n" + details(rows)
    )
    print(markdown(rows))
    print(details(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
