"""`python -m registry analyze`: a suite's runs in MLflow -> JSON, tables, figures, LaTeX.

The suite's runs are written straight into a private store (params, metric histories, eval
JSONLs on 200 questions, and a test evaluation of the best translator as the trainer logs it)
with designed accuracies, so each verdict and each test number is known in advance.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import TINY_RUN, private_store

from latentbridge.config import RunConfig
from latentbridge.data.synthetic import synthetic_examples
from latentbridge.metric_names import ACCURACY, BITS_LOW, BRIDGED, BRIDGED_ACCURACY, LOSS, RETRIEVAL, SOURCE, TARGET, TEST_PREFIX

SUITE = "paper"
N = 200
TARGET_RIGHT, SOURCE_RIGHT = 120, 90  # correct answers of target-alone and source-alone out of N
# name: (K, curve of bridged correct answers at steps 0, 100, 200, 300, extra overrides, fixes tag)
RUNS = {
    "k64": (64, [30, 100, 130, 140], ["optim.lr=0.0003"], "on"),  # final 0.70 > 0.60: headline
    "k48": (48, [30, 90, 105, 110], ["optim.lr=0.0003"], "on"),  # 0.55: control
    "k32": (32, [30, 60, 75, 80], ["optim.lr=0.0003"], "on"),  # 0.40 < 0.45: negative
    "no-fixes": (64, [30, 130, 120, 100], ["optim.lr=0.001"], "off"),  # 0.65 -> 0.50: unstable
}
# The test evaluation: other questions (seed 98), the baselines right on the first 80 (source) and
# 100 (target); the bridged target right on the first k and invalid on the rest, or one constant answer
TEST_SEED, TEST_SOURCE_RIGHT, TEST_TARGET_RIGHT = 98, 80, 100
TEST_BRIDGED = {"k64": 150, "k48": 100, "k32": 60, "no-fixes": "2"}  # "2" is the gold of 16 test questions
NO_LM_LOSS = "no-fixes"  # the run that logs only the total loss, no loss/lm


def _total_loss(step: int, k: int) -> float:
    return 3.0 * math.exp(-step / 150) + 32 / k


def _lm_loss(step: int, k: int) -> float:
    """The loss/lm the fake trainer logs: the LM term, 80% of the total."""
    return 0.8 * _total_loss(step, k)


def _records(step: int, bridged: int) -> list[dict]:
    examples = synthetic_examples(N, 99)
    out = []
    for i, ex in enumerate(examples):
        rec = {"step": step, "index": i, "question": ex.question, "gold_solution": ex.answer, "gold": ex.gold}
        for name, k in ((SOURCE, SOURCE_RIGHT), (TARGET, TARGET_RIGHT), (BRIDGED, bridged)):
            answer = ex.gold if i < k else ("[invalid]" if i % 3 == 0 else "-1")
            rec[name] = {"output": f"step {step} {name} #### {answer}", "answer": answer, "correct": i < k}
        out.append(rec)
    return out


def _test_records(step: int, bridged: int | str) -> list[dict]:
    """The test JSONL, every answer scored against the gold as the trainer scores it."""
    out = []
    for i, ex in enumerate(synthetic_examples(N, TEST_SEED)):
        rec = {"step": step, "index": i, "question": ex.question, "gold_solution": ex.answer, "gold": ex.gold}
        bridged_answer = bridged if isinstance(bridged, str) else ex.gold if i < bridged else "[invalid]"
        answers = {SOURCE: ex.gold if i < TEST_SOURCE_RIGHT else "-1", TARGET: ex.gold if i < TEST_TARGET_RIGHT else "-1", BRIDGED: bridged_answer}
        for name, answer in answers.items():
            rec[name] = {"output": f"{i}: #### {answer}", "answer": answer, "correct": answer == ex.gold}
        if bridged_answer == "[invalid]":
            rec[BRIDGED]["output"] = "no final number"
        elif isinstance(bridged, str):  # collapsed: one text whatever the question
            rec[BRIDGED]["output"] = f"#### {bridged}"
        out.append(rec)
    return out


def _fake_run(
    root: Path, config: RunConfig, curve: list[int], tags: dict[str, str], status: str = "FINISHED", test: int | str | None = None,
    lm_loss: bool = True,
) -> str:
    from latentbridge.evaluate import write_jsonl
    from registry.reporter import MlflowReporter
    from registry.runs import close_run, open_run

    run_dir = root / config.name
    run_id = open_run(run_dir, config.name, SUITE, tags={"suite": SUITE, **tags})
    reporter = MlflowReporter(run_id)
    reporter.log_params(config.flat())
    k = config.translator.num_tokens
    for step in range(1, 301, 10):
        reporter.log_metrics({"loss": _total_loss(step, k), **({"loss/lm": _lm_loss(step, k)} if lm_loss else {})}, step)
    for step, correct in zip((0, 100, 200, 300), curve):
        records = _records(step, correct)
        invalid = sum(r["bridged"]["answer"] == "[invalid]" for r in records)
        reporter.log_metrics(
            {"bridged_accuracy": correct / N, "bridged_invalid": invalid, "target_accuracy": TARGET_RIGHT / N, "source_accuracy": SOURCE_RIGHT / N},
            step,
        )
        reporter.log_artifact(write_jsonl(records, run_dir / "evals" / f"eval_step_{step:06d}.jsonl"), "evals")
        reporter.log_metrics({"time/train_s": 0.0 if step == 0 else 60.0, "time/bridged_s": 6.0, "time/content_s": 30.0}, step)
    if test is not None:  # as Trainer.evaluate_test: the best translator, at the last step
        best = 100 * curve.index(max(curve))
        records = _test_records(best, test)
        reporter.log_artifact(write_jsonl(records, run_dir / "test" / "test_eval.jsonl"), "test")
        reporter.log_metrics({TEST_PREFIX + ACCURACY[s]: sum(r[s]["correct"] for r in records) / N for s in (SOURCE, TARGET, BRIDGED)}, 300)
        reporter.log_metrics({"test_time/bridged_s": 12.0, "test_time/content_s": 60.0}, 300)
    if status != "RUNNING":
        close_run(run_id, status)
    return run_id


def _positive_control(root: Path, model: str, bits_low: float, retrieval: float, name: str = "tiny-self") -> str:
    """A finished positive-control bridge of `model` to itself, as the trainer logs its test metrics."""
    from registry.reporter import MlflowReporter
    from registry.runs import close_run, open_run

    config = RunConfig().override(f"source_model={model}", f"target_model={model}", *TINY_RUN, "suite=positive-control", f"name={name}")
    run_id = open_run(root / name, name, "positive-control", tags={"suite": "positive-control", "git_commit": "0" * 40})
    reporter = MlflowReporter(run_id)
    reporter.log_params(config.flat())
    reporter.log_metrics({TEST_PREFIX + BITS_LOW: bits_low, TEST_PREFIX + RETRIEVAL: retrieval}, 300)
    close_run(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def suite_store(tmp_path_factory, tiny_pair):
    root = tmp_path_factory.mktemp("registry_analysis")
    with private_store(root):
        source, target = tiny_pair
        # the verdicts below are judged: the tiny target's positive control passed
        positive = _positive_control(root / "positive-control", str(target), bits_low=12.0, retrieval=0.95)
        base = RunConfig().override(f"source_model={source}", f"target_model={target}", *TINY_RUN, f"suite={SUITE}",
                                    f"eval.num_questions={N}", "train.steps=300", "translator.num_tokens=64")
        suite_base = base.override("optim.lr=0.0003")
        ids = {}
        for name, (k, curve, extra, fixes) in RUNS.items():
            config = base.override(f"name={name}", f"translator.num_tokens={k}", *extra)
            if name == "k48":  # a first attempt with the same config, cut off (a lease ended) before this one ran to the end
                ids["k48 cut off"] = _fake_run(root / "first_attempt", config, [10, 20], {}, status="KILLED")
            # as the launcher tags it at submit: the diff against the suite's base (K=64, lr 3e-4)
            diff = {key: v for key, v in config.flat().items() if key != "name" and suite_base.flat()[key] != v}
            tags = {"fixes": fixes, "slurm_job_id": f"job-{name}", "config_diff": json.dumps(diff)}
            ids[name] = _fake_run(root / "runs", config, curve, tags, test=TEST_BRIDGED[name], lm_loss=name != NO_LM_LOSS)
        _fake_run(root / "runs", base.override("name=crashed"), [30, 40, 40, 40], {}, status="FAILED")
        _fake_run(root / "runs", base.override("name=other", "suite=elsewhere"), [30, 40, 40, 40], {"suite": "elsewhere"})
        yield {"root": root, "ids": ids, "positive_control": positive}


@pytest.fixture(scope="module")
def analysis(suite_store):
    from registry.analysis import analyze
    from registry.verdict import VerdictRules

    # this suite holds no trained controls: its verdicts are judged against target-alone here
    # (test_without_trained_controls_no_run_is_a_headline: what the default rules say of it)
    return analyze(SUITE, suite_store["root"] / "out", rules=VerdictRules.load(require_trained_controls=False))


def test_without_trained_controls_no_run_is_a_headline(suite_store):
    from registry.analysis import analyze

    result = analyze(SUITE, suite_store["root"] / "default-rules", log_to_mlflow=False, count_prompt_tokens=False)
    runs = {r["run"]: r for r in json.loads((result.out / "ablation_results.json").read_text())["runs"]}
    assert runs["k64"]["verdict"] == "ablation" and "no trained no_source or trained_text control" in runs["k64"]["verdict_rule"]
    assert {name: r["verdict"] for name, r in runs.items() if name != "k64"} == {"k48": "control", "k32": "negative", "no-fixes": "unstable"}


def test_analysis_writes_every_asset(analysis):
    out = analysis.out
    expected = ["ablation_results.json", "summary.md", "summary.csv", "content_summary.json", "paper.tex"]
    expected += [f"tables/{t}.tex" for t in ("main_results", "ablations", "compression")]
    expected += [f"figures/{f}.{ext}" for f in ("training_curves", "stability", "sequence_length", "compression_quality", "content_vs_k") for ext in ("pdf", "png")]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(p.relative_to(out).as_posix() for p in analysis.files) == sorted(expected)
    for pdf in out.glob("figures/*.pdf"):
        assert pdf.read_bytes().startswith(b"%PDF")


def test_ablation_results_hold_the_suite_and_the_verdicts(analysis):
    results = json.loads((analysis.out / "ablation_results.json").read_text())
    assert results["suite"] == SUITE
    runs = {r["run"]: r for r in results["runs"]}
    assert sorted(runs) == sorted(RUNS)  # the failed run and the other suite's run are left out
    assert [s["name"] for s in results["skipped_unfinished"]] == ["k48", "crashed"]
    assert {name: r["verdict"] for name, r in runs.items()} == {
        "k64": "headline", "k48": "control", "k32": "negative", "no-fixes": "unstable",
    }
    unstable = runs["no-fixes"]
    assert (unstable["peak"], unstable["peak_step"], unstable["final"]) == (0.65, 100, 0.5)
    assert unstable["degradation"] == pytest.approx(0.15)
    assert unstable["target_alone"] == 0.6 and unstable["source_alone"] == 0.45
    assert unstable["config_diff"] == {"optim.lr": "0.001"}  # as recorded at submit
    assert runs["k32"]["config_diff"] == {"translator.num_tokens": "32"}
    assert runs["k64"]["invalid_rate"] == pytest.approx(20 / 200)  # every third wrong answer is invalid
    assert runs["k64"]["slurm_job"] == "job-k64" and runs["k64"]["history"]["bridged_accuracy"][-1] == [300, 0.7]
    ratios = {name: r["compression_ratio"] for name, r in runs.items()}
    assert ratios["k32"] == pytest.approx(2 * ratios["k64"]) and ratios["k64"] > 1


def test_summary_table_markdown_and_csv(analysis):
    rows = list(csv.DictReader((analysis.out / "summary.csv").open()))
    assert [r["run"] for r in rows] == list(RUNS)
    assert {"peak", "final", "degradation", "source_alone", "target_alone", "invalid_rate", "K", "compression_ratio"} <= set(rows[0])
    assert rows[0]["K"] == "64" and float(rows[0]["final"]) == 0.7
    md = (analysis.out / "summary.md").read_text()
    assert "| k64 | 64 |" in md and "headline" in md


def test_test_evaluation_beside_validation(analysis):
    """Each run's test evaluation (the best translator) with intervals, paired differences,
    distinct outputs and the guess accuracy, beside the same on the final validation evaluation."""
    runs = {r["run"]: r for r in json.loads((analysis.out / "ablation_results.json").read_text())["runs"]}
    k64, k48, k32, collapsed = runs["k64"], runs["k48"], runs["k32"], runs["no-fixes"]
    # test: the translator of the validation peak, 150 right and 50 invalid answers
    assert (k64["test_step"], k64["test_n"], k64["test_bridged"], k64["test_invalid_rate"]) == (300, 200, 0.75, 0.25)
    assert (k64["test_source_alone"], k64["test_target_alone"]) == (0.4, 0.5)
    assert k64["test_bridged_ci_low"] == pytest.approx(0.69, abs=0.011) and k64["test_bridged_ci_high"] == pytest.approx(0.81, abs=0.011)
    assert k64["test_target_alone_ci_low"] < 0.5 < k64["test_target_alone_ci_high"]
    assert k64["test_bridged_minus_target"] == pytest.approx(0.25) and k64["test_bridged_minus_target_low"] > 0.15
    assert k64["test_bridged_minus_target_p"] == pytest.approx(2 * 0.5**50)  # 50 discordant pairs, all for bridged
    assert k64["test_bridged_minus_source"] == pytest.approx(0.35) and k64["test_bridged_minus_source_p"] == pytest.approx(2 * 0.5**70)
    assert (k64["test_distinct_outputs"], k64["test_modal_answer"], k64["test_modal_count"], k64["test_guess"]) == (151, "[invalid]", 50, 0.0)
    assert k48["test_bridged_minus_target"] == 0 and k48["test_bridged_minus_target_p"] == 1.0
    assert (k48["test_bridged_minus_target_low"], k48["test_bridged_minus_target_high"]) == (0.0, 0.0)
    assert k32["test_bridged_minus_source"] == pytest.approx(-0.1) and k32["test_bridged_minus_source_p"] == pytest.approx(2 * 0.5**20)
    assert k32["test_bridged_minus_source_high"] < 0
    # a collapsed bridge: one answer, "2", to every question; it scores what guessing "2" scores
    assert (collapsed["test_step"], collapsed["test_bridged"], collapsed["test_guess"]) == (100, 0.08, 0.08)
    assert (collapsed["test_distinct_outputs"], collapsed["test_modal_answer"], collapsed["test_modal_count"]) == (1, "2", 200)
    # validation: the final evaluation the verdict judged, the same columns without the prefix
    assert k64["bridged_minus_target"] == pytest.approx(0.1) and k64["bridged_minus_target_p"] == pytest.approx(2 * 0.5**20)
    assert k64["source_alone_ci_low"] < 0.45 < k64["source_alone_ci_high"] and k64["final_ci_low"] < 0.7 < k64["final_ci_high"]
    assert (collapsed["modal_answer"], collapsed["modal_count"], collapsed["guess"]) == ("-1", 67, 0.0)
    assert collapsed["distinct_outputs"] > 3  # each right answer is worded its own way

    rows = {r["run"]: r for r in csv.DictReader((analysis.out / "summary.csv").open())}
    assert rows["no-fixes"]["test_guess"] == "0.0800" and rows["k64"]["test_modal_answer"] == "[invalid]"
    md = (analysis.out / "summary.md").read_text()
    assert "| run | K | compression | source val / test | target val / test | bridged peak val (step) | bridged final val | bridged test (step) |" in md
    assert "| no-fixes | 16.5 / 0.0 | " in md and "| `-1` ×67 / `2` ×200 | 0.0 / 8.0 |" in md
    assert "| 45.0 [" in md and "] / 40.0 [" in md and "] (300) |" in md
    assert "p=1.8e-15" in md  # k64's test gain over target-alone


def test_the_summary_says_where_each_run_spent_its_time(analysis):
    md = (analysis.out / "summary.md").read_text()
    assert "| run | train | baselines | bridged | mismatched | content | total |" in md
    # three evaluations after step 0 of 60 s of steps; 4 x 6 s + 12 s answering; 4 x 30 s + 60 s content
    assert "| k64 | 3.0 | – | 0.6 | – | 3.0 | 6.6 |" in md


def test_the_content_summary_says_how_each_bridge_ran(analysis):
    runs = {r["name"]: r for r in json.loads((analysis.out / "content_summary.json").read_text())["runs"]}
    assert sorted(runs) == sorted(RUNS)
    k32 = runs["k32"]
    assert (k32["K"], k32["batch_size"], k32["steps"], k32["task"]) == (32, 2, 300, "synthetic")
    assert k32["direction"] == f"{k32['source_model']} -> {k32['target_model']}" and k32["source_model"] != k32["target_model"]
    assert k32["split"] == "test" or k32["bridged_accuracy"] is not None
    assert k32["target_accuracy"] is not None and k32["verdict"] == "negative"
    for name, run in runs.items():  # each comparison the verdict made is in the summary, with its test
        assert all(run[f"bridged_minus_{c}_p"] <= 1 and run[f"bridged_minus_{c}_low"] <= run[f"bridged_minus_{c}"]
                   <= run[f"bridged_minus_{c}_high"] for c in analysis.data.runs[list(RUNS).index(name)].comparisons), name


def test_a_run_cut_off_is_reported_as_partial_only_when_asked(analysis, suite_store):
    from registry.analysis import analyze

    def summary(out):
        return {r["name"]: r for r in json.loads((out / "content_summary.json").read_text())["runs"]}

    assert not any(name.startswith("crashed") for name in summary(analysis.out))  # by default: finished runs only
    assert {r["status"] for r in summary(analysis.out).values()} == {"FINISHED"}
    result = analyze(SUITE, suite_store["root"] / "partial", log_to_mlflow=False, count_prompt_tokens=False,
                     include_unfinished=True)
    runs = summary(result.out)
    crashed = runs.pop("crashed [failed at step 300 of 300]")
    assert crashed["status"] == "FAILED" and crashed["last_step"] == 300
    assert crashed["verdict_rule"].startswith("partial run (failed), judged on its last evaluation (step 300): ")
    assert sorted(runs) == sorted(RUNS)
    # k48's cut-off first attempt is replaced by the attempt that finished, not reported beside it
    (cut_off,) = result.data.skipped
    assert (cut_off["run_id"], cut_off["superseded_by"]) == (suite_store["ids"]["k48 cut off"], suite_store["ids"]["k48"])
    md = (result.out / "summary.md").read_text()
    assert "k48 (KILLED; run again to the end as " in md and "k48#" not in md
    assert "| crashed [failed at step 300 of 300] |" in md
    assert f"runs ({len(RUNS)} finished, 1 cut off or failed)" in md.splitlines()[0]
    assert (analysis.out / "summary.md").read_text().splitlines()[0].endswith(f"{len(RUNS)} runs (finished)")


def test_a_cut_off_run_is_replaced_only_by_a_later_finished_run_of_the_same_config():
    from types import SimpleNamespace

    from registry.analysis.collect import _superseded

    def run(run_id, status, start, **params):
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id, status=status, start_time=start),
                               data=SimpleNamespace(params={"name": "a", "train.batch_size": "8", **params}))

    runs = [
        run("finished-first", "FINISHED", 1),
        run("cut-off", "KILLED", 2),
        run("cut-off-batch-32", "FAILED", 3, **{"train.batch_size": "32"}),  # same name, another config
        run("again", "FINISHED", 4),
        run("again-later", "FINISHED", 5),
        run("still-running", "RUNNING", 6),  # nothing finished after it
    ]
    assert _superseded(runs) == {"cut-off": "again-later"}
    # a rerun by newer code logs an option the cut-off attempt's code did not have: still a rerun;
    # a rerun that changed a value both logged is not
    newer = {"train.best_tiebreak": "content_bits"}
    runs = [run("cut-off", "KILLED", 1), run("rerun-newer-code", "FINISHED", 2, **newer),
            run("cut-off-2", "KILLED", 3), run("rerun-other-batch", "FINISHED", 4, **newer, **{"train.batch_size": "2"})]
    assert _superseded(runs) == {"cut-off": "rerun-newer-code"}


def test_a_suite_without_test_evaluations_has_no_test_columns(suite_store):
    from registry.analysis import analyze

    result = analyze("elsewhere", suite_store["root"] / "elsewhere", log_to_mlflow=False, count_prompt_tokens=False)
    md = (result.out / "summary.md").read_text()
    tables = "\n".join(line for line in md.splitlines() if not line.startswith("Verdicts rely on"))  # the control's own split
    assert "test" not in tables.replace("questions", "") and "| source val | target val |" in md
    (row,) = csv.DictReader((result.out / "summary.csv").open())
    assert row["test_step"] == row["test_bridged"] == "" and row["distinct_outputs"] != ""
    assert "Test [" not in (result.out / "tables" / "main_results.tex").read_text()


def test_latex_tables(analysis):
    main = (analysis.out / "tables" / "main_results.tex").read_text()
    assert "\\toprule" in main and "Bridge: k64" in main and "Bridge: k48" in main and "Bridge: k32" not in main
    assert "Final (val) [95\\% CI] & Test [95\\% CI] (step) & Distinct (val / test) & Guess (val / test)" in main
    k64 = next(line for line in main.splitlines() if line.startswith("Bridge: k64"))
    assert "& 70.0 [" in k64 and "& 75.0 [" in k64 and "] (300) &" in k64 and "/ 151 & 0.0 / 0.0 & headline" in k64
    assert "Target alone" in main and "& 60.0 [" in main and "& 50.0 [" in main
    ablations = (analysis.out / "tables" / "ablations.tex").read_text()
    assert "no-fixes" in ablations and "num\\_tokens=32" in ablations
    paper = (analysis.out / "paper.tex").read_text()
    for name in ("main_results", "ablations", "compression"):
        assert f"\\input{{tables/{name}}}" in paper
    assert "\\includegraphics{figures/compression_quality.pdf}" in paper


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
def test_paper_compiles_with_pdflatex(analysis, tmp_path):
    from registry.analysis.latex import compile_pdf

    copy = tmp_path / "paper"
    shutil.copytree(analysis.out, copy)
    pdf = compile_pdf(copy)
    assert pdf.read_bytes().startswith(b"%PDF")
    log = (copy / "paper.log").read_text(errors="replace")
    assert "LaTeX Warning: Reference" not in log and "LaTeX Warning: There were undefined references" not in log
    assert "Overfull \\hbox" not in log  # every table and figure fits the text width


def test_files_are_logged_to_an_analysis_run_and_not_reanalysed(analysis, suite_store):
    from registry.analysis import analyze
    from registry.store import client

    run = client().get_run(analysis.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["latentbridge.run_kind"] == "analysis"
    logged = {a.path for a in client().list_artifacts(analysis.run_id)}
    assert {"ablation_results.json", "summary.md", "summary.csv", "paper.tex", "figures", "tables"} <= logged
    figures = {a.path for a in client().list_artifacts(analysis.run_id, "figures")}
    assert "figures/training_curves.png" in figures and "figures/stability.pdf" in figures
    again = analyze(SUITE, suite_store["root"] / "out2", log_to_mlflow=False, count_prompt_tokens=False)
    assert [r.label for r in again.data.runs] == list(RUNS) and again.run_id is None


def test_unknown_suite_is_a_clear_error(suite_store, capsys):
    from registry.cli import main

    assert main(["analyze", "--suite", "nosuch", "--out", str(suite_store["root"] / "x")]) == 2
    err = capsys.readouterr().err
    assert "suite 'nosuch' has no finished runs" in err and "'paper'" in err and "'elsewhere'" in err


# --------------------------------------------------------------------------- figures and paper (issue 15)
def _runs(analysis) -> dict:
    return {run.label: run for run in analysis.data.runs}


def _errorbars(ax) -> dict[str, tuple[list[float], list[float]]]:
    """label -> (x, y) of each errorbar the axes drew."""
    from matplotlib.container import ErrorbarContainer

    return {c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata())) for c in ax.containers if isinstance(c, ErrorbarContainer)}


def test_training_curves_plot_the_answer_nll_and_each_evaluation_with_its_interval(analysis):
    """The loss panel plots loss/lm (the total loss, dashed, for a run without it); each
    evaluation's bridged accuracy carries its bootstrap interval from that evaluation's records."""
    import matplotlib.pyplot as plt

    from registry.analysis.collect import LM_LOSS
    from registry.analysis.figures import loss_curve, training_curves
    from registry.verdict import accuracy_interval

    runs = _runs(analysis)
    steps = range(1, 301, 10)
    key, points = loss_curve(runs["k64"])
    assert key == LM_LOSS and points == [(s, pytest.approx(_lm_loss(s, 64))) for s in steps]
    assert loss_curve(runs[NO_LM_LOSS]) == (LOSS, [(s, pytest.approx(_total_loss(s, 64))) for s in steps])
    # every evaluation: the share right and its interval, from that evaluation's records
    k64 = runs["k64"].evaluations
    assert sorted(k64) == [0, 100, 200, 300]
    assert k64[100] == (0.5, *accuracy_interval([i < 100 for i in range(N)])) and k64[300].value == 0.7

    fig = training_curves(analysis.data.runs)
    acc_ax, loss_ax = fig.axes
    assert loss_ax.get_title() == "Answer NLL (loss/lm)"
    drawn = {(line.get_linestyle(), round(line.get_ydata()[0], 6)) for line in loss_ax.get_lines()}
    assert ("-", round(_lm_loss(1, 64), 6)) in drawn and ("--", round(_total_loss(1, 64), 6)) in drawn
    assert ("-", round(_total_loss(1, 32), 6)) not in drawn  # a run with loss/lm: its total is not plotted
    bars = acc_ax.containers
    assert len(bars) == len(RUNS)  # one set of interval bars per run
    k64_bars = bars[list(RUNS).index("k64")]
    lows = sorted(seg[0][1] for seg in k64_bars.lines[2][0].get_segments())
    assert lows == pytest.approx(sorted(100 * k64[s].low for s in k64))  # in %
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("target alone (val) 60.0 [") for t in legend)  # the baseline with its interval
    plt.close(fig)

    results = {r["run"]: r for r in json.loads((analysis.out / "ablation_results.json").read_text())["runs"]}
    assert results["k64"]["evaluations"][-1] == [300, 0.7, k64[300].low, k64[300].high]
    assert "loss/lm" in results["k64"]["history"] and "loss/lm" not in results[NO_LM_LOSS]["history"]
    paper = (analysis.out / "paper.tex").read_text()
    assert "dashed: the total loss, for the runs that logged no \\texttt{loss/lm} (no-fixes)" in paper
    assert "95\\% Wilson intervals over the evaluation's questions (from its records)" in paper


def test_stability_labels_drops_in_points_on_a_percent_axis_and_marks_zero(analysis):
    import matplotlib.pyplot as plt

    from registry.analysis.figures import drop_label, stability

    runs = _runs(analysis)
    assert drop_label(runs["no-fixes"]) == "−15.0 pt" and drop_label(runs["k64"]) == "0 pt"
    zero = dataclasses.replace(runs["k32"], label="zero")
    zero.facts = dataclasses.replace(zero.facts, history={BRIDGED_ACCURACY: [(0, 0.02), (100, 0.0)]})
    fig = stability([runs["k64"], runs["no-fixes"], zero])
    (ax,) = fig.axes
    assert "%" in ax.get_ylabel()
    heights = sorted(round(bar.get_height(), 6) for bars in ax.containers for bar in bars)
    assert heights == [0.0, 2.0, 50.0, 65.0, 70.0, 70.0]  # in %
    assert [t.get_text() for t in ax.texts] == ["0 pt", "−2.0 pt", "−15.0 pt"]  # fixes on (k64, zero), then off
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [(list(m.get_xdata()), list(m.get_ydata())) for m in markers] == [([1 + 0.19], [0])]  # zero's final bar
    plt.close(fig)


def test_sequence_length_plots_only_runs_that_change_k_alone(analysis):
    """Members: recorded config diffs within {translator.num_tokens}; the rest left out, saying why."""
    import matplotlib.pyplot as plt

    from registry.analysis.figures import k_sweep, sequence_length

    runs = _runs(analysis)
    members, left_out = k_sweep(analysis.data.runs)
    assert [r.label for r in members] == ["k64", "k48", "k32"] and left_out == {"no-fixes": "also lr"}
    fig = sequence_length(analysis.data.runs)
    (ax,) = fig.axes
    points = sorted((x[0], y[0]) for x, y in _errorbars(ax).values())
    assert points == [(32, 30.0), (48, 50.0), (64, 75.0)]  # held-out test, in %
    assert "Left out (1): no-fixes (also lr)." in ax.get_xlabel()
    plt.close(fig)

    unrecorded = dataclasses.replace(runs["k48"], label="old")
    unrecorded.facts = dataclasses.replace(unrecorded.facts, config_diff={}, diff_basis="not recorded at submit")
    members, left_out = k_sweep([runs["k64"], unrecorded])
    assert [r.label for r in members] == ["k64"] and left_out == {"old": "config diff not recorded"}
    fig = sequence_length([runs["k64"], unrecorded])
    assert "Only K=64: one point, no trade-off to read." in fig.axes[0].get_xlabel()
    plt.close(fig)
    caption = (analysis.out / "paper.tex").read_text()
    assert "differs from the suite's base in $K$ alone" in caption and "Left out: no-fixes" in caption


def test_compression_quality_plots_held_out_test_one_legend_entry_a_run(analysis):
    """Test accuracy (not the validation peak), final validation marked for an untested run,
    runs told apart by legend (no labels on the points), coinciding ratios spread apart."""
    import matplotlib.pyplot as plt

    from registry.analysis.figures import compression_quality

    runs = _runs(analysis)
    untested = dataclasses.replace(runs["k48"], label="untested", test=None)
    fig = compression_quality([*analysis.data.runs, untested])
    ax = fig.axes[0]
    drawn = _errorbars(ax)
    values = {label: round(y[0], 6) for label, (_, y) in drawn.items()}
    target = next(label for label in values if "alone, full prompt (val)" in label)  # "untested" has no test: baselines on val
    assert values == {"k64 (K=64)": 75.0, "k48 (K=48)": 50.0, "k32 (K=32)": 30.0, "no-fixes (K=64)": 8.0,
                      "untested (K=48), final val": 55.0, target: 60.0}
    assert drawn["k64 (K=64)"][0] != drawn["no-fixes (K=64)"][0]  # the same ratio, spread apart
    assert drawn[target][0] == [pytest.approx(1.0)]
    assert not ax.texts  # no point labels to overlap: the legend names the runs
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert set(values) == legend
    plt.close(fig)
    table = (analysis.out / "tables" / "compression.tex").read_text()
    assert "Bridged [95\\% CI] & Split" in table and re.search(r"k64 & 64 & .* & 75\.0 \[[\d.]+, [\d.]+\] & test", table)


def test_figures_are_drawn_at_print_size_with_readable_text(analysis):
    """No figure is wider than the paper's text and it is included unscaled: every text is >= 8 pt on paper."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from registry.analysis.figures import DRAW, PRINT_WIDTH, SMALLEST_FONT

    for name, draw in DRAW.items():
        fig = draw(analysis.data.runs)
        fig.canvas.draw()
        assert fig.get_size_inches()[0] <= PRINT_WIDTH, name
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert texts and min(t.get_fontsize() for t in texts) >= SMALLEST_FONT, name
        plt.close(fig)
        box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)", (analysis.out / "figures" / f"{name}.pdf").read_bytes())
        assert float(box.group(1)) <= PRINT_WIDTH * 72 + 0.5, name
    paper = (analysis.out / "paper.tex").read_text()
    assert paper.count("\\includegraphics{figures/") == len(DRAW) and "\\includegraphics[" not in paper


def test_ablations_table_keeps_each_change_whole(analysis):
    from registry.analysis.collect import SuiteData
    from registry.analysis.latex import ablations

    run = _runs(analysis)["no-fixes"]
    diff = {"loss.info_nce_weight": "0.0", "loss.kl_weight": "0.0", "optim.lr": "0.0003", "optim.warmup_steps": "0",
            "train.early_stop_patience": "0", "translator.dit_teacher": "prompt"}
    long = dataclasses.replace(run, facts=dataclasses.replace(run.facts, config_diff=diff))
    table = ablations(SuiteData(SUITE, [long]))
    assert "..." not in table and "\\begin{tabularx}{\\linewidth}{l>{\\raggedright\\arraybackslash}X" in table
    for key, value in diff.items():
        assert f"{key}={value}".replace("_", "\\_") in table


def test_reanalysis_replaces_the_analysis_run_and_logs_the_pdf(analysis, suite_store):
    """One analysis run a suite and scope: the second analysis deletes the first; paper.pdf is
    logged when made; another suite's analysis run in the same experiment is left alone."""
    from registry.analysis import analyze
    from registry.analysis.analyze import SCOPE_TAG, analysis_runs
    from registry.store import client

    pdf = shutil.which("pdflatex") is not None
    first = analyze("elsewhere", suite_store["root"] / "again1", count_prompt_tokens=False)
    second = analyze("elsewhere", suite_store["root"] / "again2", count_prompt_tokens=False, pdf=pdf)
    store = client()
    assert store.get_run(first.run_id).info.lifecycle_stage == "deleted"
    kept = store.get_run(second.run_id)
    assert kept.info.lifecycle_stage == "active" and kept.data.tags[SCOPE_TAG] == ",".join(second.data.experiment_ids)
    assert analysis_runs(second.data.experiment_ids[0], "elsewhere", kept.data.tags[SCOPE_TAG]) == [second.run_id]
    assert store.get_run(analysis.run_id).info.lifecycle_stage == "active"  # suite "paper"'s analysis, same experiment
    logged = {a.path for a in store.list_artifacts(second.run_id)}
    assert ("paper.pdf" in logged) == pdf and (suite_store["root"] / "again2" / "paper.pdf" in second.files) == pdf


def test_a_bridge_is_compared_with_its_trained_controls_on_the_test_questions_too(suite_store, tiny_pair):
    """A bridge (test: 150 right of 200) beside its trained-text control (100 right) and no-source
    control (30 right), each tested: the summary pairs them question by question on test as on
    validation, with the paired interval and the exact McNemar p, in the JSON and the markdown."""
    from registry.analysis import analyze

    source, target = tiny_pair
    base = RunConfig().override(f"source_model={source}", f"target_model={target}", *TINY_RUN, "suite=controlled",
                                f"eval.num_questions={N}", "train.steps=300", "translator.num_tokens=64")
    soft_prompt = ("translator.kind=soft_prompt", "loss.info_nce_weight=0.0", "loss.prompt_alignment_weight=0.0")
    runs = {  # name: (config, validation curve, test bridged right)
        "bridge": (base.override("name=bridge"), [30, 100, 130, 140], 150),
        "trained-text": (base.override("name=trained-text", *soft_prompt, "eval.prompt_mode=soft_plus_question"), [30, 80, 100, 120], 100),
        "no-source": (base.override("name=no-source", *soft_prompt), [10, 20, 30, 30], 30),
        "bridge-seed2": (base.override("name=bridge-seed2", "seed=2"), [30, 60, 80, 90], 80),  # the same recipe
        "bridge-k32": (base.override("name=bridge-k32", "translator.num_tokens=32"), [30, 60, 80, 90], 80),  # another
    }
    with private_store(suite_store["root"]):
        for config, curve, test in runs.values():
            _fake_run(suite_store["root"] / "controlled", config, curve, {"suite": "controlled"}, test=test)
        result = analyze("controlled", suite_store["root"] / "controlled-out", log_to_mlflow=False, count_prompt_tokens=False)
    summary = json.loads((result.out / "content_summary.json").read_text())
    bridge = next(run for run in summary["runs"] if run["name"] == "bridge")
    # the two seeds of one recipe form a group (bridge-k32 differs in K: alone, so no group)
    (group,) = summary["seed_groups"]
    assert (group["runs"], group["seeds"], group["test_bridged_accuracy"]) == (["bridge", "bridge-seed2"], ["1234", "2"], [0.75, 0.4])
    assert group["test_bridged_accuracy_mean"] == pytest.approx(0.575) and group["trained_text_test_accuracy"] == 0.5
    assert group["within_5_points_of_trained_text"] == [True, False]  # +25 points; -10 points
    # validation (the final evaluation: 140 vs 120 and 30 right, the first k of the same questions)
    assert bridge["bridged_minus_trained_text"] == pytest.approx(0.1) and bridge["bridged_minus_trained_text_p"] == pytest.approx(2 * 0.5**20)
    # test: 150 vs 100 right on the first k test questions: 50 discordant pairs, all for the bridge
    assert bridge["test_bridged_minus_trained_text"] == pytest.approx(0.25)
    assert bridge["test_bridged_minus_trained_text_p"] == pytest.approx(2 * 0.5**50)
    assert 0.15 < bridge["test_bridged_minus_trained_text_low"] < 0.25 < bridge["test_bridged_minus_trained_text_high"]
    assert bridge["test_bridged_minus_no_source"] == pytest.approx(0.6) and bridge["test_bridged_minus_no_source_p"] < 1e-30
    assert "test_bridged_minus_mismatched" not in bridge  # these records hold no mismatched answers
    md = (result.out / "summary.md").read_text()
    section = md.split("## Bridged against its trained controls and the mismatched soft tokens (paired)")[1]
    assert "| run | bridged − no source val | bridged − no source test | bridged − trained text val | bridged − trained text test |" in section
    row = next(line for line in section.splitlines() if line.startswith("| bridge |"))
    assert row.split(" | ")[2].startswith("+60.0 [") and row.split(" | ")[4].startswith("+25.0 [") and "p=1.8e-15" in row
    assert "| bridge, bridge-seed2 | 1234, 2 | 75.0 / 40.0 | 57.5 [40.0, 75.0] |" in md and "| 50.0 | 1 of 2 |" in md


def test_several_suites_are_analysed_as_one_each_bridge_judged_by_its_own_suites_controls_first(suite_store, tiny_pair):
    """`analyze([a, b])`: one table named `a+b`, runs labelled `<suite>/<name>`. Suite b's bridge
    (the same params as a's) is judged against b's own no-source control, not a's, and against
    a's trained text control, which b lacks (trained the same way: same pair, task, K, steps)."""
    from registry.analysis import analyze

    source, target = tiny_pair
    base = RunConfig().override(f"source_model={source}", f"target_model={target}", *TINY_RUN,
                                f"eval.num_questions={N}", "train.steps=300", "translator.num_tokens=64")
    soft_prompt = ("translator.kind=soft_prompt", "loss.info_nce_weight=0.0", "loss.prompt_alignment_weight=0.0")
    runs = [  # (suite, config, validation curve: the final value / 200 is the accuracy judged)
        ("study-a", base.override("suite=study-a", "name=bridge"), [30, 100, 130, 140]),
        ("study-a", base.override("suite=study-a", "name=trained-text", *soft_prompt, "eval.prompt_mode=soft_plus_question"), [30, 80, 100, 120]),
        ("study-a", base.override("suite=study-a", "name=no-source", *soft_prompt), [10, 20, 30, 30]),
        ("study-b", base.override("suite=study-b", "name=bridge"), [30, 100, 130, 140]),
        ("study-b", base.override("suite=study-b", "name=no-source", *soft_prompt), [10, 20, 40, 50]),
    ]
    with private_store(suite_store["root"]):
        for suite, config, curve in runs:
            _fake_run(suite_store["root"] / suite, config, curve, {"suite": suite})
        result = analyze(["study-b", "study-a"], suite_store["root"] / "two-suites", log_to_mlflow=False, count_prompt_tokens=False)
    assert result.data.suite == "study-b+study-a"
    summary = json.loads((result.out / "content_summary.json").read_text())
    by_name = {run["name"]: run for run in summary["runs"]}
    assert set(by_name) == {"study-a/bridge", "study-b/bridge"}  # the controls are no bridges
    assert (by_name["study-a/bridge"]["no_source_accuracy"], by_name["study-a/bridge"]["trained_text_accuracy"]) == (0.15, 0.6)
    assert (by_name["study-b/bridge"]["no_source_accuracy"], by_name["study-b/bridge"]["trained_text_accuracy"]) == (0.25, 0.6)
    results = {r["run"]: r for r in json.loads((result.out / "ablation_results.json").read_text())["runs"]}
    assert results["study-b/bridge"]["verdict"] == results["study-a/bridge"]["verdict"] == "headline"
    assert (result.out / "summary.md").read_text().startswith("# Suite `study-b+study-a`")


def test_nothing_is_judged_until_the_latest_positive_control_on_the_target_passed(tmp_path, tiny_pair):
    """A bridge that beats target-alone is no headline while the store holds no passed positive
    control on its target: not one on another model, and not an older pass that a later
    positive control on the same target failed (the pipeline broke since)."""
    import time

    from registry.analysis import analyze
    from registry.verdict import VerdictRules

    source, target = tiny_pair
    config = RunConfig().override(f"source_model={source}", f"target_model={target}", *TINY_RUN, f"suite={SUITE}",
                                  f"eval.num_questions={N}", "train.steps=300", "translator.num_tokens=64", "name=k64")
    rules = VerdictRules.load(require_trained_controls=False)

    def judged(out: str):
        result = analyze(SUITE, tmp_path / out, rules=rules, log_to_mlflow=False, count_prompt_tokens=False)
        (run,) = result.data.runs
        return run.verdict, run.verdict_rule, (result.out / "summary.md").read_text()

    with private_store(tmp_path):
        _fake_run(tmp_path / "runs", config, RUNS["k64"][1], {})
        verdict, rule, md = judged("none")
        assert verdict == "ablation" and rule.startswith(f"no passed positive control on {target}"), rule
        assert f"No passed positive control on {target} in the store" in md
        _positive_control(tmp_path / "pc", str(source), bits_low=12.0, retrieval=0.95, name="source-self")
        assert judged("another-model")[0] == "ablation"
        time.sleep(0.01)  # start times order the controls (milliseconds)
        _positive_control(tmp_path / "pc", str(target), bits_low=12.0, retrieval=0.95, name="target-self")
        verdict, rule, md = judged("passed")
        assert verdict == "headline" and "Verdicts rely on the positive control target-self" in md, rule
        time.sleep(0.01)
        _positive_control(tmp_path / "pc", str(target), bits_low=-0.01, retrieval=0.95, name="target-self-again")
        assert judged("failed-later")[0] == "ablation"
