"""Is a run publishable? Verdict rules over the final evaluation's per-question answers.

Rules, checked in this order (the first that holds decides; `Verdict.decided_by` names it):
  trained_control   control: the run is itself a trained control (a soft prompt that reads no
                    source): it is what bridges are compared with, never a bridge;
  collapse          unstable: the run raised collapse flags (from the trainer, or the bridged
                    answers collapsed onto a few identical outputs);
  degradation       unstable: final bridged accuracy fell more than `unstable_margin` below
                    its peak;
  no_positive_control  ablation: `require_positive_control` is on and the store holds no passed
                    positive control on the run's target model (`registry.positive_control`: the
                    target bridged to itself carried the question): the tool has not shown it can
                    see content cross into this target, so it judges neither content nor accuracy;
  no_content        negative: the content metrics were measured and the interval of
                    content/bits_transmitted does not lie above 0: nothing question-specific
                    crosses the bridge (whatever its accuracy, it is a soft prompt);
  below_source      negative: bridged is below source-alone;
  not_above_no_source  ablation: the suite has a trained no-source control on the same
                    questions and the bridge does not beat it with statistical support (the same
                    test as for target-alone);
  below_trained_text  control: the suite has a trained text control (the target reading the
                    question's text with K trained vectors, the fair reference for a bridge that
                    was trained on the task) and it beats the bridge with statistical support:
                    beating an untrained few-shot target-alone is then no headline;
  no_trained_controls  ablation: bridged beats target-alone with statistical support, but the
                    suite has no trained no-source or no trained text control of the run (same
                    pair, task, K, steps and batch) and `require_trained_controls` is on: an
                    untrained few-shot target-alone is no reference for a bridge trained on the
                    task, so the run waits for its controls;
  beats_target      headline: bridged beats target-alone with statistical support on the same
                    questions (paired bootstrap interval of bridged - target above 0, or an exact
                    McNemar test, `test`), on at least `min_questions` questions;
  unsupported_gain  ablation: bridged beats target-alone without that support;
  between           control: bridged beats source-alone but trails target-alone;
  neither           ablation: anything else (a suite member that is neither).

Thresholds and the alias policy (which verdicts may carry which alias) live in
`verdict_defaults.json`; every threshold can be overridden (`VerdictRules.load(path, **kw)`,
`--rules FILE`, `--set key=value` on the command line).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

from latentbridge.config import FALSE_WORDS, TRUE_WORDS, yes_no
from latentbridge.metric_names import BITS, BITS_HIGH, BITS_LOW, BRIDGED, MISMATCHED, SOURCE, TARGET, EvalRecord
from latentbridge.scoring import INVALID
from latentbridge.stats import bootstrap_mean_interval, wilson_interval

VERDICTS = ("headline", "control", "ablation", "negative", "unstable")
TESTS = ("both", "bootstrap", "mcnemar")
CONTROL_ROLES = ("no_source", "trained_text")  # the trained controls a headline is judged against
DEFAULTS_FILE = Path(__file__).with_name("verdict_defaults.json")


def _read(path: Path | None) -> dict:
    path = Path(path or DEFAULTS_FILE)
    if not path.is_file():
        raise ValueError(f"verdict rules file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"verdict rules file {path} is not valid JSON: {error}") from None


@dataclass(frozen=True)
class VerdictRules:
    min_questions: int = 200  # a headline needs at least this many questions
    confidence: float = 0.95  # of the bootstrap interval / 1 - the McNemar p-value threshold
    # "both": the paired bootstrap interval must exclude 0 and the exact McNemar test must reject;
    # "bootstrap" or "mcnemar" alone. The percentile bootstrap alone is too lenient when only a
    # few questions differ (4 wins, 0 losses in 200 give an interval above 0 but McNemar p=0.125).
    test: str = "both"
    bootstrap_samples: int = 2000
    seed: int = 0  # of the bootstrap resampling: the same answers always give the same verdict
    unstable_margin: float = 0.05  # peak - final above this (accuracy points / 100) is unstable
    collapse_min_distinct: float = 0.05  # distinct bridged outputs / questions below this: collapse
    collapse_min_questions: int = 20  # the distinct-output check needs at least this many questions
    # the lower end of content/bits_transmitted's interval must exceed this many bits: a soft
    # prompt that reads nothing gives 0 exactly on a CPU, but batched bf16 forwards on a GPU
    # differ by up to ~1e-5 bits a question (seen on an H200), so "above 0" means above this
    min_bits_transmitted: float = 0.001
    # a headline needs both trained controls of the run (no-source and trained text) in its suite
    require_trained_controls: bool = True
    # nothing but collapse and degradation is judged until a positive control on the run's target
    # model has passed: bits above min_bits_transmitted and retrieval top-1 at least this
    require_positive_control: bool = True
    positive_control_min_retrieval: float = 0.5

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"verdict rule test={self.test!r}; choose one of {list(TESTS)}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"verdict rule confidence={self.confidence} must be in (0, 1)")
        if self.bootstrap_samples < 100:
            raise ValueError(f"verdict rule bootstrap_samples={self.bootstrap_samples} must be >= 100")
        if not 0 <= self.positive_control_min_retrieval <= 1:
            raise ValueError(f"verdict rule positive_control_min_retrieval={self.positive_control_min_retrieval} must be in [0, 1]")
        if self.unstable_margin < 0 or self.min_questions < 1:
            raise ValueError("verdict rules unstable_margin must be >= 0 and min_questions >= 1")

    @classmethod
    def load(cls, path: Path | None = None, **overrides) -> VerdictRules:
        """The rules in `path` (default: verdict_defaults.json), then `overrides` on top."""
        data = _read(path)
        values = dict(data.get("rules", data if "aliases" not in data else {}))
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown verdict thresholds: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: _coerce(known[k].type, v, k) for k, v in values.items()})

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(type_name, value, key: str):
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(type_name if isinstance(type_name, str) else type_name.__name__)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is bool:  # the yes/no words every switch of the project reads
        answer = yes_no(str(value).strip())
        if answer is None:
            raise ValueError(f"verdict rule {key}={value!r} is not a yes/no value; use one of {[*TRUE_WORDS, *FALSE_WORDS]}")
        return answer
    try:
        if kind is int and isinstance(value, str):
            return int(value)
        return kind(value) if kind else value
    except (TypeError, ValueError):
        raise ValueError(f"verdict rule {key}={value!r} is not a valid {type_name}") from None


@dataclass(frozen=True)
class AliasPolicy:
    """Which verdicts may carry an alias; aliases not named fall under '*'."""

    allowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> AliasPolicy:
        data = _read(path).get("aliases", {})
        for alias, verdicts in data.items():
            bad = set(verdicts) - set(VERDICTS)
            if bad:
                raise ValueError(f"alias policy for {alias!r} names unknown verdicts {sorted(bad)}; known: {list(VERDICTS)}")
        return cls({alias: tuple(verdicts) for alias, verdicts in data.items()})

    def verdicts_for(self, alias: str) -> tuple[str, ...]:
        return tuple(self.allowed.get(alias, self.allowed.get("*", VERDICTS)))

    def allows(self, alias: str, verdict: str) -> bool:
        return verdict in self.verdicts_for(alias)


@dataclass(frozen=True)
class Verdict:
    verdict: str
    decided_by: str  # the rule that decided (see the module docstring)
    rule: str  # why, in words, with the numbers
    n: int
    bridged: float
    target: float | None
    source: float | None
    peak: float
    diff_vs_target: tuple[float, float] | None  # paired bootstrap interval of bridged - target
    p_value: float | None  # exact McNemar p-value of bridged vs target
    collapse_flags: tuple[str, ...] = ()
    # content/bits_transmitted and its interval (low, high), when the run measured them
    bits: tuple[float, float, float] | None = None
    # each trained control (and the mismatched answers) against bridged on the same questions
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    # the passed positive control the verdict relied on (`PositiveControl.text()`), None when none
    positive_control: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> Verdict:
        values = dict(values)
        if values.get("diff_vs_target") is not None:
            values["diff_vs_target"] = tuple(values["diff_vs_target"])
        values["collapse_flags"] = tuple(values.get("collapse_flags", ()))
        if values.get("bits") is not None:
            values["bits"] = tuple(values["bits"])
        values["comparisons"] = {k: Comparison.from_dict(v) for k, v in (values.get("comparisons") or {}).items()}
        return cls(**{f.name: values.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Comparison:
    """Bridged against another system on the same questions: accuracies, the paired bootstrap
    interval of bridged - other and the exact McNemar p-value."""

    n: int
    bridged: float
    other: float
    diff_interval: tuple[float, float]
    p_value: float

    @classmethod
    def of(cls, bridged: Sequence[bool], other: Sequence[bool], rules: VerdictRules) -> Comparison:
        return cls(
            n=len(bridged),
            bridged=sum(bridged) / len(bridged),
            other=sum(other) / len(other),
            diff_interval=paired_bootstrap(bridged, other, rules.bootstrap_samples, rules.confidence, rules.seed),
            p_value=mcnemar_p(bridged, other),
        )

    @classmethod
    def from_dict(cls, values: Mapping) -> Comparison:
        values = dict(values)
        values["diff_interval"] = tuple(values["diff_interval"])
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def reversed(self) -> Comparison:
        """The other system against bridged."""
        low, high = self.diff_interval
        return Comparison(self.n, self.other, self.bridged, (-high, -low), self.p_value)

    def supported(self, rules: VerdictRules) -> bool:
        """bridged above the other with the rules' statistical support."""
        by_interval = self.diff_interval[0] > 0
        by_test = self.p_value < 1 - rules.confidence and self.bridged > self.other
        return {"both": by_interval and by_test, "bootstrap": by_interval, "mcnemar": by_test}[rules.test]

    def text(self) -> str:
        return (
            f"{self.bridged:.3f} vs {self.other:.3f}, difference {self.bridged - self.other:+.3f}"
            f" [{self.diff_interval[0]:+.3f}, {self.diff_interval[1]:+.3f}], McNemar p={self.p_value:.4g}, n={self.n}"
        )


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], samples: int, confidence: float, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(b), resampling questions (pairs) with replacement."""
    if len(a) != len(b) or not len(a):
        raise ValueError("paired bootstrap needs two equal, non-empty answer lists")
    diffs = np.asarray(a, dtype=np.int8) - np.asarray(b, dtype=np.int8)
    return bootstrap_mean_interval(diffs, samples, confidence, seed)


def accuracy_interval(correct: Sequence[bool], confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy (`latentbridge.stats.wilson_interval`)."""
    if not len(correct):
        raise ValueError("an accuracy interval needs at least one answer")
    return wilson_interval(sum(bool(c) for c in correct), len(correct), confidence)


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value (binomial test on the discordant pairs)."""
    if len(a) != len(b):
        raise ValueError(f"McNemar's test pairs answers to the same questions: got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def distinct_outputs(records: Sequence[EvalRecord], system: str = BRIDGED) -> int:
    """How many different texts `system` wrote over the records."""
    return len({str((r.get(system) or {}).get("output", "")) for r in records})


def modal_answer(records: Sequence[EvalRecord], system: str = BRIDGED) -> tuple[str, int]:
    """The answer `system` gave most often (a tie: the one given first) and how many times."""
    counts = Counter(str((r.get(system) or {}).get("answer", "")) for r in records)
    if not counts:
        raise ValueError("no records to find the most common answer in")
    return counts.most_common(1)[0]


def guess_accuracy(records: Sequence[EvalRecord], system: str = BRIDGED) -> float:
    """The accuracy of giving `system`'s most common answer to every question: what a constant
    output would score on these questions (an invalid answer is never gold: 0)."""
    answer, _ = modal_answer(records, system)
    return sum(str(r.get("gold")) == answer for r in records) / len(records)


def collapse_flags(records: Sequence[EvalRecord], rules: VerdictRules, raised: Iterable[str] = ()) -> tuple[str, ...]:
    """Flags the trainer raised, plus `identical_outputs` when bridged answers collapsed."""
    flags = [f for f in raised if f]
    if len(records) >= rules.collapse_min_questions:
        distinct = distinct_outputs(records)
        if distinct / len(records) < rules.collapse_min_distinct:
            flags.append(f"identical_outputs({distinct} distinct in {len(records)})")
    return tuple(flags)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def aligned_control(records: Sequence[EvalRecord], control_records: Sequence[EvalRecord]) -> list[bool] | None:
    """The control's bridged correctness on the same questions as `records`, in their order
    (None when the control did not answer every one of them)."""
    by_question = {r.get("question"): bool((r.get(BRIDGED) or {}).get("correct")) for r in control_records}
    if not all(r.get("question") in by_question for r in records):
        return None
    return [by_question[r.get("question")] for r in records]


def _correct(records: Sequence[EvalRecord], system: str) -> list[bool] | None:
    """`system`'s correctness on each record, or None when a record holds no scored answer of it."""
    if not all(isinstance(r.get(system), dict) and "correct" in r[system] for r in records):
        return None
    return [bool(r[system]["correct"]) for r in records]


def paired_comparisons(
    records: Sequence[EvalRecord], controls: Mapping[str, Sequence[bool]] | None, rules: VerdictRules
) -> dict[str, Comparison]:
    """Bridged against each trained control (`controls`: its correctness on the same questions)
    and against the mismatched soft tokens when the records hold them, question by question."""
    bridged = _correct(records, BRIDGED)
    if bridged is None:
        raise ValueError("the evaluation has no bridged answers")
    comparisons = {name: Comparison.of(bridged, other, rules) for name, other in (controls or {}).items()}
    mismatched = _correct(records, MISMATCHED)
    if mismatched is not None:
        comparisons[MISMATCHED] = Comparison.of(bridged, mismatched, rules)
    return comparisons


def judge(
    records: Sequence[EvalRecord],
    *,
    peak_bridged: float,
    collapse_flags: Sequence[str] = (),
    rules: VerdictRules,
    content: Mapping[str, float] | None = None,
    controls: Mapping[str, Sequence[bool]] | None = None,
    is_control: bool = False,
    target_model: str = "the target",
    positive_control: str | None = None,
) -> Verdict:
    """The verdict for a run whose final evaluation wrote `records` (one per question).

    `content`: the final evaluation's content metrics (latentbridge.content names);
    `controls`: each trained control's correctness on the same questions, e.g.
    {"no_source": [...], "trained_text": [...]}; `is_control`: the run is such a control;
    `positive_control`: the passed positive control on `target_model` the store holds (its
    `registry.positive_control.PositiveControl.text()`), None when it holds none.
    """
    n = len(records)
    if n == 0:
        raise ValueError("the final evaluation has no records")

    bridged, target, source = (_correct(records, system) for system in (BRIDGED, TARGET, SOURCE))
    if bridged is None:
        raise ValueError("the final evaluation has no bridged answers")
    acc = lambda xs: sum(xs) / len(xs) if xs is not None else None
    b, t, s = acc(bridged), acc(target), acc(source)
    peak = max(float(peak_bridged), b)
    interval = p_value = None
    if target is not None:
        interval = paired_bootstrap(bridged, target, rules.bootstrap_samples, rules.confidence, rules.seed)
        p_value = mcnemar_p(bridged, target)
    flags = tuple(collapse_flags)
    bits = None
    if content and BITS in content and BITS_LOW in content and BITS_HIGH in content:
        bits = (float(content[BITS]), float(content[BITS_LOW]), float(content[BITS_HIGH]))
    comparisons = paired_comparisons(records, controls, rules)

    def make(verdict: str, decided_by: str, rule: str) -> Verdict:
        return Verdict(verdict, decided_by, rule, n, b, t, s, peak, interval, p_value, flags, bits, comparisons, positive_control)

    if is_control:
        return make("control", "trained_control", "a trained control (soft tokens that read no source), not a bridge")
    if flags:
        return make("unstable", "collapse", f"collapse flags raised: {', '.join(flags)}")
    if peak - b > rules.unstable_margin:
        return make(
            "unstable",
            "degradation",
            f"final bridged {b:.3f} is {peak - b:.3f} below its peak {peak:.3f} (margin {rules.unstable_margin})",
        )
    if positive_control is None and rules.require_positive_control:
        return make(
            "ablation",
            "no_positive_control",
            f"no passed positive control on {target_model} in the store: the tool has not shown it can see a question"
            f" cross into this target, so it judges neither content nor accuracy; run the target bridged to itself"
            f" (`python launch submit --suite positive-control`, or import its records: results/positive-control/)"
            " or set require_positive_control=false",
        )
    if bits is not None and not bits[1] > rules.min_bits_transmitted:
        return make(
            "negative",
            "no_content",
            f"{BITS} {bits[0]:.3f} bits, 95% interval [{bits[1]:.3f}, {bits[2]:.3f}] does not lie"
            f" above 0 (min_bits_transmitted {rules.min_bits_transmitted}): the soft tokens carry nothing specific"
            " to the question",
        )
    vs_source = Comparison.of(bridged, source, rules) if source is not None else None
    if vs_source is not None and vs_source.reversed().supported(rules):
        return make("negative", "below_source", f"source-alone beats bridged with statistical support ({vs_source.text()})")
    no_source = comparisons.get("no_source")
    if no_source is not None and not no_source.supported(rules):
        return make(
            "ablation",
            "not_above_no_source",
            f"bridged does not beat the trained no-source control with statistical support ({no_source.text()})",
        )
    trained_text = comparisons.get("trained_text")
    if trained_text is not None and trained_text.reversed().supported(rules):
        return make(
            "control",
            "below_trained_text",
            f"the trained text control beats the bridge with statistical support ({trained_text.text()})",
        )
    if t is not None and b > t:
        by_interval = interval[0] > 0
        by_test = p_value < 1 - rules.confidence
        interval_text = f"{rules.confidence:.0%} paired bootstrap interval of the gain [{interval[0]:.3f}, {interval[1]:.3f}]"
        interval_text += " excludes 0" if by_interval else " includes 0"
        test_text = f"exact McNemar p={p_value:.4f} ({'<' if by_test else '>='} {1 - rules.confidence:.3g})"
        supported, evidence = {
            "both": (by_interval and by_test, f"{interval_text}; {test_text}"),
            "bootstrap": (by_interval, interval_text),
            "mcnemar": (by_test, test_text),
        }[rules.test]
        missing = [role for role in CONTROL_ROLES if role not in comparisons]
        if supported and n >= rules.min_questions and missing and rules.require_trained_controls:
            return make(
                "ablation",
                "no_trained_controls",
                f"bridged {b:.3f} beats target-alone {t:.3f} ({evidence} on {n} questions), but the suite has no"
                f" trained {' or '.join(missing)} control of this run (the same pair, task, K, steps and batch):"
                " an untrained target-alone is no reference for a bridge trained on the task; train them"
                " (or set require_trained_controls=false to judge against target-alone)",
            )
        if supported and n >= rules.min_questions:
            return make("headline", "beats_target", f"bridged {b:.3f} beats target-alone {t:.3f}; {evidence} on {n} questions")
        why = evidence if not supported else f"only {n} questions (< {rules.min_questions})"
        return make("ablation", "unsupported_gain", f"bridged {b:.3f} beats target-alone {t:.3f} without statistical support ({why})")
    if vs_source is not None and t is not None and b < t and vs_source.supported(rules):
        return make(
            "control", "between", f"bridged beats source-alone with statistical support ({vs_source.text()}) but trails target-alone {t:.3f}"
        )
    if t is None:
        return make("ablation", "neither", "no target-alone baseline to compare with")
    return make(
        "ablation",
        "neither",
        f"bridged {b:.3f} is neither above target-alone {_fmt(t)} nor, with statistical support, between source-alone"
        f" {_fmt(s)} and target-alone" + (f" ({vs_source.text()})" if vs_source is not None else ""),
    )


# --------------------------------------------------------------------------- one evaluation
BASELINES = (TARGET, SOURCE)


class Estimate(NamedTuple):
    """An accuracy and its Wilson score interval (at the rules' confidence)."""

    value: float
    low: float
    high: float


def estimate(correct: list[bool], rules: VerdictRules) -> Estimate:
    """The share of `correct` answers with its interval (`registry.verdict.accuracy_interval`)."""
    return Estimate(sum(correct) / len(correct), *accuracy_interval(correct, rules.confidence))


@dataclass(frozen=True)
class EvalScores:
    """What one evaluation's records say: each system's accuracy with its interval, bridged
    against each text baseline, and how varied the bridged answers are."""

    step: int  # the training step of the translator evaluated
    n: int  # questions
    accuracy: dict[str, float]  # system -> the share of questions it answered correctly
    intervals: dict[str, tuple[float, float]]  # system -> Wilson interval of its accuracy
    invalid_rate: float  # the share of bridged answers with no final number
    versus: dict[str, Comparison]  # baseline -> bridged against it on the same questions
    distinct_outputs: int  # different texts the bridged target wrote
    modal_answer: tuple[str, int]  # the bridged answer given most often, and how often
    guess: float  # the accuracy of giving that answer to every question

    def estimate(self, system: str) -> Estimate:
        """The system's accuracy with its interval (KeyError when the records hold no answers of it)."""
        return Estimate(self.accuracy[system], *self.intervals[system])


def eval_scores(records: list[EvalRecord], rules: VerdictRules) -> EvalScores:
    """Intervals, paired comparisons with the text baselines and the bridged answers' spread."""
    columns = {
        system: [bool(r[system]["correct"]) for r in records]
        for system in (BRIDGED, *BASELINES)
        if all(system in r for r in records)
    }
    bridged = columns[BRIDGED]
    estimates = {system: estimate(correct, rules) for system, correct in columns.items()}
    return EvalScores(
        step=int(records[0]["step"]),
        n=len(records),
        accuracy={system: e.value for system, e in estimates.items()},
        intervals={system: (e.low, e.high) for system, e in estimates.items()},
        invalid_rate=sum(r[BRIDGED]["answer"] == INVALID for r in records) / len(records),
        versus={system: Comparison.of(bridged, columns[system], rules) for system in BASELINES if system in columns},
        distinct_outputs=distinct_outputs(records),
        modal_answer=modal_answer(records),
        guess=guess_accuracy(records),
    )
