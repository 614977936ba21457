"""Audit of `registry.analysis`: each test pins a defect that put a wrong or misleading number,
label or row into the paper's tables (see the docstrings)."""

from __future__ import annotations

import pytest
from conftest import TINY_RUN, private_store

from latentbridge.config import RunConfig
from latentbridge.metric_names import BRIDGED_ACCURACY, SOURCE_ACCURACY, TARGET_ACCURACY, TEST_PREFIX


def _run(name: str, *, verdict: str | None = "headline", status: str = "FINISHED", metrics: dict | None = None, **params):
    """A SuiteRun built in memory (no store): a bridge of org/src -> org/tgt on the synthetic task."""
    from registry.analysis.collect import SuiteRun
    from registry.facts import RunFacts

    values = {"name": name, "suite": "audit", "source_model": "org/src", "target_model": "org/tgt", "translator.kind": "cross_attention",
              "translator.num_tokens": "64", "train.steps": "300", "data.source": "synthetic", "eval.split": "validation", **params}
    facts = RunFacts(
        run_id=f"{name}-id".ljust(32, "0"), name=name, suite="audit", experiment_id="1", status=status, start_time=0,
        params=values, tags={}, metrics=dict(metrics or {}), history={BRIDGED_ACCURACY: [(300, 0.5)]}, evals=[(300, "evals/x.jsonl")],
    )
    return SuiteRun(facts, name, verdict=verdict, status=status)


def test_main_results_show_the_text_baselines_of_each_task_of_a_pair():
    """A study over two tasks on one pair (`--grid task`): the main table showed the first run's
    baselines only (keyed by the pair), so the GSM8K bridge stood beside the synthetic task's
    source-alone and target-alone accuracies."""
    from registry.analysis.collect import SuiteData
    from registry.analysis.latex import main_results

    synthetic = _run("synthetic-k64", metrics={SOURCE_ACCURACY: 0.45, TARGET_ACCURACY: 0.6})
    gsm8k = _run("gsm8k-k64", metrics={SOURCE_ACCURACY: 0.21, TARGET_ACCURACY: 0.33}, **{"data.source": "gsm8k"})
    table = main_results(SuiteData("audit", [synthetic, gsm8k]))
    baselines = [line for line in table.splitlines() if " alone (" in line]
    assert len(baselines) == 4, table  # source and target alone, on each task
    assert any("gsm8k" in line and "& 21.0 &" in line for line in baselines if line.startswith("Source")), baselines
    assert any("gsm8k" in line and "& 33.0 &" in line for line in baselines if line.startswith("Target")), baselines
    assert any("synthetic" in line and "& 45.0 &" in line for line in baselines if line.startswith("Source")), baselines
    # one task: the rows stay as they were, the model alone
    (source, target) = [line for line in main_results(SuiteData("audit", [synthetic])).splitlines() if " alone (" in line]
    assert source.startswith("Source alone (src) &") and target.startswith("Target alone (tgt) &")


def test_main_results_label_a_trained_control_as_a_control():
    """A soft prompt (verdict `control`) was listed as `Bridge: <name>` in the main table."""
    from registry.analysis.collect import SuiteData
    from registry.analysis.latex import main_results

    control = _run("no-source", verdict="control", **{"translator.kind": "soft_prompt"})
    table = main_results(SuiteData("audit", [_run("bridge"), control]))
    assert "Bridge: bridge &" in table and "Bridge: no-source" not in table and "Control: no-source &" in table


def test_the_paper_names_every_direction_of_the_suite():
    """The abstract named the first run's pair only, for a suite run both ways (`--grid direction`)."""
    from registry.analysis.collect import SuiteData
    from registry.analysis.latex import paper

    runs = [_run("s2g"), _run("g2s", **{"source_model": "org/tgt", "target_model": "org/src"})]
    abstract = paper(SuiteData("audit", runs)).split("\\begin{abstract}")[1].split("\\end{abstract}")[0]
    assert "src $\\rightarrow$ tgt" in abstract and "tgt $\\rightarrow$ src" in abstract


def test_the_content_summary_reports_the_test_evaluation_of_a_run_tested_without_content_metrics():
    """Its docstring: numbers are the held-out test's where the run logged one. A run tested
    without content metrics (no `test_content/bits_transmitted`) got its validation numbers."""
    from registry.analysis.collect import SuiteData
    from registry.analysis.tables import content_summary

    metrics = {BRIDGED_ACCURACY: 0.7, TEST_PREFIX + BRIDGED_ACCURACY: 0.75, TARGET_ACCURACY: 0.6, TEST_PREFIX + TARGET_ACCURACY: 0.5}
    (row,) = content_summary(SuiteData("audit", [_run("tested", metrics=metrics)]))["runs"]
    assert (row["split"], row["bridged_accuracy"], row["target_accuracy"]) == ("test", 0.75, 0.5)
    (row,) = content_summary(SuiteData("audit", [_run("untested", metrics={BRIDGED_ACCURACY: 0.7})]))["runs"]
    assert (row["split"], row["bridged_accuracy"]) == ("validation", 0.7)


def test_the_csv_keeps_small_p_values_instead_of_rounding_them_to_zero():
    """summary.csv wrote every float with 4 decimals: an exact McNemar p of 1.8e-15 read `0.0000`."""
    from registry.analysis.tables import _cell

    assert float(_cell(1.8e-15)) == pytest.approx(1.8e-15, rel=1e-3) and float(_cell(3e-5)) == pytest.approx(3e-5, rel=1e-3)
    assert float(_cell(-2e-6)) == pytest.approx(-2e-6, rel=1e-3)
    assert (_cell(0.08), _cell(0.0), _cell(None), _cell(64)) == ("0.0800", "0.0000", "", "64")


def test_a_cut_off_control_never_replaces_the_finished_one(tmp_path):
    """With --include-unfinished, a no-source control cut off early (started after the finished
    one, so "the latest control of a role") became the bridge's no-source control: the finished
    bridge was judged against a control trained for a fraction of its steps, and its verdict
    changed with the flag. Preservation (`registry.preserve.suite_controls`) takes finished
    controls only."""
    from test_registry_analysis import N, _fake_run

    from registry.analysis.collect import collect
    from registry.analysis.tables import content_summary
    from registry.verdict import VerdictRules

    base = RunConfig().override("source_model=org/src", "target_model=org/tgt", *TINY_RUN, "suite=audit",
                                f"eval.num_questions={N}", "train.steps=300", "translator.num_tokens=64")
    no_source = base.override("name=no-source", "translator.kind=soft_prompt", "loss.info_nce_weight=0.0", "loss.prompt_alignment_weight=0.0")
    rules = VerdictRules.load(require_trained_controls=False, require_positive_control=False)
    with private_store(tmp_path):
        _fake_run(tmp_path / "a", base.override("name=bridge"), [30, 100, 130, 140], {"suite": "audit"})
        _fake_run(tmp_path / "a", no_source, [10, 20, 30, 30], {"suite": "audit"})  # finished: 15% right
        _fake_run(tmp_path / "b", no_source, [10, 120], {"suite": "audit"}, status="KILLED")  # cut off at step 100: 60%
        by_flag = {}
        for partial in (False, True):
            data = collect("audit", rules=rules, count_prompt_tokens=False, include_unfinished=partial)
            (bridge,) = [r for r in data.runs if r.facts.name == "bridge"]
            (row,) = [r for r in content_summary(data)["runs"] if r["name"] == "bridge"]
            by_flag[partial] = (bridge.comparisons["no_source"].other, row["no_source_accuracy"], bridge.verdict)
            assert any(r.partial for r in data.runs) == partial
    assert by_flag[False][:2] == (pytest.approx(0.15), pytest.approx(0.15))
    assert by_flag[True] == by_flag[False]


def test_a_soft_prompt_that_reads_no_text_is_never_a_bridges_trained_text_control():
    """`control_role` called every soft prompt in another prompt mode than the bridge's its
    trained-text control: for a bridge that reads the text prompt after its soft tokens
    (soft_plus_text), a soft_only soft prompt (reading nothing at all) became the text control."""
    from registry.facts import control_role

    bridge = {"translator.kind": "cross_attention", "source_model": "a", "target_model": "b", "translator.num_tokens": "64"}
    soft = {**bridge, "translator.kind": "soft_prompt"}
    for bridge_mode, control_mode, role in [
        ("soft_only", "soft_only", "no_source"), ("soft_only", "soft_plus_question", "trained_text"),
        ("soft_only", "soft_plus_text", "trained_text"), ("soft_plus_text", "soft_plus_text", "no_source"),
        ("soft_plus_text", "soft_plus_question", "trained_text"), ("soft_plus_text", "soft_only", None),
        ("soft_plus_question", "soft_only", None),
    ]:
        found = control_role({**soft, "eval.prompt_mode": control_mode}, {**bridge, "eval.prompt_mode": bridge_mode})
        assert found == role, (bridge_mode, control_mode)


def test_the_content_summary_reports_the_controls_the_verdict_compared():
    """content_summary matched controls again by params and took the last one's own metric, even
    where `collect` had passed that run over (no eval records, or not on the bridge's questions)
    and compared the bridge with another control: the summary's control accuracy then came from
    a run the verdict never saw."""
    from registry.analysis.collect import SuiteData
    from registry.analysis.tables import content_summary
    from registry.verdict import Comparison

    bridge = _run("bridge", metrics={BRIDGED_ACCURACY: 0.7})
    bridge.comparisons = {"no_source": Comparison(200, 0.7, 0.15, (0.45, 0.65), 1e-9)}
    compared = _run("no-source", verdict="control", metrics={BRIDGED_ACCURACY: 0.15}, **{"translator.kind": "soft_prompt"})
    passed_over = _run("no-source-again", verdict=None, metrics={BRIDGED_ACCURACY: 0.6}, **{"translator.kind": "soft_prompt"})
    passed_over.facts.evals = []  # no eval JSONL: collect could not align it, so the verdict used `compared`
    (row,) = content_summary(SuiteData("audit", [bridge, compared, passed_over]))["runs"]
    assert (row["no_source_accuracy"], row["trained_text_accuracy"], row["bridged_minus_no_source"]) == (0.15, None, pytest.approx(0.55))


def test_the_json_tables_hold_no_bare_nan_for_strict_readers():
    """A NaN metric (fraction_recovered with no gap, a NaN loss) was written as bare `NaN`."""
    import json
    import math

    import numpy as np

    from registry.analysis.tables import _dump

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    text = _dump({"runs": [{"fraction": float("nan"), "loss": np.float64("inf"), "bits": 1.5, "k": (32, -math.inf)}]})
    assert json.loads(text, parse_constant=refuse) == {"runs": [{"fraction": None, "loss": None, "bits": 1.5, "k": [32, None]}]}


@pytest.mark.parametrize("modes, wanted", [
    (("soft_only",), "prompt tokens / K, log scale"),
    (("soft_plus_text",), "prompt tokens / (prompt tokens + K), log scale"),
    (("soft_only", "soft_plus_text"), "prompt tokens / K; soft_plus_text: / (prompt tokens + K), log scale"),
])
def test_the_compression_axis_says_how_the_ratio_was_taken(modes, wanted):
    """With soft_plus_text the ratio is prompt tokens / (prompt tokens + K); the axis said / K."""
    import matplotlib.pyplot as plt

    from registry.analysis.figures import compression_quality
    from registry.verdict import Estimate

    runs = []
    for i, mode in enumerate(modes):
        run = _run(f"r{i}", metrics={TEST_PREFIX + BRIDGED_ACCURACY: 0.4}, **{"eval.prompt_mode": mode})
        run.facts.prompt_tokens_mean = 640.0 + i  # what the compression ratio is taken from
        run.quality = lambda: ("test", Estimate(0.4, 0.3, 0.5))  # the tested accuracy, without records
        runs.append(run)
    fig = compression_quality(runs)
    assert fig.axes[0].get_xlabel() == f"compression ratio ({wanted})"
    plt.close(fig)


def test_analysis_runs_live_in_the_first_experiment_made():
    """Experiment ids were sorted as strings: "10" came before "2"."""
    from registry.analysis.collect import _numeric_first

    assert sorted(["10", "2", "1", "abc"], key=_numeric_first) == ["1", "2", "10", "abc"]
