"""The teacher as distillation uses it: from ``--teacher-checkpoint``, the cache or a fresh run; frozen, in eval
mode, BatchNorm folded into its convs; refused when near chance. The CLI, the sweeps and the notebooks all
prepare it through ``prepare_teacher``, so they cannot drift apart."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .config import ExperimentConfig
from .data import DataSplits, TensorLoader
from .models import build_model, count_parameters, fuse_batchnorm
from .records import RunRecord
from .runs import CHANCE_FACTOR, environment, identity, load_weights, test_metrics, train_experiment
from .teacher_cache import state_hash
from .train import EVAL_BATCH_SIZE, evaluate, resolve_device


@dataclass
class FrozenTeacher:
    """The teacher as distillation uses it: frozen, eval mode, BatchNorm folded when asked; and its identity."""

    model: nn.Module
    record: RunRecord
    weights_hash: str  # sha256 of the trained weights (before BN folding)
    val_accuracy: float
    outputs_ahead: tuple = ()  # per run ahead, the TeacherOutputs it will read: each teacher pass computes them too

    def identity(self) -> dict:
        return {
            "arch": self.record.teacher_arch,
            "weights_sha256": self.weights_hash,
            "test_accuracy": self.record.test["accuracy"],
            "val_accuracy": self.val_accuracy,
        }


def teacher_from_checkpoint(cfg: ExperimentConfig, data: DataSplits) -> tuple[nn.Module, RunRecord]:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.teacher, data.info.in_channels, data.info.num_classes)
    load_weights(model, cfg.teacher_checkpoint, "teacher")
    test = test_metrics(model, data, cfg)
    record = {**identity("teacher", "teacher", "teacher", cfg, ()), "config": asdict(cfg),
              "params": count_parameters(model), "history": [], "best_epoch": None, "seconds": 0.0, "test": test,
              "test_last": test, "cached": True, "source": str(cfg.teacher_checkpoint), "environment": environment(cfg),
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    return model, RunRecord.from_dict(record)


def teacher_val_accuracy(teacher: nn.Module, data: DataSplits, cfg: ExperimentConfig) -> float:
    device = resolve_device(cfg.train.device)
    loader = TensorLoader(data.val_x, data.val_y, data.info, EVAL_BATCH_SIZE, device)
    return evaluate(teacher.to(device), loader, data.info.classes)["accuracy"]


def prepare_teacher(
    cfg: ExperimentConfig, data: DataSplits, log: Callable[[str], None] | None = print
) -> FrozenTeacher:
    """The teacher for distillation: from ``--teacher-checkpoint``, the cache or a fresh run; refused when near
    chance (unless ``allow_weak_teacher``); frozen, eval mode, BatchNorm folded into its convs when
    ``fuse_teacher_bn`` (same outputs, a faster forward)."""
    if cfg.teacher_checkpoint:
        model, record = teacher_from_checkpoint(cfg, data)
    else:
        model, record = train_experiment("teacher", cfg, data, log=log)
    model.requires_grad_(False).eval()
    accuracy = teacher_val_accuracy(model, data, cfg)
    chance = 1 / data.info.num_classes
    if accuracy <= CHANCE_FACTOR * chance and not cfg.allow_weak_teacher:
        raise ValueError(
            f"teacher validation accuracy {accuracy:.3f} is near chance ({chance:.3f}); train it longer "
            "(--teacher-epochs) or pass --allow-weak-teacher"
        )
    weights_hash = state_hash(model)
    frozen = fuse_batchnorm(model) if cfg.fuse_teacher_bn else model
    return FrozenTeacher(frozen, record, weights_hash, accuracy)
