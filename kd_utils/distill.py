"""One small module per experiment: it owns the student, the frozen teacher and any adapters, and turns a
batch into ``(loss, student_logits, parts)``, where ``parts`` names the detached loss terms for logging.

The trainer optimises every parameter that requires grad, so adapters (the regressors) train with the
student; the teacher's parameters never require grad and it stays in eval mode whatever ``.train()`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .losses import (
    FeatureRegressor,
    hidden_state_loss,
    masked_cross_entropy,
    regressor_loss,
    soft_target_kl,
)

METHODS = ("baseline", "logit", "hidden", "regressor")


@dataclass
class DistillConfig:
    alpha: float = 0.9  # logit: weight of the soft-target KL; 1 - alpha weighs cross-entropy
    temperature: float = 4.0  # logit: softmax temperature T
    feature_weight: float = 1.0  # hidden/regressor: weight of the feature term next to cross-entropy
    level_weights: tuple[float, ...] | None = None  # hidden/regressor: one weight per matched level
    feature_kind: str = "mse"  # hidden: mse | cosine
    channel_match: str = "pool"  # hidden: pool | truncate
    spatial_size: int = 1  # hidden: maps are pooled to spatial_size x spatial_size


def matched_levels(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pair student and teacher stages from the deepest one backwards: ``[(s_idx, t_idx), ...]``."""
    n = min(n_student, n_teacher)
    return [(n_student - n + i, n_teacher - n + i) for i in range(n)]


class Distiller(nn.Module):
    """Base: the student trained with cross-entropy alone (the baseline)."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, cfg: DistillConfig | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.cfg = cfg or DistillConfig()
        self.adapters = nn.ModuleList()  # trainable blocks beside the student (saved with it)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm statistics must not move
        return self

    def teacher_outputs(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        with torch.no_grad():
            feats = self.teacher.forward_features(x)
            return feats, self.teacher.forward_head(feats[-1])

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = self.student(x)
        ce = masked_cross_entropy(logits, y)
        return ce, logits, {"ce": ce.detach()}


class LogitDistiller(Distiller):
    """Hinton et al. 2015: ``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t^T || p_s^T)``."""

    def forward(self, x, y):
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.student(x)
        ce = masked_cross_entropy(logits, y)
        kd = soft_target_kl(logits, teacher_logits, self.cfg.temperature)
        loss = (1 - self.cfg.alpha) * ce + self.cfg.alpha * kd
        return loss, logits, {"ce": ce.detach(), "kd": kd.detach()}


class HiddenStateDistiller(Distiller):
    """``CE(s, y) + feature_weight * hidden_state_loss(student maps, teacher maps)``; nothing new to train."""

    def forward(self, x, y):
        teacher_feats, _ = self.teacher_outputs(x)
        student_feats = self.student.forward_features(x)
        logits = self.student.forward_head(student_feats[-1])
        pairs = matched_levels(len(student_feats), len(teacher_feats))
        feat = hidden_state_loss(
            [student_feats[i] for i, _ in pairs],
            [teacher_feats[j] for _, j in pairs],
            weights=self.cfg.level_weights,
            kind=self.cfg.feature_kind,
            channel_match=self.cfg.channel_match,
            spatial_size=self.cfg.spatial_size,
        )
        ce = masked_cross_entropy(logits, y)
        return ce + self.cfg.feature_weight * feat, logits, {"ce": ce.detach(), "feature": feat.detach()}


class RegressorDistiller(Distiller):
    """FitNets-style: ``CE(s, y) + feature_weight * sum_l w_l * MSE(r_l(s_l), t_l)`` with 1x1-conv regressors."""

    def __init__(self, student, teacher, cfg=None):
        super().__init__(student, teacher, cfg)
        self.pairs = matched_levels(len(student.feature_channels), len(teacher.feature_channels))
        self.adapters = nn.ModuleList(
            FeatureRegressor(student.feature_channels[i], teacher.feature_channels[j]) for i, j in self.pairs
        )

    def forward(self, x, y):
        teacher_feats, _ = self.teacher_outputs(x)
        student_feats = self.student.forward_features(x)
        logits = self.student.forward_head(student_feats[-1])
        feat = regressor_loss(
            self.adapters,
            [student_feats[i] for i, _ in self.pairs],
            [teacher_feats[j] for _, j in self.pairs],
            weights=self.cfg.level_weights,
        )
        ce = masked_cross_entropy(logits, y)
        return ce + self.cfg.feature_weight * feat, logits, {"ce": ce.detach(), "feature": feat.detach()}


DISTILLERS: dict[str, type[Distiller]] = {
    "baseline": Distiller,
    "logit": LogitDistiller,
    "hidden": HiddenStateDistiller,
    "regressor": RegressorDistiller,
}


def build_distiller(
    method: str, student: nn.Module, teacher: nn.Module | None = None, cfg: DistillConfig | None = None
) -> Distiller:
    if method not in DISTILLERS:
        raise ValueError(f"unknown method '{method}'; choose from: {', '.join(DISTILLERS)}")
    if method != "baseline" and teacher is None:
        raise ValueError(f"method '{method}' needs a teacher")
    return DISTILLERS[method](student, teacher if method != "baseline" else None, cfg)
