"""Intervals shared by the science (content metrics) and the registry (verdicts).

Means and ratios over questions get a percentile bootstrap: resample the per-question values
with replacement, take the mean of each resample, read the quantiles. Seeded, so the same
values always give the same interval. An accuracy (a share of correct answers) gets the Wilson
score interval instead: a bootstrap of 0 correct out of 500 is [0, 0], which claims certainty
that a study at the floor does not have; Wilson's is [0, 0.8%].
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")


def _check(samples: int, confidence: float) -> None:
    _check_confidence(confidence)
    if samples < 1:
        raise ValueError(f"samples={samples}: a bootstrap interval needs at least one resample")


def bootstrap_mean_interval(
    values: Sequence[float], samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of mean(values), resampling the values with replacement.

    For a paired comparison pass the per-question differences (a - b): the interval is then
    the paired bootstrap interval of mean(a) - mean(b).
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not len(array):
        raise ValueError("a bootstrap interval needs a non-empty list of numbers")
    _check(samples, confidence)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // len(array))  # bound memory for large evaluations
    for start in range(0, samples, chunk):
        rows = min(chunk, samples - start)
        means[start : start + rows] = array[rng.integers(0, len(array), size=(rows, len(array)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_ratio_interval(
    numerators: Sequence[float],
    denominators: Sequence[float],
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of sum(numerators) / sum(denominators) (a ratio of means), resampling
    the (numerator, denominator) pairs; resamples whose denominator sum is <= 0 are dropped.

    (nan, nan) when sum(denominators) <= 0 itself: the ratio is then undefined (as
    content/fraction_recovered is), and the resamples that happen to have a positive
    denominator are no interval of it."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or not len(num):
        raise ValueError("a ratio interval needs two equal, non-empty lists of numbers")
    _check(samples, confidence)
    if not den.sum() > 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(num), size=(samples, len(num)))
    top, bottom = num[index].sum(axis=1), den[index].sum(axis=1)
    ratios = top[bottom > 0] / bottom[bottom > 0]
    if not len(ratios):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion successes / n (never zero-width at 0 or n)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"a proportion needs 0 <= successes <= n and n >= 1 (got {successes} of {n})")
    _check_confidence(confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact at the ends: the bound at p = 0 (or 1) is 0 (or 1), not a rounding error off it
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
