"""Teacher and student networks behind one interface, and a tiny registry.

Every model: ``forward(x)`` returns logits ``(B, num_classes)``; ``forward_features(x)`` returns one map per
stage ``[(B, C_i, H_i, W_i), ...]``; ``forward_head(last_map)`` turns the last map into logits; and
``feature_channels`` lists ``C_i`` so adapters are sized without a dry run. (timm's own ``forward_features``
returns only the last map; ours returns the list.)

Besides the built-in networks, ``build_model("timm:NAME")`` and ``build_model("tv:NAME")`` build a timm or
torchvision classifier from scratch (never pretrained, nothing downloaded) and wrap it in a ``ForeignNet`` with
the same interface.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .zoo import ZOO


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


class ForeignNet(nn.Module):
    """A timm or torchvision classifier behind the interface above; subclasses say how to cut it into stages.

    ``forward`` is the wrapped library's own forward, so ``forward_head(forward_features(x)[-1]) == forward(x)``
    checks the cut against the library rather than against itself. The wrapped network is the only child
    (``self.model``), so state-dict keys are the library's keys prefixed with ``model.``.
    """

    def __init__(self, name: str, model: nn.Module, feature_channels: list[int], in_channels: int):
        super().__init__()
        self.name = name  # as given to build_model, e.g. "timm:efficientnet_b0"
        self.model = model
        self.feature_channels = list(feature_channels)
        self.in_channels = in_channels  # for fuse_batchnorm's check on a random batch

    def forward_features(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward_head(self, last: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)  # (B, num_classes)

    @property
    def num_params(self) -> int:
        return count_parameters(self)


class TimmNet(ForeignNet):
    """A timm model cut at the stages of its ``feature_info``, plus the head's input where that differs.

    ``forward_intermediates(x)`` returns ``(final, stage_maps)`` with one map per ``feature_info`` entry. timm's
    ``forward_head`` expects ``final``, which is not always the last stage map: EfficientNet applies
    ``conv_head`` and ``bn2`` (320 -> 1280 channels) after its last block. When ``num_features`` differs from the
    last stage's channels, ``final`` is appended as one more stage (efficientnet_b0: 5 + 1 maps); otherwise it
    replaces the last stage map (MobileNetV3 returns the very same tensor; a model whose final norm keeps the
    channel count gets the normed map, which is what its head takes). Either way the last map is the head's
    input and ``feature_channels`` is known from metadata. Models whose final features are not ``(B, C, H, W)``
    maps (vision transformers) are refused at the first forward.
    """

    def __init__(self, name: str, model: nn.Module, in_channels: int):
        stage_channels = [info["num_chs"] for info in model.feature_info]
        self.final_is_extra_stage = model.num_features != stage_channels[-1]
        extra = [model.num_features] if self.final_is_extra_stage else []
        super().__init__(name, model, stage_channels + extra, in_channels)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        final, stages = self.model.forward_intermediates(x)
        if final.dim() != 4:
            raise ValueError(
                f"{self.name} gives final features of shape {tuple(final.shape)}, not (B, C, H, W) maps; "
                "choose a convolutional timm model"
            )
        return [*stages, final] if self.final_is_extra_stage else [*stages[:-1], final]

    def forward_head(self, last: Tensor) -> Tensor:
        return self.model.forward_head(last)  # (B, num_classes)


class TorchvisionNet(ForeignNet):
    """A torchvision classifier run module by module; a new stage starts at every module that downsamples.

    ``body`` holds the submodule paths that turn an image into the head's input, in call order (ResNet: ``conv1
    ... layer4``; MobileNet / EfficientNet: ``features.0 ...``). Cutting before each strided conv or pool gives
    one map per resolution, like timm's ``feature_info`` (resnet18: 64@/2, 64@/4, 128@/8, 256@/16, 512@/32), and
    a stage's channels are those of its last conv, so no dummy forward is needed. Paths are looked up at call
    time, so ``fuse_batchnorm``'s replaced submodules are used. The head is global average pooling, flatten and
    the classifier (``fc`` or ``classifier``), exactly as in these models' own ``forward``.
    """

    def __init__(self, name: str, model: nn.Module, body: list[str], classifier: str, in_channels: int):
        self.stages = split_at_downsampling(body, [model.get_submodule(p) for p in body])
        channels = [last_conv(model, stage).out_channels for stage in self.stages]
        super().__init__(name, model, channels, in_channels)
        self.classifier = classifier  # attribute name of the final linear layer(s)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            for path in stage:
                x = self.model.get_submodule(path)(x)
            features.append(x)
        return features

    def forward_head(self, last: Tensor) -> Tensor:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(last, 1), 1)  # (B, C)
        return getattr(self.model, self.classifier)(pooled)  # (B, num_classes)


def downsamples(module: nn.Module) -> bool:
    """Whether ``module`` contains a conv or pooling layer with stride > 1 (it lowers the resolution)."""
    strided = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    return any(max(m.stride if isinstance(m.stride, tuple) else (m.stride,)) > 1 for m in strided)


def split_at_downsampling(paths: list[str], modules: list[nn.Module]) -> list[list[str]]:
    """Group consecutive ``paths`` into stages, starting a new stage at each module that downsamples."""
    stages: list[list[str]] = []
    for path, module in zip(paths, modules):
        if not stages or downsamples(module):
            stages.append([])
        stages[-1].append(path)
    return stages


def last_conv(model: nn.Module, paths: list[str]) -> nn.Conv2d:
    """The last ``Conv2d`` registered under ``paths``; its ``out_channels`` are the stage's channels.

    Registration order puts a block's projection conv last (ResNet registers ``downsample`` after ``conv2``, but
    both have the block's output channels).
    """
    convs = [m for p in paths for m in model.get_submodule(p).modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"stage {paths} has no Conv2d, so its channel count is unknown")
    return convs[-1]


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``Conv2d`` for one with ``in_channels`` inputs and otherwise the same hyperparameters."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    parent_name, _, attr = name.rpartition(".")
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )  # fmt: skip
    setattr(model.get_submodule(parent_name), attr, new)


TV_FAMILIES = ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet")  # name prefixes
TIMM_HINT = "timm:NAME (see timm.list_models())"
TV_HINT = f"tv:NAME (torchvision {', '.join(f + '*' for f in TV_FAMILIES)})"


def import_timm():
    """timm, imported only when a ``timm:`` model is asked for (it is an optional dependency)."""
    try:
        import timm
    except ImportError:
        raise ValueError("timm is not installed; pip install timm (or pip install 'kd_utils[timm]')") from None
    return timm


def check_timm_name(arch: str) -> None:
    if not import_timm().is_model(arch):
        raise ValueError(f"unknown timm model '{arch}'; see timm.list_models()")


def check_tv_name(arch: str) -> None:
    import torchvision.models as tvm

    if arch not in tvm.list_models(module=tvm):  # classification models only
        raise ValueError(f"unknown torchvision model '{arch}'; see torchvision.models.list_models()")
    if not arch.startswith(TV_FAMILIES):
        raise ValueError(
            f"torchvision model '{arch}' is not supported: stage maps are defined for "
            f"{', '.join(f + '*' for f in TV_FAMILIES)}"
        )


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` naming the valid choices unless ``build_model(name)`` can build ``name``.

    Cheap (no model is built), so a CLI can call it before loading any data.
    """
    prefix, sep, arch = name.partition(":")
    if sep and prefix == "timm":
        check_timm_name(arch)
    elif sep and prefix == "tv":
        check_tv_name(arch)
    elif name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose from: {', '.join(MODELS)}, {TIMM_HINT}, {TV_HINT}")


def is_known_model(name: str) -> bool:
    try:
        check_model_name(name)
    except ValueError:
        return False
    return True


def build_timm(arch: str, in_channels: int, num_classes: int) -> TimmNet:
    """A timm model with random weights (``pretrained=False``: nothing is downloaded)."""
    model = import_timm().create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
        raise ValueError(f"timm model '{arch}' has no forward_intermediates/feature_info; choose another model")
    return TimmNet(f"timm:{arch}", model, in_channels)


def build_torchvision(arch: str, in_channels: int, num_classes: int) -> TorchvisionNet:
    """A torchvision classifier with random weights (``weights=None``), first conv resized to ``in_channels``."""
    import torchvision.models as tvm

    model = tvm.get_model(arch, weights=None, num_classes=num_classes)
    replace_first_conv(model, in_channels)
    if isinstance(model, tvm.ResNet):
        body = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return TorchvisionNet(f"tv:{arch}", model, body, "fc", in_channels)
    body = [f"features.{i}" for i in range(len(model.features))]  # MobileNetV2/V3, EfficientNet(V2)
    return TorchvisionNet(f"tv:{arch}", model, body, "classifier", in_channels)


MODELS: dict[str, Callable[[int, int], StagedNet]] = {
    "teacher_cnn": lambda c, k: plain_cnn(c, k, widths=(64, 128, 256), convs_per_stage=2),  # ~1.1M params
    "student_cnn": lambda c, k: plain_cnn(c, k, widths=(32, 64, 128), convs_per_stage=1),  # ~95k params
    "resnet18": resnet18_cifar,  # ~11M params, the stronger teacher
}
MODELS.update({name: (lambda c, k, body=body: StagedNet(*body(c), k)) for name, body in ZOO.items()})  # kd_utils.zoo
FOREIGN: dict[str, Callable[[str, int, int], ForeignNet]] = {"timm": build_timm, "tv": build_torchvision}


def list_models() -> list[str]:
    """The built-in names; any ``timm:NAME`` or ``tv:NAME`` that ``check_model_name`` accepts also builds."""
    return list(MODELS)


def build_model(name: str, in_channels: int = 3, num_classes: int = 10) -> StagedNet | ForeignNet:
    check_model_name(name)
    prefix, sep, arch = name.partition(":")
    if sep:
        return FOREIGN[prefix](arch, in_channels, num_classes)
    return MODELS[name](in_channels, num_classes)


def bn_replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What is left of ``bn`` once folded into its conv, or None when that is unknown (then it is not folded).

    timm's ``BatchNormAct2d`` applies dropout and an activation after normalising; those stay.
    """
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d":
        return nn.Sequential(bn.drop, bn.act)
    return None


def fuse_children(module: nn.Module) -> None:
    """Fold each BatchNorm child into the Conv2d child registered just before it, in place.

    In an ``nn.Sequential`` registration order is call order. Elsewhere it is the convention of torchvision and
    timm blocks (``conv1, bn1, conv2, bn2``) but not a guarantee, hence the check in ``fuse_batchnorm``.
    """
    names = list(module._modules)
    for a, b in zip(names, names[1:]):
        conv, bn = module._modules[a], module._modules[b]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or bn.num_features != conv.out_channels:
            continue
        rest = bn_replacement(bn)
        if rest is not None and bn.track_running_stats:
            setattr(module, a, fuse_conv_bn_eval(conv, bn))
            setattr(module, b, rest)


@torch.no_grad()
def same_eval_outputs(a: nn.Module, b: nn.Module, in_channels: int, rtol: float = 1e-3) -> bool:
    """Whether ``a`` and ``b`` give the same logits (to ``rtol`` of the norm) on a random 32x32 batch."""
    param = next(a.parameters())
    x = torch.randn(2, in_channels, 32, 32, device=param.device, dtype=param.dtype)
    was_training = a.training
    try:
        ya, yb = a.eval()(x), b(x)
    finally:
        a.train(was_training)
    return bool((ya - yb).norm() <= rtol * ya.norm() + 1e-6)


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each BatchNorm folded into the conv before it.

    In eval mode BN is the affine map ``y = g * (x - mu) / sqrt(var + eps) + b``, so ``conv -> BN`` equals one
    conv with rescaled weights and a bias: same outputs (to float rounding), one pass less over every
    activation map. For the frozen teacher only; the copy has no BatchNorm left to train.

    For a ``ForeignNet`` the conv/BN pairs are found by registration order, which a library block need not
    follow, so the copy is checked against the original on a random batch; if they differ, a warning is issued
    and an unfused frozen eval copy is returned instead (slower, same outputs).
    """
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        fuse_children(module)
    fused.requires_grad_(False)
    if isinstance(model, ForeignNet) and not same_eval_outputs(model, fused, model.in_channels):
        warnings.warn(f"fuse_batchnorm changed the outputs of {model.name}; returning it unfused", stacklevel=2)
        return copy.deepcopy(model).eval().requires_grad_(False)
    return fused


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
