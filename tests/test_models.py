"""Every registered model honours the shared interface (shapes, features, head, gradients)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings

import pytest
import torch

from kd_utils.models import (
    ForeignNet,
    TorchvisionNet,
    build_model,
    check_model_name,
    count_parameters,
    fuse_batchnorm,
    is_known_model,
    list_models,
)

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
    # all-zero checked in eval mode: in training mode BatchNorm subtracts the batch mean, so a shift reaching it
    # through a 1x1 conv (MobileNetV2's projection BN, VGG's conv biases) has an exactly zero gradient
    model.zero_grad()
    model.eval()(tiny_input(in_channels)).sum().backward()
    for pname, p in model.named_parameters():
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
        for a, b in [*zip(model.forward_features(x), fused.forward_features(x)), (model(x), fused(x))]:
            # relative to the map's scale: with these statistics deep ResNets reach activations of 1e3..1e8
            assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    assert conv_bn_pairs(model) and not conv_bn_pairs(fused)  # pre-activation BNs (WRN) follow sums and stay
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def conv_bn_pairs(model: torch.nn.Module) -> list[str]:
    """Each BatchNorm registered right after a Conv2d in the same parent (what fuse_batchnorm folds)."""
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (_, a), (b_name, b) in zip(children, children[1:]):
            if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d):
                pairs.append(f"{parent_name}.{b_name}")
    return pairs


def test_num_params_matches_count_parameters():
    for name in list_models():
        model = build_model(name, 1, 10)
        assert model.num_params == count_parameters(model) == sum(p.numel() for p in model.parameters())


# --- foreign backbones: timm and torchvision models built from scratch behind the same interface ---


def installed(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:  # also what KD_TEST_WITHOUT=timm makes of it (tests/conftest.py)
        return False
    return True


needs_timm = pytest.mark.skipif(not installed("timm"), reason="timm is not installed")
FOREIGN = [
    pytest.param("timm:efficientnet_b0", marks=needs_timm),  # the original script's teacher
    pytest.param("timm:mobilenetv3_small_100", marks=needs_timm),  # ... and its student
    "tv:resnet18",
    "tv:mobilenet_v3_small",
]
SHAPES = [(1, 28), (3, 32)]  # (channels, pixels): Fashion-MNIST-like and CIFAR-like


def foreign_input(in_channels: int, size: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, in_channels, size, size)  # (B, C, H, W)


@pytest.mark.parametrize(("in_channels", "size"), SHAPES)
@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_forward_shape_and_finite(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, in_channels, NUM_CLASSES)
    assert isinstance(model, ForeignNet)
    logits = model(foreign_input(in_channels, size))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    assert model.num_params == count_parameters(model) > 0


@pytest.mark.parametrize(("in_channels", "size"), SHAPES)
@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_features_match_metadata(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, in_channels, NUM_CLASSES)
    channels = list(model.feature_channels)  # read before any forward: metadata, not a dry run
    feats = model.forward_features(foreign_input(in_channels, size))
    assert len(feats) == len(channels) >= 4
    assert [f.shape[1] for f in feats] == channels
    for f in feats:
        assert f.dim() == 4 and f.shape[0] == 2
        assert torch.isfinite(f).all()
    sizes = [f.shape[-1] for f in feats]
    assert sizes == sorted(sizes, reverse=True)  # stages never grow spatially
    assert sizes[0] == size // 2  # every one of these cuts its first stage at stride 2


@pytest.mark.parametrize(("in_channels", "size"), SHAPES)
@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_head_of_last_feature_equals_the_library_forward(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, in_channels, NUM_CLASSES).eval()  # eval: timm heads use dropout in training
    x = foreign_input(in_channels, size)
    with torch.no_grad():
        via_parts = model.forward_head(model.forward_features(x)[-1])
        direct = model(x)  # the wrapped library's own forward
    torch.testing.assert_close(via_parts, direct, rtol=0, atol=0)  # the same operations on the same input


@pytest.mark.parametrize(("in_channels", "size"), SHAPES)
@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_every_parameter_gets_a_gradient(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, in_channels, NUM_CLASSES).train()
    model(foreign_input(in_channels, size)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


@needs_timm
@pytest.mark.parametrize(("name", "head_conv"), [("efficientnet_b0", True), ("mobilenetv3_small_100", False)])
def test_timm_stages_are_feature_info_plus_the_head_input_where_it_differs(name, head_conv):
    torch.manual_seed(0)
    model = build_model(f"timm:{name}", 3, NUM_CLASSES).eval()
    timm_model = model.model
    info_channels = [info["num_chs"] for info in timm_model.feature_info]
    x = foreign_input(3, 32)
    with torch.no_grad():
        intermediates = timm_model.forward_intermediates(x, intermediates_only=True)
        feats = model.forward_features(x)
        head_input = timm_model.forward_features(x)  # timm's: the single map its forward_head takes
    assert [f.shape[1] for f in intermediates] == info_channels  # feature_info describes forward_intermediates
    # efficientnet: conv_head + bn2 (320 -> 1280) follow the last block, so that map is one more stage
    assert model.feature_channels == info_channels + ([timm_model.num_features] if head_conv else [])
    torch.testing.assert_close(feats[-1], head_input, rtol=0, atol=0)
    for ours, theirs in zip(feats, intermediates):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_torchvision_first_conv_takes_the_dataset_channels():
    torch.manual_seed(0)
    gray, rgb = build_model("tv:resnet18", 1, NUM_CLASSES).model, build_model("tv:resnet18", 3, NUM_CLASSES).model
    assert gray.conv1.in_channels == 1 and rgb.conv1.in_channels == 3
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(gray.conv1, attr) == getattr(rgb.conv1, attr), attr
    assert (gray.conv1.bias is None) == (rgb.conv1.bias is None)
    assert gray.fc.out_features == NUM_CLASSES


@pytest.mark.parametrize("name", FOREIGN)
def test_fuse_batchnorm_on_foreign_models(name):
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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: every pair was found correctly
        fused = fuse_batchnorm(model)
    x = foreign_input(3, 32)
    with torch.no_grad():
        for a, b in zip(model.forward_features(x), fused.forward_features(x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(x), fused(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class BnBeforeConv(torch.nn.Module):
    """Registers ``conv`` before ``bn`` but runs ``bn`` first: registration order says nothing about data flow."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3, NUM_CLASSES)

    def forward(self, x):
        x = self.conv(self.bn(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_fuse_batchnorm_returns_an_unfused_copy_when_fusing_would_change_outputs():
    torch.manual_seed(0)
    model = TorchvisionNet("toy", BnBeforeConv(), body=["bn", "conv"], classifier="fc", in_channels=3)
    model.model.bn.running_mean.uniform_(-2, 2)  # folding this BN into the conv would be wrong
    model.model.bn.running_var.uniform_(0.2, 0.5)
    with pytest.warns(UserWarning, match="changed the outputs of toy"):
        fused = fuse_batchnorm(model)
    assert isinstance(fused.model.bn, torch.nn.BatchNorm2d)
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    x = foreign_input(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), fused(x))


@pytest.mark.parametrize("name", ["teacher_cnn", "tv:resnet50", "tv:efficientnet_b0", "tv:mobilenet_v2"])
def test_check_model_name_accepts_buildable_names(name):
    check_model_name(name)  # no error
    assert is_known_model(name)


@needs_timm
def test_check_model_name_accepts_timm_names():
    assert is_known_model("timm:efficientnet_b0") and is_known_model("timm:mobilenetv3_small_100")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param(
            "timm:nosuchmodel", r"unknown timm model 'nosuchmodel'; see timm\.list_models\(\)", marks=needs_timm
        ),
        ("tv:nosuchmodel", r"unknown torchvision model 'nosuchmodel'; see torchvision\.models\.list_models\(\)"),
        ("tv:vgg11", r"torchvision model 'vgg11' is not supported: .*resnet\*.*mobilenet_v3\*"),
        ("tv:fasterrcnn_resnet50_fpn", "unknown torchvision model"),  # detection, not classification
        ("keras:resnet50", r"unknown model 'keras:resnet50'; choose from: .*timm:NAME.*tv:NAME"),
    ],
)
def test_bad_names_fail_before_anything_is_built(name, message):
    assert not is_known_model(name)
    with pytest.raises(ValueError, match=message):
        check_model_name(name)
    with pytest.raises(ValueError, match=message):
        build_model(name)


def test_missing_timm_is_named_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    fix = r"^timm is not installed; pip install timm \(or pip install 'kd_utils\[timm\]'\)$"
    with pytest.raises(ValueError, match=fix) as info:
        build_model("timm:efficientnet_b0")
    assert "\n" not in str(info.value)  # one line, for the CLI's one-line errors
    with pytest.raises(ValueError, match=fix):
        check_model_name("timm:efficientnet_b0")
    assert not is_known_model("timm:efficientnet_b0")
    build_model("tv:mobilenet_v3_small", 1, NUM_CLASSES)  # torchvision models do not need timm


def test_unknown_model_message_mentions_foreign_prefixes():
    with pytest.raises(ValueError, match="resnet99") as info:
        build_model("resnet99")
    assert "timm:" in str(info.value) and "tv:" in str(info.value)
    assert not any(":" in name for name in list_models())  # the registry lists built-in names only
