"""Intervals that count seeds and test images: the bootstrap's metric against scikit-learn, the interval against
the seed-only t-interval where the images add nothing, and its coverage on simulated studies."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import f1_score

from kd_utils.intervals import bootstrap_weights, two_level_gain, weighted_accuracy, weighted_macro_f1
from kd_utils.stats import paired_gain


def test_bootstrap_weights_resample_every_image_count_and_are_fixed():
    w = bootstrap_weights(50, replicates=7, seed=3)
    assert w.shape == (7, 50) and (w.sum(1) == 50).all() and (w >= 0).all()
    assert np.array_equal(w, bootstrap_weights(50, replicates=7, seed=3))
    assert not np.array_equal(w[0], w[1])


def test_weighted_macro_f1_is_scikit_learns_on_the_resampled_images():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    preds[:150] = labels[:150]  # a half-decent classifier
    w = bootstrap_weights(300, replicates=5, seed=1)
    got = weighted_macro_f1(labels, preds, 4, w)
    for b in range(5):
        idx = np.repeat(np.arange(300), w[b].astype(int))
        want = f1_score(labels[idx], preds[idx], average="macro", labels=range(4), zero_division=0)
        assert got[b] == pytest.approx(want, abs=1e-6)
    assert weighted_macro_f1(labels, preds, 4, np.ones((1, 300), np.float32))[0] == pytest.approx(
        f1_score(labels, preds, average="macro", zero_division=0), abs=1e-6
    )
    correct = labels == preds
    assert weighted_accuracy(correct, w)[0] == pytest.approx(
        correct[np.repeat(np.arange(300), w[0].astype(int))].mean()
    )


def test_without_image_noise_the_interval_is_the_seed_only_t_interval():
    a, b = np.array([0.83, 0.85, 0.84]), np.array([0.80, 0.83, 0.81])
    flat = np.repeat(a[:, None], 10, 1), np.repeat(b[:, None], 10, 1)  # every resample scores the same
    gain, t = two_level_gain(a, b, *flat), paired_gain(a, b)
    assert (gain.mean, gain.low, gain.high) == (pytest.approx(t.mean), pytest.approx(t.low), pytest.approx(t.high))
    assert gain.p_value == pytest.approx(t.p_value) and gain.se_images == 0 and gain.df == pytest.approx(2)
    assert two_level_gain(a[:1], b[:1], flat[0][:1], flat[1][:1]).low is None  # one seed: no interval


def simulated_study(rng, weights, seeds=3, images=2000, accuracies=(0.93, 0.92), image_sd=1.0, seed_sd=0.05):
    """Two methods on a fresh sample of test images: image ``i`` is right for a run when ``alpha_m + u_seed +
    2.5 z_i + image_sd w_mi + e > 0`` (``z``: the image's difficulty, shared by every run; ``w``: how this method
    finds it, shared by its seeds; ``e``: the run's own luck). The true gain in accuracy is known exactly."""
    scale = np.sqrt(1 + 2.5**2 + image_sd**2 + seed_sd**2)
    z = rng.standard_normal(images)
    scores, boots = [], []
    for accuracy in accuracies:
        alpha = sps.norm.ppf(accuracy) * scale
        w, u = rng.standard_normal(images), seed_sd * rng.standard_normal(seeds)
        correct = alpha + u[:, None] + 2.5 * z + image_sd * w + rng.standard_normal((seeds, images)) > 0
        scores.append(correct.mean(1))
        boots.append(np.stack([weighted_accuracy(c, weights) for c in correct]))
    return (*scores, *boots), accuracies[0] - accuracies[1]


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [3, 5])
def test_the_interval_covers_the_true_gain_95_percent_of_the_time(seeds):
    """1,000 simulated studies in the stored study's regime (the test images' part of a paired gain larger than
    the seeds'): the combined interval covers the true gain in 93-97% of them; the seed-only t-interval, which
    conditions on one test set, covers it less often."""
    rng, weights = np.random.default_rng(11), bootstrap_weights(2000, replicates=500, seed=0)
    covered = seed_only = 0
    studies = 1000
    for _ in range(studies):
        (a, b, a_boot, b_boot), truth = simulated_study(rng, weights, seeds=seeds)
        gain, t = two_level_gain(a, b, a_boot, b_boot), paired_gain(a, b)
        covered += gain.low <= truth <= gain.high
        seed_only += t.low <= truth <= t.high
    assert 0.93 <= covered / studies <= 0.97, covered / studies
    assert seed_only < covered
