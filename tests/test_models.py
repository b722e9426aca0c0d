"""Every registered model honours the shared interface (shapes, features, head, gradients)."""

from __future__ import annotations

import pytest
import torch

from kd_utils.models import build_model, count_parameters, fuse_batchnorm, list_models

NUM_CLASSES = 7  # not 10, so a hard-coded class count would show


def tiny_input(in_channels: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, in_channels, 16, 16)  # (B, C, H, W): small enough for resnet18 on a CPU


def test_registry_is_not_empty():
    assert {"teacher_cnn", "student_cnn", "resnet18"} <= set(list_models())


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_finite(name, in_channels):
    torch.manual_seed(0)
    model = build_model(name, in_channels, NUM_CLASSES)
    logits = model(tiny_input(in_channels))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list_models())
def test_forward_features_match_metadata(name, in_channels):
    torch.manual_seed(0)
    model = build_model(name, in_channels, NUM_CLASSES)
    feats = model.forward_features(tiny_input(in_channels))
    assert len(feats) == len(model.feature_channels) >= 2
    assert [f.shape[1] for f in feats] == model.feature_channels
    for f in feats:
        assert f.dim() == 4 and f.shape[0] == 2
        assert torch.isfinite(f).all()
    sizes = [f.shape[-1] for f in feats]
    assert sizes == sorted(sizes, reverse=True)  # stages never grow spatially


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("name", list_models())
def test_forward_head_of_last_feature_equals_forward(name, train_mode):
    torch.manual_seed(0)
    model = build_model(name, 3, NUM_CLASSES).train(train_mode)
    x = tiny_input(3)
    with torch.no_grad():
        via_parts = model.forward_head(model.forward_features(x)[-1])
        direct = model(x)
    torch.testing.assert_close(via_parts, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name, in_channels):
    torch.manual_seed(0)
    model = build_model(name, in_channels, NUM_CLASSES).train()
    model(tiny_input(in_channels)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


def test_student_is_small_and_smaller_than_teacher():
    student = count_parameters(build_model("student_cnn"))
    teacher = count_parameters(build_model("teacher_cnn"))
    assert student < 100_000
    assert student < teacher
    assert count_parameters(build_model("resnet18")) > teacher


def test_count_parameters_trainable_only():
    model = build_model("student_cnn")
    total = count_parameters(model)
    model.head.requires_grad_(False)
    head = sum(p.numel() for p in model.head.parameters())
    assert count_parameters(model, trainable_only=True) == total - head
    assert count_parameters(model) == total


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="resnet99") as info:
        build_model("resnet99")
    for name in list_models():
        assert name in str(info.value)


@pytest.mark.parametrize("name", list_models())
def test_fuse_batchnorm_keeps_outputs_and_leaves_the_original_alone(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 10)
    for m in model.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_batchnorm(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for a, b in zip(model.forward_features(x), fused.forward_features(x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(x), fused(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_num_params_matches_count_parameters():
    for name in list_models():
        model = build_model(name, 1, 10)
        assert model.num_params == count_parameters(model) == sum(p.numel() for p in model.parameters())
