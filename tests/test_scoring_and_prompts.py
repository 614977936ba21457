import random

import pytest

from latentbridge.data import Example
from latentbridge.prompts import ANSWER_CUE, answer_target, clean_solution, fewshot_prompt, select_exemplars
from latentbridge.scoring import INVALID, cut_generation, extract_answer, is_correct


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 3 + 4 = 7.\n#### 7", "7"),
        ("#### 1,200", "1200"),
        ("####-5\n", "-5"),
        ("#### 18.00 dollars", "18"),
        ("first #### 3 then #### 4", "3"),  # the FIRST answer line counts
        ("The answer is 42.", INVALID),  # no fallback to the last number
        ("", INVALID),
        (None, INVALID),
    ],
)
def test_extract_answer_follows_the_gsm8k_rule(text, expected):
    assert extract_answer(text) == expected


def test_invalid_is_never_correct_and_generation_is_cut_at_next_question():
    assert not is_correct(INVALID, INVALID)
    assert is_correct("7", "7")
    assert cut_generation(" 3 + 4 = 7.\n#### 7\n\nQ: another one") == " 3 + 4 = 7.\n#### 7\n"


def _examples(n):
    return [Example(question=f"What is {i} + 1?", answer=f"{i} + 1 = <<{i}+1={i+1}>>{i+1}.\n#### {i+1}") for i in range(n)]


def test_exemplars_are_drawn_with_random_42():
    train = _examples(30)
    chosen = select_exemplars(train, 8, seed=42)
    assert chosen == random.Random(42).sample(train, 8)
    assert select_exemplars(train, 8, seed=42) == chosen
    with pytest.raises(ValueError, match="asked for 31 exemplars"):
        select_exemplars(train, 31)


def test_fewshot_prompt_holds_every_exemplar_and_ends_with_the_cue():
    train = _examples(10)
    prompt = fewshot_prompt(train[:8], "What is 99 + 1?")
    assert prompt.count("Q: ") == 9
    assert prompt.endswith("Q: What is 99 + 1?\n" + ANSWER_CUE)
    assert "<<" not in prompt  # calculator annotations are removed
    assert "#### 1\n" in prompt
    assert answer_target(train[0]).strip() == clean_solution(train[0].answer)


def test_score_gives_accuracy_and_the_invalid_share_in_fractions():
    from latentbridge.evaluate import score
    from latentbridge.metric_names import BRIDGED_INVALID, TARGET_INVALID

    examples = [Example(f"q{i}?", f"{i} + 1 = {i + 1}\n#### {i + 1}") for i in range(4)]
    outputs = {"target": ["#### 1", "#### 2", "no number", "#### 9"], "bridged": ["#### 1", "x", "y", "z"]}
    metrics = score(examples, outputs, step=3).metrics
    assert metrics["target_accuracy"] == 0.5 and metrics[TARGET_INVALID] == 0.25
    assert metrics["bridged_accuracy"] == 0.25 and metrics[BRIDGED_INVALID] == 0.75
    assert BRIDGED_INVALID == "bridged_invalid_fraction"  # the unit is in the name
