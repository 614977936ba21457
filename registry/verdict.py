"""Is a run publishable? Verdict rules over the final evaluation's per-question answers.

Rules, checked in this order (the first that holds decides):
  unstable  final bridged accuracy fell more than `unstable_margin` below its peak, or the
            run raised collapse flags;
  headline  bridged beats target-alone with statistical support: a paired bootstrap
            interval of (bridged - target) over the same questions lies above 0, on at
            least `min_questions` questions;
  negative  bridged is below source-alone;
  control   bridged beats source-alone but trails target-alone;
  ablation  anything else (a suite member that is neither).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

VERDICTS = ("headline", "control", "ablation", "negative", "unstable")
DEFAULTS_FILE = Path(__file__).with_name("verdict_defaults.json")


@dataclass(frozen=True)
class VerdictRules:
    min_questions: int = 200
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    unstable_margin: float = 0.05

    @classmethod
    def load(cls, path: Path | None = None, **overrides: float) -> "VerdictRules":
        values = json.loads((path or DEFAULTS_FILE).read_text())
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown verdict thresholds: {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


@dataclass(frozen=True)
class Verdict:
    verdict: str
    rule: str  # why: which rule decided, in words
    n: int
    bridged: float
    target: float | None
    source: float | None
    diff_vs_target: tuple[float, float] | None  # bootstrap interval of bridged - target

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], samples: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """Interval of mean(a) - mean(b), resampling questions (pairs) with replacement."""
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs two equal, non-empty answer lists")
    diffs = [int(x) - int(y) for x, y in zip(a, b)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    tail = (1 - confidence) / 2
    return means[int(tail * (samples - 1))], means[int((1 - tail) * (samples - 1))]


def accuracy_interval(correct: Sequence[bool], samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of an accuracy."""
    return paired_bootstrap(correct, [False] * len(correct), samples, confidence, seed)


def judge(
    records: Sequence[dict], *, peak_bridged: float, collapse_flags: Sequence[str] = (), rules: VerdictRules
) -> Verdict:
    """The verdict for a run whose final evaluation wrote `records` (one per question)."""
    n = len(records)
    if n == 0:
        raise ValueError("the final evaluation has no records")
    column = lambda name: [bool(r[name]["correct"]) for r in records] if name in records[0] else None  # noqa: E731
    bridged, target, source = column("bridged"), column("target"), column("source")
    if bridged is None:
        raise ValueError("the final evaluation has no bridged answers")
    acc = lambda xs: sum(xs) / len(xs) if xs is not None else None  # noqa: E731
    b, t, s = acc(bridged), acc(target), acc(source)
    interval = paired_bootstrap(bridged, target, rules.bootstrap_samples, rules.confidence) if target else None
    make = lambda verdict, rule: Verdict(verdict, rule, n, b, t, s, interval)  # noqa: E731
    if collapse_flags:
        return make("unstable", f"collapse flags raised: {', '.join(collapse_flags)}")
    if peak_bridged - b > rules.unstable_margin:
        return make("unstable", f"final bridged {b:.3f} is {peak_bridged - b:.3f} below its peak {peak_bridged:.3f} (margin {rules.unstable_margin})")
    if t is not None and b > t:
        if n >= rules.min_questions and interval[0] > 0:
            return make("headline", f"bridged {b:.3f} beats target-alone {t:.3f}; {rules.confidence:.0%} paired bootstrap interval of the gain [{interval[0]:.3f}, {interval[1]:.3f}] excludes 0 on {n} questions")
        reason = f"only {n} questions (< {rules.min_questions})" if n < rules.min_questions else f"interval [{interval[0]:.3f}, {interval[1]:.3f}] includes 0"
        return make("ablation", f"bridged {b:.3f} beats target-alone {t:.3f} without statistical support ({reason})")
    if s is not None and b < s:
        return make("negative", f"bridged {b:.3f} is below source-alone {s:.3f}")
    if s is not None and t is not None and s < b <= t:
        return make("control", f"bridged {b:.3f} beats source-alone {s:.3f} but trails target-alone {t:.3f}")
    return make("ablation", "neither above target-alone nor strictly between the baselines" if t is not None else "no baselines to compare with")
