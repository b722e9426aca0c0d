"""Paired intervals, Holm's adjustment and McNemar's test against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kd_utils.stats import holm, mcnemar, mean_std, paired_gain


def test_paired_gain_matches_a_hand_computed_t_interval():
    gain = paired_gain([0.83, 0.85, 0.84], [0.80, 0.83, 0.81])  # diffs 0.03, 0.02, 0.03
    diffs = [0.03, 0.02, 0.03]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert gain.n == 3 and gain.mean == pytest.approx(mean)
    assert (gain.low, gain.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert gain.within_noise is False  # the interval excludes 0
    t = mean / (sd / math.sqrt(3))
    assert gain.p_value == pytest.approx(2 * (1 - 0.5 * (1 + t / math.sqrt(2 + t * t))), rel=1e-6)  # t-dist, 2 dof


def test_an_interval_across_zero_is_within_noise_and_one_seed_has_none():
    assert paired_gain([0.81, 0.80, 0.82], [0.80, 0.81, 0.815]).within_noise is True
    single = paired_gain([0.9], [0.8])
    assert single.n == 1 and single.low is None and single.within_noise is None
    with pytest.raises(ValueError, match="same seeds"):
        paired_gain([], [])


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, None)


def test_holm_step_down():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    # sorted: a 0.01 x3 = 0.03; c 0.03 x2 = 0.06; b 0.04 x1 = 0.04 -> kept monotone: 0.06
    assert adjusted == {"a": pytest.approx(0.03), "c": pytest.approx(0.06), "b": pytest.approx(0.06), "d": None}


def test_mcnemar_exact_binomial():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 1], bool)
    b = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, 1], bool)  # only a right: 5, only b right: 1
    result = mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (5, 1)
    assert result["p_value"] == pytest.approx(2 * (1 + 6) / 64)  # two-sided: P(X<=1) + P(X>=5), X ~ Bin(6, 1/2)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_verdict_needs_the_interval_and_the_holm_adjusted_p():
    gain = paired_gain([0.83, 0.85, 0.84], [0.80, 0.83, 0.81])  # interval excludes 0, p ~ 0.02
    assert gain.verdict() == "gain"  # alone: Holm leaves p as it is
    gain.p_holm = 0.2  # as if compared with many methods at once
    assert gain.verdict() == "unadjusted gain"
    assert paired_gain([0.81, 0.80, 0.82], [0.80, 0.81, 0.815]).verdict() == "within noise"
    assert paired_gain([0.7, 0.71, 0.69], [0.8, 0.8, 0.8]).verdict() == "loss"
    assert paired_gain([0.9], [0.8]).verdict() == "one seed"
