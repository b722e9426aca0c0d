"""Distillation losses: pure functions of tensors (plus the regressor module that owns weights).

Choosing which layers to match is the distiller's job; these functions take aligned lists of maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURE_KINDS = ("mse", "cosine")
CHANNEL_MATCHES = ("pool", "truncate")

# The tunable settings' defaults, stated once: the loss functions' keyword defaults and DistillConfig's fields.
KD_TEMPERATURE = 4.0  # logit KD and DKD: softmax temperature (4: the usual CIFAR setting, DKD's too)
KD_ALPHA = 0.9  # logit KD: weight of the soft-target KL (1 - alpha weighs cross-entropy)
DKD_ALPHA = 1.0  # DKD: target-class weight (Zhao et al. 2022)
DKD_BETA = 8.0  # DKD: non-target-class weight (mdistiller's CIFAR-100 default)
DIST_BETA = 1.0  # DIST: inter-class weight (Huang et al. 2022)
DIST_GAMMA = 1.0  # DIST: intra-class weight
DIST_TEMPERATURE = 1.0  # DIST: softmax temperature
FEATURE_KIND = "cosine"  # hidden-state distance: 1 - cos is O(1) like CE; mse of unit vectors is ~1/dim
CHANNEL_MATCH = "pool"  # hidden-state channel matching
SPATIAL_SIZE = 1  # hidden-state maps pooled to this size
AT_P = 2.0  # attention transfer exponent (Zagoruyko & Komodakis 2017)
RKD_DISTANCE_WEIGHT = 25.0  # RKD distance-wise weight (Park et al. 2019)
RKD_ANGLE_WEIGHT = 50.0  # RKD angle-wise weight


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def _check_nonnegative(**weights: float) -> None:
    for name, value in weights.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _check_logits(student_logits: Tensor, teacher_logits: Tensor, loss: str) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{loss}: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must both be (B, K) with the same shape"
        )


def masked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy averaged over labeled samples (targets >= 0); 0 when the batch has none.

    Unlabeled samples carry -100 (torch's ignore_index). Plain ``F.cross_entropy`` would return NaN for
    a batch without labels; this divides by ``max(1, n_labeled)`` instead, without a host sync.
    """
    total = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    return total / (targets >= 0).sum().clamp_min(1)


STANDARDIZATION_EPS = 1e-7  # the reference code's guard against a sample whose logits are all equal


def standardize_logits(logits: Tensor) -> Tensor:
    """Logit standardization (Sun et al., CVPR 2024): each sample's logits z-scored over the classes,
    ``(z - mean(z)) / (std(z) + 1e-7)`` with Bessel's correction (the reference code's ``torch.std``). Applied to
    teacher and student before the temperature softmax, so the student matches the teacher's logit relations
    and not their scale: logits ``a * z + b`` (``a > 0``) standardize to the same values as ``z``."""
    z = logits.float()
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + STANDARDIZATION_EPS)


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, KL summed over classes and
    averaged over the batch (``batchmean``). The T^2 keeps gradient magnitudes comparable across T."""
    _check_temperature(temperature)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return temperature**2 * kl


def kd_loss_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = KD_TEMPERATURE,
    alpha: float = KD_ALPHA,
    standardize: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, ce, kl)`` of ``kd_loss``: the total and its two terms, each computed once. With ``standardize``
    the KL compares ``standardize_logits`` of both (Sun et al. 2024); the cross-entropy always reads the raw logits."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ce = masked_cross_entropy(student_logits, targets)
    if standardize:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    kl = soft_target_kl(student_logits, teacher_logits, temperature)
    return (1 - alpha) * ce + alpha * kl, ce, kl


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = KD_TEMPERATURE,
    alpha: float = KD_ALPHA,
    standardize: bool = False,
) -> Tensor:
    """``(1 - alpha) * CE(s, y) + alpha * soft_target_kl(s, t, T)``; CE over labeled targets only; with
    ``standardize`` the KL reads standardized logits (``kd_loss_terms``)."""
    return kd_loss_terms(student_logits, teacher_logits, targets, temperature, alpha, standardize)[0]


def packed_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``masked_cross_entropy`` of K students at once (``kd_utils.packed``): logits ``(B, K, N)`` and targets
    ``(K, B)`` -> ``(K,)``, each student's mean over its own labeled samples."""
    per_sample = F.cross_entropy(logits.float().permute(0, 2, 1), targets.T, ignore_index=-100, reduction="none")
    return per_sample.sum(0) / (targets >= 0).sum(1).clamp_min(1)  # (B, K) -> (K,)


def packed_kd_loss_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: Tensor,
    alpha: Tensor,
    standardize: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """``kd_loss_terms`` of K students at once, each with its own ``temperature``, ``alpha`` and ``standardize``
    (``(K,)`` tensors): logits ``(B, K, N)``, targets ``(K, B)`` -> ``(total, ce, kl)``, each ``(K,)``. The KL is
    ``soft_target_kl``'s: summed over classes, averaged over the batch, times ``T^2``."""
    t = temperature.float().view(1, -1, 1)
    on = standardize.view(1, -1, 1)
    student = torch.where(on, standardize_logits(student_logits), student_logits.float())
    teacher = torch.where(on, standardize_logits(teacher_logits), teacher_logits.float())
    log_p_student = F.log_softmax(student / t, dim=2)
    log_p_teacher = F.log_softmax(teacher / t, dim=2)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum((0, 2)) / len(student_logits)
    kl = temperature.float() ** 2 * kl
    ce = packed_cross_entropy(student_logits, targets)
    return (1 - alpha) * ce + alpha * kl, ce, kl


def _non_target(x: Tensor, targets: Tensor) -> Tensor:
    """The columns of ``x`` (B, K) other than each row's target, in order: (B, K - 1).

    Column ``j`` of the result is class ``j + (j >= y)``: the target is skipped, not masked with a large
    negative number, so no ``-inf`` or ``0 * inf`` can reach the KL.
    """
    b, k = x.shape
    j = torch.arange(k - 1, device=x.device).expand(b, k - 1)  # (B, K-1)
    return x.gather(1, j + (j >= targets[:, None]).long())


def _dkd_log_probs(logits: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``(log b, log q)``: the binary target/rest distribution (B, 2) and the non-target softmax (B, K-1).

    With ``z = logits / T`` and the margin ``m = z_y - logsumexp(z_rest)``: ``p_y = sigmoid(m)``, so
    ``log b = (logsigmoid(m), logsigmoid(-m))``, exact even when ``p_y`` rounds to 1 in float32.
    """
    z = logits.float() / temperature
    z_rest = _non_target(z, targets)  # (B, K-1)
    margin = z.gather(1, targets[:, None]) - torch.logsumexp(z_rest, dim=1, keepdim=True)  # (B, 1)
    log_binary = torch.cat([F.logsigmoid(margin), F.logsigmoid(-margin)], dim=1)  # (B, 2)
    return log_binary, F.log_softmax(z_rest, dim=1)


def _kl_per_row(log_p_teacher: Tensor, log_p_student: Tensor) -> Tensor:
    """``KL(teacher || student)`` per row, summed over the last axis: ``sum p_t * (log p_t - log p_s)``."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=1)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    alpha: float = DKD_ALPHA,
    beta: float = DKD_BETA,
    temperature: float = KD_TEMPERATURE,
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022, "Decoupled Knowledge Distillation"): ``alpha * TCKD + beta * NCKD``.

    With ``p = softmax(z / T)`` and target class ``y``:
    ``TCKD = T^2 * KL((p_t,y, 1 - p_t,y) || (p_s,y, 1 - p_s,y))``, the binary target-vs-rest split, and
    ``NCKD = T^2 * KL(q_t || q_s)`` with ``q = softmax(z_rest / T)`` over the K - 1 non-target classes
    (the target logit removed, not masked). Each KL is teacher || student, summed over its classes and
    averaged over the labeled samples. The whole computation is in float32 log space (logsigmoid of the
    margin for the binary terms, log-softmax for the rest), so logits of 1e4 give finite values and
    gradients. Any warm-up of the weight over the first epochs belongs to the distiller.

    Unlabeled samples (target < 0, e.g. -100) have no target class, so no decoupling: they are left out,
    and the batch mean divides by ``max(1, n_labeled)`` on the device (no host sync), so a batch without
    labels gives 0 with zero gradients. Labeled targets must lie in ``[0, K)``.
    """
    _check_logits(student_logits, teacher_logits, "dkd_loss")
    _check_temperature(temperature)
    _check_nonnegative(alpha=alpha, beta=beta)
    batch, classes = student_logits.shape
    if targets.shape != (batch,):
        raise ValueError(f"dkd_loss: targets {tuple(targets.shape)} must be ({batch},), one class per logits row")
    if classes < 2:
        raise ValueError(f"dkd_loss needs at least 2 classes to split target from non-target, got {classes}")
    labeled = targets >= 0
    y = targets.clamp_min(0)  # unlabeled rows read class 0; their loss is zeroed below
    s_binary, s_rest = _dkd_log_probs(student_logits, y, temperature)
    t_binary, t_rest = _dkd_log_probs(teacher_logits, y, temperature)
    per_sample = alpha * _kl_per_row(t_binary, s_binary) + beta * _kl_per_row(t_rest, s_rest)  # (B,)
    return temperature**2 * (per_sample * labeled).sum() / labeled.sum().clamp_min(1)


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-row Pearson correlation as DIST's code computes it: cosine similarity of the mean-centred rows,
    ``<a', b'> / (|a'| |b'| + eps)``. A constant row has ``a' = 0`` and counts as uncorrelated (0)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = DIST_BETA,
    gamma: float = DIST_GAMMA,
    temperature: float = DIST_TEMPERATURE,
) -> Tensor:
    """DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher"): match correlations, not
    values. With ``p = softmax(z / T)`` per sample, (B, K):

    ``inter = mean_i (1 - pearson(p_s[i, :], p_t[i, :]))`` (each sample's class ranking),
    ``intra = mean_c (1 - pearson(p_s[:, c], p_t[:, c]))`` (each class across the batch),
    ``loss = T^2 * (beta * inter + gamma * intra)``, Pearson with eps 1e-8 in the denominator.

    The loss is ~0 when student and teacher agree, as long as the rows and columns of ``p`` are not
    constant (a constant vector has no correlation and counts as 0, giving 1 - 0). The intra-class
    Pearson needs two samples: a batch of one raises unless ``gamma == 0``.
    """
    _check_logits(student_logits, teacher_logits, "dist_loss")
    _check_temperature(temperature)
    _check_nonnegative(beta=beta, gamma=gamma)
    batch, classes = student_logits.shape
    if batch < 2 and gamma > 0:
        raise ValueError(
            f"dist_loss needs a batch of at least 2 for the intra-class term, got {batch}; "
            "pass a larger batch or gamma=0"
        )
    if classes < 2:
        raise ValueError(f"dist_loss needs at least 2 classes for the inter-class term, got {classes}")
    p_s = F.softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    inter = (1 - _pearson_rows(p_s, p_t)).mean()
    intra = (1 - _pearson_rows(p_s.T, p_t.T)).mean() if gamma > 0 else p_s.new_zeros(())
    return temperature**2 * (beta * inter + gamma * intra)


def level_weights(weights: Sequence[float] | None, n_levels: int) -> list[float]:
    if weights is None:
        return [1.0] * n_levels
    weights = list(weights)
    if len(weights) != n_levels:
        raise ValueError(f"got {len(weights)} feature weights for {n_levels} levels; give one per level")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"feature weights must be >= 0, got {weights}")
    return weights


def _check_levels(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> None:
    if len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"{len(student_feats)} student levels vs {len(teacher_feats)} teacher levels; pass aligned lists"
        )
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0]:
            raise ValueError(
                f"level {i}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must both be (B, C, H, W) "
                "with the same batch size"
            )


def _pool_channels(x: Tensor, channels: int) -> Tensor:
    """Average-pool the channel axis of ``(B, C, S, S)`` down to ``channels`` (no learned weights)."""
    b, c, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, S*S, C)
    x = F.adaptive_avg_pool1d(x, channels)  # (B, S*S, channels)
    return x.reshape(b, h, w, channels).permute(0, 3, 1, 2)


def hidden_state_loss(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    weights: Sequence[float] | None = None,
    kind: str = FEATURE_KIND,
    channel_match: str = CHANNEL_MATCH,
    spatial_size: int = SPATIAL_SIZE,
) -> Tensor:
    """Parameter-free hidden-state imitation, summed over levels with one weight per level.

    Per level: adaptive-average-pool both maps to ``spatial_size x spatial_size``; match channels by
    average-pooling the wider map over channels to the narrower count (``pool``) or keeping the first
    ``min(C_s, C_t)`` channels (``truncate``); flatten per sample and L2-normalise to ``s_hat, t_hat``.
    ``mse``: ``mean((s_hat - t_hat)^2)`` over batch and elements; ``cosine``: ``mean(1 - <s_hat, t_hat>)``.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature loss kind '{kind}'; choose from: {', '.join(FEATURE_KINDS)}")
    if channel_match not in CHANNEL_MATCHES:
        raise ValueError(f"unknown channel_match '{channel_match}'; choose from: {', '.join(CHANNEL_MATCHES)}")
    if spatial_size < 1:
        raise ValueError(f"spatial_size must be >= 1, got {spatial_size}")
    _check_levels(student_feats, teacher_feats)
    per_level = level_weights(weights, len(student_feats))
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for w, s, t in zip(per_level, student_feats, teacher_feats):
        s = F.adaptive_avg_pool2d(s.float(), spatial_size)
        t = F.adaptive_avg_pool2d(t.float(), spatial_size)
        c = min(s.shape[1], t.shape[1])
        if channel_match == "pool":
            s, t = (_pool_channels(x, c) if x.shape[1] > c else x for x in (s, t))
        else:
            s, t = s[:, :c], t[:, :c]
        s = F.normalize(s.flatten(1), dim=1)
        t = F.normalize(t.flatten(1), dim=1)
        level = F.mse_loss(s, t) if kind == "mse" else (1 - (s * t).sum(dim=1)).mean()
        total = total + w * level
    return total


def _attention_map(x: Tensor, p: float) -> Tensor:
    """``normalize(mean_c |x|^p)`` per sample, flattened: (B, C, H, W) -> (B, H*W), L2 norm 1.

    The map is computed from ``x / max|x|`` (per sample, detached): ``normalize`` makes the result
    invariant to that positive scale, and it keeps ``|x|^p`` in float32 range for large activations or p. A
    sample whose activations all lie below float32's normal range (denormals, zeros) has no attention map (zeros,
    zero gradient): its scale-invariant gradient, ~1/|x|, would overflow.
    """
    x = x.float()
    tiny = torch.finfo(torch.float32).tiny
    scale = x.detach().abs().amax(dim=(1, 2, 3), keepdim=True)
    x = torch.where(scale >= tiny, x / scale.clamp_min(tiny), torch.zeros_like(x))
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    p: float = AT_P,
) -> Tensor:
    """Attention transfer (Zagoruyko and Komodakis 2017, "Paying More Attention to Attention"), summed over
    levels: ``sum_l mean_{b, x} (a_s(b, x) - a_t(b, x))^2`` with ``a = normalize(mean_c |F_c|^p)``, the
    spatial attention map flattened per sample and L2-normalised (the paper's ``Q / ||Q||``).

    Per level the map with the larger spatial size is adaptive-average-pooled to the smaller one (per axis),
    so the channel counts and sizes of student and teacher may differ. ``|F|^p`` is the paper's definition
    and equals ``F^p`` for even p, such as the default 2; p must be >= 1, since below 1 the gradient of
    ``|F|^p`` is infinite at zero activations, which ReLU networks have everywhere. The paper's weight
    (beta / 2 = 500) belongs to the distiller.
    """
    if not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1 (|F|^p has an infinite gradient at 0 below 1), got {p}")
    _check_levels(student_feats, teacher_feats)
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_feats, teacher_feats):
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        total = total + (attention_map(s, size, p) - attention_map(t, size, p)).pow(2).mean()
    return total


def attention_map(x: Tensor, size: tuple[int, int], p: float = AT_P) -> Tensor:
    """One side of ``attention_transfer_loss`` at one level: ``x`` adaptive-average-pooled to ``size`` (when it
    is larger), then ``normalize(mean_c |x|^p)`` flattened, (B, C, H, W) -> (B, size[0] * size[1])."""
    return _attention_map(F.adaptive_avg_pool2d(x, size) if tuple(x.shape[2:]) != tuple(size) else x, p)


class FeatureRegressor(nn.Module):
    """FitNets (Romero et al. 2015) regressor: a 1x1 conv (+ BatchNorm) from student to teacher channels.

    In training mode the BatchNorm needs more than one value per channel (batch x height x width > 1);
    torch raises a ValueError otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


def regressor_loss(
    regressors: Sequence[nn.Module],
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    weights: Sequence[float] | None = None,
) -> Tensor:
    """FitNets hint loss: ``sum_l w_l * mean((pool(r_l(s_l)) - t_l)^2)``, where ``pool`` adaptively
    average-pools the projection to the teacher map's spatial size."""
    _check_levels(student_feats, teacher_feats)
    if len(regressors) != len(student_feats):
        raise ValueError(f"{len(regressors)} regressors for {len(student_feats)} levels; give one per level")
    per_level = level_weights(weights, len(student_feats))
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for i, (w, r, s, t) in enumerate(zip(per_level, regressors, student_feats, teacher_feats)):
        projected = r(s)
        if projected.shape[1] != t.shape[1]:
            raise ValueError(
                f"level {i}: regressor maps student {tuple(s.shape)} to {projected.shape[1]} channels, "
                f"teacher has {tuple(t.shape)}"
            )
        projected = F.adaptive_avg_pool2d(projected, t.shape[-2:])
        total = total + w * F.mse_loss(projected.float(), t.float())
    return total


def _rkd_relations(embed: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """``(distances, cosines)`` of (B, D) embeddings: (B, B) distances over their mean, (B, B, B) angles.

    ``diff[j, i] = e_i - e_j`` is formed directly, not as ``|e_i|^2 + |e_j|^2 - 2 <e_i, e_j>``, which
    cancels catastrophically for large embeddings. The squared distance is clamped at ``eps`` before the
    square root (whose gradient is infinite at 0) and the diagonal then set to 0; every off-diagonal
    distance is then >= sqrt(eps) > 0, so "the mean of the positive entries" is the off-diagonal mean,
    computed without a host sync. ``cos[j, i, k] = <u_ji, u_jk>`` with ``u_ji`` the unit vector from
    ``e_j`` to ``e_i``, a zero vector when the two points coincide (so its cosines are 0).
    """
    b = embed.shape[0]
    embed = embed.float()
    diff = embed[None, :, :] - embed[:, None, :]  # (B, B, D)
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=embed.device)
    dist = diff.pow(2).sum(dim=2).clamp_min(eps).sqrt() * off_diagonal  # (B, B)
    dist = dist / (dist.sum() / (b * (b - 1)))
    unit = F.normalize(diff, dim=2)  # (B, B, D)
    return dist, unit @ unit.transpose(1, 2)  # (B, B), (B, B, B)


def rkd_loss(
    student_embed: Tensor,
    teacher_embed: Tensor,
    distance_weight: float = RKD_DISTANCE_WEIGHT,
    angle_weight: float = RKD_ANGLE_WEIGHT,
) -> Tensor:
    """Relational KD (Park et al. 2019): ``distance_weight * L_D + angle_weight * L_A`` on (B, D) embeddings
    (the student's and teacher's D may differ).

    ``L_D = smooth_l1(psi_D(s), psi_D(t))`` over all (i, j), with ``psi_D(i, j) = ||e_i - e_j|| / mu`` and
    ``mu`` the mean distance over the B(B-1) pairs ``i != j``.
    ``L_A = smooth_l1(psi_A(s), psi_A(t))`` over all B^3 ordered triplets (i, j, k), with ``psi_A`` the
    cosine of the angle at the middle point: ``<unit(e_i - e_j), unit(e_k - e_j)>``. As in the authors'
    code, triplets with repeated points are kept: a zero difference has cosine 0, and ``i == k`` gives 1.
    So a batch of 2 has a defined, degenerate angle term (0 unless one side's points coincide); a batch
    of 1 has no pairs and raises. Both smooth-L1 terms are means (torch's default, beta = 1).
    """
    _check_nonnegative(distance_weight=distance_weight, angle_weight=angle_weight)
    if student_embed.dim() != 2 or teacher_embed.dim() != 2 or student_embed.shape[0] != teacher_embed.shape[0]:
        raise ValueError(
            f"rkd_loss: student {tuple(student_embed.shape)} and teacher {tuple(teacher_embed.shape)} must both "
            "be (B, D) with the same batch size; flatten feature maps first"
        )
    if student_embed.shape[0] < 2:
        raise ValueError(f"rkd_loss needs a batch of at least 2 to form pairs, got {student_embed.shape[0]}")
    s_dist, s_cos = _rkd_relations(student_embed)
    t_dist, t_cos = _rkd_relations(teacher_embed)
    distance = F.smooth_l1_loss(s_dist, t_dist)
    angle = F.smooth_l1_loss(s_cos, t_cos)
    return distance_weight * distance + angle_weight * angle
