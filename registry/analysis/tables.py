"""The suite's numbers as data: `ablation_results.json` and a summary table (markdown, CSV)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from registry.analysis.collect import SuiteData, SuiteRun

SUMMARY_COLUMNS = (
    "run", "K", "compression_ratio", "prompt_tokens", "steps", "seed", "source_alone", "target_alone",
    "peak", "peak_step", "final", "final_ci_low", "final_ci_high", "degradation", "invalid_rate",
    "verdict", "preserved", "changes", "run_id",
)


def _changes(run: SuiteRun) -> str:
    diff = run.facts.config_diff
    return ", ".join(f"{k}={v}" for k, v in sorted(diff.items())) or "base"


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
        "verdict": run.verdict or "",
        "preserved": run.preserved or "",
        "changes": _changes(run),
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
    return [json_path, md_path, csv_path]


def markdown(data: SuiteData, rows: list[dict]) -> str:
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}"
    lines = [
        f"# Suite `{data.suite}`: {len(rows)} finished runs",
        "",
        "Accuracies in %; degradation = peak - final (points); compression = prompt tokens / K.",
        "",
        "| run | K | compression | source | target | peak (step) | final [95% CI] | degradation | invalid | verdict | changes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ci = f" [{pct(r['final_ci_low'])}, {pct(r['final_ci_high'])}]" if r["final_ci_low"] is not None else ""
        ratio = "–" if r["compression_ratio"] is None else f"{r['compression_ratio']:.1f}x"
        lines.append(
            f"| {r['run']} | {r['K']} | {ratio} | {pct(r['source_alone'])} | {pct(r['target_alone'])} | "
            f"{pct(r['peak'])} ({r['peak_step']}) | {pct(r['final'])}{ci} | {pct(r['degradation'])} | "
            f"{pct(r['invalid_rate'])} | {r['verdict'] or '–'} | {r['changes'].replace('|', '/')} |"
        )
    if data.skipped:
        lines += ["", "Not finished (left out): " + ", ".join(f"{s['name']} ({s['status']})" for s in data.skipped)]
    return "\n".join(lines) + "\n"
