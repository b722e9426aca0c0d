"""Statistics for comparing methods over seeds: paired differences to the baseline with t-intervals, McNemar's
test on test-set predictions, and Holm's adjustment for comparing several methods against one baseline.

A method's gain is *within noise* exactly when the 95% interval of its paired difference contains 0.
Pairs are formed by training seed (same initialisation, same batches, same data split) and run length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass
class PairedGain:
    """``method - baseline`` over paired seeds."""

    n: int  # number of pairs
    mean: float
    low: float | None  # 95% t-interval (None with a single pair)
    high: float | None
    p_value: float | None  # two-sided paired t-test
    p_holm: float | None = None  # Holm-adjusted over the methods compared with the same baseline

    @property
    def within_noise(self) -> bool | None:
        """True when the interval contains 0; None when there is no interval (one seed)."""
        return None if self.low is None else self.low <= 0 <= self.high

    def verdict(self, level: float = 0.05) -> str:
        """``one seed`` | ``within noise`` (the interval contains 0) | ``gain`` / ``loss`` (the interval excludes 0
        and the Holm-adjusted p is below ``level``) | ``unadjusted gain`` / ``unadjusted loss`` (the interval
        excludes 0, but not after adjusting for the other methods compared with the same baseline)."""
        if self.within_noise is None:
            return "one seed"
        if self.within_noise:
            return "within noise"
        sign = "gain" if self.mean > 0 else "loss"
        p = self.p_holm if self.p_holm is not None else self.p_value
        return sign if p is not None and p < level else f"unadjusted {sign}"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def paired_gain(method: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> PairedGain:
    """Mean of ``method[i] - baseline[i]`` with its t-interval: ``mean +- t_{n-1} * s / sqrt(n)``."""
    diffs = np.asarray(method, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(diffs)
    if n == 0:
        raise ValueError("no paired runs: give the baseline and the method the same seeds")
    mean = float(diffs.mean())
    if n == 1:
        return PairedGain(1, mean, None, None, None)
    sem = float(diffs.std(ddof=1)) / math.sqrt(n)
    if sem == 0:  # identical differences: the interval collapses onto the mean
        return PairedGain(n, mean, mean, mean, 0.0 if mean != 0 else 1.0)
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    p = float(2 * sps.t.sf(abs(mean) / sem, n - 1))
    return PairedGain(n, mean, mean - half, mean + half, p)


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (step-down: sorted p_i times (m - i), kept monotone, capped at 1)."""
    valid = sorted((p, name) for name, p in p_values.items() if p is not None)
    m, running, out = len(valid), 0.0, dict.fromkeys(p_values)
    for i, (p, name) in enumerate(valid):
        running = max(running, min(1.0, (m - i) * p))
        out[name] = running
    return out


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired test-set correctness: ``b`` = only A right, ``c`` = only B right;
    two-sided binomial test of ``b`` against ``Bin(b + c, 1/2)``."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError("McNemar needs predictions on the same test images")
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5).pvalue)
    return {"only_a": b, "only_b": c, "p_value": p}
