"""Losses against values computed by hand (plain Python math), plus their invariants and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_utils.losses import (
    FeatureRegressor,
    hidden_state_loss,
    kd_loss,
    masked_cross_entropy,
    regressor_loss,
    soft_target_kl,
)

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]  # (B=2, K=3)
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
TARGETS = [1, 2]


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def hand_kl(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """T^2 * mean over rows of sum_c p_t,c * (log p_t,c - log p_s,c), p = softmax(z / T)."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s = softmax([v / temperature for v in s_row])
        p_t = softmax([v / temperature for v in t_row])
        total += sum(pt * (math.log(pt) - math.log(ps)) for ps, pt in zip(p_s, p_t))
    return temperature**2 * total / len(student)


def hand_ce(logits: list[list[float]], targets: list[int]) -> float:
    """Mean of -log softmax(z)[y] over the rows whose target is not -100."""
    losses = [-math.log(softmax(row)[y]) for row, y in zip(logits, targets) if y != -100]
    return sum(losses) / len(losses)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --- soft-target KL and the Hinton KD loss ---------------------------------------------------------


def test_soft_target_kl_matches_hand_value():
    # T=1 by hand: row 0 p_s=(0.2312, 0.6285, 0.1402), p_t=(0.6652, 0.0900, 0.2447); the KL is a plain number.
    expected = hand_kl(STUDENT, TEACHER, 1.0)
    assert expected > 0.5  # the example is far from trivial
    assert soft_target_kl(t(STUDENT), t(TEACHER), 1.0).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_soft_target_kl_is_t_squared_times_batchmean_kl(temperature):
    kl_at_t = hand_kl(STUDENT, TEACHER, temperature) / temperature**2  # batchmean KL of the softened dists
    value = soft_target_kl(t(STUDENT), t(TEACHER), temperature).item()
    assert value == pytest.approx(temperature**2 * kl_at_t, rel=1e-5)


def test_soft_target_kl_temperature_changes_value():
    # Sanity on the example: the T^2 factor does not make the loss T-independent.
    assert soft_target_kl(t(STUDENT), t(TEACHER), 2.0).item() != pytest.approx(
        soft_target_kl(t(STUDENT), t(TEACHER), 4.0).item(), rel=1e-3
    )


def test_soft_target_kl_is_batchmean():
    single = soft_target_kl(t(STUDENT), t(TEACHER), 3.0)
    doubled = soft_target_kl(t(STUDENT + STUDENT), t(TEACHER + TEACHER), 3.0)
    assert doubled.item() == pytest.approx(single.item(), rel=1e-6)
    # and a batch of one row is that row's KL (not divided by the class count)
    assert soft_target_kl(t(STUDENT[:1]), t(TEACHER[:1]), 1.0).item() == pytest.approx(
        hand_kl(STUDENT[:1], TEACHER[:1], 1.0), rel=1e-5
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_identical_logits_give_zero_kd(temperature):
    logits = t(STUDENT)
    assert soft_target_kl(logits, logits.clone(), temperature).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits.clone(), torch.tensor(TARGETS), temperature, alpha=1.0).item() == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_soft_target_kl_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        soft_target_kl(t(STUDENT), t(TEACHER), temperature)


def test_kd_loss_matches_hand_value():
    alpha, temperature = 0.7, 2.0
    expected = (1 - alpha) * hand_ce(STUDENT, TARGETS) + alpha * hand_kl(STUDENT, TEACHER, temperature)
    value = kd_loss(t(STUDENT), t(TEACHER), torch.tensor(TARGETS), temperature, alpha)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_alpha_zero_is_pure_cross_entropy():
    value = kd_loss(t(STUDENT), t(TEACHER), torch.tensor(TARGETS), temperature=4.0, alpha=0.0)
    assert value.item() == pytest.approx(hand_ce(STUDENT, TARGETS), rel=1e-6)


def test_kd_loss_alpha_one_is_pure_kd():
    # Targets that would give a large CE do not matter at alpha=1.
    value = kd_loss(t(STUDENT), t(TEACHER), torch.tensor([2, 1]), temperature=4.0, alpha=1.0)
    assert value.item() == pytest.approx(hand_kl(STUDENT, TEACHER, 4.0), rel=1e-5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_kd_loss_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(t(STUDENT), t(TEACHER), torch.tensor(TARGETS), alpha=alpha)


def test_masked_cross_entropy_ignores_unlabeled_targets():
    value = masked_cross_entropy(t(STUDENT), torch.tensor([-100, 2]))
    assert value.item() == pytest.approx(hand_ce(STUDENT, [-100, 2]), rel=1e-6)
    assert value.item() == pytest.approx(-math.log(softmax(STUDENT[1])[2]), rel=1e-6)


def test_masked_cross_entropy_all_unlabeled_is_zero_and_differentiable():
    logits = t(STUDENT).requires_grad_(True)
    value = masked_cross_entropy(logits, torch.tensor([-100, -100]))
    assert torch.isfinite(value) and value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits.grad).all()
    # kd_loss on such a batch keeps only its KD term
    kd = kd_loss(t(STUDENT), t(TEACHER), torch.tensor([-100, -100]), temperature=2.0, alpha=0.5)
    assert kd.item() == pytest.approx(0.5 * hand_kl(STUDENT, TEACHER, 2.0), rel=1e-5)


# --- hidden-state loss ------------------------------------------------------------------------------


def spatial_map(pooled: list[list[float]]) -> torch.Tensor:
    """A (B, C, 2, 2) map whose per-channel spatial mean is ``pooled[b][c]`` but whose pixels differ."""
    x = t(pooled)[:, :, None, None].repeat(1, 1, 2, 2)
    return x + t([[-1.0, 1.0], [0.5, -0.5]])  # zero-mean pattern: pooling removes it


# Pooled vectors, sample 0: s=(3, 4, 0) -> s_hat=(0.6, 0.8, 0); t=(0, 0, 2) -> t_hat=(0, 0, 1).
#   squared error: 0.36 + 0.64 + 1 = 2; cosine: 0.
# Sample 1: s=(1, 0, 0), t=(2, 0, 0): both normalise to (1, 0, 0); error 0, cosine 1.
HIDDEN_S = [[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]]
HIDDEN_T = [[0.0, 0.0, 2.0], [2.0, 0.0, 0.0]]


def test_hidden_state_loss_mse_hand_value():
    value = hidden_state_loss([spatial_map(HIDDEN_S)], [spatial_map(HIDDEN_T)], kind="mse")
    assert value.item() == pytest.approx((2.0 + 0.0) / (2 * 3), rel=1e-6)  # mean over 2 samples x 3 elements


def test_hidden_state_loss_cosine_hand_value():
    value = hidden_state_loss([spatial_map(HIDDEN_S)], [spatial_map(HIDDEN_T)], kind="cosine")
    assert value.item() == pytest.approx(((1 - 0.0) + (1 - 1.0)) / 2, rel=1e-6)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_state_loss_zero_for_identical_maps(kind):
    torch.manual_seed(0)
    maps = [torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2)]
    value = hidden_state_loss(maps, [m.clone() for m in maps], kind=kind, spatial_size=2)
    assert value.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_state_loss_invariant_to_positive_scaling(kind):
    torch.manual_seed(1)
    s, t_map = torch.randn(3, 4, 4, 4), torch.randn(3, 6, 4, 4)
    base = hidden_state_loss([s], [t_map], kind=kind, spatial_size=2)
    assert base.item() > 1e-3
    scaled = hidden_state_loss([7.5 * s], [0.01 * t_map], kind=kind, spatial_size=2)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-5)
    # a negative scale is not a positive one: the loss changes
    flipped = hidden_state_loss([-s], [t_map], kind=kind, spatial_size=2)
    assert flipped.item() != pytest.approx(base.item(), rel=1e-3)


def test_hidden_state_loss_channel_match_pool_vs_truncate():
    s = t([[1.0, 2.0]])[:, :, None, None]  # (1, 2, 1, 1)
    t_map = t([[1.0, 3.0, 5.0, 1.0]])[:, :, None, None]  # (1, 4, 1, 1)
    # pool: teacher channels averaged pairwise -> (2, 3); cos = (1*2 + 2*3) / (sqrt(5) sqrt(13))
    pooled = hidden_state_loss([s], [t_map], kind="cosine", channel_match="pool")
    # 1 - cos is a difference of nearly equal float32 numbers: compare absolutely
    assert pooled.item() == pytest.approx(1 - 8 / math.sqrt(65), abs=1e-6)
    # truncate: first two teacher channels (1, 3); cos = (1*1 + 2*3) / (sqrt(5) sqrt(10))
    truncated = hidden_state_loss([s], [t_map], kind="cosine", channel_match="truncate")
    assert truncated.item() == pytest.approx(1 - 7 / math.sqrt(50), abs=1e-6)
    assert abs(truncated.item() - pooled.item()) > 1e-3  # the two rules really differ here
    # mse of unit vectors in 2 dims: (2 - 2 cos) / 2
    mse = hidden_state_loss([s], [t_map], kind="mse", channel_match="truncate")
    assert mse.item() == pytest.approx(1 - 7 / math.sqrt(50), abs=1e-6)
    # the wider map is pooled whichever side it is on
    swapped = hidden_state_loss([t_map], [s], kind="cosine", channel_match="pool")
    assert swapped.item() == pytest.approx(pooled.item(), abs=1e-6)


def test_hidden_state_loss_level_weights():
    torch.manual_seed(2)
    s = [torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2)]
    t_maps = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    level0 = hidden_state_loss(s[:1], t_maps[:1]).item()
    level1 = hidden_state_loss(s[1:], t_maps[1:]).item()
    assert level0 > 1e-4 and level1 > 1e-4
    assert hidden_state_loss(s, t_maps, weights=[0, 1]).item() == pytest.approx(level1, rel=1e-6)
    assert hidden_state_loss(s, t_maps, weights=None).item() == pytest.approx(level0 + level1, rel=1e-6)
    assert hidden_state_loss(s, t_maps, weights=[2.0, 0.5]).item() == pytest.approx(2 * level0 + 0.5 * level1, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [1.0]}, "weights"),
        ({"weights": [1.0, 1.0, 1.0]}, "weights"),
        ({"weights": [1.0, -0.5]}, ">= 0"),
        ({"kind": "l1"}, "mse, cosine"),
        ({"channel_match": "project"}, "pool, truncate"),
        ({"spatial_size": 0}, "spatial_size"),
    ],
)
def test_hidden_state_loss_rejects_bad_options(kwargs, match):
    maps = [torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)]
    with pytest.raises(ValueError, match=match):
        hidden_state_loss(maps, maps, **kwargs)


def test_hidden_state_loss_rejects_level_count_mismatch():
    with pytest.raises(ValueError, match="levels"):
        hidden_state_loss([torch.randn(2, 4, 2, 2)] * 2, [torch.randn(2, 4, 2, 2)])


def test_hidden_state_loss_rejects_batch_mismatch():
    with pytest.raises(ValueError, match="batch"):
        hidden_state_loss([torch.randn(2, 4, 2, 2)], [torch.randn(3, 4, 2, 2)])


# --- FitNets regressor -------------------------------------------------------------------------------


def identity_regressor(channels: int) -> FeatureRegressor:
    r = FeatureRegressor(channels, channels, batch_norm=False)
    with torch.no_grad():
        r.conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        r.conv.bias.zero_()
    return r


def test_feature_regressor_output_shape():
    for batch_norm in (True, False):
        r = FeatureRegressor(8, 16, batch_norm=batch_norm)
        assert r(torch.randn(2, 8, 5, 5)).shape == (2, 16, 5, 5)


def test_regressor_loss_with_identity_regressor_is_pooled_mse():
    torch.manual_seed(3)
    s, t_map = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)
    value = regressor_loss([identity_regressor(4)], [s], [t_map])
    expected = F.mse_loss(F.adaptive_avg_pool2d(s, 4), t_map)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    # by hand for one element-wise mean: average 2x2 blocks, then the mean squared difference
    blocks = s.reshape(2, 4, 4, 2, 4, 2).mean(dim=(3, 5))
    assert value.item() == pytest.approx(((blocks - t_map) ** 2).mean().item(), rel=1e-6)
    weighted = regressor_loss([identity_regressor(4)], [s], [t_map], weights=[0.25])
    assert weighted.item() == pytest.approx(0.25 * expected.item(), rel=1e-6)
    assert regressor_loss([identity_regressor(4)], [t_map], [t_map.clone()]).item() == pytest.approx(0.0, abs=1e-7)


def test_regressor_loss_sums_levels():
    torch.manual_seed(4)
    s = [torch.randn(2, 4, 4, 4), torch.randn(2, 2, 2, 2)]
    t_maps = [torch.randn(2, 4, 4, 4), torch.randn(2, 2, 2, 2)]
    regs = [identity_regressor(4), identity_regressor(2)]
    expected = F.mse_loss(s[0], t_maps[0]) + F.mse_loss(s[1], t_maps[1])
    assert regressor_loss(regs, s, t_maps).item() == pytest.approx(expected.item(), rel=1e-6)
    assert regressor_loss(regs, s, t_maps, weights=[0, 1]).item() == pytest.approx(
        F.mse_loss(s[1], t_maps[1]).item(), rel=1e-6
    )


def test_regressor_loss_errors():
    s, t_map = torch.randn(2, 4, 4, 4), torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="channels"):
        regressor_loss([FeatureRegressor(4, 6)], [s], [t_map])  # projects to 6, teacher has 8
    with pytest.raises(ValueError, match="regressors"):
        regressor_loss([FeatureRegressor(4, 8)] * 2, [s], [t_map])
    with pytest.raises(ValueError, match=">= 0"):
        regressor_loss([FeatureRegressor(4, 8)], [s], [t_map], weights=[-1.0])


def test_regressor_loss_gradients_reach_regressor_weights():
    torch.manual_seed(5)
    r = FeatureRegressor(4, 8)  # with BatchNorm, as the distiller builds it
    s = torch.randn(4, 4, 4, 4, requires_grad=True)
    loss = regressor_loss([r], [s], [torch.randn(4, 8, 2, 2)])
    loss.backward()
    for name, p in r.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert s.grad is not None and s.grad.abs().sum() > 0
