"""Verdict rules, the alias policy and eval JSONL summaries: no MLflow, no models."""

from __future__ import annotations

import json
import logging

import pytest

from latentbridge.config import parse_assignments

from registry.verdict import (
    AliasPolicy,
    VerdictRules,
    judge,
    mcnemar_p,
    paired_bootstrap,
)


def records(n: int, bridged: int, target: int, source: int, *, same_output: bool = False) -> list[dict]:
    """n questions; the first `bridged` (`target`, `source`) answered correctly by each system."""
    out = []
    for i in range(n):
        rec = {"index": i, "question": f"q{i}", "gold": str(i)}
        for name, k in (("bridged", bridged), ("target", target), ("source", source)):
            answer = str(i) if i < k else "[invalid]"
            rec[name] = {"output": "same" if same_output else f"#### {answer}", "answer": answer, "correct": i < k}
        out.append(rec)
    return out


# The rules against target-alone alone (the order of the rules, the tests, the thresholds);
# DEFAULTS also ask a headline for both trained controls (test_a_headline_needs_both_trained_controls)
# and a passed positive control on the target (test_nothing_is_judged_before_a_positive_control_passed).
RULES = VerdictRules.load(require_trained_controls=False, require_positive_control=False)
DEFAULTS = VerdictRules.load()
PASSED = "positive control tiny-self (run 0123456789ab, commit abc), passed on tiny (test: bits transmitted 40 at the low end of its interval, retrieval top-1 0.990)"


@pytest.mark.parametrize(
    "n, b, t, s, peak, verdict, decided_by",
    [
        (200, 140, 120, 90, 0.70, "headline", "beats_target"),  # +10 points, every discordant pair for the bridge
        (100, 70, 60, 45, 0.70, "ablation", "unsupported_gain"),  # same gain, too few questions
        (200, 122, 120, 90, 0.61, "ablation", "unsupported_gain"),  # +1 point: interval includes 0
        (200, 4, 0, 0, 0.02, "ablation", "unsupported_gain"),  # 4 wins, 0 losses: interval > 0, McNemar p=0.125
        (200, 110, 120, 90, 0.55, "control", "between"),
        (200, 80, 120, 90, 0.40, "negative", "below_source"),
        (200, 140, 120, 90, 0.80, "unstable", "degradation"),  # 0.80 peak -> 0.70 final
        (200, 120, 120, 90, 0.60, "ablation", "neither"),  # ties target-alone
        (200, 91, 120, 90, 0.455, "ablation", "neither"),  # above source-alone by one question: no support
        (200, 89, 120, 90, 0.445, "ablation", "neither"),  # below source-alone by one question: not negative
        (200, 1, 2, 0, 0.005, "ablation", "neither"),  # the embedded study's "control" by one question
    ],
)
def test_each_rule(n, b, t, s, peak, verdict, decided_by):
    result = judge(records(n, b, t, s), peak_bridged=peak, rules=RULES)
    assert (result.verdict, result.decided_by) == (verdict, decided_by), result.rule
    assert result.n == n and result.bridged == pytest.approx(b / n)


def test_headline_rule_explains_its_evidence():
    result = judge(records(200, 140, 120, 90), peak_bridged=0.7, rules=RULES)
    assert "paired bootstrap interval of the gain" in result.rule and "excludes 0" in result.rule
    assert "exact McNemar p=" in result.rule and result.rule.endswith("on 200 questions")
    low, high = result.diff_vs_target
    assert 0 < low < 0.1 < high
    assert result.p_value < 0.001


def test_sparse_wins_pass_the_bootstrap_alone_but_not_both_tests():
    """A gain carried by 4 questions out of 200: the percentile bootstrap excludes 0, the exact
    McNemar test does not reject; the default rule needs both."""
    sparse = records(200, 4, 0, 0)
    bootstrap_only = VerdictRules.load(**parse_assignments(["test=bootstrap", "require_trained_controls=false"]))
    assert judge(sparse, peak_bridged=0.02, rules=bootstrap_only, positive_control=PASSED).verdict == "headline"
    result = judge(sparse, peak_bridged=0.02, rules=RULES)
    assert result.verdict == "ablation" and "p=0.1250" in result.rule and "excludes 0" in result.rule


def test_thresholds_are_overridable():
    few = records(100, 70, 60, 45)
    assert judge(few, peak_bridged=0.7, rules=VerdictRules.load(min_questions=50, require_trained_controls=False), positive_control=PASSED).verdict == "headline"
    unstable = records(200, 140, 120, 90)
    assert judge(unstable, peak_bridged=0.8, rules=VerdictRules.load(unstable_margin=0.15, require_trained_controls="off"), positive_control=PASSED).verdict == "headline"
    mcnemar = VerdictRules.load(**parse_assignments(["test=mcnemar", "confidence=0.99", "require_trained_controls=0"]))
    assert mcnemar.test == "mcnemar" and mcnemar.confidence == 0.99
    result = judge(unstable, peak_bridged=0.7, rules=mcnemar, positive_control=PASSED)
    assert result.verdict == "headline" and "exact McNemar" in result.rule


def test_rules_file_and_bad_overrides(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": {"min_questions": 500}}))
    assert VerdictRules.load(path).min_questions == 500
    assert VerdictRules.load(path, min_questions="20").min_questions == 20
    with pytest.raises(ValueError, match="unknown verdict thresholds: \\['margin'\\]"):
        VerdictRules.load(margin=0.1)
    with pytest.raises(ValueError, match="test='ttest'"):
        VerdictRules.load(test="ttest")
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_assignments(["min_questions"])
    with pytest.raises(ValueError, match="not a valid int"):
        VerdictRules.load(min_questions="many")


def test_collapse_flags_make_a_run_unstable():
    from registry.verdict import collapse_flags

    good = records(200, 140, 120, 90)
    assert collapse_flags(good, RULES) == ()
    collapsed = records(200, 140, 120, 90, same_output=True)
    flags = collapse_flags(collapsed, RULES)
    assert flags == ("identical_outputs(1 distinct in 200)",)
    result = judge(collapsed, peak_bridged=0.7, collapse_flags=flags, rules=RULES)
    assert (result.verdict, result.decided_by) == ("unstable", "collapse")
    raised = collapse_flags(good, RULES, raised=["grad_norm_exploded"])
    assert judge(good, peak_bridged=0.7, collapse_flags=raised, rules=RULES).rule == "collapse flags raised: grad_norm_exploded"


def test_statistics():
    a, b = [True] * 30 + [False] * 70, [False] * 100
    low, high = paired_bootstrap(a, b, 2000, 0.95, seed=0)
    assert low < 0.3 < high and (low, high) == paired_bootstrap(a, b, 2000, 0.95, seed=0)
    assert mcnemar_p([True, False], [True, False]) == 1.0
    assert mcnemar_p([True] * 10, [False] * 10) == pytest.approx(2 / 2**10)


def test_alias_policy():
    policy = AliasPolicy.load()
    assert policy.allows("publishable", "headline") and not policy.allows("publishable", "control")
    assert policy.allows("control", "control") and not policy.allows("champion", "ablation")
    assert policy.allows("anything-else", "negative")


# --------------------------------------------------------------------------- summarize
def test_summarize_both_formats_and_warns_on_malformed_lines(tmp_path, caplog, capsys):
    from registry.cli import main
    from registry.summarize import summarize

    ours = tmp_path / "evals" / "eval_step_000010.jsonl"
    ours.parent.mkdir()
    lines = [json.dumps(r) for r in records(5, 3, 4, 1)]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"unrelated": 1}))
    ours.write_text("\n".join(lines) + "\n")
    reference = tmp_path / "eval_samples_step_200.jsonl"
    reference.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"gold_extracted": "18", "bridged_extracted": "18", "target_extracted": "18", "source_extracted": "[invalid]"},
                {"gold_extracted": "1,200", "bridged_extracted": "1200", "target_extracted": "", "source_extracted": "3"},
                {"gold_extracted": "7", "bridged_extracted": "[invalid]", "target_extracted": "7", "source_extracted": "7"},
            ]
        )
    )
    with caplog.at_level(logging.WARNING, logger="registry.summarize"):
        first, second = summarize([tmp_path / "evals", reference])
    assert f"{ours}:3: skipped malformed line" in caplog.text
    assert f"{ours}:5: skipped line with no answers" in caplog.text
    assert first.records == 5 and first.skipped == 2
    bridged = first.systems["bridged"]
    assert (bridged.total, bridged.valid, bridged.invalid, bridged.correct) == (5, 3, 2, 3)
    ref = second.systems
    assert (ref["bridged"].valid, ref["bridged"].invalid, ref["bridged"].correct) == (2, 1, 2)
    assert (ref["target"].valid, ref["target"].invalid, ref["target"].correct) == (2, 1, 2)
    assert (ref["source"].valid, ref["source"].correct) == (2, 1)

    assert main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "eval_step_000010.jsonl  bridged" in out and "eval_samples_step_200.jsonl" in out
    assert main(["summarize", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# ------------------------------------------------------------------ content and trained controls
CONTENT = {"content/bits_transmitted": 2.0, "content/bits_transmitted_low": 1.5, "content/bits_transmitted_high": 2.5}
NO_CONTENT = {"content/bits_transmitted": 0.01, "content/bits_transmitted_low": -0.02, "content/bits_transmitted_high": 0.04}


def test_a_bridge_whose_bits_interval_includes_zero_is_never_a_headline():
    result = judge(records(200, 140, 120, 90), peak_bridged=0.7, rules=RULES, content=NO_CONTENT)
    assert (result.verdict, result.decided_by) == ("negative", "no_content"), result.rule
    assert "[-0.020, 0.040]" in result.rule and result.bits == (0.01, -0.02, 0.04)
    assert judge(records(200, 140, 120, 90), peak_bridged=0.7, rules=RULES, content=CONTENT).verdict == "headline"


def test_a_headline_must_beat_the_trained_no_source_control():
    bridged = records(200, 140, 120, 90)
    as_good = [i < 135 for i in range(200)]  # the control answers 135 of the same questions
    result = judge(bridged, peak_bridged=0.7, rules=RULES, content=CONTENT, controls={"no_source": as_good})
    assert (result.verdict, result.decided_by) == ("ablation", "not_above_no_source"), result.rule
    assert result.comparisons["no_source"].other == pytest.approx(135 / 200)
    weak = [i < 60 for i in range(200)]
    result = judge(bridged, peak_bridged=0.7, rules=RULES, content=CONTENT, controls={"no_source": weak, "trained_text": as_good})
    assert result.verdict == "headline" and result.comparisons["no_source"].diff_interval[0] > 0
    assert set(result.comparisons) == {"no_source", "trained_text"}


def test_a_headline_needs_both_trained_controls():
    """By default beating an untrained target-alone makes no headline: the suite must hold the
    run's trained no-source and trained text controls, and the rule names the missing ones."""
    bridged = records(200, 140, 120, 90)
    assert DEFAULTS.require_trained_controls
    result = judge(bridged, peak_bridged=0.7, rules=DEFAULTS, positive_control=PASSED, content=CONTENT)
    assert (result.verdict, result.decided_by) == ("ablation", "no_trained_controls"), result.rule
    assert "no trained no_source or trained_text control" in result.rule and "excludes 0" in result.rule
    weak, as_good = [i < 60 for i in range(200)], [i < 140 for i in range(200)]
    result = judge(bridged, peak_bridged=0.7, rules=DEFAULTS, positive_control=PASSED, content=CONTENT, controls={"no_source": weak})
    assert result.decided_by == "no_trained_controls" and "no trained trained_text control" in result.rule
    both = {"no_source": weak, "trained_text": as_good}
    assert judge(bridged, peak_bridged=0.7, rules=DEFAULTS, positive_control=PASSED, content=CONTENT, controls=both).verdict == "headline"
    # the rule judges; it does not excuse: a run that fails an earlier rule keeps that verdict
    assert judge(records(200, 110, 120, 90), peak_bridged=0.55, rules=DEFAULTS, positive_control=PASSED).decided_by == "between"


def test_the_controls_rule_reads_yes_and_no():
    assert VerdictRules.load(require_trained_controls="false").require_trained_controls is False
    assert VerdictRules.load(**parse_assignments(["require_trained_controls=on"])).require_trained_controls is True
    with pytest.raises(ValueError, match="require_trained_controls='maybe' is not a yes/no value"):
        VerdictRules.load(require_trained_controls="maybe")


def test_a_trained_control_is_judged_a_control_and_the_verdict_round_trips():
    result = judge(records(200, 140, 120, 90), peak_bridged=0.7, rules=RULES, content=NO_CONTENT, is_control=True)
    assert (result.verdict, result.decided_by) == ("control", "trained_control")
    with_controls = judge(records(200, 140, 120, 90), peak_bridged=0.7, rules=RULES, content=CONTENT,
                          controls={"no_source": [i < 60 for i in range(200)]})
    from registry.verdict import Verdict

    assert Verdict.from_dict(json.loads(json.dumps(with_controls.to_dict()))) == with_controls


def test_a_bridge_below_the_trained_text_control_is_a_control_not_a_headline():
    bridged = records(200, 140, 120, 90)
    text = [i < 190 for i in range(200)]  # the target reading the question with K trained vectors
    result = judge(bridged, peak_bridged=0.7, rules=RULES, content=CONTENT, controls={"trained_text": text})
    assert (result.verdict, result.decided_by) == ("control", "below_trained_text"), result.rule
    as_good = [i < 140 for i in range(200)]
    assert judge(bridged, peak_bridged=0.7, rules=RULES, content=CONTENT, controls={"trained_text": as_good}).verdict == "headline"


def test_gpu_noise_above_zero_is_not_content():
    """A soft prompt on a GPU: identical inputs differ by ~1e-5 bits, the interval can sit just above 0."""
    noise = {"content/bits_transmitted": 3e-8, "content/bits_transmitted_low": 1e-9, "content/bits_transmitted_high": 6e-8}
    result = judge(records(200, 140, 120, 90), peak_bridged=0.7, rules=RULES, content=noise)
    assert result.decided_by == "no_content"
    assert judge(records(200, 140, 120, 90), peak_bridged=0.7, rules=VerdictRules.load(min_bits_transmitted=0.0, require_trained_controls=False, require_positive_control=False),
                 content=noise).verdict == "headline"


def test_controls_are_matched_by_pair_task_k_and_training_budget_and_the_latest_wins():
    from registry.facts import matched_controls

    bridge = {"translator.kind": "cross_attention", "eval.prompt_mode": "soft_only", "source_model": "a",
              "target_model": "b", "translator.num_tokens": "64", "train.steps": "2500", "train.batch_size": "32"}
    own = [{"question": f"q{i}"} for i in range(4)]

    def control(mode, correct, **changes):
        params = {**bridge, "translator.kind": "soft_prompt", "eval.prompt_mode": mode, **changes}
        return params, lambda: [{"question": f"q{i}", "bridged": {"correct": i < correct}} for i in range(4)]

    loaded = []
    other_pair = (control("soft_only", 4, target_model="c")[0], lambda: loaded.append("other") or [])
    shorter = (control("soft_only", 4, **{"train.steps": "1000"})[0], lambda: loaded.append("shorter") or [])
    smaller = (control("soft_plus_question", 4, **{"train.batch_size": "8"})[0], lambda: loaded.append("smaller") or [])
    found = matched_controls(bridge, own, [control("soft_only", 1), control("soft_plus_question", 3), control("soft_only", 2),
                                           other_pair, shorter, smaller])
    assert found == {"no_source": [True, True, False, False], "trained_text": [True, True, True, False]}
    assert loaded == []  # a run that is no control of this bridge (other pair, other budget) is never read


def test_nothing_is_judged_before_a_positive_control_passed():
    """By default a bridge whose target has no passed positive control in the store gets no
    verdict on content or accuracy (whatever its numbers), only collapse and degradation; the rule
    names the target and the way out, and a judged verdict names the control it relied on."""
    bridged, both = records(200, 140, 120, 90), {"no_source": [i < 60 for i in range(200)], "trained_text": [i < 140 for i in range(200)]}
    gated = judge(bridged, peak_bridged=0.7, rules=DEFAULTS, content=CONTENT, controls=both, target_model="org/model-x")
    assert (gated.verdict, gated.decided_by, gated.positive_control) == ("ablation", "no_positive_control", None), gated.rule
    assert "org/model-x" in gated.rule and "--suite positive-control" in gated.rule and "require_positive_control=false" in gated.rule
    assert judge(bridged, peak_bridged=0.7, rules=DEFAULTS, content=NO_CONTENT, controls=both).decided_by == "no_positive_control"
    judged = judge(bridged, peak_bridged=0.7, rules=DEFAULTS, content=CONTENT, controls=both, positive_control=PASSED)
    assert (judged.verdict, judged.positive_control) == ("headline", PASSED)
    # what reads the answers alone is still called, and a trained control stays a control
    assert judge(bridged, peak_bridged=0.8, rules=DEFAULTS, content=CONTENT, controls=both).decided_by == "degradation"
    assert judge(bridged, peak_bridged=0.7, rules=DEFAULTS, is_control=True).decided_by == "trained_control"
    off = VerdictRules.load(**parse_assignments(["require_positive_control=no"]))
    assert judge(bridged, peak_bridged=0.7, rules=off, content=CONTENT, controls=both).verdict == "headline"


def test_a_positive_control_passes_on_its_test_evaluation_first():
    from registry.positive_control import passed

    final = {"content/bits_transmitted_low": 12.0, "content/retrieval_top1": 0.9}
    assert passed(final, 0.001, 0.5) == ("validation", 12.0, 0.9)
    # the held-out test decides when the run has one, even against a passing validation
    assert passed({**final, "test_content/bits_transmitted_low": 0.0, "test_content/retrieval_top1": 0.9}, 0.001, 0.5) is None
    assert passed({**final, "test_content/bits_transmitted_low": 3.0, "test_content/retrieval_top1": 0.5}, 0.001, 0.5) == ("test", 3.0, 0.5)
    assert passed({"content/bits_transmitted_low": 12.0, "content/retrieval_top1": 0.49}, 0.001, 0.5) is None
    assert passed({"bridged_accuracy": 0.9}, 0.001, 0.5) is None  # no content metrics: not shown
    with pytest.raises(ValueError, match="positive_control_min_retrieval=1.5 must be in"):
        VerdictRules.load(positive_control_min_retrieval=1.5)


def test_mcnemar_refuses_answer_lists_of_different_lengths():
    """zip() would drop the unpaired tail and give a p-value of fewer questions than claimed."""
    from registry.verdict import mcnemar_p

    with pytest.raises(ValueError, match="got 5 and 4"):
        mcnemar_p([True] * 5, [False] * 4)
