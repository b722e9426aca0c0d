"""Intervals for a paired gain that count both sources of noise: the training seeds and the finite test set.

A run's test score is one draw of its seed *and* of the test images. The seed-only t-interval (``stats``)
treats the test set as fixed: it says how sure we are about *these* test images, not about the method, and the
test-image part of a paired gain can be larger than the seed part. Model the score difference of seed ``s`` on
image ``i`` as ``gain + u_s + g_i + h_si``: ``u`` the seed's own effect, ``g`` the image's (shared by every
seed: all runs read the same test set), ``h`` the seed-by-image rest. Over ``n`` seeds and ``N`` images the mean
gain then has variance ``var(u)/n + var(h)/(nN) + var(g)/N``:

- a paired bootstrap over test images (every run of a comparison resampled with the *same* images) of the
  seed-mean difference estimates ``var(g)/N + var(h)/(nN)`` precisely;
- the seeds add ``var(u)/n``: the sample variance of the per-seed differences over ``n`` estimates
  ``var(u)/n + var(h)/(nN)``, and the per-seed bootstrap variances give ``var(h)/(nN)``, so the seed part is
  the excess, floored at 0 (a seed cannot have negative variance).

The interval is ``mean +- t_df * se`` with Welch-Satterthwaite's ``df`` (the seed variance has ``n - 1``
degrees of freedom, the bootstrap many). ``tests/test_intervals.py`` measures its coverage on simulated
studies: about 95% where the test images dominate (as in the stored study), somewhat above where nothing but
per-image noise varies (the floor), somewhat below with 3 seeds that differ much more than the images do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from .stats import PairedGain

REPLICATES = 2000  # bootstrap resamples of the test images
BOOTSTRAP_SEED = 0  # the resamples are fixed: a report renders the same intervals every time


@dataclass
class TwoLevelGain(PairedGain):
    """A paired gain whose interval counts seeds and test images (``PairedGain``'s verdicts apply)."""

    se_seeds: float | None = None  # the seed-only standard error (what the t-interval uses)
    se_images: float | None = None  # the test images' shared part, var(g)/N, which the t-interval leaves out
    df: float | None = None  # Welch-Satterthwaite degrees of freedom of the combined standard error


def bootstrap_weights(n_images: int, replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``(replicates, n_images)`` counts: how often each test image is drawn in each resample of the test set."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(replicates, n_images))
    flat = (draws + np.arange(replicates)[:, None] * n_images).ravel()
    return np.bincount(flat, minlength=replicates * n_images).reshape(replicates, n_images).astype(np.float32)


def weighted_macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int, weights: np.ndarray) -> np.ndarray:
    """Macro F1 of ``predictions`` on each resample (``weights``: ``(B, N)`` image counts), classes absent from a
    resample counting 0 as scikit-learn's ``zero_division=0`` does. ``(B,)``."""
    cells = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)  # (N,) confusion cell per image
    onehot = np.zeros((len(cells), num_classes * num_classes), dtype=np.float32)
    onehot[np.arange(len(cells)), cells] = 1.0
    confusion = (weights @ onehot).reshape(len(weights), num_classes, num_classes)  # (B, true, predicted)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    true, predicted = confusion.sum(2), confusion.sum(1)
    denominator = true + predicted
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    return f1.mean(1)


def weighted_accuracy(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accuracy on each resample: ``(B,)``."""
    return (weights @ correct.astype(np.float32)) / weights.sum(1)


def two_level_gain(
    method: np.ndarray,
    baseline: np.ndarray,
    method_boot: np.ndarray,
    baseline_boot: np.ndarray,
    confidence: float = 0.95,
) -> TwoLevelGain:
    """The paired gain ``method - baseline`` over seeds with an interval counting seeds and test images.

    Args:
        method, baseline: ``(n,)`` scores on the whole test set, paired by seed.
        method_boot, baseline_boot: ``(n, B)`` the same scores on ``B`` resamples of the test images, the same
            resamples for both (``bootstrap_weights``).
    """
    d = np.asarray(method, float) - np.asarray(baseline, float)
    boot = np.asarray(method_boot, float) - np.asarray(baseline_boot, float)  # (n, B)
    n, mean = len(d), float(d.mean())
    if n < 2:
        return TwoLevelGain(n, mean, None, None, None)
    seed_mean = boot.mean(0)  # (B,)
    var_mean = float(seed_mean.var(ddof=1))  # var(g)/N + var(h)/(nN): the test images' part
    var_each = float(boot.var(axis=1, ddof=1).mean())  # (var(g) + var(h))/N, one seed's difference
    h_part = max(0.0, (var_each - var_mean) / (n - 1))  # var(h)/(nN)
    v_seeds = float(d.var(ddof=1)) / n  # var(u)/n + var(h)/(nN)
    v_excess = max(0.0, v_seeds - h_part)  # var(u)/n: what the seeds add beyond their images' noise
    se = math.sqrt(var_mean + v_excess)
    if se == 0:
        return TwoLevelGain(n, mean, mean, mean, 0.0 if mean else 1.0, se_seeds=0.0, se_images=0.0, df=math.inf)
    df = (n - 1) * se**4 / v_seeds**2 if v_seeds > 0 else math.inf
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * sps.t.sf(abs(mean) / se, df))
    se_images = math.sqrt(max(0.0, var_mean - h_part))  # var(g)/N alone, for the table
    return TwoLevelGain(n, mean, mean - half, mean + half, p, se_seeds=math.sqrt(v_seeds), se_images=se_images, df=df)
