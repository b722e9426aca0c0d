"""Distillers: the teacher stays frozen (weights, BatchNorm statistics, eval mode), students and adapters learn,
and every method's loss is its formula of the logged parts."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

import kd_utils.losses as losses_mod
from kd_utils.data import TensorLoader
from kd_utils.distill import (
    DISTILLERS,
    NO_OP_DEFAULTS,
    NON_METHODS,
    STANDARDIZED,
    STUDENT_METHODS,
    TWO_STAGE,
    DistillConfig,
    build_distiller,
    dkd_warmup,
    flag,
    matched_levels,
)
from kd_utils.losses import (
    CHANNEL_MATCHES,
    FEATURE_KINDS,
    attention_transfer_loss,
    dist_loss,
    dkd_loss,
    kd_loss,
    masked_cross_entropy,
    rkd_loss,
    soft_target_kl,
)
from kd_utils.models import build_model

METHODS = tuple(DISTILLERS)
TEACHER_METHODS = tuple(m for m in METHODS if m != "baseline")
EXPECTED_PARTS = {
    "baseline": {"ce"},
    "logit": {"ce", "kd"},
    "hidden": {"ce", "feature"},
    "regressor": {"ce", "feature"},
    "dkd": {"ce", "kd"},
    "dist": {"ce", "kd"},
    "at": {"ce", "at"},
    "rkd": {"ce", "rkd"},
    "logit+hidden": {"ce", "kd", "feature"},
    "logit+regressor": {"ce", "kd", "feature"},
    "hint": {"hint"},
    **{ls: {"ce", "kd"} for ls in STANDARDIZED},  # logit standardization: the base methods' parts
}
ADAPTER_METHODS = ("regressor", "logit+regressor", "hint")
CACHEABLE = {"logit", "hidden", "dkd", "dist", "rkd", "logit+hidden", "at", *STANDARDIZED}  # no full maps needed
# weights away from their defaults (and from 1), so a term weighed by the wrong field shows
WEIGHTS = dict(alpha=0.3, temperature=2.0, feature_weight=2.5, regressor_weight=7.0, at_weight=30.0)


def expected_loss(method: str, p: dict[str, float], cfg: DistillConfig) -> float:
    """Each method's loss as its formula of the parts and the config weights."""
    a = cfg.alpha
    formulas = {
        "baseline": lambda: p["ce"],
        "logit": lambda: (1 - a) * p["ce"] + a * p["kd"],
        "hidden": lambda: p["ce"] + cfg.feature_weight * p["feature"],
        "regressor": lambda: p["ce"] + cfg.regressor_weight * p["feature"],
        "dkd": lambda: p["ce"] + p["kd"],
        "dist": lambda: p["ce"] + p["kd"],
        "at": lambda: p["ce"] + cfg.at_weight * p["at"],
        "rkd": lambda: p["ce"] + p["rkd"],
        "logit+hidden": lambda: (1 - a) * p["ce"] + a * p["kd"] + cfg.feature_weight * p["feature"],
        "logit+regressor": lambda: (1 - a) * p["ce"] + a * p["kd"] + cfg.regressor_weight * p["feature"],
        "hint": lambda: p["hint"],  # stage 1 learns the hint alone, unweighted
    }
    return formulas[STANDARDIZED.get(method, method)]()


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_keys(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    after = module.state_dict()
    assert before.keys() == after.keys()
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.fixture(scope="module")
def batch(synthetic_splits):
    loader = TensorLoader(synthetic_splits.train_x[:16], synthetic_splits.train_y[:16], synthetic_splits.info, 16)
    return next(iter(loader))  # (x (16, 3, 16, 16) float, y (16,))


def make(method: str, teacher_arch: str = "teacher_cnn", **cfg):
    torch.manual_seed(0)
    student = build_model("student_cnn")
    teacher = build_model(teacher_arch) if method != "baseline" else None
    return build_distiller(method, student, teacher, DistillConfig(**cfg)), student, teacher


def one_step(distiller, x, y):
    distiller.train()
    params = [p for p in distiller.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    loss, logits, parts = distiller(x, y)
    opt.zero_grad()
    loss.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in distiller.named_parameters()}
    opt.step()
    return loss, logits, parts, params, grads


def test_the_tables_here_cover_every_method():
    assert set(EXPECTED_PARTS) == set(METHODS)
    assert CACHEABLE < set(METHODS) and set(ADAPTER_METHODS) < set(METHODS)


def test_student_methods_are_the_distillers_but_baseline_and_hint_plus_fitnets():
    assert STUDENT_METHODS == (
        "logit", "hidden", "regressor", "dkd", "dist", "at", "rkd", "logit+hidden", "logit+regressor", "fitnets",
        "logit+ls", "dkd+ls", "dist+ls",
    )  # fmt: skip
    single = [m for m in STUDENT_METHODS if m not in TWO_STAGE]
    assert single == [m for m in DISTILLERS if m not in NON_METHODS]  # same methods, same order
    assert set(NON_METHODS) <= set(DISTILLERS) and not set(NON_METHODS) & set(STUDENT_METHODS)
    assert TWO_STAGE == {"fitnets": ("hint", "logit")} and all(set(s) <= set(DISTILLERS) for s in TWO_STAGE.values())


# --- the frozen teacher -------------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_arch", ["teacher_cnn", "resnet18"])
@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_teacher_is_frozen_through_a_training_step(method, teacher_arch, batch):
    x, y = batch
    distiller, student, teacher = make(method, teacher_arch)
    teacher_before, student_before = state_copy(teacher), state_copy(student)
    bn_buffers = [k for k in teacher_before if "running_mean" in k or "running_var" in k]
    assert bn_buffers  # the check below covers BatchNorm statistics

    loss, logits, parts, params, _ = one_step(distiller, x, y)

    assert torch.isfinite(loss)
    assert changed_keys(teacher_before, teacher) == []  # weights and running stats (num_batches_tracked too)
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())
    assert distiller.training and student.training  # train() still reaches the student
    for name, p in teacher.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None, name
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for p in params)
    # every trainable student parameter learned (hint: those up to the hint stage; the rest is frozen)
    frozen = {id(p) for p in getattr(distiller, "frozen", [])}
    trainable = {n for n, p in student.named_parameters() if id(p) not in frozen}
    changed = {n for n, p in student.named_parameters() if not torch.equal(p.detach(), student_before[n])}
    assert trainable and changed == trainable


@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_train_false_and_eval_keep_teacher_in_eval(method):
    distiller, _, teacher = make(method)
    for call in (lambda: distiller.train(), lambda: distiller.train(False), lambda: distiller.eval()):
        call()
        assert all(not m.training for m in teacher.modules())


# --- parts, formulas, targets -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_parts_have_expected_keys_and_are_detached(method, batch):
    x, y = batch
    distiller, _, _ = make(method)
    distiller.train()
    loss, logits, parts = distiller(x, y)
    assert set(parts) == EXPECTED_PARTS[method]
    assert logits.shape == (16, 10)
    assert loss.requires_grad and loss.dim() == 0 and torch.isfinite(loss)
    for k, v in parts.items():
        assert not v.requires_grad and v.grad_fn is None, k
        assert v.dim() == 0 and torch.isfinite(v), k


@pytest.mark.parametrize("method", METHODS)
def test_loss_is_the_formula_of_its_parts(method, batch):
    x, y = batch
    distiller, _, _ = make(method, **WEIGHTS)
    distiller.train()
    loss, _, parts = distiller(x, y)
    values = {k: v.item() for k, v in parts.items()}
    assert all(v > 0 for v in values.values())  # every term counts, so a missing or misweighted one shows
    assert loss.item() == pytest.approx(expected_loss(method, values, distiller.cfg), rel=1e-5)


@pytest.mark.parametrize("method", ["logit", "dkd", "dist", "rkd", "logit+hidden"])
def test_parts_read_their_settings_from_the_config(method, batch):
    x, y = batch
    settings = dict(temperature=2.0, dkd_alpha=0.5, dkd_beta=3.0, dist_beta=2.0, dist_gamma=0.5,
                    dist_temperature=3.0, rkd_distance_weight=5.0, rkd_angle_weight=7.0)  # fmt: skip
    distiller, student, teacher = make(method, **settings)
    cfg = distiller.cfg
    distiller.train()
    _, logits, parts = distiller(x, y)
    with torch.no_grad():
        t_feats = teacher.forward_features(x)
        t_logits = teacher.forward_head(t_feats[-1])
        if method in ("logit", "logit+hidden"):
            expected = soft_target_kl(logits, t_logits, cfg.temperature)
        elif method == "dkd":
            expected = dkd_loss(logits, t_logits, y, cfg.dkd_alpha, cfg.dkd_beta, cfg.temperature)
        elif method == "dist":
            expected = dist_loss(logits, t_logits, cfg.dist_beta, cfg.dist_gamma, cfg.dist_temperature)
        else:  # rkd: globally pooled last stages
            s_embed = F.adaptive_avg_pool2d(student.forward_features(x)[-1], 1).flatten(1)
            t_embed = F.adaptive_avg_pool2d(t_feats[-1].float(), 1).flatten(1)
            expected = rkd_loss(s_embed, t_embed, cfg.rkd_distance_weight, cfg.rkd_angle_weight)
    key = "rkd" if method == "rkd" else "kd"
    torch.testing.assert_close(parts[key], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_passed_targets_give_exactly_the_inline_result(method, batch):
    x, y = batch
    distiller, _, _ = make(method)
    distiller.train()  # batch statistics: a second forward sees the same normalisation
    targets = distiller.teacher_targets(x)
    assert set(targets) == set(distiller.needs)
    loss_inline, logits_inline, parts_inline = distiller(x, y)
    loss_passed, logits_passed, parts_passed = distiller(x, y, targets)
    assert torch.equal(loss_inline, loss_passed)
    assert torch.equal(logits_inline, logits_passed)
    assert parts_inline.keys() == parts_passed.keys()
    for k in parts_inline:
        assert torch.equal(parts_inline[k], parts_passed[k]), k
    for value in targets.values():
        for t in value if isinstance(value, list) else [value]:
            assert not t.requires_grad
    for t in targets.get("pooled", []):
        assert t.shape[2:] == (distiller.pool_size, distiller.pool_size)
        assert t.dtype == torch.float32


@pytest.mark.parametrize("method", METHODS)
def test_cacheable_exactly_when_the_targets_are_logits_pooled_maps_or_attention_maps(method):
    distiller, _, _ = make(method)
    assert distiller.cacheable == (method in CACHEABLE)
    compact = {"logits", "pooled", "attention"}  # never the full stage maps
    assert distiller.cacheable == (bool(distiller.needs) and set(distiller.needs) <= compact)


def test_target_specs_name_what_is_stored():
    """One name per stored output (a file each in the teacher cache), joined: methods reading an output share it."""
    shape = (3, 32, 32)
    specs = {m: make(m)[0].target_spec(shape) for m in sorted(CACHEABLE)}
    pooled = "pooled_l0_1x1+pooled_l1_1x1+pooled_l2_1x1"
    assert specs == {
        "logit": "logits",
        "dkd": "logits",  # the same logits as logit KD: one file serves both
        "dist": "logits",
        "hidden": pooled,
        "rkd": "pooled_l2_1x1",  # the last stage, globally pooled: hidden-state imitation's file at s = 1
        "logit+hidden": "logits+" + pooled,
        # attention maps are stored at the size they are compared at, which the images' size sets
        "at": "attention_p2_l0_16x16+attention_p2_l1_8x8+attention_p2_l2_4x4",
        **{ls: "logits" for ls in STANDARDIZED},  # the teacher's raw logits: standardized in the loss
    }
    assert make("hidden", spatial_size=2)[0].target_spec(shape) == "pooled_l0_2x2+pooled_l1_2x2+pooled_l2_2x2"
    assert make("hidden", "resnet18")[0].target_spec(shape) == "pooled_l1_1x1+pooled_l2_1x1+pooled_l3_1x1"
    assert (
        make("at", at_p=4.0)[0].target_spec((3, 16, 16))
        == "attention_p4_l0_8x8+attention_p4_l1_4x4+attention_p4_l2_2x2"
    )
    assert make("regressor")[0].target_spec(shape) == "maps_l0-1-2"  # never stored, but a packed group's key
    assert make("logit+regressor")[0].target_spec(shape) == "logits+maps_l0-1-2"


@pytest.mark.parametrize("teacher_arch", ["teacher_cnn", "wrn_16_2"])
def test_attention_targets_give_the_attention_transfer_loss_of_the_full_maps(teacher_arch):
    """The teacher's side as stored attention maps gives the loss of ``attention_transfer_loss`` on the full
    stage maps, also where the teacher's maps are larger (wrn_16_2's 32/16/8 against the student's 16/8/4:
    pooled before the map is taken); the probe that finds those sizes leaves the student's state alone."""
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    distiller, student, teacher = make("at", teacher_arch, level_weights=(0.5, 1.0, 2.0))
    distiller.train()
    before = copy.deepcopy(student.state_dict())
    targets = distiller.teacher_targets(x)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # BatchNorm statistics too
    assert student.training and not teacher.training
    assert [tuple(t.shape) for t in targets["attention"]] == [(6, 16, 16), (6, 8, 8), (6, 4, 4)]
    student.eval()  # the same student maps for both sides of the comparison
    s, t = student.forward_features(x), teacher.forward_features(x)
    expected = sum(w * attention_transfer_loss([s[i]], [t[j]]) for w, (i, j) in zip((0.5, 1.0, 2.0), distiller.pairs))
    _, parts = distiller.loss(student.forward_head(s[-1]), s, torch.zeros(6, dtype=torch.long), targets)
    assert parts["at"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() > 0


def test_hidden_level_weights_select_levels(batch):
    x, y = batch
    only_last, _, _ = make("hidden", level_weights=(0.0, 0.0, 1.0), feature_kind="cosine")
    everything, _, _ = make("hidden", feature_kind="cosine")
    last = only_last(x, y)[2]["feature"].item()
    total = everything(x, y)[2]["feature"].item()
    assert 0 < last < total


@pytest.mark.parametrize("method", ["hidden", "regressor", "logit+hidden", "logit+regressor", "at"])
@pytest.mark.parametrize("level_weights", [(1.0,), (1.0, 1.0, 1.0, 1.0)])
def test_one_level_weight_per_matched_level_or_an_error(method, level_weights, batch):
    x, y = batch
    distiller, _, _ = make(method, level_weights=level_weights)
    with pytest.raises(ValueError, match=f"got {len(level_weights)} feature weights for 3 levels"):
        distiller(x, y)


def test_logit_distiller_computes_ce_and_kl_once_with_unchanged_values(batch, monkeypatch):
    x, y = batch
    distiller, student, teacher = make("logit", alpha=0.3, temperature=2.0)
    with torch.no_grad():
        t_logits = teacher(x)
        logits = student(x)
    calls = []
    for name in ("masked_cross_entropy", "soft_target_kl"):
        real = getattr(losses_mod, name)
        monkeypatch.setattr(losses_mod, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    total, parts = distiller.loss(logits, [], y, {"logits": t_logits})
    assert sorted(calls) == ["masked_cross_entropy", "soft_target_kl"]  # each term once
    monkeypatch.undo()
    assert torch.equal(total, kd_loss(logits, t_logits, y, 2.0, 0.3))  # the values of before, bit for bit
    assert torch.equal(parts["ce"], masked_cross_entropy(logits, y))
    assert torch.equal(parts["kd"], soft_target_kl(logits, t_logits, 2.0))


# --- training progress: DKD's warm-up ------------------------------------------------------------------------


@pytest.mark.parametrize(("epoch", "factor"), [(1, 0.05), (10, 0.5), (20, 1.0), (25, 1.0)])
def test_dkd_warmup_factor_by_hand(epoch, factor):
    assert dkd_warmup(epoch, 20) == pytest.approx(factor, abs=1e-12)  # min(epoch / 20, 1), epoch from 1
    assert dkd_warmup(epoch, 0) == 1.0


def test_dkd_warmup_scales_the_kd_term_by_the_epoch(batch):
    x, y = batch
    plain, _, _ = make("dkd")
    warm, _, _ = make("dkd", dkd_warmup_epochs=20)
    plain.train(), warm.train()
    targets = plain.teacher_targets(x)
    _, _, reference = plain(x, y, targets)
    for epoch in (1, 10, 20, 25):
        warm.start_epoch(epoch, steps_per_epoch=7)
        loss, _, parts = warm(x, y, targets)
        torch.testing.assert_close(parts["kd"], dkd_warmup(epoch, 20) * reference["kd"], rtol=1e-6, atol=0)
        assert torch.equal(parts["ce"], reference["ce"]) and torch.equal(loss.detach(), parts["ce"] + parts["kd"])
    assert (warm.epoch, warm.steps_per_epoch) == (25, 7)


def test_dkd_without_warmup_is_the_unwarmed_loss_at_every_epoch(batch):
    x, y = batch
    distiller, student, teacher = make("dkd")
    distiller.train()
    targets = distiller.teacher_targets(x)
    distiller.start_epoch(1, 10)
    loss, logits, parts = distiller(x, y, targets)
    kd = dkd_loss(logits, targets["logits"], y, 1.0, 8.0, 4.0)
    assert torch.equal(parts["kd"], kd.detach())
    assert torch.equal(loss, masked_cross_entropy(logits, y) + kd)


def test_a_distiller_never_told_the_epoch_is_unscheduled(batch):
    x, y = batch
    warm, _, _ = make("dkd", dkd_warmup_epochs=20)
    plain, _, _ = make("dkd")
    warm.train(), plain.train()
    targets = plain.teacher_targets(x)
    assert warm.epoch is None
    assert torch.equal(warm(x, y, targets)[2]["kd"], plain(x, y, targets)[2]["kd"])


def test_dkd_warmup_keeps_checkpoints_and_state_dicts_as_before():
    warm, _, _ = make("dkd", dkd_warmup_epochs=20)
    plain, _, _ = make("dkd")
    assert warm.state_dict().keys() == plain.state_dict().keys()  # the factor is a non-persistent buffer


def test_shaping_dict_leaves_out_new_fields_at_their_no_op_value():
    assert NO_OP_DEFAULTS == {"dkd_warmup_epochs": 0, "logit_standardization": False}
    default = DistillConfig().shaping_dict()
    assert "dkd_warmup_epochs" not in default and "logit_standardization" not in default
    assert set(default) == {f.name for f in fields(DistillConfig)} - set(NO_OP_DEFAULTS)
    assert DistillConfig(dkd_warmup_epochs=20).shaping_dict() == {**default, "dkd_warmup_epochs": 20}
    assert DistillConfig(alpha=0.5).shaping_dict() == {**default, "alpha": 0.5}
    assert DistillConfig(logit_standardization=True).shaping_dict() == {**default, "logit_standardization": True}


# --- adapters and FitNets stage 1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_arch", ["teacher_cnn", "resnet18"])
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_adapters_get_gradients_and_are_optimised(method, teacher_arch, batch):
    x, y = batch
    distiller, student, teacher = make(method, teacher_arch)
    expected_pairs = matched_levels(3, len(teacher.feature_channels))
    if method == "hint":  # the middle student stage and its teacher partner
        expected_pairs = [p for p in expected_pairs if p[0] == 1]
    assert distiller.pairs == expected_pairs
    assert len(distiller.adapters) == len(expected_pairs)
    # sized from the metadata: student stage channels in, the paired teacher stage's channels out
    for adapter, (i, j) in zip(distiller.adapters, distiller.pairs):
        assert adapter.conv.in_channels == student.feature_channels[i]
        assert adapter.conv.out_channels == teacher.feature_channels[j]

    adapters_before = state_copy(distiller.adapters)
    _, _, _, params, grads = one_step(distiller, x, y)
    assert {id(p) for p in distiller.adapters.parameters()} <= {id(p) for p in params}  # the optimiser has them
    changed = changed_keys(adapters_before, distiller.adapters)
    for name, _ in distiller.adapters.named_parameters():
        g = grads[f"adapters.{name}"]
        assert g is not None and g.abs().sum() > 0, name
        assert name in changed, f"adapter parameter {name} was not updated"


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ADAPTER_METHODS])
def test_other_methods_have_no_adapters(method):
    distiller, _, _ = make(method)
    assert list(distiller.adapters.parameters()) == []


def test_regressor_adapters_pair_deepest_stages_with_a_deeper_teacher():
    distiller, student, teacher = make("regressor", "resnet18")
    assert distiller.pairs == [(0, 1), (1, 2), (2, 3)]
    assert [a.conv.out_channels for a in distiller.adapters] == teacher.feature_channels[1:]
    assert [a.conv.in_channels for a in distiller.adapters] == student.feature_channels


def student_names(distiller, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in distiller.student.named_parameters() if id(p) in ids}


@pytest.mark.parametrize(
    ("hint_level", "trained_stages"), [(None, ("stages.0.", "stages.1.")), (0, ("stages.0.",)), (2, None)]
)
def test_hint_trains_the_student_up_to_the_hint_stage_only(hint_level, trained_stages, batch):
    x, y = batch
    distiller, student, _ = make("hint", hint_level=hint_level)
    names = [n for n, _ in student.named_parameters()]
    if trained_stages is None:  # the last stage: only the head is left out
        trained_stages = ("stages.",)
    early = {n for n in names if n.startswith(trained_stages)}
    late = set(names) - early
    assert early and late and any(n.startswith("head.") for n in late)
    assert student_names(distiller, distiller.frozen) == late
    assert student_names(distiller, [p for p in student.parameters() if p.requires_grad]) == early
    assert all(p.requires_grad for p in distiller.adapters.parameters())

    before = state_copy(student)
    loss, _, parts, params, grads = one_step(distiller, x, y)
    assert torch.equal(loss.detach(), parts["hint"])
    assert student_names(distiller, params) == early
    for n, p in student.named_parameters():
        if n in late:
            assert grads[f"student.{n}"] is None, n
            assert torch.equal(p.detach(), before[n]), f"frozen {n} moved"
        else:
            assert grads[f"student.{n}"] is not None and grads[f"student.{n}"].abs().sum() > 0, n
            assert not torch.equal(p.detach(), before[n]), f"{n} did not learn"


def test_hint_level_without_a_stage_is_refused():
    with pytest.raises(ValueError, match=r"--hint-level 3: the student has stages 0\.\.2"):
        make("hint", hint_level=3)


def test_unfreezing_after_hint_gives_the_whole_student_back():
    """What the fitnets experiment does between its stages (stage 2 is logit KD of the whole student)."""
    distiller, student, teacher = make("hint")
    for p in distiller.frozen:
        p.requires_grad_(True)
    stage2 = build_distiller("logit", student, teacher)
    assert all(p.requires_grad for p in stage2.student.parameters())


# --- configuration and construction -------------------------------------------------------------------------

FLOAT_FIELDS = [f.name for f in fields(DistillConfig) if isinstance(f.default, float)]


def test_float_fields_are_the_expected_ones():
    named = {"alpha", "temperature", "feature_weight", "regressor_weight", "dkd_alpha", "dkd_beta", "dist_beta",
             "dist_gamma", "dist_temperature", "at_weight", "at_p", "rkd_distance_weight", "rkd_angle_weight"}  # fmt: skip
    assert named <= set(FLOAT_FIELDS)  # new float fields join the parametrisation below by themselves


def test_default_and_boundary_configs_validate():
    DistillConfig().validate()
    DistillConfig(alpha=0.0, feature_weight=0.0, regressor_weight=0.0, dkd_beta=0.0, hint_level=0).validate()
    DistillConfig(alpha=1.0, level_weights=(0.0, 1.0, 2.0), spatial_size=1, hint_epochs=1).validate()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_validate_refuses_non_finite_floats_naming_the_flag(name, value):
    cfg = DistillConfig(**{name: value})
    with pytest.raises(ValueError, match=rf"^--{re.escape(flag(name))} {value}: must be a finite number$"):
        cfg.validate()


def test_validate_refuses_non_finite_level_weights():
    with pytest.raises(ValueError, match=r"^--level-weights \(1\.0, nan\): must be a finite number$"):
        DistillConfig(level_weights=(1.0, math.nan)).validate()


NONNEGATIVE = ("feature_weight", "regressor_weight", "dkd_alpha", "dkd_beta", "dist_beta", "dist_gamma",
               "at_weight", "rkd_distance_weight", "rkd_angle_weight")  # fmt: skip
OUT_OF_RANGE = [
    ("alpha", 1.5, "must be in [0, 1]"),
    ("alpha", -0.1, "must be in [0, 1]"),
    ("temperature", 0.0, "must be in (0, 1000]"),
    ("temperature", -1.0, "must be in (0, 1000]"),
    ("dist_temperature", 0.0, "must be in (0, 1000]"),
    ("at_p", 0.0, "must be >= 1"),  # |F|^p with p < 1 has an infinite gradient at 0
    ("at_p", 0.5, "must be >= 1"),
    ("spatial_size", 0, "must be >= 1"),
    ("hint_epochs", 0, "must be >= 1"),
    ("hint_level", -1, "must be >= 0"),
    ("dkd_warmup_epochs", -1, "must be >= 0"),
    ("feature_kind", "l1", f"choose from: {', '.join(FEATURE_KINDS)}"),
    ("channel_match", "nearest", f"choose from: {', '.join(CHANNEL_MATCHES)}"),
    ("level_weights", (1.0, -1.0), "must all be >= 0"),
    *[(name, -1.0, "must be >= 0") for name in NONNEGATIVE],
]


@pytest.mark.parametrize(("name", "value", "rule"), OUT_OF_RANGE, ids=[f"{n}={v}" for n, v, _ in OUT_OF_RANGE])
def test_validate_refuses_out_of_range_values_naming_the_flag(name, value, rule):
    with pytest.raises(ValueError, match=f"^{re.escape(f'--{flag(name)} {value}: {rule}')}"):
        DistillConfig(**{name: value}).validate()


def test_validate_message_examples():
    with pytest.raises(ValueError, match=r"^--temperature inf: must be a finite number$"):
        DistillConfig(temperature=math.inf).validate()
    with pytest.raises(ValueError, match=r"^--alpha 1\.5: must be in \[0, 1\]$"):
        DistillConfig(alpha=1.5).validate()


def test_build_distiller_errors():
    student, teacher = build_model("student_cnn"), build_model("teacher_cnn")
    with pytest.raises(ValueError, match="unknown method 'no_such_method'") as info:
        build_distiller("no_such_method", student, teacher)
    assert str(info.value).endswith("choose from: " + ", ".join(METHODS))
    for method in TEACHER_METHODS:
        with pytest.raises(ValueError, match=f"method '{re.escape(method)}' needs a teacher"):
            build_distiller(method, student, None)


def test_baseline_ignores_a_teacher():
    distiller = build_distiller("baseline", build_model("student_cnn"), build_model("teacher_cnn"))
    assert distiller.teacher is None
    assert distiller.needs == () and distiller.teacher_targets(torch.zeros(2, 3, 16, 16)) == {}
    assert all(p.requires_grad for p in distiller.parameters())


def test_matched_levels_pairs_from_the_deepest_stage():
    assert matched_levels(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert matched_levels(3, 4) == [(0, 1), (1, 2), (2, 3)]
    assert matched_levels(4, 3) == [(1, 0), (2, 1), (3, 2)]
    assert matched_levels(2, 5) == [(0, 3), (1, 4)]
    assert matched_levels(1, 1) == [(0, 0)]


# --- the original script's timm pair ------------------------------------------------------------------------

TIMM_TEACHER, TIMM_STUDENT = "timm:efficientnet_b0", "timm:mobilenetv3_small_100"


@pytest.fixture(scope="module")
def timm_teachers():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return {c: build_model(TIMM_TEACHER, in_channels=c, num_classes=10) for c in (3, 1)}


def timm_step(method: str, teacher, channels: int, size: int):
    torch.manual_seed(1)
    student = build_model(TIMM_STUDENT, in_channels=channels, num_classes=10)
    distiller = build_distiller(method, student, teacher)
    assert (distiller.teacher is None) == (method == "baseline")
    teacher.eval()  # the baseline leaves the shared teacher alone; it must still be unchanged
    x, y = torch.randn(4, channels, size, size), torch.randint(0, 10, (4,))
    teacher_before, student_before = state_copy(teacher), state_copy(student)
    loss, logits, parts, _, _ = one_step(distiller, x, y)
    assert torch.isfinite(loss) and logits.shape == (4, 10)
    assert set(parts) == EXPECTED_PARTS[method]
    assert all(torch.isfinite(v) for v in parts.values())
    assert changed_keys(teacher_before, teacher) == []
    assert all(not m.training for m in teacher.modules())
    assert changed_keys(student_before, student)
    for adapter, (i, j) in zip(distiller.adapters, distiller.pairs):
        assert adapter.conv.in_channels == student.feature_channels[i]
        assert adapter.conv.out_channels == teacher.feature_channels[j]


@pytest.mark.parametrize("method", METHODS)
def test_timm_pair_trains_one_step_of_every_method(method, timm_teachers):
    timm_step(method, timm_teachers[3], channels=3, size=32)


@pytest.mark.parametrize("method", ["hint", "logit+regressor"])
def test_timm_pair_one_channel_28px(method, timm_teachers):
    timm_step(method, timm_teachers[1], channels=1, size=28)


@pytest.mark.parametrize("method", ["logit", "dkd", "dist", "logit+hidden"])
def test_logit_standardization_feeds_standardized_logits_to_the_soft_terms_only(method):
    """With --logit-standardization the teacher term reads z-scored logits of both; CE reads the raw ones."""
    from kd_utils.distill import DistillConfig, build_distiller
    from kd_utils.losses import dist_loss, dkd_loss, masked_cross_entropy, soft_target_kl, standardize_logits
    from kd_utils.models import build_model

    torch.manual_seed(0)
    student, teacher = build_model("student_cnn", 3, 10), build_model("teacher_cnn", 3, 10).eval()
    cfg = DistillConfig(logit_standardization=True, temperature=2.0)
    distiller = build_distiller(method, student, teacher, cfg)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    targets = distiller.teacher_targets(x)
    feats = student.forward_features(x)
    logits = student.forward_head(feats[-1])
    _, parts = distiller.loss(logits, feats, y, targets)
    s, t = standardize_logits(logits), standardize_logits(targets["logits"])
    expected = {
        "logit": soft_target_kl(s, t, 2.0), "logit+hidden": soft_target_kl(s, t, 2.0),
        "dkd": dkd_loss(s, t, y, cfg.dkd_alpha, cfg.dkd_beta, 2.0),
        "dist": dist_loss(s, t, cfg.dist_beta, cfg.dist_gamma, cfg.dist_temperature),
    }[method]  # fmt: skip
    assert torch.allclose(parts["kd"], expected, rtol=1e-5)
    assert torch.allclose(parts["ce"], masked_cross_entropy(logits, y))
    off = build_distiller(method, student, teacher, DistillConfig(temperature=2.0)).loss(logits, feats, y, targets)[1]
    assert not torch.allclose(off["kd"], parts["kd"])  # the flag changes the term


@pytest.mark.parametrize("method", sorted(STANDARDIZED))
def test_standardized_methods_are_their_base_method_with_logit_standardization(method, batch):
    x, y = batch
    d, _, _ = make(method)
    assert type(d) is DISTILLERS[STANDARDIZED[method]] and d.cfg.logit_standardization
    loss, _, _ = d(x, y)
    base, _, _ = make(STANDARDIZED[method], logit_standardization=True)
    assert torch.allclose(loss, base(x, y)[0])  # the same run as --logit-standardization on the base method
