"""K students of one plain architecture as one network, for a launch-bound GPU (issue: many students at once).

``pack(models)`` builds a ``PackedNet`` whose convolutions have ``groups=K`` (student ``k``'s channels are the
``k``-th block of every layer), whose BatchNorms run over the ``K * C`` channels (per channel, so exactly K
independent BatchNorms) and whose head is one batched matmul. Student ``k``'s batch is the ``k``-th block of
input channels: ``x`` of shape ``(B, K * C_in, H, W)``. Every parameter of the packed net is a concatenation
of the students' own, so the gradient of ``sum_k loss_k`` with respect to block ``k`` is student ``k``'s
gradient, and an elementwise optimiser (SGD with momentum, Nesterov, weight decay) updates each block exactly
as it would update that student alone. ``unpack`` gives back ordinary state dicts.

Only what ``plain_cnn`` is made of is packed (Conv2d, BatchNorm2d, ReLU, MaxPool2d, Identity, Sequential and
the ``StagedNet`` head); a model with other layers is refused by name. ``kd_utils.packed_train`` trains it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .models import StagedNet

PACKABLE = (nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Identity)


class PackedHead(nn.Module):
    """K linear heads at once: ``(B, K, C) -> (B, K, N)`` with weight ``(K, N, C)``."""

    def __init__(self, heads: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([h.weight.detach().clone() for h in heads]))  # (K, N, C)
        self.bias = nn.Parameter(torch.stack([h.bias.detach().clone() for h in heads]))  # (K, N)

    def forward(self, pooled: Tensor) -> Tensor:
        return torch.einsum("bkc,knc->bkn", pooled, self.weight) + self.bias


class PackedNet(nn.Module):
    """``k`` students of one ``StagedNet`` architecture; ``forward(x)`` returns ``(B, K, num_classes)``."""

    def __init__(self, stem: nn.Module, stages: nn.ModuleList, head: PackedHead, k: int):
        super().__init__()
        self.stem, self.stages, self.head, self.k = stem, stages, head, k

    forward_features = StagedNet.forward_features  # the same stem-then-stages walk; maps (B, K * C_i, H_i, W_i)

    def forward_head(self, last: Tensor) -> Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(last, 1).flatten(1)  # (B, K * C)
        return self.head(pooled.view(len(pooled), self.k, -1))  # (B, K, N)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x)[-1])

    def student_maps(self, maps: list[Tensor], i: int) -> list[Tensor]:
        """Student ``i``'s stage maps ``(B, C_l, H_l, W_l)`` out of the packed ``(B, K * C_l, H_l, W_l)``."""
        return [m[:, i * (m.shape[1] // self.k) : (i + 1) * (m.shape[1] // self.k)] for m in maps]


def _pack_module(modules: list[nn.Module], path: str) -> nn.Module:
    """One layer of the packed net from the same layer of every student."""
    first, k = modules[0], len(modules)
    if not isinstance(first, PACKABLE):
        raise ValueError(f"cannot pack {path or 'the model'}: {type(first).__name__} is not one of the packable layers")
    if isinstance(first, nn.Sequential):
        return nn.Sequential(*(_pack_module([m[i] for m in modules], f"{path}.{i}") for i in range(len(first))))
    if isinstance(first, nn.Conv2d):
        conv = nn.Conv2d(first.in_channels * k, first.out_channels * k, first.kernel_size, first.stride,
                         first.padding, first.dilation, first.groups * k, first.bias is not None)  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(torch.cat([m.weight for m in modules]))
            if first.bias is not None:
                conv.bias.copy_(torch.cat([m.bias for m in modules]))
        return conv
    if isinstance(first, nn.BatchNorm2d):
        bn = nn.BatchNorm2d(first.num_features * k, first.eps, first.momentum, first.affine, first.track_running_stats)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(torch.cat([getattr(m, name) for m in modules]))
            bn.num_batches_tracked.copy_(first.num_batches_tracked)
        return bn
    return copy.deepcopy(first)  # ReLU, MaxPool2d, Identity: no parameters, channel-wise already


def pack(models: list[StagedNet]) -> PackedNet:
    """One ``PackedNet`` from ``models`` (same architecture, each with its own weights and statistics)."""
    if not models or any(type(m) is not StagedNet for m in models):
        raise ValueError("pack takes a non-empty list of kd_utils StagedNet models (student_cnn, teacher_cnn)")
    shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}
    if len(shapes) != 1:
        raise ValueError("pack needs students of one architecture: their state dicts differ in keys or shapes")
    stem = _pack_module([m.stem for m in models], "stem")
    stages = nn.ModuleList(
        _pack_module([m.stages[i] for m in models], f"stages.{i}") for i in range(len(models[0].stages))
    )
    return PackedNet(stem, stages, PackedHead([m.head for m in models]), len(models))


def unpack(packed: PackedNet, template: StagedNet) -> list[dict[str, Tensor]]:
    """Each student's state dict, keyed as ``template``'s (an unpacked model of the same architecture)."""
    packed_state = packed.state_dict()
    states = []
    for i in range(packed.k):
        state = {name: student_block(name, packed_state[name], packed.k, i).clone() for name in template.state_dict()}
        for name, value in template.state_dict().items():
            if state[name].shape != value.shape:
                raise ValueError(f"unpack: {name} has shape {tuple(state[name].shape)}, expected {tuple(value.shape)}")
        states.append(state)
    return states


def student_block(name: str, packed: Tensor, k: int, i: int) -> Tensor:
    """Student ``i``'s part of the packed tensor ``name`` (a weight, a BatchNorm statistic or an optimiser's
    buffer of the same shape), as a view: the head's are stacked (index ``i``), every other tensor is the
    concatenation of the students' along dim 0 (block ``i``); ``num_batches_tracked`` is shared."""
    if name.endswith("num_batches_tracked"):
        return packed
    if name.startswith("head."):
        return packed[i]
    size = len(packed) // k
    return packed[i * size : (i + 1) * size]


def join_blocks(name: str, blocks: list[Tensor]) -> Tensor:
    """The packed tensor ``name`` from each student's: the inverse of ``student_block``."""
    if name.endswith("num_batches_tracked"):
        return blocks[0].clone()
    return torch.stack(blocks) if name.startswith("head.") else torch.cat(blocks)


def stack_inputs(batches: list[Tensor]) -> Tensor:
    """Each student's batch ``(B, C, H, W)`` as one ``(B, K * C, H, W)`` input: student ``k`` in block ``k``."""
    return torch.cat(batches, dim=1)
