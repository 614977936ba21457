"""The suite's numbers as data: `ablation_results.json` and a summary table (markdown, CSV)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from latentbridge.metric_names import (
    BITS,
    BITS_HIGH,
    BITS_LOW,
    BRIDGED_ACCURACY,
    FRACTION,
    MISMATCHED_ACCURACY,
    MISMATCHED_FOLLOWS,
    RETRIEVAL,
    RETRIEVAL_CHANCE,
    SOURCE_ACCURACY,
    TARGET_ACCURACY,
    TEST_PREFIX,
)
from registry.analysis.collect import SuiteData, SuiteRun
from registry.facts import control_role

SUMMARY_COLUMNS = (
    "run", "K", "compression_ratio", "prompt_tokens", "steps", "seed", "source_alone", "target_alone",
    "peak", "peak_step", "final", "final_ci_low", "final_ci_high", "degradation", "invalid_rate",
    "bits", "bits_low", "bits_high", "fraction_recovered", "fraction_low", "fraction_high", "retrieval_top1",
    "mismatched_accuracy", "no_source_accuracy", "trained_text_accuracy",
    "verdict", "preserved", "changes", "run_id",
)
CONTENT_SUMMARY = "content_summary.json"


def changes(facts, short_keys: bool = False) -> str:
    """What the run changes against its suite's base, as recorded at submit ("base": nothing)."""
    if not facts.diff_recorded:
        return "not recorded"
    return ", ".join(f"{k.split('.')[-1] if short_keys else k}={v}" for k, v in sorted(facts.config_diff.items())) or "base"


def summary_row(run: SuiteRun) -> dict:
    f = run.facts
    low, high = run.final_interval or (None, None)
    return {
        "run": run.label,
        "K": f.K,
        "compression_ratio": f.compression_ratio,
        "prompt_tokens": f.prompt_tokens_mean,
        "steps": f.steps,
        "seed": f.seed,
        "source_alone": f.source_alone,
        "target_alone": f.target_alone,
        "peak": f.peak,
        "peak_step": f.peak_step,
        "final": f.final,
        "final_ci_low": low,
        "final_ci_high": high,
        "degradation": f.degradation,
        "invalid_rate": f.invalid_rate,
        "bits": run.bits[0] if run.bits else None,
        "bits_low": run.bits[1] if run.bits else None,
        "bits_high": run.bits[2] if run.bits else None,
        "fraction_recovered": f.metrics.get(FRACTION),
        "fraction_low": run.fraction_interval[0] if run.fraction_interval else None,
        "fraction_high": run.fraction_interval[1] if run.fraction_interval else None,
        "retrieval_top1": f.metrics.get(RETRIEVAL),
        "mismatched_accuracy": f.metrics.get(MISMATCHED_ACCURACY),
        "no_source_accuracy": run.comparisons["no_source"].other if "no_source" in run.comparisons else None,
        "trained_text_accuracy": run.comparisons["trained_text"].other if "trained_text" in run.comparisons else None,
        "verdict": run.verdict or "",
        "preserved": run.preserved or "",
        "changes": changes(run.facts),
        "run_id": f.run_id,
    }


def ablation_results(data: SuiteData) -> dict:
    """Everything the tables and figures are drawn from, JSON-ready."""
    runs = []
    for run in data.runs:
        entry = summary_row(run)
        entry.update(
            verdict_rule=run.verdict_rule,
            verdict_source=run.verdict_source,
            diff_basis=run.facts.diff_basis,
            config_diff=run.facts.config_diff,
            source_model=run.facts.source_model,
            target_model=run.facts.target_model,
            kind=run.facts.kind,
            prompt_mode=run.facts.prompt_mode,
            n_questions=run.facts.n_questions,
            eval_split=run.facts.params.get("eval.split", ""),
            git_commit=run.facts.git_commit,
            slurm_job=run.facts.slurm_job,
            history={k: [list(p) for p in v] for k, v in run.facts.history.items()},
        )
        runs.append(entry)
    return {
        "suite": data.suite,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": runs,
        "skipped_unfinished": data.skipped,
    }


def content_summary(data: SuiteData) -> dict:
    """Each bridge of the suite with what crosses it and its trained controls, JSON-ready.

    Numbers are the held-out test evaluation's (`split: test`) where the run logged one, else
    the final validation evaluation's; the controls' accuracies are on the same questions.
    """
    by_id = {r.facts.run_id: r for r in data.runs}
    runs = []
    for run in data.runs:
        f = run.facts
        if f.kind == "soft_prompt":
            continue
        test = TEST_PREFIX + BITS in f.metrics
        key = lambda name: TEST_PREFIX + name if test else name  # noqa: E731
        metric = lambda name: f.metrics.get(key(name))  # noqa: E731
        controls = {}
        for other in by_id.values():
            role = control_role(other.facts.params, f.params)
            if role is not None:
                controls[role] = other.facts.metrics.get(key(BRIDGED_ACCURACY))
        runs.append(
            {
                "name": run.label,
                "run_id": f.run_id,
                "split": "test" if test else f.params.get("eval.split", "validation"),
                "source_model": f.source_model,
                "target_model": f.target_model,
                "K": f.K,
                "bits_transmitted": metric(BITS),
                "bits_transmitted_low": metric(BITS_LOW),
                "bits_transmitted_high": metric(BITS_HIGH),
                "fraction_recovered": metric(FRACTION),
                "retrieval_top1": metric(RETRIEVAL),
                "retrieval_chance": metric(RETRIEVAL_CHANCE),
                "mismatched_accuracy": metric(MISMATCHED_ACCURACY),
                "mismatched_follows_soft_source": metric(MISMATCHED_FOLLOWS),
                "bridged_accuracy": metric(BRIDGED_ACCURACY),
                "target_alone_accuracy": metric(TARGET_ACCURACY),
                "source_alone_accuracy": metric(SOURCE_ACCURACY),
                "no_source_accuracy": controls.get("no_source"),
                "trained_text_accuracy": controls.get("trained_text"),
                "verdict": run.verdict,
                "verdict_rule": run.verdict_rule,
            }
        )
    return {"suite": data.suite, "runs": runs}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_tables(data: SuiteData, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [summary_row(r) for r in data.runs]
    json_path = out / "ablation_results.json"
    json_path.write_text(json.dumps(ablation_results(data), indent=2, default=str) + "\n")
    csv_path = out / "summary.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    md_path = out / "summary.md"
    md_path.write_text(markdown(data, rows))
    content_path = out / CONTENT_SUMMARY
    content_path.write_text(json.dumps(content_summary(data), indent=2, default=str) + "\n")
    return [json_path, md_path, csv_path, content_path]


def markdown(data: SuiteData, rows: list[dict]) -> str:
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}"
    lines = [
        f"# Suite `{data.suite}`: {len(rows)} finished runs",
        "",
        "Accuracies in %; degradation = peak - final (points); compression = prompt tokens / K"
        " (prompt tokens / (prompt tokens + K) with soft_plus_text).",
        "",
        "| run | K | compression | source | target | peak (step) | final [95% CI] | degradation | invalid | verdict | changes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    content_rows = []
    for r in rows:
        ci = f" [{pct(r['final_ci_low'])}, {pct(r['final_ci_high'])}]" if r["final_ci_low"] is not None else ""
        ratio = "–" if r["compression_ratio"] is None else f"{r['compression_ratio']:.1f}x"
        lines.append(
            f"| {r['run']} | {r['K']} | {ratio} | {pct(r['source_alone'])} | {pct(r['target_alone'])} | "
            f"{pct(r['peak'])} ({r['peak_step']}) | {pct(r['final'])}{ci} | {pct(r['degradation'])} | "
            f"{pct(r['invalid_rate'])} | {r['verdict'] or '–'} | {r['changes'].replace('|', '/')} |"
        )
        if r["bits"] is not None:
            num = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
            frac = num(r["fraction_recovered"])
            if r["fraction_low"] is not None:
                frac += f" [{num(r['fraction_low'])}, {num(r['fraction_high'])}]"
            content_rows.append(
                f"| {r['run']} | {num(r['bits'])} [{num(r['bits_low'])}, {num(r['bits_high'])}] | {frac} | "
                f"{num(r['retrieval_top1'])} | {pct(r['mismatched_accuracy'])} | {pct(r['final'])} | "
                f"{pct(r['no_source_accuracy'])} | {pct(r['trained_text_accuracy'])} |"
            )
    if content_rows:
        lines += [
            "",
            "## What crosses the bridge (final validation evaluation)",
            "",
            "Bits transmitted: mean NLL(another question's soft tokens) - NLL(own), in bits, with its 95% paired"
            " bootstrap interval; fraction recovered: of the NLL gap between no question and the full text;"
            " controls: trained the same way, on the same questions (accuracies in %).",
            "",
            "| run | bits transmitted [95% CI] | fraction recovered [95% CI] | retrieval top-1 | mismatched | bridged | no-source control | trained-text control |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *content_rows,
        ]
    if data.skipped:
        lines += ["", "Not finished (left out): " + ", ".join(f"{s['name']} ({s['status']})" for s in data.skipped)]
    return "\n".join(lines) + "\n"
