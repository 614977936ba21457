"""What crosses the bridge: the content metrics, the soft-prompt controls and a positive control."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from latentbridge.bridge import Bridge
from latentbridge.config import ConfigError, RunConfig
from latentbridge.content import content_metrics, derangement, negatives, summarize
from latentbridge.metric_names import BITS, BITS_HIGH, BITS_LOW, FRACTION, FRACTION_MISMATCHED, MISMATCHED_ACCURACY, RETRIEVAL
from latentbridge.data import load_splits
from latentbridge.prompts import ANSWER_CUE, select_exemplars
from latentbridge.reporting import MemoryReporter
from latentbridge.train import load_models, train

FIVE = (BITS, BITS_LOW, BITS_HIGH, FRACTION, RETRIEVAL)


@pytest.mark.parametrize("n", [2, 3, 17, 200])
def test_derangement_moves_every_question_and_is_seeded(n):
    order = derangement(n, seed=3)
    assert sorted(order) == list(range(n)) and all(order[i] != i for i in range(n))
    assert order == derangement(n, seed=3)
    if n > 3:
        assert order != derangement(n, seed=4)


def test_negatives_exclude_the_question_and_start_with_the_partner():
    partner = derangement(40, 5)
    groups = negatives(40, 15, 5)
    for i, group in enumerate(groups):
        assert len(group) == 15 == len(set(group)) and i not in group and group[0] == partner[i]
    assert [len(g) for g in negatives(5, 15, 0)] == [4] * 5  # fewer questions: every other one


def test_summarize_in_bits_with_interval_fraction_and_retrieval():
    ln2 = math.log(2)
    # question 0: own 1 bit, mismatched 3 bits; question 1: own 2, mismatched 2 (no gain)
    nlls = [
        {"text": 0.0, "no_question": 4 * ln2, "own": 1 * ln2, "negatives": [3 * ln2, 5 * ln2]},
        {"text": 1 * ln2, "no_question": 4 * ln2, "own": 2 * ln2, "negatives": [2 * ln2, 9 * ln2]},
    ]
    result = summarize(nlls, [[1, 0], [0, 1]], seed=0)
    assert result.metrics[BITS] == pytest.approx(1.0)  # mean of 2 and 0 bits
    assert 0.0 <= result.metrics[BITS_LOW] <= 1.0 <= result.metrics[BITS_HIGH] <= 2.0
    # (d - b) / (d - a) of the means: (4 - 1.5) / (4 - 0.5)
    assert result.metrics[FRACTION] == pytest.approx(2.5 / 3.5)
    # another question's soft tokens: (4 - 2.5) / 3.5, the format's share; the difference is the question's
    assert result.metrics[FRACTION_MISMATCHED] == pytest.approx(1.5 / 3.5)
    assert result.metrics[FRACTION] - result.metrics[FRACTION_MISMATCHED] == pytest.approx(result.metrics[BITS] / 3.5)
    # question 1's own NLL ties its mismatched one: a tie is not a win
    assert result.metrics[RETRIEVAL] == 0.5
    assert [r["own_ranked_first"] for r in result.records] == [True, False]
    assert result.records[0]["bits_transmitted"] == pytest.approx(2.0)


@pytest.fixture
def tiny_bridge(tiny_config):
    def build(*overrides):
        config = tiny_config.override(*overrides)
        splits = load_splits(config.data)
        bridge = Bridge(config, *load_models(config), select_exemplars(splits.train, 2, 42))
        return bridge, splits

    return build


@pytest.mark.parametrize("batch_size", [4, 24])  # one question's 6 rows a forward; four questions' 24
def test_a_translator_that_reads_nothing_transmits_exactly_zero_bits(tiny_bridge, batch_size):
    bridge, splits = tiny_bridge("translator.kind=soft_prompt")
    with torch.no_grad():
        bridge.translator.prompt.normal_()  # any prompt, not only the initial one
    result = content_metrics(bridge, splits.validation[:8], negatives_count=5, seed=0, batch_size=batch_size)
    assert result.metrics[BITS] == 0.0 and result.metrics[BITS_LOW] == 0.0 == result.metrics[BITS_HIGH]
    assert result.metrics[RETRIEVAL] == 0.0  # every negative ties: never ranked first
    assert all(r["nll_bits_own"] == r["nll_bits_mismatched"] for r in result.records)


def test_a_translator_that_reads_the_question_transmits_bits(tiny_bridge):
    """A passthrough of the source's states differs by question: its NLLs differ too."""
    bridge, splits = tiny_bridge("translator.kind=passthrough", "data.source_reads=question")
    result = content_metrics(bridge, splits.validation[:8], negatives_count=5, seed=0, batch_size=4)
    assert any(r["nll_bits_own"] != r["nll_bits_mismatched"] for r in result.records)


def test_several_questions_a_forward_score_as_one_question_a_forward(tiny_bridge):
    """Packing several questions' groups (own + negatives) into one forward changes only the
    padding around them: the same NLLs as one group a forward, to float32 rounding."""
    bridge, splits = tiny_bridge("translator.kind=passthrough", "data.source_reads=question")
    one, packed = (content_metrics(bridge, splits.validation[:8], negatives_count=5, seed=0, batch_size=b) for b in (4, 24))
    assert any(r["nll_bits_own"] != r["nll_bits_mismatched"] for r in packed.records)
    for a, b in zip(one.records, packed.records):
        assert a["nll_bits_own"] == pytest.approx(b["nll_bits_own"], rel=1e-4, abs=1e-3)
        assert a["nll_bits_mismatched"] == pytest.approx(b["nll_bits_mismatched"], rel=1e-4, abs=1e-3)
    assert packed.metrics[BITS] == pytest.approx(one.metrics[BITS], rel=1e-4, abs=1e-3)
    assert packed.metrics[RETRIEVAL] == one.metrics[RETRIEVAL]


def test_the_no_question_input_is_the_cue_or_the_exemplars_alone(tiny_bridge):
    bridge, splits = tiny_bridge()
    assert bridge.no_question_text() == ANSWER_CUE
    question = splits.validation[0].question
    bridge, _ = tiny_bridge("eval.prompt_mode=soft_plus_question")
    assert question in bridge.target_text(question) and bridge.no_question_text() == ANSWER_CUE
    bridge, _ = tiny_bridge("eval.prompt_mode=soft_plus_text")
    text = bridge.no_question_text()
    assert text.endswith(ANSWER_CUE) and question not in text and bridge.exemplars[0].question in text


def test_every_evaluation_logs_the_content_metrics_and_records(tiny_config, tmp_path):
    reporter = MemoryReporter()
    train(tiny_config.override("eval.test_questions=4"), tmp_path / "run", reporter)
    for name in (*FIVE, MISMATCHED_ACCURACY):
        assert [s for s, _ in reporter.metrics[name]] == [0, 3, 6], name
        assert f"test_{name}" in reporter.metrics
    records = [json.loads(x) for x in (tmp_path / "run" / "evals" / "eval_step_000006.jsonl").read_text().splitlines()]
    for r in records:
        assert {"nll_bits_own", "nll_bits_mismatched", "nll_bits_text", "nll_bits_no_question"} <= set(r["content"])
        assert r["mismatched"]["soft_from"] == r["content"]["mismatched_with"] != r["index"]
    # the derangement is the same at every evaluation
    first = [json.loads(x) for x in (tmp_path / "run" / "evals" / "eval_step_000000.jsonl").read_text().splitlines()]
    assert [r["content"]["mismatched_with"] for r in first] == [r["content"]["mismatched_with"] for r in records]


def test_content_metrics_need_two_questions(tiny_config):
    with pytest.raises(ConfigError, match="eval.content_metrics=false"):
        tiny_config.override("eval.num_questions=1")
    assert tiny_config.override("eval.num_questions=1", "eval.content_metrics=false").eval.num_questions == 1


def _only_the_source_knows(tmp_path, tiny_pair, *overrides) -> dict:
    """Questions 'The number is N.' with answer '#### N': in soft_only mode the target never
    reads N, so whatever it knows of N crossed the bridge."""
    rng = random.Random(0)
    for name, n in (("train", 300), ("test", 20)):
        with open(tmp_path / f"{name}.jsonl", "w") as handle:
            for _ in range(n):
                x = rng.randint(10, 99)
                handle.write(json.dumps({"question": f"The number is {x}.", "answer": f"#### {x}"}) + "\n")
    source, target = tiny_pair
    config = RunConfig().override(
        f"source_model={source}", f"target_model={target}", "data.source=jsonl",
        f"data.train_file={tmp_path / 'train.jsonl'}", f"data.test_file={tmp_path / 'test.jsonl'}",
        "data.num_shots=2", "data.val_size=16", "data.source_reads=question", "translator.num_tokens=4",
        "translator.width=64", "translator.depth=2", "translator.heads=4", "translator.dropout=0.0",
        "train.steps=200", "train.eval_every=200", "train.checkpoint_every=200", "train.batch_size=8",
        "train.early_stop_patience=0", "loss.kl_weight=0", "loss.info_nce_weight=0", "optim.lr=1e-3",
        "optim.warmup_steps=10", "eval.num_questions=16", "eval.batch_size=16", "eval.max_new_tokens=6",
        "eval.baselines=false",
        # 300 draws of 90 numbers: the questions repeat by design, and a measuring test needs the
        # evaluated numbers seen in training (what it checks is that the metrics see what crosses,
        # not that a 4-token bridge generalises to numbers it never saw)
        "data.drop_repeats=false", *overrides,
    )
    reporter = MemoryReporter()
    train(config, tmp_path / "run", reporter)
    return {k: [v for _, v in points] for k, points in reporter.metrics.items()}


def test_positive_control_a_trained_bridge_carries_what_only_the_source_reads(tmp_path, tiny_pair):
    metrics = _only_the_source_knows(tmp_path, tiny_pair)
    assert metrics[BITS][0] == 0.0  # gates at 0: the untrained translator emits its queries alone
    assert metrics[BITS_LOW][-1] > 0.0 and metrics[BITS][-1] > 0.03
    assert metrics[RETRIEVAL][-1] > 1 / 6  # chance is 1/16


def test_negative_control_the_trained_soft_prompt_carries_nothing(tmp_path, tiny_pair):
    metrics = _only_the_source_knows(tmp_path, tiny_pair, "translator.kind=soft_prompt")
    assert metrics["loss"][-1] < metrics["loss"][0]  # it trained
    assert metrics[BITS][-1] == 0.0 and metrics[BITS_HIGH][-1] == 0.0 and metrics[RETRIEVAL][-1] == 0.0


def test_the_launcher_prints_the_format_share_beside_the_fraction_recovered():
    """The demo printed fraction recovered 0.618 with 0.01 bits crossing: the format, not the
    question; the line now says what another question's soft tokens recover."""
    from launch.cli import content_line

    line = content_line({BITS: 0.01, BITS_LOW: -0.04, BITS_HIGH: 0.06, FRACTION: 0.618, FRACTION_MISMATCHED: 0.611,
                         RETRIEVAL: 0.4, "content/retrieval_chance": 0.25})
    assert "no question-specific content shown" in line
    assert "fraction recovered 0.618 (another question's soft tokens: 0.611)" in line
