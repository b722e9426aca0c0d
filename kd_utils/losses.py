"""Distillation losses: pure functions of tensors (plus the regressor module that owns weights).

Choosing which layers to match is the distiller's job; these functions take aligned lists of maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURE_KINDS = ("mse", "cosine")
CHANNEL_MATCHES = ("pool", "truncate")


def masked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy averaged over labeled samples (targets >= 0); 0 when the batch has none.

    Unlabeled samples carry -100 (torch's ignore_index). Plain ``F.cross_entropy`` would return NaN for
    a batch without labels; this divides by ``max(1, n_labeled)`` instead, without a host sync.
    """
    total = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    return total / (targets >= 0).sum().clamp_min(1)


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, KL summed over classes and
    averaged over the batch (``batchmean``). The T^2 keeps gradient magnitudes comparable across T."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return temperature**2 * kl


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """``(1 - alpha) * CE(s, y) + alpha * soft_target_kl(s, t, T)``; CE over labeled targets only."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ce = masked_cross_entropy(student_logits, targets)
    return (1 - alpha) * ce + alpha * soft_target_kl(student_logits, teacher_logits, temperature)


def _level_weights(weights: Sequence[float] | None, n_levels: int) -> list[float]:
    if weights is None:
        return [1.0] * n_levels
    weights = list(weights)
    if len(weights) != n_levels:
        raise ValueError(f"got {len(weights)} feature weights for {n_levels} levels; give one per level")
    if any(w < 0 for w in weights):
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
    kind: str = "mse",
    channel_match: str = "pool",
    spatial_size: int = 1,
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
    level_weights = _level_weights(weights, len(student_feats))
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for w, s, t in zip(level_weights, student_feats, teacher_feats):
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


class FeatureRegressor(nn.Module):
    """FitNets (Romero et al. 2015) regressor: a 1x1 conv (+ BatchNorm) from student to teacher channels."""

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
    level_weights = _level_weights(weights, len(student_feats))
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for i, (w, r, s, t) in enumerate(zip(level_weights, regressors, student_feats, teacher_feats)):
        projected = r(s)
        if projected.shape[1] != t.shape[1]:
            raise ValueError(
                f"level {i}: regressor maps student {tuple(s.shape)} to {projected.shape[1]} channels, "
                f"teacher has {tuple(t.shape)}"
            )
        projected = F.adaptive_avg_pool2d(projected, t.shape[-2:])
        total = total + w * F.mse_loss(projected.float(), t.float())
    return total
