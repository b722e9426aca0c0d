"""One small module per method: it owns the student, the frozen teacher and any adapters, and turns a batch
into ``(loss, student_logits, parts)``, where ``parts`` names the detached loss terms for logging.

The teacher's contribution is a dict of *targets* (``teacher_targets``): its logits, its stage maps pooled to a
small size, its attention maps, or its full maps. Targets other than full maps are a function of the input batch
alone and small, so the trainer may compute them once per data stream and reuse them (``kd_utils.teacher_cache``);
passing them in gives bit-identical results to computing them here.

The trainer optimises every parameter that requires grad, so adapters (the regressors) train with the
student; the teacher's parameters never require grad and it stays in eval mode whatever ``.train()`` says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import added_settings
from .losses import (
    AT_P,
    CHANNEL_MATCH,
    CHANNEL_MATCHES,
    DIST_BETA,
    DIST_GAMMA,
    DIST_TEMPERATURE,
    DKD_ALPHA,
    DKD_BETA,
    FEATURE_KIND,
    FEATURE_KINDS,
    KD_ALPHA,
    KD_TEMPERATURE,
    RKD_ANGLE_WEIGHT,
    RKD_DISTANCE_WEIGHT,
    SPATIAL_SIZE,
    FeatureRegressor,
    attention_map,
    dist_loss,
    dkd_loss,
    hidden_state_loss,
    kd_loss_terms,
    level_weights,
    masked_cross_entropy,
    regressor_loss,
    rkd_loss,
    standardize_logits,
)

# Fields added after the stored study, at the value that reproduces the old behaviour: left out of
# ``shaping_dict`` there, so the run folders named by its hash keep their names.
NO_OP_DEFAULTS = added_settings.DISTILL

MAX_TEMPERATURE = 1000.0  # T^2 scales the soft-target terms; far past any paper's T (1-20), it would overflow


@dataclass
class DistillConfig:
    alpha: float = KD_ALPHA  # logit KD: weight of the soft-target KL, in [0, 1]; 1 - alpha weighs cross-entropy
    temperature: float = KD_TEMPERATURE  # logit KD and DKD: softmax temperature T > 0
    feature_weight: float = 1.0  # hidden: weight of the feature term next to the label loss
    regressor_weight: float = 100.0  # regressor / fitnets hint: weight of the MSE hint (FitNets code, mdistiller)
    level_weights: tuple[float, ...] | None = None  # hidden / regressor / at: a weight per matched level, e.g. 0.5,1,1
    feature_kind: str = FEATURE_KIND  # hidden: distance of unit-norm maps: cosine (1 - cos, O(1) as CE) | mse (~1/dim)
    channel_match: str = CHANNEL_MATCH  # hidden: how channel counts are matched: pool (average channels) | truncate
    spatial_size: int = SPATIAL_SIZE  # hidden: maps pooled to spatial_size x spatial_size before matching
    dkd_alpha: float = DKD_ALPHA  # DKD: weight of the target-class term (Zhao et al. 2022)
    dkd_beta: float = DKD_BETA  # DKD: weight of the non-target-class term
    dkd_warmup_epochs: int = 0  # DKD: term scaled by min(epoch / this, 1), epoch from 1 (reference: 20 of 240); 0: off
    dist_beta: float = DIST_BETA  # DIST: weight of the inter-class (per-sample) relation (Huang et al. 2022)
    dist_gamma: float = DIST_GAMMA  # DIST: weight of the intra-class (per-class) relation
    dist_temperature: float = DIST_TEMPERATURE  # DIST: softmax temperature
    logit_standardization: bool = False  # logit KD, DKD, DIST: z-score each sample's logits (teacher and student) before the temperature softmax (Sun et al. 2024)
    at_weight: float = 1000.0  # attention transfer: weight beta of the attention term (Zagoruyko & Komodakis)
    at_p: float = AT_P  # attention transfer: attention map = mean over channels of |F|^p, p >= 1
    rkd_distance_weight: float = RKD_DISTANCE_WEIGHT  # RKD: weight of the distance-wise term (Park et al. 2019)
    rkd_angle_weight: float = RKD_ANGLE_WEIGHT  # RKD: weight of the angle-wise term
    hint_epochs: int = 5  # fitnets: stage-1 epochs on the hint loss alone, before stage-2 logit KD
    hint_level: int | None = None  # fitnets: student stage guided by the teacher (None: the middle one)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag of the first bad setting."""
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"--{flag(f.name)} {value}: must be a finite number")
        checks = [
            (0 <= self.alpha <= 1, "alpha", "must be in [0, 1]"),
            (0 < self.temperature <= MAX_TEMPERATURE, "temperature", f"must be in (0, {MAX_TEMPERATURE:g}]"),
            (0 < self.dist_temperature <= MAX_TEMPERATURE, "dist_temperature", f"must be in (0, {MAX_TEMPERATURE:g}]"),
            (self.at_p >= 1, "at_p", "must be >= 1 (the attention map's gradient is infinite at 0 below 1)"),
            (self.spatial_size >= 1, "spatial_size", "must be >= 1 (and at most the smallest matched map's side)"),
            (self.hint_epochs >= 1, "hint_epochs", "must be >= 1"),
            (self.dkd_warmup_epochs >= 0, "dkd_warmup_epochs", "must be >= 0 (0: no warm-up)"),
            (self.hint_level is None or self.hint_level >= 0, "hint_level", "must be >= 0"),
            (self.feature_kind in FEATURE_KINDS, "feature_kind", f"choose from: {', '.join(FEATURE_KINDS)}"),
            (self.channel_match in CHANNEL_MATCHES, "channel_match", f"choose from: {', '.join(CHANNEL_MATCHES)}"),
            (all(w >= 0 for w in self.level_weights or ()), "level_weights", "must all be >= 0"),
        ]
        nonneg = ("feature_weight", "regressor_weight", "dkd_alpha", "dkd_beta", "dist_beta", "dist_gamma",
                  "at_weight", "rkd_distance_weight", "rkd_angle_weight")  # fmt: skip
        checks += [(getattr(self, name) >= 0, name, "must be >= 0") for name in nonneg]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"--{flag(name)} {getattr(self, name)}: {rule}")

    def shaping_dict(self) -> dict:
        """``asdict`` without the fields at their no-op value (``NO_OP_DEFAULTS``): what names a run's folder.

        A setting added later hashes like the old config while it is off, so stored checkpoints are found.
        """
        return {k: v for k, v in asdict(self).items() if not (k in NO_OP_DEFAULTS and v == NO_OP_DEFAULTS[k])}


def flag(field_name: str) -> str:
    """The command-line flag of a config field: ``level_weights`` -> ``level-weights``."""
    return field_name.replace("_", "-")


def matched_levels(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pair student and teacher stages from the deepest one backwards: ``[(s_idx, t_idx), ...]``."""
    n = min(n_student, n_teacher)
    return [(n_student - n + i, n_teacher - n + i) for i in range(n)]


def pooled(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """``(B, C, size, size)`` average-pooled map in float32 (the form the teacher cache stores)."""
    return F.adaptive_avg_pool2d(x.float(), size)


@dataclass(frozen=True)
class TeacherOutput:
    """One tensor per image that a method reads from the teacher, small enough to store: its ``logits``; stage
    ``level``'s map average-pooled to ``size`` (``pooled``); or that stage's attention map at ``size``, exponent
    ``p`` (``attention``, ``losses.attention_map``). ``name`` names its teacher-cache file, so methods that read
    the same output (logit KD, DKD and DIST the logits; hidden-state imitation and RKD a pooled last stage) share
    one file."""

    kind: str
    level: int = -1
    size: tuple[int, int] = (0, 0)
    p: float = 0.0

    @property
    def name(self) -> str:
        if self.kind == "logits":
            return "logits"
        exponent = f"_p{self.p:g}" if self.kind == "attention" else ""
        return f"{self.kind}{exponent}_l{self.level}_{self.size[0]}x{self.size[1]}"

    def of(self, teacher: nn.Module, feats: list[Tensor]) -> Tensor:
        """This output from the teacher's stage maps ``feats`` of one batch."""
        if self.kind == "logits":
            return teacher.forward_head(feats[-1]).float()
        if self.kind == "pooled":
            return pooled(feats[self.level], self.size)
        return attention_map(feats[self.level], self.size, self.p).unflatten(1, self.size)  # (B, H, W)


def each_output(outputs: dict) -> list[TeacherOutput]:
    """``{"logits": a, "pooled": [b, c]}`` -> ``[a, b, c]``."""
    return [o for v in outputs.values() for o in (v if isinstance(v, list) else [v])]


def map_outputs(outputs: dict, fn) -> dict:
    """``{"logits": a, "pooled": [b, c]}`` -> ``{"logits": fn(a), "pooled": [fn(b), fn(c)]}``: the targets' form."""
    return {k: [fn(o) for o in v] if isinstance(v, list) else fn(v) for k, v in outputs.items()}


class Distiller(nn.Module):
    """Base: the student trained with cross-entropy alone (the baseline).

    Subclasses set ``needs``: which teacher targets they read (``logits``, ``pooled``, ``attention``, ``maps``).

    Training progress: ``fit`` calls ``start_epoch(epoch, steps_per_epoch)`` before each training epoch, with
    the 1-based epoch (on resume the real one, so a schedule resumes exactly). A method whose paper schedules a
    term over training overrides it and keeps the schedule's value in a buffer (a tensor, so a compiled step
    does not recompile each epoch). Never told an epoch (used outside ``fit``), a method computes its
    unscheduled loss, as after any warm-up.
    """

    needs: tuple[str, ...] = ()
    trains_head: bool = True  # False: the logits are for the logged accuracy only (no gradient through them)

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, cfg: DistillConfig | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.cfg = cfg or DistillConfig()
        self.adapters = nn.ModuleList()  # trainable blocks beside the student (saved with it)
        self.pool_size = self.cfg.spatial_size  # size of the pooled teacher maps ("pooled" targets)
        n_teacher = len(teacher.feature_channels) if teacher is not None else 0
        self.pairs = matched_levels(len(student.feature_channels), n_teacher) if teacher is not None else []
        self.epoch: int | None = None  # the training epoch, set by start_epoch (None: not told)
        self.steps_per_epoch: int | None = None
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def start_epoch(self, epoch: int, steps_per_epoch: int) -> None:
        """Record the training progress: ``epoch`` counts from 1, each of ``steps_per_epoch`` optimiser steps."""
        self.epoch, self.steps_per_epoch = epoch, steps_per_epoch

    @property
    def cacheable(self) -> bool:
        """True when every teacher target is a function of the batch that can be stored compactly."""
        return bool(self.needs) and set(self.needs) <= {"logits", "pooled", "attention"}

    def teacher_outputs(self, image_shape: tuple[int, ...]) -> dict[str, TeacherOutput | list[TeacherOutput]]:
        """The storable teacher outputs this method reads, on images of ``image_shape`` (C, H, W), in the form of
        ``teacher_targets``: ``{"logits": output, "pooled": [one output per matched level]}``."""
        out: dict[str, TeacherOutput | list[TeacherOutput]] = {}
        if "logits" in self.needs:
            out["logits"] = TeacherOutput("logits")
        if "pooled" in self.needs:
            size = (self.pool_size, self.pool_size)
            out["pooled"] = [TeacherOutput("pooled", j, size) for _, j in self.pairs]
        return out

    def target_spec(self, image_shape: tuple[int, ...]) -> str:
        """Names what ``teacher_targets`` returns on images of ``image_shape``: same spec, same tensors."""
        parts = [o.name for o in each_output(self.teacher_outputs(image_shape))]
        if "maps" in self.needs:
            parts.append("maps_l" + "-".join(str(j) for _, j in self.pairs))
        return "+".join(parts)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm statistics must not move
        return self

    @torch.no_grad()
    def teacher_targets(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """The teacher's outputs this method reads, for one batch."""
        if not self.needs:
            return {}
        feats = self.teacher.forward_features(x)
        out = map_outputs(self.teacher_outputs(tuple(x.shape[1:])), lambda o: o.of(self.teacher, feats))
        if "maps" in self.needs:
            out["maps"] = [feats[j] for _, j in self.pairs]
        return out

    def student_levels(self, feats: list[Tensor]) -> list[Tensor]:
        return [feats[i] for i, _ in self.pairs]

    def forward(self, x: Tensor, y: Tensor, targets: dict | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if targets is None:
            targets = self.teacher_targets(x)
        feats = self.student.forward_features(x)
        logits = self.student.forward_head(feats[-1])
        if not self.trains_head:
            logits = logits.detach()
        loss, parts = self.loss(logits, feats, y, targets)
        return loss, logits, {k: v.detach() for k, v in parts.items()}

    def loss(self, logits: Tensor, feats: list[Tensor], y: Tensor, targets: dict) -> tuple[Tensor, dict[str, Tensor]]:
        ce = masked_cross_entropy(logits, y)
        return ce, {"ce": ce}


class LogitDistiller(Distiller):
    """Hinton et al. 2015: ``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t^T || p_s^T)`` (``losses.kd_loss``)."""

    needs = ("logits",)

    def loss(self, logits, feats, y, targets):
        cfg = self.cfg
        total, ce, kd = kd_loss_terms(
            logits, targets["logits"], y, cfg.temperature, cfg.alpha, cfg.logit_standardization
        )
        return total, {"ce": ce, "kd": kd}


class HiddenStateDistiller(Distiller):
    """``CE(s, y) + feature_weight * hidden_state_loss(student maps, pooled teacher maps)``; nothing to train."""

    needs = ("pooled",)

    def feature_term(self, feats, targets):
        return hidden_state_loss(
            self.student_levels(feats),
            targets["pooled"],  # already pooled to spatial_size: pooling again is the identity
            weights=self.cfg.level_weights,
            kind=self.cfg.feature_kind,
            channel_match=self.cfg.channel_match,
            spatial_size=self.cfg.spatial_size,
        )

    def loss(self, logits, feats, y, targets):
        ce = masked_cross_entropy(logits, y)
        feat = self.feature_term(feats, targets)
        return ce + self.cfg.feature_weight * feat, {"ce": ce, "feature": feat}


class RegressorDistiller(Distiller):
    """FitNets-style, trained jointly: ``CE(s, y) + regressor_weight * sum_l w_l * MSE(r_l(s_l), t_l)``."""

    needs = ("maps",)

    def __init__(self, student, teacher, cfg=None):
        super().__init__(student, teacher, cfg)
        self.adapters = nn.ModuleList(
            FeatureRegressor(student.feature_channels[i], teacher.feature_channels[j]) for i, j in self.pairs
        )

    def feature_term(self, feats, targets):
        return regressor_loss(self.adapters, self.student_levels(feats), targets["maps"], self.cfg.level_weights)

    def loss(self, logits, feats, y, targets):
        ce = masked_cross_entropy(logits, y)
        feat = self.feature_term(feats, targets)
        return ce + self.cfg.regressor_weight * feat, {"ce": ce, "feature": feat}


class LogitHiddenDistiller(HiddenStateDistiller):
    """The original script's combined loss: ``kd_loss(s, t, y) + feature_weight * hidden_state_loss``."""

    needs = ("logits", "pooled")

    def loss(self, logits, feats, y, targets):
        kd_total, parts = LogitDistiller.loss(self, logits, feats, y, targets)
        feat = self.feature_term(feats, targets)
        return kd_total + self.cfg.feature_weight * feat, {**parts, "feature": feat}


class LogitRegressorDistiller(RegressorDistiller):
    """``kd_loss(s, t, y) + regressor_weight * regressor_loss``: logit KD with a learned FitNets hint."""

    needs = ("logits", "maps")

    def loss(self, logits, feats, y, targets):
        kd_total, parts = LogitDistiller.loss(self, logits, feats, y, targets)
        feat = self.feature_term(feats, targets)
        return kd_total + self.cfg.regressor_weight * feat, {**parts, "feature": feat}


class DKDDistiller(Distiller):
    """``CE(s, y) + w(epoch) * dkd_loss(s, t, y)``: decoupled KD (Zhao et al. 2022), target and non-target terms
    weighed apart. With ``dkd_warmup_epochs = E > 0``, ``w = min(epoch / E, 1)`` (epoch from 1), as in the
    reference code (mdistiller: E = 20 of 240 epochs); ``E = 0``: ``w = 1``. The logged ``kd`` is the weighted term.
    """

    needs = ("logits",)

    def __init__(self, student, teacher, cfg=None):
        super().__init__(student, teacher, cfg)
        # not persistent: checkpoints stay as before; fit sets it from the real epoch, resumed runs included
        self.register_buffer("warmup", torch.ones(()), persistent=False)

    def start_epoch(self, epoch: int, steps_per_epoch: int) -> None:
        super().start_epoch(epoch, steps_per_epoch)
        self.warmup.fill_(dkd_warmup(epoch, self.cfg.dkd_warmup_epochs))

    def loss(self, logits, feats, y, targets):
        ce = masked_cross_entropy(logits, y)
        student, teacher = kd_logits(logits, targets["logits"], self.cfg)
        kd = dkd_loss(student, teacher, y, self.cfg.dkd_alpha, self.cfg.dkd_beta, self.cfg.temperature)
        if self.cfg.dkd_warmup_epochs > 0:
            kd = self.warmup * kd
        return ce + kd, {"ce": ce, "kd": kd}


def kd_logits(student: Tensor, teacher: Tensor, cfg: DistillConfig) -> tuple[Tensor, Tensor]:
    """The logits a soft-target term compares: standardized (``losses.standardize_logits``) with
    ``logit_standardization``, else as they are. Cross-entropy always reads the raw logits."""
    if cfg.logit_standardization:
        return standardize_logits(student), standardize_logits(teacher)
    return student, teacher


def dkd_warmup(epoch: int, warmup_epochs: int) -> float:
    """DKD's warm-up factor ``min(epoch / warmup_epochs, 1)``, epoch counted from 1; 1 when ``warmup_epochs`` is 0."""
    return min(epoch / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0


class DISTDistiller(Distiller):
    """``CE(s, y) + dist_loss(s, t)``: DIST (Huang et al. 2022), Pearson relations within and across samples."""

    needs = ("logits",)

    def loss(self, logits, feats, y, targets):
        ce = masked_cross_entropy(logits, y)
        student, teacher = kd_logits(logits, targets["logits"], self.cfg)
        kd = dist_loss(student, teacher, self.cfg.dist_beta, self.cfg.dist_gamma, self.cfg.dist_temperature)
        return ce + kd, {"ce": ce, "kd": kd}


class AttentionDistiller(Distiller):
    """``CE(s, y) + at_weight * sum_l w_l * AT_l``: attention transfer (Zagoruyko & Komodakis 2017), each level's
    ``mean_{b,x} (a_s - a_t)^2`` as ``losses.attention_transfer_loss``.

    The teacher's side is its attention maps (``attention`` targets: 254 floats per 28 px image, where its stage
    maps are 21,120), so the teacher cache can store them: each map pooled first to the level's compared size,
    the smaller of the two maps' (per axis), which a one-image probe of both networks finds per image shape.
    """

    needs = ("attention",)

    def __init__(self, student, teacher, cfg=None):
        super().__init__(student, teacher, cfg)
        self._level_sizes: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # image shape -> per-level size

    def level_sizes(self, image_shape: tuple[int, ...]) -> list[tuple[int, int]]:
        """Per matched level, where student and teacher maps are compared on images of ``image_shape`` (C, H, W)."""
        image_shape = tuple(image_shape)
        if image_shape not in self._level_sizes:

            def probe(net: nn.Module) -> list[Tensor]:  # on the network's own device: they may differ here
                return net.forward_features(torch.zeros(1, *image_shape, device=next(net.parameters()).device))

            modes = [(m, m.training) for m in self.student.modules()]
            self.student.eval()  # a probe must not move BatchNorm statistics
            with torch.no_grad():
                s, t = probe(self.student), probe(self.teacher)
            for module, training in modes:  # each module back in its own mode
                module.training = training
            self._level_sizes[image_shape] = [
                (min(s[i].shape[2], t[j].shape[2]), min(s[i].shape[3], t[j].shape[3])) for i, j in self.pairs
            ]
        return self._level_sizes[image_shape]

    def teacher_outputs(self, image_shape: tuple[int, ...]) -> dict[str, list[TeacherOutput]]:
        p = self.cfg.at_p
        sizes = self.level_sizes(image_shape)
        return {"attention": [TeacherOutput("attention", j, size, p) for (_, j), size in zip(self.pairs, sizes)]}

    def loss(self, logits, feats, y, targets):
        ce = masked_cross_entropy(logits, y)
        weights = level_weights(self.cfg.level_weights, len(self.pairs))
        levels = zip(weights, self.student_levels(feats), targets["attention"])
        at = sum(
            w * (attention_map(s, tuple(t.shape[1:]), self.cfg.at_p) - t.flatten(1)).pow(2).mean() for w, s, t in levels
        )
        return ce + self.cfg.at_weight * at, {"ce": ce, "at": at}


class RKDDistiller(Distiller):
    """``CE(s, y) + rkd_loss(e_s, e_t)`` on the globally pooled last-stage features (Park et al. 2019)."""

    needs = ("pooled",)

    def __init__(self, student, teacher, cfg=None):
        super().__init__(student, teacher, cfg)
        self.pairs = self.pairs[-1:]  # the embedding: the last stage only
        self.pool_size = 1  # globally pooled

    def loss(self, logits, feats, y, targets):
        ce = masked_cross_entropy(logits, y)
        student_embed = F.adaptive_avg_pool2d(feats[self.pairs[0][0]].float(), 1).flatten(1)  # (B, C_s)
        teacher_embed = targets["pooled"][0].flatten(1)  # (B, C_t)
        rkd = rkd_loss(student_embed, teacher_embed, self.cfg.rkd_distance_weight, self.cfg.rkd_angle_weight)
        return ce + rkd, {"ce": ce, "rkd": rkd}


class HintDistiller(Distiller):
    """FitNets stage 1 (Romero et al. 2015): the student's stages up to ``hint_level`` and a regressor learn
    ``MSE(r(s_hint), t_guided)`` alone; the rest of the student is frozen for this stage.

    The guided teacher stage is the one paired with the hint stage (deepest-first pairing).
    """

    needs = ("maps",)
    trains_head = False  # the logits are for the logged accuracy only

    def __init__(self, student, teacher, cfg=None):
        super().__init__(student, teacher, cfg)
        level = hint_level(len(student.feature_channels), self.cfg.hint_level)
        pair = next((p for p in self.pairs if p[0] == level), None)
        if pair is None:
            raise ValueError(f"--hint-level {level}: the student stage has no teacher stage to match")
        self.pairs = [pair]
        self.adapters = nn.ModuleList(
            [FeatureRegressor(student.feature_channels[level], teacher.feature_channels[pair[1]])]
        )
        self.frozen = freeze_after(student, level)

    def loss(self, logits, feats, y, targets):
        hint = regressor_loss(self.adapters, self.student_levels(feats), targets["maps"])
        return hint, {"hint": hint}


def hint_level(n_stages: int, level: int | None) -> int:
    """The FitNets hint stage: ``level``, or the middle stage of the student."""
    chosen = n_stages // 2 if level is None else level
    if not 0 <= chosen < n_stages:
        raise ValueError(f"--hint-level {level}: the student has stages 0..{n_stages - 1}")
    return chosen


def freeze_after(student: nn.Module, level: int) -> list[nn.Parameter]:
    """Stop gradients into every student parameter not used to compute stage ``level``; returns them.

    A parameter is "used" when it gets a gradient from stage ``level``'s map, found once with a tiny backward.
    """
    used: set[int] = set()
    channels = getattr(student, "in_channels", None)
    stem = next(m for m in student.modules() if isinstance(m, nn.Conv2d))
    x = torch.zeros(2, channels or stem.in_channels, 32, 32)
    was_training = student.training
    student.eval()
    try:
        student.forward_features(x)[level].float().sum().backward()
    finally:
        student.train(was_training)
    for p in student.parameters():
        if p.grad is not None:
            used.add(id(p))
        p.grad = None
    frozen = [p for p in student.parameters() if id(p) not in used]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


DISTILLERS: dict[str, type[Distiller]] = {
    "baseline": Distiller,
    "logit": LogitDistiller,
    "hidden": HiddenStateDistiller,
    "regressor": RegressorDistiller,
    "dkd": DKDDistiller,
    "dist": DISTDistiller,
    "at": AttentionDistiller,
    "rkd": RKDDistiller,
    "logit+hidden": LogitHiddenDistiller,
    "logit+regressor": LogitRegressorDistiller,
    "hint": HintDistiller,  # FitNets stage 1; the two-stage "fitnets" experiment chains it with "logit"
}
# Logit standardization (Sun et al. 2024) as methods of their own, so that a study tunes and compares them like
# the rest: the base method's distiller with ``logit_standardization`` on (``--logit-standardization`` sets it
# for any run of the base methods too).
STANDARDIZED = {"logit+ls": "logit", "dkd+ls": "dkd", "dist+ls": "dist"}
DISTILLERS.update({name: DISTILLERS[base] for name, base in STANDARDIZED.items()})
METHODS = tuple(DISTILLERS)
# What a study compares: every distiller but the baseline (labels only) and FitNets' stage 1 ("hint"), plus
# the two-stage "fitnets", which the experiment runner chains from the "hint" and "logit" distillers.
STUDENT_METHODS = (
    "logit", "hidden", "regressor", "dkd", "dist", "at", "rkd", "logit+hidden", "logit+regressor", "fitnets",
    *STANDARDIZED,
)  # fmt: skip
NON_METHODS = ("baseline", "hint")  # distillers that are no method of their own: labels only, FitNets stage 1
TWO_STAGE = {"fitnets": ("hint", "logit")}  # stage 1, stage 2


def build_distiller(
    method: str, student: nn.Module, teacher: nn.Module | None = None, cfg: DistillConfig | None = None
) -> Distiller:
    if method not in DISTILLERS:
        raise ValueError(f"unknown method '{method}'; choose from: {', '.join(DISTILLERS)}")
    if method != "baseline" and teacher is None:
        raise ValueError(f"method '{method}' needs a teacher")
    if method in STANDARDIZED:
        cfg = replace(cfg or DistillConfig(), logit_standardization=True)
    return DISTILLERS[method](student, teacher if method != "baseline" else None, cfg)
