"""The literature's CIFAR zoo (kd_utils.zoo): reference parameter counts, stage shapes, gradients, 28x28 inputs."""

from __future__ import annotations

import pytest
import torch

from kd_utils.models import build_model, count_parameters, list_models
from kd_utils.zoo import ZOO

# Parameters for 3 input channels at 10 and 100 classes. Obtained by re-typing RepDistiller's models/ (resnet.py,
# wrn.py, vgg.py with batch_norm=True as its model_dict's vgg8 / vgg13, mobilenetv2.py's mobile_half,
# ShuffleNetv1.py, ShuffleNetv2.py; mdistiller's mdistiller/models/cifar/ are the same networks) layer for layer in
# a throwaway script and counting its parameters. That script also loaded the reference's tensors into ours by
# position and got the same logits (max |difference| < 1e-6 at 32x32). The four counts the papers' tables quote
# agree: resnet8x4 1,233,540; resnet32x4 7,433,860; wrn_16_2 703,284; wrn_40_2 2,255,156 (at 100 classes).
REFERENCE_PARAMS = {  # name: (10 classes, 100 classes)
    "resnet8": (78_042, 83_892),
    "resnet20": (272_474, 278_324),
    "resnet32": (466_906, 472_756),
    "resnet56": (855_770, 861_620),
    "resnet110": (1_730_714, 1_736_564),
    "resnet8x4": (1_210_410, 1_233_540),
    "resnet32x4": (7_410_730, 7_433_860),
    "wrn_16_1": (175_066, 180_916),
    "wrn_16_2": (691_674, 703_284),
    "wrn_40_1": (563_930, 569_780),
    "wrn_40_2": (2_243_546, 2_255_156),
    "vgg8": (3_918_858, 3_965_028),
    "vgg13": (9_416_010, 9_462_180),
    "mobilenetv2": (697_546, 812_836),
    "shufflev1": (862_768, 949_258),
    "shufflev2": (1_263_278, 1_355_528),
}

# (channels, pixels) per stage for a 32x32 input: the reference's feature maps without its first (the stem's),
# plus the 1x1 head conv's map for MobileNetV2 and ShuffleNetV2 (the printouts of the same throwaway script).
RESNET, RESNET_X4, WRN_2 = (
    [(16, 32), (32, 16), (64, 8)],
    [(64, 32), (128, 16), (256, 8)],
    [(32, 32), (64, 16), (128, 8)],
)
STAGES_AT_32 = {
    **dict.fromkeys(["resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "wrn_16_1", "wrn_40_1"], RESNET),
    **dict.fromkeys(["resnet8x4", "resnet32x4"], RESNET_X4),
    **dict.fromkeys(["wrn_16_2", "wrn_40_2"], WRN_2),
    **dict.fromkeys(["vgg8", "vgg13"], [(128, 16), (256, 8), (512, 4), (512, 4)]),
    "mobilenetv2": [(12, 16), (16, 8), (48, 4), (160, 2), (1280, 2)],
    "shufflev1": [(240, 16), (480, 8), (960, 4)],
    "shufflev2": [(116, 16), (232, 8), (464, 4), (1024, 4)],
}
NAMES = list(REFERENCE_PARAMS)


def images(in_channels: int, size: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, in_channels, size, size)  # (B, C, H, W)


def test_the_zoo_is_registered_and_complete():
    assert list(ZOO) == NAMES and set(STAGES_AT_32) == set(NAMES)
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_equal_the_reference(name):
    assert tuple(count_parameters(build_model(name, 3, k)) for k in (10, 100)) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_stages_at_32x32_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 100).train()
    feats = model.forward_features(images(3, 32))
    assert [(f.shape[1], f.shape[2], f.shape[3]) for f in feats] == [(c, s, s) for c, s in STAGES_AT_32[name]]
    assert model.feature_channels == [c for c, _ in STAGES_AT_32[name]]  # metadata, no dry run
    logits = model.forward_head(feats[-1])  # the last stage map is the one the head pools
    assert logits.shape == (2, 100) and torch.isfinite(logits).all()
    logits.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_moves_the_logits(name):
    # In eval mode: in training mode BatchNorm subtracts the batch mean, so a shift it receives through a 1x1 conv
    # has an exactly zero gradient (the reference's VGG conv biases, MobileNetV2's projection-BN shifts before
    # a non-residual block, ShuffleNetV2's depthwise-BN shifts), and only rounding makes it nonzero.
    torch.manual_seed(0)
    model = build_model(name, 3, 10).eval()
    model(images(3, 32)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad.abs().sum() > 0, f"{name}: {pname} does not affect the logits"


@pytest.mark.parametrize("name", NAMES)
def test_fashion_mnist_shaped_input(name):
    torch.manual_seed(0)
    model = build_model(name, 1, 10).eval()
    with torch.no_grad():
        feats = model.forward_features(images(1, 28))
        logits = model(images(1, 28))
    assert [f.shape[1] for f in feats] == model.feature_channels
    sizes = [f.shape[-1] for f in feats]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] >= 1
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(feats[-1]), logits)


def test_wide_resnet_ends_with_the_activated_map():
    torch.manual_seed(0)
    model = build_model("wrn_16_1", 3, 10).eval()
    with torch.no_grad():
        last = model.forward_features(images(3, 32))[-1]
    assert (last >= 0).all()  # after the final BN-ReLU, which the reference applies before pooling


@pytest.mark.parametrize("name", ["vgg8", "vgg13"])
def test_vgg_names_its_smallest_input(name):
    model = build_model(name, 3, 10).eval()
    with pytest.raises(ValueError, match=rf"^{name} takes inputs of at least 8x8 pixels, got 7x7$"):
        model(images(3, 7))
    assert model(images(3, 8)).shape == (2, 10)  # 8x8 reaches 1x1 at the last max-pool
