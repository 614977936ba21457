"""The suite's numbers as data: `ablation_results.json` and a summary table (markdown, CSV).

Validation selects (the peak picks the best translator, the verdict judges the final
evaluation); test reports (the best translator and the text baselines on held-out questions,
columns prefixed `test_`). Beside each accuracy: its 95% Wilson score interval, how many different
texts the bridged target wrote, the accuracy of giving its most common answer to every question
("guess"), and bridged minus each text baseline on the same questions (paired interval, exact
McNemar p).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from latentbridge.metric_names import (
    BITS,
    BITS_HIGH,
    BITS_LOW,
    BRIDGED,
    BRIDGED_ACCURACY,
    FRACTION,
    MISMATCHED_ACCURACY,
    MISMATCHED_FOLLOWS,
    RETRIEVAL,
    RETRIEVAL_CHANCE,
    SOURCE,
    SOURCE_ACCURACY,
    TARGET,
    TARGET_ACCURACY,
    TEST_PREFIX,
    TIME_PREFIX,
    TIMES,
)
from registry.analysis.collect import SuiteData, SuiteRun
from registry.facts import RunFacts, config_from_params
from registry.verdict import BASELINES, EvalScores

# each system's accuracy column on validation (the final evaluation) and on test
VALIDATION_COLUMN = {SOURCE: "source_alone", TARGET: "target_alone", BRIDGED: "final"}
TEST_COLUMN = {SOURCE: TEST_PREFIX + "source_alone", TARGET: TEST_PREFIX + "target_alone", BRIDGED: TEST_PREFIX + "bridged"}


def _interval_columns(name: str) -> tuple[str, ...]:
    return name, f"{name}_ci_low", f"{name}_ci_high"


def _paired_columns(prefix: str) -> tuple[str, ...]:
    """Bridged - each text baseline (points, paired interval, McNemar p): see `_paired_cells`."""
    return tuple(f"{prefix}bridged_minus_{b}{end}" for b in BASELINES for end in ("", "_low", "_high", "_p"))


def _record_columns(prefix: str) -> tuple[str, ...]:
    """The columns read from an evaluation's records beyond its accuracies."""
    return (f"{prefix}distinct_outputs", f"{prefix}modal_answer", f"{prefix}modal_count", f"{prefix}guess", *_paired_columns(prefix))


SUMMARY_COLUMNS = (
    "run", "K", "compression_ratio", "prompt_tokens", "steps", "seed",
    # validation: the final evaluation (peak: the best one, which selected the tested translator)
    *_interval_columns(VALIDATION_COLUMN[SOURCE]), *_interval_columns(VALIDATION_COLUMN[TARGET]),
    "peak", "peak_step", *_interval_columns(VALIDATION_COLUMN[BRIDGED]), "degradation", "invalid_rate", *_record_columns(""),
    # test: the selected translator (trained to test_step) and the text baselines, reported once
    TEST_PREFIX + "step", TEST_PREFIX + "n", *(c for name in TEST_COLUMN.values() for c in _interval_columns(name)),
    TEST_PREFIX + "invalid_rate", *_record_columns(TEST_PREFIX),
    "bits", "bits_low", "bits_high", "fraction_recovered", "fraction_low", "fraction_high", "retrieval_top1",
    "mismatched_accuracy", "no_source_accuracy", "trained_text_accuracy",
    "verdict", "preserved", "changes", "run_id",
)
CONTENT_SUMMARY = "content_summary.json"


def changes(facts: RunFacts) -> str:
    """What the run changes against its suite's base, as recorded at submit ("base": nothing)."""
    if not facts.diff_recorded:
        return "not recorded"
    return ", ".join(f"{k}={v}" for k, v in sorted(facts.config_diff.items())) or "base"


def _record_cells(scores: EvalScores | None, prefix: str, columns: dict[str, str]) -> dict:
    """One evaluation's accuracy intervals (`columns`: system -> its accuracy column) and its
    `_record_columns` (all None without scores)."""
    row: dict = {}
    for system, name in columns.items():
        interval = scores.intervals.get(system) if scores else None
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval or (None, None)
    row[prefix + "distinct_outputs"] = scores.distinct_outputs if scores else None
    row[prefix + "modal_answer"], row[prefix + "modal_count"] = scores.modal_answer if scores else (None, None)
    row[prefix + "guess"] = scores.guess if scores else None
    row.update(dict.fromkeys(_paired_columns(prefix)))  # None where a baseline was not compared
    if scores:
        row.update(_paired_cells({b: c for b, c in scores.versus.items() if b in BASELINES}, prefix))
    return row


def _test_cells(scores: EvalScores | None) -> dict:
    """The test evaluation's columns (all None when the run logged none)."""
    return {
        TEST_PREFIX + "step": scores.step if scores else None,
        TEST_PREFIX + "n": scores.n if scores else None,
        **{name: scores.accuracy.get(system) if scores else None for system, name in TEST_COLUMN.items()},
        TEST_PREFIX + "invalid_rate": scores.invalid_rate if scores else None,
        **_record_cells(scores, TEST_PREFIX, TEST_COLUMN),
    }


def summary_row(run: SuiteRun) -> dict:
    f = run.facts
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
        "degradation": f.degradation,
        "invalid_rate": f.invalid_rate,
        **_record_cells(run.validation, "", VALIDATION_COLUMN),
        **_test_cells(run.test),
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
            positive_control=run.positive_control,
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
            evaluations=[[step, *e] for step, e in sorted(run.evaluations.items())],  # step, bridged accuracy, 95% interval
        )
        runs.append(entry)
    return {
        "suite": data.suite,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": runs,
        "skipped_unfinished": data.skipped,
    }


def _paired_cells(comparisons: dict, prefix: str) -> dict:
    """`<prefix>bridged_minus_<name>` in points (as a fraction), with its paired interval (_low,
    _high) and exact McNemar p (_p), for each comparison."""
    return {
        f"{prefix}bridged_minus_{name}{suffix}": value
        for name, c in sorted(comparisons.items())
        for suffix, value in (("", c.bridged - c.other), ("_low", c.diff_interval[0]), ("_high", c.diff_interval[1]), ("_p", c.p_value))
    }


def _recipe(facts: RunFacts) -> str:
    """The run's whole config but its name and seed (params rebuilt with today's defaults, so
    runs logged before a config key existed still match): runs with the same recipe are seeds."""
    config = config_from_params(facts.params)
    flat = config.flat() if config is not None else dict(facts.params)
    return json.dumps({k: str(v) for k, v in sorted(flat.items()) if k not in ("name", "seed")})


def seed_groups(data: SuiteData) -> list[dict]:
    """Bridges that differ only in their seed, grouped (oldest first), each group with two or more
    finished, tested runs: their test accuracies, bits transmitted, their mean and range, beside
    the trained text control's test accuracy."""
    groups: dict[str, list[SuiteRun]] = {}
    for run in data.runs:
        if run.facts.kind != "soft_prompt" and not run.partial and run.test is not None:
            groups.setdefault(_recipe(run.facts), []).append(run)
    out = []
    for runs in groups.values():
        if len(runs) < 2:
            continue
        accuracy = [r.test.accuracy.get(BRIDGED) for r in runs]
        bits = [r.facts.metrics.get(TEST_PREFIX + BITS) for r in runs]
        control = runs[0].test_comparisons.get("trained_text")
        out.append({
            "runs": [r.label for r in runs],
            "seeds": [r.facts.seed for r in runs],
            "test_bridged_accuracy": accuracy,
            "test_bridged_accuracy_mean": sum(accuracy) / len(accuracy),
            "test_bridged_accuracy_min": min(accuracy),
            "test_bridged_accuracy_max": max(accuracy),
            "test_bits_transmitted": bits,
            "test_bits_transmitted_mean": sum(bits) / len(bits) if None not in bits else None,
            "trained_text_test_accuracy": control.other if control else None,
            "within_5_points_of_trained_text": (
                [r.test_comparisons["trained_text"].bridged - r.test_comparisons["trained_text"].other >= -0.05 - 1e-9
                 if "trained_text" in r.test_comparisons else None for r in runs]  # at most 5 points below it
            ),
        })
    return out


def content_summary(data: SuiteData) -> dict:
    """Each bridge of the suite with what crosses it and its trained controls, JSON-ready.

    Numbers are the held-out test evaluation's (`split: test`) where the run logged one, else
    the final validation evaluation's; the controls' accuracies are on the same questions.
    """
    runs = []
    for run in data.runs:
        f = run.facts
        if f.kind == "soft_prompt":
            continue
        test = TEST_PREFIX + BITS in f.metrics or TEST_PREFIX + BRIDGED_ACCURACY in f.metrics
        key = lambda name: TEST_PREFIX + name if test else name  # noqa: E731
        metric = lambda name: f.metrics.get(key(name))  # noqa: E731
        # the controls `collect` compared the bridge with (on the split reported), on the same questions
        controls = {role: c.other for role, c in (run.test_comparisons if test else run.comparisons).items()}
        runs.append(
            {
                "name": run.label,
                "run_id": f.run_id,
                "status": run.status,  # FINISHED, or a partial run cut off at `last_step`
                "last_step": f.evals[-1][0] if f.evals else None,
                "split": "test" if test else f.params.get("eval.split", "validation"),
                "source_model": f.source_model,
                "target_model": f.target_model,
                "direction": f"{f.source_model} -> {f.target_model}",
                "task": f.params.get("data.source", ""),
                "seed": f.seed,
                "K": f.K,
                "batch_size": int(f.params["train.batch_size"]) if "train.batch_size" in f.params else None,  # as it ran
                "steps": f.steps,
                "bits_transmitted": metric(BITS),
                "bits_transmitted_low": metric(BITS_LOW),
                "bits_transmitted_high": metric(BITS_HIGH),
                "fraction_recovered": metric(FRACTION),
                "retrieval_top1": metric(RETRIEVAL),
                "retrieval_chance": metric(RETRIEVAL_CHANCE),
                "mismatched_accuracy": metric(MISMATCHED_ACCURACY),
                "mismatched_follows_soft_source": metric(MISMATCHED_FOLLOWS),
                "bridged_accuracy": metric(BRIDGED_ACCURACY),
                "target_accuracy": metric(TARGET_ACCURACY),  # the untrained target reading the 8-shot text
                "source_accuracy": metric(SOURCE_ACCURACY),
                "no_source_accuracy": controls.get("no_source"),
                "trained_text_accuracy": controls.get("trained_text"),
                "verdict": run.verdict,
                "verdict_rule": run.verdict_rule,
                "positive_control": run.positive_control,  # the passed one on its target the verdict relied on
                # bridged - each trained control and the mismatched soft tokens, on the final
                # validation evaluation's questions: points, paired interval, exact McNemar p
                **_paired_cells(run.comparisons, ""),
                # the same on the test questions (the tested translators of the bridge and its controls)
                **_paired_cells(run.test_comparisons, TEST_PREFIX),
            }
        )
    return {"suite": data.suite, "runs": runs, "seed_groups": seed_groups(data)}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        # 4 decimals, but never a nonzero value (a McNemar p of 1e-15) written as 0.0000
        return f"{value:.4f}" if value == 0 or abs(value) >= 5e-5 else f"{value:.4g}"
    return str(value)


def strict_json(value):
    """`value` with every NaN or infinite float made None: JSON has no NaN, and strict readers
    (browsers' JSON.parse, jq) refuse Python's bare `NaN`."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _dump(value) -> str:
    return json.dumps(strict_json(value), indent=2, default=str, allow_nan=False) + "\n"


def write_tables(data: SuiteData, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [summary_row(r) for r in data.runs]
    json_path = out / "ablation_results.json"
    json_path.write_text(_dump(ablation_results(data)))
    csv_path = out / "summary.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    md_path = out / "summary.md"
    md_path.write_text(markdown(data, rows))
    content_path = out / CONTENT_SUMMARY
    content_path.write_text(_dump(content_summary(data)))
    return [json_path, md_path, csv_path, content_path]


def finished_part(runs: Sequence[SuiteRun]) -> str:
    """' (finished)', or how many finished when `--include-unfinished` brought in partial runs."""
    finished = sum(1 for r in runs if not r.partial)
    return " (finished)" if finished == len(runs) else f" ({finished} finished, {len(runs) - finished} cut off or failed)"


def _pct(x: float | None, missing: str = "–") -> str:
    return missing if x is None else f"{100 * x:.1f}"


def accuracy_cell(r: dict, name: str, missing: str = "–") -> str:
    """'2.0 [0.0, 4.5]': the summary column `name` in % with its interval, where it has one."""
    if r[name] is None or r[f"{name}_ci_low"] is None:
        return _pct(r[name], missing)
    return f"{_pct(r[name])} [{_pct(r[f'{name}_ci_low'])}, {_pct(r[f'{name}_ci_high'])}]"


def _difference(r: dict, key: str) -> str:
    """'+1.5 [+0.0, +3.5] p=0.25': a paired difference in points, its interval and McNemar p."""
    if r[key] is None:
        return "–"
    points = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    return f"{points(r[key])} [{points(r[f'{key}_low'])}, {points(r[f'{key}_high'])}] p={r[f'{key}_p']:.2g}"


def _modal(r: dict, prefix: str) -> str:
    answer = r[prefix + "modal_answer"]
    return "–" if answer is None else f"`{answer}` ×{r[prefix + 'modal_count']}"


def _paired_section(runs: Sequence[SuiteRun]) -> list[str]:
    """Each bridge against its trained controls and the mismatched soft tokens, question by question,
    on validation (the verdict's) and on test (the tested translators); none when no run has them."""
    compared = [r for r in runs if r.comparisons or r.test_comparisons]
    names = sorted({name for r in compared for name in (*r.comparisons, *r.test_comparisons)})
    if not compared:
        return []
    lines = [
        "",
        "## Bridged against its trained controls and the mismatched soft tokens (paired)",
        "",
        "Bridged − other in points on the same questions (val: the final validation evaluation, which the"
        " verdict judges; test: the tested translators), with the 95% paired bootstrap interval and the exact McNemar p.",
        "",
        "| run | " + " | ".join(f"bridged − {name.replace('_', ' ')} {split}" for name in names for split in ("val", "test")) + " |",
        "|---|" + "---:|" * 2 * len(names),
    ]
    for run in compared:
        cells = {**_paired_cells(run.comparisons, ""), **_paired_cells(run.test_comparisons, TEST_PREFIX)}
        shown = [
            _difference(cells, key) if key in cells else "–"
            for name in names
            for key in (f"bridged_minus_{name}", f"{TEST_PREFIX}bridged_minus_{name}")
        ]
        lines.append(f"| {run.label} | " + " | ".join(shown) + " |")
    return lines


def _seeds_section(groups: list[dict]) -> list[str]:
    """One row per group of bridges that differ only in their seed (`seed_groups`)."""
    if not groups:
        return []
    lines = [
        "",
        "## Seeds (bridges that differ only in their seed; finished and tested)",
        "",
        "| runs | seeds | bridged test | mean [min, max] | bits transmitted (test) | trained-text control (test) | within 5 points of it |",
        "|---|---|---|---:|---|---:|---|",
    ]
    for g in groups:
        within = sum(1 for w in g["within_5_points_of_trained_text"] if w)
        bits = " / ".join("–" if b is None else f"{b:.1f}" for b in g["test_bits_transmitted"])
        lines.append(
            f"| {', '.join(g['runs'])} | {', '.join(g['seeds'])} | {' / '.join(_pct(a) for a in g['test_bridged_accuracy'])} | "
            f"{_pct(g['test_bridged_accuracy_mean'])} [{_pct(g['test_bridged_accuracy_min'])}, {_pct(g['test_bridged_accuracy_max'])}] | "
            f"{bits} | {_pct(g['trained_text_test_accuracy'])} | {within} of {len(g['runs'])} |"
        )
    return lines


def _time_section(runs: Sequence[SuiteRun]) -> list[str]:
    """Where each run's wall time went, in minutes (runs that logged `time/*` only)."""
    timed = [(run, seconds) for run in runs if (seconds := run.facts.phase_seconds)]
    if not timed:
        return []
    phases = [key.removeprefix(TIME_PREFIX).removesuffix("_s") for key in TIMES]
    lines = [
        "",
        "## Where the time went (minutes of wall time, all evaluations summed)",
        "",
        f"| run | {' | '.join(phases)} | total |",
        "|---|" + "---:|" * (len(phases) + 1),
    ]
    for run, seconds in timed:
        cells = ["–" if key not in seconds else f"{seconds[key] / 60:.1f}" for key in TIMES]
        lines.append(f"| {run.label} | {' | '.join(cells)} | {sum(seconds.values()) / 60:.1f} |")
    return lines


def positive_control_lines(data: SuiteData) -> list[str]:
    """Which passed positive controls the bridges' verdicts relied on, and which targets had none."""
    bridges = [r for r in data.runs if r.facts.kind != "soft_prompt" and r.verdict is not None]
    relied = sorted({r.positive_control for r in bridges if r.positive_control})
    missing = sorted({r.facts.target_model for r in bridges if not r.positive_control})
    lines = [f"Verdicts rely on the {text}." for text in relied]
    if missing:
        lines.append(
            f"No passed positive control on {', '.join(missing)} in the store: unless require_positive_control=false,"
            " bridges into it are judged only for collapse and degradation (rule `no_positive_control`;"
            " registry/positive_control.py)."
        )
    return [" ".join(lines), ""] if lines else []


def markdown(data: SuiteData, rows: list[dict]) -> str:
    # the column prefix of each evaluation shown: validation, and test where a run has one
    splits = {"val": ""}
    if any(r[TEST_PREFIX + "step"] is not None for r in rows):
        splits["test"] = TEST_PREFIX
    test = "test" in splits
    labels = " / ".join(splits)

    def each(cell) -> str:
        return " / ".join(cell(prefix) for prefix in splits.values())

    lines = [
        f"# Suite `{data.suite}`: {len(rows)} runs" + finished_part(data.runs),
        "",
        "Accuracies in % with 95% Wilson score intervals; degradation = peak - final (points); compression ="
        " prompt tokens / K (prompt tokens / (prompt tokens + K) with soft_plus_text). *val* selects: the"
        " validation peak picks the translator, and the verdict judges the final validation evaluation."
        + (" *test* reports: that translator (trained to the step shown) and the text baselines on held-out"
           " test questions, evaluated once." if test else ""),
        "",
        *positive_control_lines(data),
        f"| run | K | compression | source {labels} | target {labels} | bridged peak val (step) | bridged final val"
        + (" | bridged test (step)" if test else "") + " | degradation | verdict | changes |",
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if test else "") + "---:|---|---|",
    ]
    answers = [
        "",
        "## The bridged answers",
        "",
        "Invalid: answers without a final number. Distinct: different texts the bridged target wrote."
        " Most common: the answer it gave most often, and how often. Guess: the accuracy of giving that"
        " answer to every question. Bridged − baseline: in points on the same questions, with the 95% paired"
        " bootstrap interval and the exact McNemar p.",
        "",
        f"| run | invalid {labels} | distinct outputs {labels} | most common answer {labels} | guess {labels} | "
        + " | ".join(f"bridged − {b} {label}" for b in BASELINES for label in splits) + " |",
        "|---|---:|---:|---|---:|" + "---:|" * len(BASELINES) * len(splits),
    ]
    content_rows = []
    for r in rows:
        ratio = "–" if r["compression_ratio"] is None else f"{r['compression_ratio']:.1f}x"
        tested = f" | {accuracy_cell(r, TEST_COLUMN[BRIDGED])} ({r[TEST_PREFIX + 'step']})" if test else ""
        lines.append(
            f"| {r['run']} | {r['K']} | {ratio} | {each(lambda p: accuracy_cell(r, p + 'source_alone'))} | "
            f"{each(lambda p: accuracy_cell(r, p + 'target_alone'))} | {_pct(r['peak'])} ({r['peak_step']}) | "
            f"{accuracy_cell(r, VALIDATION_COLUMN[BRIDGED])}{tested} | {_pct(r['degradation'])} | {r['verdict'] or '–'} | "
            f"{r['changes'].replace('|', '/')} |"
        )
        distinct = each(lambda p: "–" if r[p + "distinct_outputs"] is None else str(r[p + "distinct_outputs"]))
        differences = " | ".join(_difference(r, f"{p}bridged_minus_{b}") for b in BASELINES for p in splits.values())
        answers.append(
            f"| {r['run']} | {each(lambda p: _pct(r[p + 'invalid_rate']))} | {distinct} | {each(lambda p: _modal(r, p))} | "
            f"{each(lambda p: _pct(r[p + 'guess']))} | {differences} |"
        )
        if r["bits"] is not None:
            num = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
            frac = num(r["fraction_recovered"])
            if r["fraction_low"] is not None:
                frac += f" [{num(r['fraction_low'])}, {num(r['fraction_high'])}]"
            content_rows.append(
                f"| {r['run']} | {num(r['bits'])} [{num(r['bits_low'])}, {num(r['bits_high'])}] | {frac} | "
                f"{num(r['retrieval_top1'])} | {_pct(r['mismatched_accuracy'])} | {_pct(r['final'])} | "
                f"{_pct(r['no_source_accuracy'])} | {_pct(r['trained_text_accuracy'])} |"
            )
    lines += answers
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
    lines += _paired_section(data.runs)
    lines += _seeds_section(seed_groups(data))
    lines += _time_section(data.runs)
    if data.skipped:
        lines += ["", "Not finished (left out): " + ", ".join(
            f"{s['name']} ({s['status']}" + (f"; run again to the end as {s['superseded_by'][:6]})" if "superseded_by" in s else ")")
            for s in data.skipped
        )]
    return "\n".join(lines) + "\n"
