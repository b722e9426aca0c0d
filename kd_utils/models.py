"""Teacher and student networks behind one interface, and a tiny registry.

Every model: ``forward(x)`` returns logits ``(B, num_classes)``; ``forward_features(x)`` returns one map per
stage ``[(B, C_i, H_i, W_i), ...]``; ``forward_head(last_map)`` turns the last map into logits; and
``feature_channels`` lists ``C_i`` so adapters are sized without a dry run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class StagedNet(nn.Module):
    """A stem followed by stages; the head pools the last stage globally and applies a linear layer."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], feature_channels: list[int], num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.feature_channels = list(feature_channels)
        self.head = nn.Linear(feature_channels[-1], num_classes)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_head(self, last: Tensor) -> Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(last, 1), 1))  # (B, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x)[-1])

    @property
    def num_params(self) -> int:
        return count_parameters(self)


def plain_cnn(in_channels: int, num_classes: int, widths: tuple[int, ...], convs_per_stage: int) -> StagedNet:
    """VGG-style: each stage is ``convs_per_stage`` 3x3 conv-BN-ReLU blocks then a 2x2 max-pool."""
    stages, c_in = [], in_channels
    for width in widths:
        blocks = [conv_bn_relu(c_in if i == 0 else width, width) for i in range(convs_per_stage)]
        stages.append(nn.Sequential(*blocks, nn.MaxPool2d(2)))
        c_in = width
    return StagedNet(nn.Identity(), stages, list(widths), num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs plus an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet18_cifar(in_channels: int, num_classes: int) -> StagedNet:
    """ResNet-18 for 32x32 inputs (He et al. 2016 with a 3x3 stride-1 stem and no max-pool)."""
    widths, stages, c_in = (64, 128, 256, 512), [], 64
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        stages.append(nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1)))
        c_in = width
    return StagedNet(conv_bn_relu(in_channels, 64), stages, list(widths), num_classes)


MODELS: dict[str, Callable[[int, int], StagedNet]] = {
    "teacher_cnn": lambda c, k: plain_cnn(c, k, widths=(64, 128, 256), convs_per_stage=2),  # ~1.1M params
    "student_cnn": lambda c, k: plain_cnn(c, k, widths=(32, 64, 128), convs_per_stage=1),  # ~95k params
    "resnet18": resnet18_cifar,  # ~11M params, the stronger teacher
}


def list_models() -> list[str]:
    return list(MODELS)


def build_model(name: str, in_channels: int = 3, num_classes: int = 10) -> StagedNet:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose from: {', '.join(MODELS)}")
    return MODELS[name](in_channels, num_classes)


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each BatchNorm folded into the conv before it.

    In eval mode BN is the affine map ``y = g * (x - mu) / sqrt(var + eps) + b``, so ``conv -> BN`` equals one
    conv with rescaled weights and a bias: same outputs (to float rounding), one pass less over every
    activation map. For the frozen teacher only; the copy has no BatchNorm left to train.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return fused.requires_grad_(False)


def layer_summary(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """One row per leaf layer in call order: name, type, output shape (batch of 1), own parameter count."""
    rows, hooks = [], []
    for name, module in model.named_modules():
        if not list(module.children()) and not isinstance(module, nn.Identity):
            hooks.append(module.register_forward_hook(
                lambda m, _, out, name=name: rows.append(
                    {"layer": name, "type": type(m).__name__, "output": tuple(out.shape[1:]),
                     "params": sum(p.numel() for p in m.parameters())})))  # fmt: skip
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows


def format_summary(rows: list[dict]) -> str:
    lines = [f"{'layer':<24} {'type':<12} {'output (C, H, W)':<18} {'params':>9}"]
    lines += [f"{r['layer']:<24} {r['type']:<12} {str(r['output']):<18} {r['params']:>9,}" for r in rows]
    lines.append(f"{'total':<56} {sum(r['params'] for r in rows):>9,}")
    return "\n".join(lines)


@torch.no_grad()
def inference_latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 256, repeats: int = 5) -> float:
    """Milliseconds per image of eval-mode inference at ``batch_size`` (median of ``repeats`` batches)."""
    import time

    device = next(model.parameters()).device
    x = torch.randn(batch_size, *input_shape, device=device)
    model.eval()
    model(x)  # warm-up: kernel selection, allocations
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2] / batch_size


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
