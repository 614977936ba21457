"""The contract between the science and the registry: what an evaluation measures and writes.

latentbridge defines it here; the registry reads it, never strings copied by hand:

- metric names: what the train loop hands `Reporter.log_metrics`;
- `EvalRecord`: one line of an eval JSONL, one a question (`latentbridge.evaluate.score`);
- `compression_ratio`: the one formula for how many prompt tokens the soft tokens stand in for.

No heavy imports, so the registry and the analysis read it without loading torch. The values
are the names stored runs hold: never change one. `latentbridge.content` says what each
content metric means.
"""

from __future__ import annotations

from typing import Final, NotRequired, TypedDict

# --------------------------------------------------------------------------- systems
# who answers a question: the keys of an eval record's answers and of the accuracy metrics
SOURCE: Final = "source"  # the source model alone, reading the full few-shot text prompt
TARGET: Final = "target"  # the target model alone, the same
BRIDGED: Final = "bridged"  # the target reading the question's soft tokens
MISMATCHED: Final = "mismatched"  # the target reading another question's soft tokens (a control)
SYSTEMS: Final = (SOURCE, TARGET, BRIDGED, MISMATCHED)

# --------------------------------------------------------------------------- evaluation metrics
# logged at every evaluation (step 0, every eval_every steps, the end)
SOURCE_ACCURACY: Final = "source_accuracy"  # the share of questions answered correctly
TARGET_ACCURACY: Final = "target_accuracy"
BRIDGED_ACCURACY: Final = "bridged_accuracy"
MISMATCHED_ACCURACY: Final = "mismatched_accuracy"
SOURCE_INVALID: Final = "source_invalid_fraction"  # the share of answers with no final number
TARGET_INVALID: Final = "target_invalid_fraction"
BRIDGED_INVALID: Final = "bridged_invalid_fraction"
MISMATCHED_INVALID: Final = "mismatched_invalid_fraction"
ACCURACY: Final = {SOURCE: SOURCE_ACCURACY, TARGET: TARGET_ACCURACY, BRIDGED: BRIDGED_ACCURACY, MISMATCHED: MISMATCHED_ACCURACY}
INVALID_FRACTION: Final = {SOURCE: SOURCE_INVALID, TARGET: TARGET_INVALID, BRIDGED: BRIDGED_INVALID, MISMATCHED: MISMATCHED_INVALID}
# runs logged before 2026-12-03 hold counts instead, under "<system>_invalid"
LEGACY_INVALID_COUNT_SUFFIX: Final = "_invalid"

# content metrics (latentbridge.content), with eval.content_metrics
BITS: Final = "content/bits_transmitted"
BITS_LOW: Final = "content/bits_transmitted_low"
BITS_HIGH: Final = "content/bits_transmitted_high"
FRACTION: Final = "content/fraction_recovered"
# the same share with another question's soft tokens: what the answer format alone recovers
FRACTION_MISMATCHED: Final = "content/fraction_recovered_mismatched"
RETRIEVAL: Final = "content/retrieval_top1"
RETRIEVAL_CHANCE: Final = "content/retrieval_chance"
# the share of mismatched answers that give the gold of the question whose soft tokens were read
MISMATCHED_FOLLOWS: Final = "content/mismatched_follows_soft_source"

TEST_PREFIX: Final = "test_"  # the held-out test evaluation logs every evaluation metric again under this prefix
TEST_FOLDER: Final = "test"  # the run's artifact folder of the held-out test evaluation
TEST_EVAL_FILE: Final = "test_eval.jsonl"  # its eval JSONL (EvalRecord lines), in TEST_FOLDER

# --------------------------------------------------------------------------- run metrics
PROMPT_TOKENS_MEAN: Final = "prompt_tokens_mean"  # at step 0: BOS + few-shot prompt tokens the target reads alone
COMPRESSION_RATIO: Final = "compression_ratio"  # at step 0: `compression_ratio` below
LOSS: Final = "loss"  # at every training step: the total loss
LOSS_TERM_PREFIX: Final = "loss/"  # each term of the loss, e.g. "loss/lm"
GRAD_NORM: Final = "grad_norm"
LEARNING_RATE: Final = "lr"
BEST_BRIDGED_ACCURACY: Final = "best_bridged_accuracy"  # at the end: the peak bridged accuracy
BEST_STEP: Final = "best_step"  # at the end: the step of that peak
# where a run's wall time goes, in seconds, logged with each evaluation (the test's under TEST_PREFIX)
TIME_PREFIX: Final = "time/"
TIME_TRAIN: Final = "time/train_s"  # the training steps since the previous evaluation (0 at step 0)
TIME_BASELINES: Final = "time/baselines_s"  # the text baselines (computed once; the test's own once)
TIME_BRIDGED: Final = "time/bridged_s"  # the bridged answers
TIME_MISMATCHED: Final = "time/mismatched_s"  # the mismatched answers (eval.content_metrics)
TIME_CONTENT: Final = "time/content_s"  # the content metrics' teacher-forced NLLs (eval.content_metrics)
TIMES: Final = (TIME_TRAIN, TIME_BASELINES, TIME_BRIDGED, TIME_MISMATCHED, TIME_CONTENT)


def compression_ratio(prompt_tokens: float, soft_tokens: int, prompt_mode: str) -> float:
    """The text tokens the target reads for a question when it answers alone (`prompt_tokens`:
    BOS and the few-shot prompt) over the tokens it reads in their place when bridged.

    In `soft_only` and `soft_plus_question` that is the K soft tokens (the short text that
    follows them, the cue or the question and the cue, is not counted). In `soft_plus_text`
    the target reads all the prompt's tokens after the K soft tokens: prompt / (prompt + K) < 1,
    no compression.
    """
    if prompt_mode == "soft_plus_text":
        return prompt_tokens / (prompt_tokens + soft_tokens)
    return prompt_tokens / soft_tokens


# --------------------------------------------------------------------------- the eval record
class Answer(TypedDict):
    """One system's answer to one question."""

    output: str  # the generated text
    answer: str  # the number extracted from it, or latentbridge.scoring.INVALID
    correct: bool
    soft_from: NotRequired[int]  # mismatched only: the question whose soft tokens it read
    matches_soft_source: NotRequired[bool]  # mismatched only: it gave that question's gold


class ContentRecord(TypedDict):
    """The question's content values (latentbridge.content): its gold solution's NLL in bits
    under each input, and how its own soft tokens rank against the negatives'."""

    nll_bits_text: float  # its full few-shot text prompt
    nll_bits_own: float  # its own soft tokens
    nll_bits_mismatched: float  # another question's soft tokens
    nll_bits_no_question: float  # no question at all
    bits_transmitted: float  # nll_bits_mismatched - nll_bits_own
    mismatched_with: int  # the index of the question whose soft tokens were the mismatched ones
    own_ranked_first: bool  # its own soft tokens gave a lower NLL than every negative's
    negatives: int


class EvalRecord(TypedDict):
    """One line of an eval JSONL: one question of one evaluation and every system's answer."""

    step: int  # the training step evaluated (the best step for the test evaluation)
    index: int  # the question's position in the evaluated set
    question: str
    gold_solution: str  # the worked solution, ending in '#### <number>'
    gold: str  # the number it ends with
    bridged: Answer
    source: NotRequired[Answer]  # with the text baselines (eval.baselines)
    target: NotRequired[Answer]
    mismatched: NotRequired[Answer]  # with eval.content_metrics
    content: NotRequired[ContentRecord]  # with eval.content_metrics
