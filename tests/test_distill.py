"""Distillers: the teacher stays frozen (weights, BatchNorm statistics, eval mode), students and adapters learn."""

from __future__ import annotations

import pytest
import torch

from kd_utils.data import TensorLoader
from kd_utils.distill import DistillConfig, build_distiller, matched_levels
from kd_utils.models import build_model

TEACHER_METHODS = ("logit", "hidden", "regressor")
EXPECTED_PARTS = {
    "baseline": {"ce"},
    "logit": {"ce", "kd"},
    "hidden": {"ce", "feature"},
    "regressor": {"ce", "feature"},
}


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
    assert changed_keys(student_before, student)  # the student learned something
    student_params_changed = [
        n for n, p in student.named_parameters() if not torch.equal(p.detach(), student_before[n])
    ]
    assert len(student_params_changed) == len(list(student.parameters()))


@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_train_false_and_eval_keep_teacher_in_eval(method):
    distiller, _, teacher = make(method)
    for call in (lambda: distiller.train(), lambda: distiller.train(False), lambda: distiller.eval()):
        call()
        assert all(not m.training for m in teacher.modules())


def test_regressor_adapters_get_gradients_and_are_optimised(batch):
    x, y = batch
    distiller, _, teacher = make("regressor")
    assert len(distiller.adapters) == len(matched_levels(3, 3)) == 3
    adapters_before = state_copy(distiller.adapters)
    _, _, _, params, grads = one_step(distiller, x, y)
    adapter_ids = {id(p) for p in distiller.adapters.parameters()}
    assert adapter_ids <= {id(p) for p in params}  # the optimizer over requires_grad params includes them
    for name, _ in distiller.adapters.named_parameters():
        g = grads[f"adapters.{name}"]
        assert g is not None and g.abs().sum() > 0, name
    changed = changed_keys(adapters_before, distiller.adapters)
    for name, _ in distiller.adapters.named_parameters():
        assert name in changed, f"adapter parameter {name} was not updated"
    # the regressors map student channels onto the matching teacher stage
    for adapter, (i, j) in zip(distiller.adapters, distiller.pairs):
        assert adapter.conv.in_channels == distiller.student.feature_channels[i]
        assert adapter.conv.out_channels == teacher.feature_channels[j]


def test_regressor_adapters_pair_deepest_stages_with_a_deeper_teacher():
    distiller, student, teacher = make("regressor", "resnet18")
    assert distiller.pairs == [(0, 1), (1, 2), (2, 3)]
    assert [a.conv.out_channels for a in distiller.adapters] == teacher.feature_channels[1:]
    assert [a.conv.in_channels for a in distiller.adapters] == student.feature_channels


@pytest.mark.parametrize("method", ["baseline", *TEACHER_METHODS])
def test_parts_have_expected_keys_and_are_detached(method, batch):
    x, y = batch
    distiller, _, _ = make(method)
    distiller.train()
    loss, logits, parts = distiller(x, y)
    assert set(parts) == EXPECTED_PARTS[method]
    assert logits.shape == (16, 10)
    assert loss.requires_grad and loss.dim() == 0
    for k, v in parts.items():
        assert not v.requires_grad and v.grad_fn is None, k
        assert v.dim() == 0 and torch.isfinite(v), k


def test_logit_loss_combines_parts_with_alpha(batch):
    x, y = batch
    distiller, _, _ = make("logit", alpha=0.3, temperature=2.0)
    loss, _, parts = distiller(x, y)
    assert loss.item() == pytest.approx(0.7 * parts["ce"].item() + 0.3 * parts["kd"].item(), rel=1e-5)


@pytest.mark.parametrize("method", ["hidden", "regressor"])
def test_feature_loss_combines_parts_with_feature_weight(method, batch):
    x, y = batch
    distiller, _, _ = make(method, feature_weight=2.5)
    loss, _, parts = distiller(x, y)
    assert parts["feature"].item() > 0
    assert loss.item() == pytest.approx(parts["ce"].item() + 2.5 * parts["feature"].item(), rel=1e-5)


def test_hidden_level_weights_select_levels(batch):
    x, y = batch
    only_last, _, _ = make("hidden", level_weights=(0.0, 0.0, 1.0), feature_kind="cosine")
    everything, _, _ = make("hidden", feature_kind="cosine")
    last = only_last(x, y)[2]["feature"].item()
    total = everything(x, y)[2]["feature"].item()
    assert 0 < last < total


def test_build_distiller_errors():
    student, teacher = build_model("student_cnn"), build_model("teacher_cnn")
    with pytest.raises(ValueError, match="unknown method 'fitnets'") as info:
        build_distiller("fitnets", student, teacher)
    assert "baseline" in str(info.value) and "regressor" in str(info.value)
    for method in TEACHER_METHODS:
        with pytest.raises(ValueError, match="needs a teacher"):
            build_distiller(method, student, None)


def test_baseline_ignores_a_teacher():
    distiller = build_distiller("baseline", build_model("student_cnn"), build_model("teacher_cnn"))
    assert distiller.teacher is None
    assert all(p.requires_grad for p in distiller.parameters())


def test_matched_levels_pairs_from_the_deepest_stage():
    assert matched_levels(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert matched_levels(3, 4) == [(0, 1), (1, 2), (2, 3)]
    assert matched_levels(4, 3) == [(1, 0), (2, 1), (3, 2)]
    assert matched_levels(2, 5) == [(0, 3), (1, 4)]
    assert matched_levels(1, 1) == [(0, 0)]
