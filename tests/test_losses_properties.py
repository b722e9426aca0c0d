"""Property-based tests for every loss in ``kd_utils.losses``: for any shapes the definition allows and logits or
activations of magnitude up to 1e4, the value is a finite scalar and the gradients with respect to the student's
inputs are finite; where the definition does not hold (a batch of one for a pairwise or across-batch term, an
invalid option), a ValueError is raised, and only there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kd_utils.losses import (
    FeatureRegressor,
    attention_transfer_loss,
    dist_loss,
    dkd_loss,
    hidden_state_loss,
    kd_loss,
    masked_cross_entropy,
    regressor_loss,
    rkd_loss,
    soft_target_kl,
)

SETTINGS = settings(max_examples=40, deadline=None)
MAGNITUDE = 1e4  # the largest |logit| or |activation| drawn

batches = st.integers(1, 8)
class_counts = st.integers(2, 12)
channels = st.integers(1, 8)
spatial = st.integers(1, 6)
temperatures = st.floats(0.05, 50.0)
weights = st.floats(0.0, 100.0)
bad_temperatures = st.sampled_from([0.0, -1.0, -1e-3, math.inf, -math.inf, math.nan])
bad_weights = st.sampled_from([-1.0, -1e-6, math.inf, math.nan])


def tensors(shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    """float32 tensors of the given shape with entries in [-1e4, 1e4] (zeros, constants and extremes included)."""
    elements = st.floats(-MAGNITUDE, MAGNITUDE, width=32)
    return arrays(np.float32, shape, elements=elements).map(torch.from_numpy)


@st.composite
def logit_pairs(draw, batch=batches, classes=class_counts):
    b, k = draw(batch), draw(classes)
    return draw(tensors((b, k))), draw(tensors((b, k)))


@st.composite
def labeled_logits(draw):
    """(student, teacher, targets); each target a class in [0, K) or -100 (unlabeled)."""
    student, teacher = draw(logit_pairs())
    b, k = student.shape
    targets = draw(st.lists(st.one_of(st.integers(0, k - 1), st.just(-100)), min_size=b, max_size=b))
    return student, teacher, torch.tensor(targets)


@st.composite
def feature_pairs(draw, min_levels=1, max_levels=2):
    """Aligned lists of student and teacher maps (B, C, H, W): one batch size, channels and sizes drawn apart."""
    b = draw(batches)
    n_levels = draw(st.integers(min_levels, max_levels))
    student, teacher = [], []
    for _ in range(n_levels):
        student.append(draw(tensors((b, draw(channels), draw(spatial), draw(spatial)))))
        teacher.append(draw(tensors((b, draw(channels), draw(spatial), draw(spatial)))))
    return student, teacher


def assert_finite_with_finite_grads(value: torch.Tensor, *inputs: torch.Tensor) -> None:
    assert value.dim() == 0, f"loss is not a scalar: shape {tuple(value.shape)}"
    assert torch.isfinite(value), f"loss is {value.item()}"
    value.backward()
    for x in inputs:
        assert x.grad is not None and torch.isfinite(x.grad).all(), "non-finite gradient"


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


# --- logit losses ----------------------------------------------------------------------------------------------


@SETTINGS
@given(logit_pairs(), temperatures)
def test_soft_target_kl_finite(pair, temperature):
    student, teacher = leaf(pair[0]), pair[1]
    value = soft_target_kl(student, teacher, temperature)
    assert value.item() >= -1e-3  # a KL is non-negative, up to float32 rounding
    assert_finite_with_finite_grads(value, student)


@SETTINGS
@given(labeled_logits())
def test_masked_cross_entropy_finite(data):
    student, _, targets = data
    student = leaf(student)
    value = masked_cross_entropy(student, targets)
    assert value.item() >= 0
    assert_finite_with_finite_grads(value, student)


@SETTINGS
@given(labeled_logits(), temperatures, st.floats(0.0, 1.0))
def test_kd_loss_finite(data, temperature, alpha):
    student, teacher, targets = data
    student = leaf(student)
    assert_finite_with_finite_grads(kd_loss(student, teacher, targets, temperature, alpha), student)


@SETTINGS
@given(labeled_logits(), weights, weights, temperatures)
def test_dkd_loss_finite(data, alpha, beta, temperature):
    student, teacher, targets = data
    student = leaf(student)
    value = dkd_loss(student, teacher, targets, alpha, beta, temperature)
    assert value.item() >= -1e-3 * (1 + alpha + beta) * temperature**2  # both parts are KLs
    assert_finite_with_finite_grads(value, student)


@SETTINGS
@given(logit_pairs(), weights, weights, temperatures)
def test_dist_loss_finite_or_batch_of_one(pair, beta, gamma, temperature):
    student, teacher = leaf(pair[0]), pair[1]
    if student.shape[0] == 1 and gamma > 0:  # the intra-class Pearson needs two samples
        with pytest.raises(ValueError, match="batch of at least 2"):
            dist_loss(student, teacher, beta, gamma, temperature)
        return
    value = dist_loss(student, teacher, beta, gamma, temperature)
    # each 1 - pearson lies in [0, 2], up to float32 rounding of a correlation near +-1 (times T^2)
    slack = 1e-5 * (beta + gamma) * temperature**2
    assert -slack <= value.item() <= 2 * (beta + gamma) * temperature**2 + slack
    assert_finite_with_finite_grads(value, student)


@SETTINGS
@given(labeled_logits(), bad_temperatures)
def test_logit_losses_reject_bad_temperature(data, temperature):
    student, teacher, targets = data
    with pytest.raises(ValueError, match="temperature"):
        soft_target_kl(student, teacher, temperature)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(student, teacher, targets, temperature)
    with pytest.raises(ValueError, match="temperature"):
        dkd_loss(student, teacher, targets, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        dist_loss(student, teacher, temperature=temperature)


@SETTINGS
@given(labeled_logits(), bad_weights)
def test_logit_losses_reject_bad_weights(data, weight):
    student, teacher, targets = data
    for name in ("alpha", "beta"):
        with pytest.raises(ValueError, match=name):
            dkd_loss(student, teacher, targets, **{name: weight})
    for name in ("beta", "gamma"):
        with pytest.raises(ValueError, match=name):
            dist_loss(student, teacher, **{name: weight})


# --- feature losses --------------------------------------------------------------------------------------------


@SETTINGS
@given(
    feature_pairs(),
    st.sampled_from(["mse", "cosine"]),
    st.sampled_from(["pool", "truncate"]),
    st.integers(1, 3),
)
def test_hidden_state_loss_finite(pair, kind, channel_match, spatial_size):
    student = [leaf(x) for x in pair[0]]
    value = hidden_state_loss(student, pair[1], kind=kind, channel_match=channel_match, spatial_size=spatial_size)
    assert_finite_with_finite_grads(value, *student)


@SETTINGS
@given(feature_pairs(max_levels=1), st.booleans())
def test_regressor_loss_finite(pair, batch_norm):
    (student,), (teacher,) = pair
    student = leaf(student)
    regressor = FeatureRegressor(student.shape[1], teacher.shape[1], batch_norm=batch_norm)
    b, _, h, w = student.shape
    if batch_norm and b * h * w == 1:  # training-mode BatchNorm has no variance from one value per channel
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            regressor_loss([regressor], [student], [teacher])
        return
    value = regressor_loss([regressor], [student], [teacher])
    assert_finite_with_finite_grads(value, student, *regressor.parameters())


@SETTINGS
@given(feature_pairs(), st.floats(1.0, 8.0))
def test_attention_transfer_loss_finite(pair, p):
    student = [leaf(x) for x in pair[0]]
    value = attention_transfer_loss(student, pair[1], p=p)
    # per level the mean of (a_s - a_t)^2 for unit vectors with entries >= 0 lies in [0, 2 / positions] <= 2
    assert -1e-6 <= value.item() <= 2 * len(student) + 1e-4
    assert_finite_with_finite_grads(value, *student)


@SETTINGS
@given(batches, channels, channels, st.data())
def test_rkd_loss_finite_or_batch_of_one(batch, student_dim, teacher_dim, data):
    student = leaf(data.draw(tensors((batch, student_dim))))
    teacher = data.draw(tensors((batch, teacher_dim)))
    distance_weight, angle_weight = data.draw(weights), data.draw(weights)
    if batch == 1:  # no pairs: no distance to normalise
        with pytest.raises(ValueError, match="at least 2"):
            rkd_loss(student, teacher, distance_weight, angle_weight)
        return
    value = rkd_loss(student, teacher, distance_weight, angle_weight)
    assert value.item() >= 0
    assert_finite_with_finite_grads(value, student)


@SETTINGS
@given(feature_pairs(max_levels=1), bad_weights)
def test_feature_losses_reject_bad_weights(pair, weight):
    student, teacher = pair
    with pytest.raises(ValueError, match=">= 0"):
        hidden_state_loss(student, teacher, weights=[weight])
    regressor = FeatureRegressor(student[0].shape[1], teacher[0].shape[1])
    with pytest.raises(ValueError, match=">= 0"):
        regressor_loss([regressor], student, teacher, weights=[weight])
    embed_s, embed_t = student[0].flatten(1), teacher[0].flatten(1)
    with pytest.raises(ValueError, match="distance_weight"):
        rkd_loss(embed_s, embed_t, distance_weight=weight)
    with pytest.raises(ValueError, match="angle_weight"):
        rkd_loss(embed_s, embed_t, angle_weight=weight)
