"""The seeded bootstrap intervals shared by the content metrics and the registry's verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latentbridge.stats import bootstrap_mean_interval, bootstrap_ratio_interval


def test_mean_interval_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(1).normal(2.0, 1.0, size=300)
    low, high = bootstrap_mean_interval(values, seed=3)
    assert (low, high) == bootstrap_mean_interval(values, seed=3)
    assert low < values.mean() < high
    # a wider confidence gives a wider interval
    low99, high99 = bootstrap_mean_interval(values, confidence=0.99, seed=3)
    assert low99 <= low and high <= high99


def test_ratio_interval_brackets_the_ratio_of_sums():
    rng = np.random.default_rng(2)
    den = rng.uniform(1.0, 3.0, size=200)
    num = 0.4 * den + rng.normal(0.0, 0.1, size=200)
    low, high = bootstrap_ratio_interval(num, den, seed=0)
    assert low < num.sum() / den.sum() < high


def test_ratio_interval_is_undefined_when_the_ratio_itself_is():
    """With sum(denominators) <= 0 the ratio (content/fraction_recovered: NaN then) is undefined;
    an interval made of the few resamples whose denominator happened to be positive is no
    interval of it."""
    num, den = [1.0, 1.0, 1.0, -5.0], [1.0, -1.0, -1.0, -1.0]  # sum(den) = -2
    low, high = bootstrap_ratio_interval(num, den)
    assert math.isnan(low) and math.isnan(high)
    low, high = bootstrap_ratio_interval([1.0, 2.0], [0.0, 0.0])  # sum(den) = 0
    assert math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_both_intervals_refuse_a_confidence_outside_0_1(confidence):
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_interval([1.0, 2.0, 3.0], confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ratio_interval([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], confidence=confidence)


@pytest.mark.parametrize("samples", [0, -5])
def test_both_intervals_refuse_no_resamples(samples):
    with pytest.raises(ValueError, match="samples"):
        bootstrap_mean_interval([1.0, 2.0, 3.0], samples=samples)
    with pytest.raises(ValueError, match="samples"):
        bootstrap_ratio_interval([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], samples=samples)


def test_the_accuracy_interval_at_the_floor_is_not_zero_wide():
    """0 of 500 correct: a bootstrap gives [0, 0]; Wilson's upper bound is z^2 / (n + z^2)."""
    from latentbridge.stats import wilson_interval

    low, high = wilson_interval(0, 500)
    z2 = 1.959963984540054**2
    assert low == 0.0 and high == pytest.approx(z2 / (500 + z2), rel=1e-9)
    assert wilson_interval(500, 500) == pytest.approx((1 - high, 1.0), rel=1e-9)  # symmetric at the ceiling
    assert bootstrap_mean_interval([0.0] * 500) == (0.0, 0.0)  # what the tables showed before


@pytest.mark.parametrize("successes, n", [(1, 10), (37, 200), (250, 500), (499, 500)])
def test_the_accuracy_interval_brackets_the_accuracy_and_narrows_with_more_questions(successes, n):
    from latentbridge.stats import wilson_interval

    low, high = wilson_interval(successes, n)
    assert 0.0 <= low < successes / n < high <= 1.0
    wide_low, wide_high = wilson_interval(successes, n, confidence=0.99)
    assert wide_low < low and high < wide_high
    more_low, more_high = wilson_interval(4 * successes, 4 * n)
    assert more_high - more_low < high - low


@pytest.mark.parametrize("successes, n", [(3, 0), (-1, 5), (6, 5)])
def test_the_accuracy_interval_refuses_impossible_counts(successes, n):
    from latentbridge.stats import wilson_interval

    with pytest.raises(ValueError, match=f"got {successes} of {n}"):
        wilson_interval(successes, n)
