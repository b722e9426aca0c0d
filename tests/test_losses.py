"""Losses against values computed by hand (plain Python math), plus their invariants and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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


# --- decoupled KD (DKD) ---------------------------------------------------------------------------------


def kl_list(p_teacher: list[float], p_student: list[float]) -> float:
    return sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_teacher, p_student) if pt > 0)


def hand_dkd_parts(student, teacher, targets, temperature) -> tuple[float, float]:
    """(TCKD, NCKD) by the paper's definition: T^2 * batch means over labeled rows of the binary KL
    ``(p_y, 1 - p_y)`` and of the KL of the softmax over the non-target logits (target removed)."""
    tckd = nckd = 0.0
    labeled = [(s, te, y) for s, te, y in zip(student, teacher, targets) if y >= 0]
    for s_row, t_row, y in labeled:
        p_s = softmax([v / temperature for v in s_row])
        p_t = softmax([v / temperature for v in t_row])
        tckd += kl_list([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        q_s = softmax([v / temperature for c, v in enumerate(s_row) if c != y])
        q_t = softmax([v / temperature for c, v in enumerate(t_row) if c != y])
        nckd += kl_list(q_t, q_s)
    n = max(1, len(labeled))
    return temperature**2 * tckd / n, temperature**2 * nckd / n


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 2.0)])
def test_dkd_loss_matches_hand_value(alpha, beta, temperature):
    tckd, nckd = hand_dkd_parts(STUDENT, TEACHER, TARGETS, temperature)
    assert tckd > 1e-3 and nckd > 1e-3  # both parts matter in the example
    value = dkd_loss(t(STUDENT), t(TEACHER), torch.tensor(TARGETS), alpha, beta, temperature)
    assert value.item() == pytest.approx(alpha * tckd + beta * nckd, rel=1e-5)


def test_dkd_loss_is_linear_in_alpha_and_beta():
    y = torch.tensor(TARGETS)
    tckd = dkd_loss(t(STUDENT), t(TEACHER), y, alpha=1.0, beta=0.0).item()
    nckd = dkd_loss(t(STUDENT), t(TEACHER), y, alpha=0.0, beta=1.0).item()
    assert dkd_loss(t(STUDENT), t(TEACHER), y, alpha=3.0, beta=0.25).item() == pytest.approx(
        3.0 * tckd + 0.25 * nckd, rel=1e-5
    )


def test_dkd_loss_decomposes_classical_kd():
    # The paper's Eq. (1) per sample: KL(p_t || p_s) = TCKD + (1 - p_t,y) * NCKD, all at the same T.
    temperature, y = 2.0, torch.tensor([1])
    s, te = t(STUDENT[:1]), t(TEACHER[:1])
    p_teacher_y = softmax([v / temperature for v in TEACHER[0]])[1]
    tckd = dkd_loss(s, te, y, alpha=1.0, beta=0.0, temperature=temperature).item()
    nckd = dkd_loss(s, te, y, alpha=0.0, beta=1.0, temperature=temperature).item()
    assert soft_target_kl(s, te, temperature).item() == pytest.approx(tckd + (1 - p_teacher_y) * nckd, rel=1e-5)


def test_dkd_loss_two_classes_is_classical_kd():
    # With K = 2 the binary split is the whole distribution and one non-target class leaves NCKD = 0.
    s, te, y = t([[1.0, -1.0], [0.5, 2.0]]), t([[0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1])
    assert dkd_loss(s, te, y, alpha=0.0, beta=1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert dkd_loss(s, te, y, alpha=1.0, beta=0.0, temperature=3.0).item() == pytest.approx(
        soft_target_kl(s, te, 3.0).item(), rel=1e-5
    )


def test_dkd_loss_zero_for_identical_logits():
    logits = t(STUDENT)
    assert dkd_loss(logits, logits.clone(), torch.tensor(TARGETS)).item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_loss_leaves_out_unlabeled_samples():
    value = dkd_loss(t(STUDENT), t(TEACHER), torch.tensor([-100, 2]), alpha=1.0, beta=2.0, temperature=2.0)
    tckd, nckd = hand_dkd_parts(STUDENT[1:], TEACHER[1:], [2], 2.0)
    assert value.item() == pytest.approx(tckd + 2.0 * nckd, rel=1e-5)  # mean over the one labeled row


def test_dkd_loss_without_labels_is_zero_and_differentiable():
    logits = t(STUDENT).requires_grad_(True)
    value = dkd_loss(logits, t(TEACHER), torch.tensor([-100, -100]))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_dkd_loss_finite_for_huge_logits():
    # T=4: student z/T = (2500, 0, -2500), teacher (0, 2500, 0), y = 0. log(1 - p_s,y) = -2500 (to 1e-1000)
    # while p_t,y ~ 0, so TCKD = T^2 * (0 - (-2500)) = 40000. The non-target parts are (1, ~0) on both
    # sides, so NCKD ~ 0. A log(1 - p) computed from probabilities would give inf here.
    student = t([[1e4, 0.0, -1e4]]).requires_grad_(True)
    value = dkd_loss(student, t([[0.0, 1e4, 0.0]]), torch.tensor([0]), alpha=1.0, beta=8.0, temperature=4.0)
    assert value.item() == pytest.approx(40000.0, rel=1e-5)
    value.backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"alpha": -1.0}, "alpha"),
        ({"beta": math.nan}, "beta"),
    ],
)
def test_dkd_loss_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dkd_loss(t(STUDENT), t(TEACHER), torch.tensor(TARGETS), **kwargs)


def test_dkd_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        dkd_loss(t(STUDENT), t(TEACHER)[:, :2], torch.tensor(TARGETS))
    with pytest.raises(ValueError, match="targets"):
        dkd_loss(t(STUDENT), t(TEACHER), torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd_loss(t([[1.0]]), t([[2.0]]), torch.tensor([0]))


# --- DIST -----------------------------------------------------------------------------------------------


def hand_pearson(a: list[float], b: list[float], eps: float = 1e-8) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    ca, cb = [v - ma for v in a], [v - mb for v in b]
    dot = sum(x * y for x, y in zip(ca, cb))
    return dot / (math.sqrt(sum(x * x for x in ca)) * math.sqrt(sum(y * y for y in cb)) + eps)


def hand_dist(student, teacher, beta, gamma, temperature) -> float:
    p_s = [softmax([v / temperature for v in row]) for row in student]
    p_t = [softmax([v / temperature for v in row]) for row in teacher]
    inter = sum(1 - hand_pearson(a, b) for a, b in zip(p_s, p_t)) / len(p_s)
    columns = range(len(p_s[0]))
    intra = sum(1 - hand_pearson([r[c] for r in p_s], [r[c] for r in p_t]) for c in columns) / len(columns)
    return temperature**2 * (beta * inter + gamma * intra)


DIST_S = STUDENT + [[2.0, 2.0, -1.0]]  # B=3 so that the intra-class Pearson is not just +-1
DIST_T = TEACHER + [[0.5, 1.5, 0.0]]


@pytest.mark.parametrize(("beta", "gamma", "temperature"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 1.0, 2.0)])
def test_dist_loss_matches_hand_value(beta, gamma, temperature):
    expected = hand_dist(DIST_S, DIST_T, beta, gamma, temperature)
    assert expected > 1e-2
    value = dist_loss(t(DIST_S), t(DIST_T), beta, gamma, temperature)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_dist_loss_batch_of_two_intra_pearson_is_plus_or_minus_one():
    # Two samples: each class column is two points, so its Pearson is the sign agreement of the differences.
    # Class 0: student p (0.2312, 0.0466), teacher (0.6652, 0.4879): both fall, Pearson 1. Class 1: student
    # (0.6285, 0.0171) falls, teacher (0.0900, 0.4879) rises: -1. Class 2: rises vs falls: -1. intra = 4/3.
    p_s = [softmax(row) for row in STUDENT]
    p_t = [softmax(row) for row in TEACHER]
    signs = [(p_s[0][c] - p_s[1][c]) * (p_t[0][c] - p_t[1][c]) > 0 for c in range(3)]
    intra = sum(0.0 if same else 2.0 for same in signs) / 3
    assert intra == pytest.approx(4 / 3)
    value = dist_loss(t(STUDENT), t(TEACHER), beta=0.0, gamma=1.0)
    assert value.item() == pytest.approx(intra, abs=1e-6)


def test_dist_loss_zero_for_identical_logits():
    # 1 - pearson(p, p) = eps / (|p'|^2 + eps) with p' the centred vector: not exactly 0, but ~1e-6 here
    logits = t(DIST_S)
    residual = hand_dist(DIST_S, DIST_S, 1.0, 1.0, 2.0)
    assert 0 < residual < 2e-6
    assert dist_loss(logits, logits.clone(), temperature=2.0).item() == pytest.approx(residual, abs=5e-7)
    assert dist_loss(logits, logits.clone(), temperature=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dist_loss_invariant_to_joint_permutations():
    torch.manual_seed(6)
    s, te = torch.randn(5, 7), torch.randn(5, 7)
    base = dist_loss(s, te, temperature=2.0).item()
    rows, cols = torch.randperm(5), torch.randperm(7)
    assert dist_loss(s[rows][:, cols], te[rows][:, cols], temperature=2.0).item() == pytest.approx(base, rel=1e-5)


def test_dist_loss_batch_of_one():
    with pytest.raises(ValueError, match="batch of at least 2 for the intra-class term"):
        dist_loss(t(STUDENT[:1]), t(TEACHER[:1]))
    # without the intra-class term a single sample is fine: T^2 * beta * (1 - pearson)
    value = dist_loss(t(STUDENT[:1]), t(TEACHER[:1]), beta=1.5, gamma=0.0, temperature=2.0)
    assert value.item() == pytest.approx(hand_dist(STUDENT[:1], TEACHER[:1], 1.5, 0.0, 2.0), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"temperature": -1.0}, "temperature"), ({"beta": -0.5}, "beta"), ({"gamma": math.inf}, "gamma")],
)
def test_dist_loss_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dist_loss(t(STUDENT), t(TEACHER), **kwargs)


def test_dist_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        dist_loss(t(STUDENT), t(TEACHER[:1]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dist_loss(t([[1.0], [2.0]]), t([[0.0], [1.0]]))


# --- attention transfer ------------------------------------------------------------------------------------


def test_attention_transfer_hand_value():
    # Teacher channels at two positions: (sqrt 2, 2) and (2, 2): mean of F^2 = (3, 4) -> a_t = (0.6, 0.8).
    # Student: one channel (1, 0) -> a_s = (1, 0). Mean squared difference: (0.4^2 + 0.8^2) / 2 = 0.4.
    student = t([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    teacher = t([[[[math.sqrt(2.0), 2.0]], [[2.0, 2.0]]]])  # (1, 2, 1, 2)
    assert attention_transfer_loss([student], [teacher]).item() == pytest.approx(0.4, rel=1e-6)


def test_attention_transfer_pools_the_larger_feature_map():
    # Teacher (1, 1, 2, 4): its 2x2 blocks average to F = (1, 1), so a_t = (1, 1) / sqrt 2; student a_s = (1, 0).
    # Loss ((1 - 1/sqrt 2)^2 + 1/2) / 2 = 1 - 1/sqrt 2. (Pooling F^2 instead would give blocks (1, 1.5).)
    student = t([[[[1.0, 0.0]]]])
    teacher = t([[[[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]]]])
    expected = 1 - 1 / math.sqrt(2.0)
    assert attention_transfer_loss([student], [teacher]).item() == pytest.approx(expected, rel=1e-6)
    assert attention_transfer_loss([teacher], [student]).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_transfer_matches_loops(p):
    torch.manual_seed(7)
    s, te = torch.randn(2, 3, 2, 3), torch.randn(2, 5, 2, 3)

    def attention(x, b):  # normalize(mean_c |x|^p) by loops
        q = [
            sum(abs(x[b, c, i, j].item()) ** p for c in range(x.shape[1])) / x.shape[1]
            for i in range(2)
            for j in range(3)
        ]
        norm = math.sqrt(sum(v * v for v in q))
        return [v / norm for v in q]

    squares = [(u - v) ** 2 for b in range(2) for u, v in zip(attention(s, b), attention(te, b))]
    value = attention_transfer_loss([s], [te], p=p)
    assert value.item() == pytest.approx(sum(squares) / len(squares), rel=1e-5)


def test_attention_transfer_invariants():
    torch.manual_seed(8)
    s = [torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2)]
    te = [torch.randn(2, 6, 8, 8), torch.randn(2, 3, 2, 2)]
    level0 = attention_transfer_loss(s[:1], te[:1]).item()
    level1 = attention_transfer_loss(s[1:], te[1:]).item()
    assert level0 > 1e-4 and level1 > 1e-4
    assert attention_transfer_loss(s, te).item() == pytest.approx(level0 + level1, rel=1e-6)
    assert attention_transfer_loss(s, [m.clone() for m in s]).item() == pytest.approx(0.0, abs=1e-7)
    # a positive scale of either side leaves the normalised attention maps unchanged
    assert attention_transfer_loss([3.0 * m for m in s], te).item() == pytest.approx(level0 + level1, rel=1e-5)


def test_attention_transfer_huge_activations_and_exponent():
    # 1e4^8 = 1e32 and its square overflows float32; scaling by the per-sample maximum avoids that.
    torch.manual_seed(9)
    s, te = torch.randn(2, 3, 3, 3), torch.randn(2, 4, 3, 3)
    base = attention_transfer_loss([s], [te], p=8).item()
    big = (1e4 * s).requires_grad_(True)
    value = attention_transfer_loss([big], [1e4 * te], p=8)
    assert value.item() == pytest.approx(base, rel=1e-4)
    value.backward()
    assert torch.isfinite(big.grad).all()


def test_attention_transfer_errors():
    maps = [torch.randn(2, 4, 2, 2)]
    for p in (0.5, math.nan):
        with pytest.raises(ValueError, match="p must be"):
            attention_transfer_loss(maps, maps, p=p)
    with pytest.raises(ValueError, match="levels"):
        attention_transfer_loss(maps * 2, maps)
    with pytest.raises(ValueError, match="batch"):
        attention_transfer_loss(maps, [torch.randn(3, 4, 2, 2)])


# --- relational KD (RKD) ------------------------------------------------------------------------------------


def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def hand_rkd_parts(student, teacher) -> tuple[float, float]:
    """(distance, angle) terms by loops: distances over their off-diagonal mean; cosines at the middle point
    of every ordered triplet, a zero difference giving a zero unit vector."""

    def distances(points):
        n = len(points)
        d = [[math.dist(points[i], points[j]) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mean for v in row] for row in d]

    def unit(a, b):  # from b to a
        v = [x - y for x, y in zip(a, b)]
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v] if norm > 0 else [0.0] * len(v)

    def cosines(points):
        n = len(points)
        return [
            sum(x * y for x, y in zip(unit(points[i], points[j]), unit(points[k], points[j])))
            for j in range(n)
            for i in range(n)
            for k in range(n)
        ]

    n = len(student)
    ds, dt = distances(student), distances(teacher)
    distance = sum(smooth_l1(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    angle = sum(smooth_l1(a - b) for a, b in zip(cosines(student), cosines(teacher))) / n**3
    return distance, angle


# A right triangle against a stretched, 3-D one; distances (1, 1, sqrt 2) vs (2, 1, sqrt 5) before the means.
RKD_S = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
RKD_T = [[0.0, 0.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 1.0]]


def test_rkd_loss_matches_hand_value():
    distance, angle = hand_rkd_parts(RKD_S, RKD_T)
    assert distance > 1e-3 and angle > 1e-3
    assert rkd_loss(t(RKD_S), t(RKD_T)).item() == pytest.approx(25 * distance + 50 * angle, rel=1e-5)
    assert rkd_loss(t(RKD_S), t(RKD_T), 1.0, 0.0).item() == pytest.approx(distance, rel=1e-5)
    assert rkd_loss(t(RKD_S), t(RKD_T), 0.0, 1.0).item() == pytest.approx(angle, rel=1e-5)


def test_rkd_loss_zero_for_similar_embeddings():
    torch.manual_seed(10)
    teacher = torch.randn(6, 4)
    assert rkd_loss(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    # distances are divided by their mean and angles ignore scale, rotation and translation
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))
    student = 3.0 * teacher @ rotation + torch.tensor([1.0, -2.0, 0.5, 4.0])
    assert rkd_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-4)


def test_rkd_loss_batch_of_two_and_coincident_points():
    # Two distinct points: the one distance normalises to 1 on both sides, and the only non-zero cosines are
    # the 1s of the triplets (1, 0, 1) and (0, 1, 0) on both sides: the loss is 0.
    student, teacher = [[0.0, 1.0], [3.0, 5.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert hand_rkd_parts(student, teacher) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert rkd_loss(t(student), t(teacher)).item() == pytest.approx(0.0, abs=1e-6)
    # Coincident student points: both distances clamp to sqrt(eps) and normalise to 1 (distance term 0); the
    # unit vectors are 0, so the teacher's two cosines of 1 each cost smooth_l1(1) = 0.5 over the 8 triplets:
    # angle = 1/8, loss = 50/8, with finite gradients.
    same = t([[1.0, 1.0], [1.0, 1.0]]).requires_grad_(True)
    value = rkd_loss(same, t([[0.0], [2.0]]))
    assert value.item() == pytest.approx(50 / 8, rel=1e-5)
    value.backward()
    assert torch.isfinite(same.grad).all()


def test_rkd_loss_errors():
    with pytest.raises(ValueError, match="at least 2"):
        rkd_loss(t([[1.0, 2.0]]), t([[1.0]]))
    with pytest.raises(ValueError, match="same batch size"):
        rkd_loss(t(RKD_S), t(RKD_T[:2]))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        rkd_loss(torch.randn(3, 2, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="distance_weight"):
        rkd_loss(t(RKD_S), t(RKD_T), distance_weight=-1.0)
    with pytest.raises(ValueError, match="angle_weight"):
        rkd_loss(t(RKD_S), t(RKD_T), angle_weight=math.nan)


def test_packed_losses_are_each_students_own():
    """K students in one call (kd_utils.packed_train): each one's CE and T^2-scaled KL at its own T and alpha."""
    from kd_utils.losses import kd_loss_terms, masked_cross_entropy, packed_cross_entropy, packed_kd_loss_terms

    g = torch.Generator().manual_seed(0)
    b, k, n = 6, 3, 5
    student, teacher = torch.randn(b, k, n, generator=g), torch.randn(b, k, n, generator=g)
    targets = torch.randint(0, n, (k, b), generator=g)
    targets[1, :4] = -100  # student 1: two labeled images; student 2 none
    targets[2] = -100
    temperature, alpha = torch.tensor([1.0, 4.0, 2.5]), torch.tensor([0.0, 0.9, 0.5])
    standardize = torch.tensor([False, True, False])
    total, ce, kl = packed_kd_loss_terms(student, teacher, targets, temperature, alpha, standardize)
    for i in range(k):
        t, a, z = temperature[i].item(), alpha[i].item(), bool(standardize[i])
        expected = kd_loss_terms(student[:, i], teacher[:, i], targets[i], t, a, z)
        for got, want in zip((total[i], ce[i], kl[i]), expected):
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
        assert torch.allclose(
            packed_cross_entropy(student, targets)[i], masked_cross_entropy(student[:, i], targets[i])
        )
    assert ce[2] == 0  # no label: no cross-entropy, as masked_cross_entropy


def test_standardize_logits_by_hand():
    """Sun et al. 2024: (z - mean) / (std + 1e-7), std with Bessel's correction."""
    from kd_utils.losses import standardize_logits

    z = standardize_logits(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]))
    root3 = math.sqrt(3)  # [0, 0, 3]: mean 1, std sqrt((1 + 1 + 4) / 2)
    expected = torch.tensor([[-1.0, 0.0, 1.0], [-1 / root3, -1 / root3, 2 / root3]])
    assert torch.allclose(z, expected, atol=1e-6)


def test_standardized_kd_by_hand_and_its_invariance():
    from kd_utils.losses import kd_loss_terms

    student, teacher = torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0]])
    t = 2.0
    s_std = [-1 / math.sqrt(3), -1 / math.sqrt(3), 2 / math.sqrt(3)]
    t_std = [-1.0, 0.0, 1.0]

    def log_softmax(v):
        m = math.log(sum(math.exp(x / t) for x in v))
        return [x / t - m for x in v]

    lt, ls = log_softmax(t_std), log_softmax(s_std)
    kl = t**2 * sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))
    ce = -math.log(math.exp(3.0) / (2 + math.exp(3.0)))  # label 2, raw logits
    total, got_ce, got_kl = kd_loss_terms(student, teacher, torch.tensor([2]), t, 0.75, standardize=True)
    assert got_kl.item() == pytest.approx(kl, rel=1e-5) and got_ce.item() == pytest.approx(ce, rel=1e-6)
    assert total.item() == pytest.approx(0.25 * ce + 0.75 * kl, rel=1e-5)
    # logits a * z + b (a > 0) standardize alike: a student that matches the teacher's relations has KL 0
    scaled = 3 * teacher + 5
    assert kd_loss_terms(scaled, teacher, torch.tensor([2]), t, 1.0, standardize=True)[2].item() == pytest.approx(
        0, abs=1e-6
    )
    assert kd_loss_terms(scaled, teacher, torch.tensor([2]), t, 1.0)[2].item() > 0.1


def test_attention_transfer_of_denormal_activations_has_finite_gradients():
    """Found by hypothesis: activations below float32's normal range gave an infinite gradient (1/|x| overflows)."""
    from kd_utils.losses import attention_transfer_loss

    student = torch.full((1, 1, 1, 1), 5.6052e-45, requires_grad=True)
    loss = attention_transfer_loss([student], [torch.zeros(1, 1, 1, 1)])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    normal = torch.rand(2, 3, 4, 4, requires_grad=True)  # ordinary maps: unchanged, nonzero gradients
    attention_transfer_loss([normal], [torch.rand(2, 5, 4, 4)]).backward()
    assert normal.grad.abs().sum() > 0
