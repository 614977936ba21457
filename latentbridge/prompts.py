"""8-shot chain-of-thought prompts in the GSM8K style.

Exemplars are drawn once with `random.Random(seed)` from the train split, so every run and
every system sees the same prompt. The same cue ends the text prompt and follows the soft
tokens, so training and evaluation give the target the same kind of input.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from latentbridge.data.examples import Example

HEADER = (
    "Solve each grade-school math problem. Think step by step, "
    "then give the final answer on its own line as '#### <number>'.\n\n"
)
ANSWER_CUE = "A: Let's think step by step."
_CALCULATOR = re.compile(r"<<[^>]*>>")


def clean_solution(solution: str) -> str:
    """Drop GSM8K's calculator annotations (`<<48/2=24>>`)."""
    return _CALCULATOR.sub("", solution).strip()


def select_exemplars(train: Sequence[Example], num_shots: int, seed: int = 42) -> list[Example]:
    if num_shots > len(train):
        raise ValueError(f"asked for {num_shots} exemplars but the train split has {len(train)}")
    return random.Random(seed).sample(list(train), num_shots)


def question_block(question: str) -> str:
    return f"Q: {question.strip()}\n{ANSWER_CUE}"


def fewshot_prompt(exemplars: Sequence[Example], question: str | None) -> str:
    """Header, the exemplars with their worked solutions, then the question and the cue.

    With `question=None` the prompt ends with the cue alone (no question at all: what the
    content metrics compare against).
    """
    shots = "".join(
        f"{question_block(ex.question)} {clean_solution(ex.answer)}\n\n" for ex in exemplars
    )
    return HEADER + shots + (ANSWER_CUE if question is None else question_block(question))


RECONSTRUCTION_CUE = "Q:"  # what the target reads after the soft tokens when it retells the question


def reconstruction_target(question: str) -> str:
    """What the target writes after `RECONSTRUCTION_CUE` (the reconstruction loss): the question."""
    return " " + question.strip() + "\n"


def answer_target(example: Example) -> str:
    """What the target is trained to write after the cue: the worked solution."""
    return " " + clean_solution(example.answer) + "\n"
