"""One run: a teacher, a baseline student or a distilled student, trained (or loaded) and scored on test.

The teacher and the baseline student are cached under ``checkpoint_dir`` by a hash of the settings that
shape them, so later runs (and notebooks) reuse them; a run is resumable from its ``last.pt``. Every run
returns its ``RunRecord``: a student's names the teacher it learned from (weights hash, accuracies) and keeps
the test metrics of both the selected (best validation F1) epoch and the last epoch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import ExperimentConfig
from .data import DataSplits, TensorLoader, data_shaping
from .datasets import dataset_info
from .distill import STUDENT_METHODS, TWO_STAGE, TeacherOutput, build_distiller, each_output, matched_levels
from .metrics import classification_metrics
from .models import build_model, check_model_name, count_parameters
from .records import RunRecord, Segment, encode_correct, encode_predictions, parse_segment
from .results import atomic_write, strict_json
from .teacher_cache import TeacherCache
from .tensorboard_log import tensorboard_logger
from .train import (
    EVAL_BATCH_SIZE,
    FitResult,
    TrainConfig,
    added_settings,
    device_name,
    fit,
    infer,
    load_checkpoint,
    load_checkpoint_file,
    machine_label,
    resolve_device,
    resolve_precision,
    time_to_accuracy,
)

if TYPE_CHECKING:
    from .teacher import FrozenTeacher

EXPERIMENTS = ("teacher", "baseline", *STUDENT_METHODS)  # what train_experiment trains
CHANCE_FACTOR = 1.5  # a validation accuracy within 1.5x of chance: a teacher refused, a student "did not learn"


def validate(cfg: ExperimentConfig) -> None:
    """Raise ``ValueError`` naming the first bad setting, before any data is loaded or trained: every field's
    range, the models (built and run once on a blank batch of the dataset's shape, so an image size a model
    cannot take is named now), the settings that depend on them (hint level, matched levels, pooled size), and
    every folder the run will write."""
    cfg.validate()
    for role, name in (("teacher", cfg.teacher), ("student", cfg.student)):
        try:
            check_model_name(name)
        except ValueError as err:
            raise ValueError(f"--{role} {name}: {err}") from None
    info = dataset_info(cfg.data.dataset)
    maps = {}
    for role, path, arch in (("teacher", cfg.teacher_checkpoint, cfg.teacher), ("student", cfg.student_checkpoint, cfg.student)):  # fmt: skip
        model = build_model(arch, info.in_channels, info.num_classes)
        if path is not None:
            load_weights(model, path, role)
        maps[role] = stage_shapes(model, role, arch, info)
    n_student, n_teacher = len(maps["student"]), len(maps["teacher"])
    levels = matched_levels(n_student, n_teacher)
    if cfg.distill.level_weights is not None and len(cfg.distill.level_weights) != len(levels):
        raise ValueError(
            f"--level-weights {','.join(map(str, cfg.distill.level_weights))}: {len(cfg.distill.level_weights)} "
            f"weights for {len(levels)} matched levels; give one per level"
        )
    if cfg.distill.hint_level is not None and cfg.distill.hint_level >= n_student:
        raise ValueError(f"--hint-level {cfg.distill.hint_level}: the student has stages 0 to {n_student - 1}")
    smallest = min(min(maps["student"][i][1:] + maps["teacher"][j][1:]) for i, j in levels)
    if cfg.distill.spatial_size > smallest:
        raise ValueError(
            f"--spatial-size {cfg.distill.spatial_size}: larger than the smallest matched map ({smallest}x{smallest}); "
            f"give at most {smallest}"
        )
    check_folder("--checkpoint-dir", cfg.checkpoint_dir)
    if cfg.tensorboard is not None:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package; pip install tensorboard") from None
        check_folder("--tensorboard", cfg.tensorboard)


def stage_shapes(model: nn.Module, role: str, arch: str, info) -> list[tuple[int, int, int]]:
    """``(C, H, W)`` of each stage map on one blank image of the dataset's shape; a model that cannot take that
    image (a ViT built for 224 px, say) is named here rather than after the teacher has trained."""
    shape = (info.in_channels, info.image_size, info.image_size)
    try:
        with torch.no_grad():
            maps = model.eval().forward_features(torch.zeros(1, *shape))
    except Exception as err:  # whatever the library raises (AssertionError, RuntimeError, ...)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"--{role} {arch}: cannot take {shape[0]}x{shape[1]}x{shape[2]} images ({first})") from None
    return [tuple(m.shape[1:]) for m in maps]


def check_folder(flag: str, folder: str | Path) -> None:
    """``folder`` must be a folder this process can write, or a path that can become one (its nearest existing
    parent a writable folder); creates nothing."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file, not a folder; give a folder")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: lies under {parent}, which is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {parent} is not writable; fix its permissions or give another folder")


def load_weights(model: nn.Module, path: str | Path, role: str) -> nn.Module:
    """Load a kd_utils checkpoint (``{"model": state_dict, ...}``) or a bare state dict into ``model``."""
    try:
        state = load_checkpoint(path)
    except FileNotFoundError:
        raise ValueError(f"--{role}-checkpoint {path}: no such file") from None
    except Exception as err:  # unpickling errors, truncated files, non-weights content
        raise ValueError(
            f"{role} weights {path} are unreadable ({type(err).__name__}); delete the file (a cached one is "
            f"retrained) or pass --{role}-checkpoint with a best.pt written by kd_utils"
        ) from None
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{role} weights {path} do not fit the {role} architecture: {first}") from None
    return model


def config_hash(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


DATA_KEYS = ("dataset", "val_size", "train_size", "labeled_fraction", "seed")  # test_size shapes no training
STREAM_DATA_KEYS = ("dataset", "val_size", "train_size", "seed")  # the teacher sees images, never labels: a
# few-label run reuses the teacher targets of the full-label run on the same stream
TRAIN_KEYS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "warmup_epochs",
              "precision", "seed", "random_erasing", "channels_last")  # fmt: skip
# fields added later (train.ADDED_DEFAULTS: milestones, lr_decay, nesterov) join only where they differ from the
# old behaviour (train_shaping), so the stored runs keep their folders


def shaping(section: object, keys: tuple[str, ...]) -> dict:
    """The named settings of a config section: those that change what training produces (listed explicitly,
    so a new field elsewhere does not orphan the cached runs)."""
    return {k: getattr(section, k) for k in keys}


def train_shaping(train: TrainConfig) -> dict:
    """The training settings that name a run's folder: ``TRAIN_KEYS``, plus each later field off its old value."""
    return {**shaping(train, TRAIN_KEYS), **added_settings(train)}


def run_dir(cfg: ExperimentConfig, experiment: str, teacher: FrozenTeacher | None = None) -> Path:
    """Checkpoint folder of one run, named by the settings that shape it (so a changed setting never resumes)."""
    seed, data = cfg.train.seed, data_shaping(cfg.data, DATA_KEYS)
    if experiment == "teacher":
        keys = {"data": data, "train": train_shaping(cfg.teacher_train_config()), "arch": cfg.teacher}
        return (
            Path(cfg.checkpoint_dir) / "teachers" / f"{cfg.data.dataset}-{cfg.teacher}-seed{seed}-{config_hash(keys)}"
        )
    keys = {"data": data, "train": train_shaping(cfg.train), "arch": cfg.student, "init": cfg.student_checkpoint}
    if experiment != "baseline":
        keys.update(distill=cfg.distill.shaping_dict(), teacher=teacher.weights_hash if teacher else None)
        keys.update(fuse=cfg.fuse_teacher_bn)
    name = f"{cfg.data.dataset}-{cfg.student}-{experiment.replace('+', '_')}-seed{seed}-{config_hash(keys)}"
    return Path(cfg.checkpoint_dir) / "runs" / name


def test_metrics(model: nn.Module, data: DataSplits, cfg: ExperimentConfig) -> dict:
    """Test-set metrics of ``model`` (the only place the test split is read), with its predictions."""
    device = resolve_device(cfg.train.device)
    loader = TensorLoader(data.test_x, data.test_y, data.info, EVAL_BATCH_SIZE, device)
    predictions = infer(model.to(device), loader, resolve_precision(cfg.train.precision, device)).argmax(1)
    metrics = classification_metrics(data.test_y, predictions, data.info.classes)
    metrics["predictions"] = encode_predictions(predictions)
    metrics["correct"] = encode_correct(predictions == data.test_y)
    metrics["labels"] = encode_predictions(data.test_y)  # what a bootstrap over test images resamples with them
    return metrics


def environment(cfg: ExperimentConfig, trained_on: list[str] | None = None) -> dict:
    """Where this record was made; ``trained_on`` (``FitResult.trained_on``), when it names another machine,
    replaces ``hardware`` (the training's hardware is what a reader compares) and this one becomes ``evaluated_on``.
    The record's ``trained_on`` segments (``segments``) say the same per stretch of training, with its precision."""
    device = resolve_device(cfg.train.device)
    env = {"torch": torch.__version__, "hardware": device_name(device), "threads": torch.get_num_threads(),
           "precision": precision_name(cfg)}  # fmt: skip
    here = parse_segment(machine_label(device)).label()
    machines = list(dict.fromkeys(parse_segment(label).label() for label in trained_on or []))
    if machines and machines != [here]:
        env.update(hardware=" + ".join(machines), evaluated_on=here)
    return env


def precision_name(cfg: ExperimentConfig) -> str:
    """The autocast dtype this machine runs ``cfg`` in: "bfloat16", "float16" or "float32"."""
    device = resolve_device(cfg.train.device)
    return str(resolve_precision(cfg.train.precision, device)).removeprefix("torch.")


def segments(cfg: ExperimentConfig, trained_on: list[str]) -> tuple[Segment, ...]:
    """``FitResult.trained_on`` labels as ``Segment``s (hardware, torch, precision of each stretch of training)."""
    return tuple(dict.fromkeys(parse_segment(label) for label in trained_on))


def did_not_learn(history: list[dict], num_classes: int) -> bool:
    """Validation accuracy never left chance level (within ``CHANCE_FACTOR`` of ``1 / num_classes``)."""
    return bool(history) and max(r["val_acc"] for r in history) <= CHANCE_FACTOR / num_classes


def teacher_cache_for(cfg: ExperimentConfig, teacher: FrozenTeacher | None) -> TeacherCache | None:
    if teacher is None or not cfg.teacher_cache:
        return None
    device = resolve_device(cfg.train.device)
    stream = {
        "teacher": teacher.weights_hash, "fused": cfg.fuse_teacher_bn, "data": shaping(cfg.data, STREAM_DATA_KEYS),
        "seed": cfg.train.seed, "batch_size": cfg.train.batch_size, "random_erasing": cfg.train.random_erasing,
        "precision": str(resolve_precision(cfg.train.precision, device)), "device": device.type,
        "channels_last": cfg.train.channels_last,
    }  # fmt: skip
    return TeacherCache(Path(cfg.checkpoint_dir) / "teacher_outputs", stream, also=teacher.outputs_ahead)


def teacher_outputs_of(method: str, cfg: ExperimentConfig, data: DataSplits, teacher: nn.Module) -> list[TeacherOutput]:
    """The storable teacher outputs a run of ``method`` at ``cfg`` reads (FitNets: its logit-KD stage's; none for
    the labels-only runs and for methods that read the full maps)."""
    method = TWO_STAGE[method][1] if method in TWO_STAGE else method
    if method in ("baseline", "teacher"):
        return []
    student = build_model(cfg.student, data.info.in_channels, data.info.num_classes)
    return each_output(build_distiller(method, student, teacher, cfg.distill).teacher_outputs(data.train_x.shape[1:]))


def _fit_method(
    method, cfg, data, teacher, folder, log, name, train_cfg, on_epoch
) -> tuple[nn.Module, FitResult, dict]:
    """Train one student (two stages for fitnets); returns the student, the fit result and extra record fields."""
    info = data.info
    torch.manual_seed(cfg.train.seed)
    arch = cfg.teacher if method == "teacher" else cfg.student
    model = build_model(arch, info.in_channels, info.num_classes)
    if method != "teacher" and cfg.student_checkpoint:
        load_weights(model, cfg.student_checkpoint, "student")
    teacher_model = teacher.model if teacher is not None else None
    cache = teacher_cache_for(cfg, teacher) if method != "teacher" else None
    extra: dict = {}
    if method in TWO_STAGE:  # fitnets: stage 1 the hint, stage 2 logit KD of the whole student
        first, second = TWO_STAGE[method]
        hint = build_distiller(first, model, teacher_model, cfg.distill)
        hint_cfg = replace(train_cfg, epochs=cfg.distill.hint_epochs)
        stage1 = fit(hint, data, hint_cfg, folder / "hint", cfg.resume, log, f"{name} hint", select_best=False)
        for p in hint.frozen:
            p.requires_grad_(True)
        extra = {"hint_history": stage1.history, "hint_seconds": stage1.seconds, "hint_trained_on": stage1.trained_on}
        method = second
    distiller = build_distiller("baseline" if method == "teacher" else method, model, teacher_model, cfg.distill)
    fit_data = training_data(method, data)
    result = fit(distiller, fit_data, train_cfg, folder, cfg.resume, log, name, cache, on_epoch)
    extra["train_images"] = len(fit_data.train_y)  # per epoch: a labels-only run of a few-label study walks its labels
    if cache is not None and distiller.cacheable:
        extra["teacher_cache"] = {"hits": cache.hits, "misses": cache.misses, "folder": cache.folder.name}
    extra["adapter_params"] = count_parameters(distiller.adapters)
    return model, result, extra


def training_data(method: str, data: DataSplits) -> DataSplits:
    """What a run trains on: labels-only runs (the baseline, a teacher) the labeled images alone, so that with a
    fraction of the labels none of their steps is without labels; distilled students every image (the teacher's
    terms need no label)."""
    return data.labeled_only() if method in ("teacher", "baseline") else data


def last_epoch_model(model: nn.Module, folder: Path) -> nn.Module | None:
    """A copy of ``model`` with the last epoch's weights (from ``last.pt``), or None without one."""
    if not (folder / "last.pt").exists():
        return None
    last = copy.deepcopy(model)
    last.load_state_dict(load_checkpoint_file(folder / "last.pt")["model"])
    return last


def train_experiment(
    experiment: str,
    cfg: ExperimentConfig,
    data: DataSplits,
    teacher: FrozenTeacher | None = None,
    log: Callable[[str], None] | None = print,
    name: str | None = None,
    test: bool = True,
    role: str | None = None,
    on_epoch: Callable[[dict], bool | None] | None = None,
) -> tuple[nn.Module, RunRecord]:
    """Train one experiment (teacher, baseline or a distillation method); returns the model and its record.

    A teacher or baseline whose run finished before (same settings) is loaded from its cache instead.
    ``name`` labels the record (default: the experiment); ``role`` is its part in the study (default: teacher,
    baseline or method; "final" / "final-baseline" for notebook 04's long runs). ``test=False`` leaves the test
    set unread (sweep trials: selection sees validation only). ``on_epoch`` sees each history row and stops the
    run by returning False (a pruned trial).
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment '{experiment}'; choose from: {', '.join(EXPERIMENTS)}")
    if experiment not in ("teacher", "baseline") and teacher is None:
        raise ValueError(f"experiment '{experiment}' needs a teacher (prepare_teacher)")
    name = labels_suffix(name or experiment, cfg.data.labeled_fraction)
    role = role or (experiment if experiment in ("teacher", "baseline") else "method")
    folder = run_dir(cfg, experiment, teacher)
    record_path = folder / "run.json"
    if experiment in ("teacher", "baseline") and record_path.exists() and (folder / "best.pt").exists():
        return load_cached_run(experiment, cfg, data, folder, log, name, role)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    train_cfg = cfg.teacher_train_config() if experiment == "teacher" else cfg.train
    board, close = tensorboard_logger(cfg.tensorboard, name, cfg.train.seed)
    try:
        model, result, extra = _fit_method(experiment, cfg, data, teacher, folder, log, name, train_cfg,
                                           chain(board, on_epoch))  # fmt: skip
    finally:
        close()
    extra["pack"] = {"k": 1}  # trained apart
    return model, finish_record(experiment, cfg, data, teacher, model, result, extra, name, role, started, test)


def chain(*hooks: Callable[[dict], bool | None] | None) -> Callable[[dict], bool | None] | None:
    """One ``on_epoch`` calling every hook given; False (stop the run) when any of them says False."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None
    return lambda row: False if any([h(row) is False for h in live]) else None


def finish_record(experiment, cfg, data, teacher, model, result, extra, name, role, started, test) -> RunRecord:
    """The ``RunRecord`` of a finished fit (apart or in a pack): identity, settings, history, test metrics
    (``test``), the teacher; a teacher's or baseline's is also written to its folder's ``run.json`` (the cache)."""
    folder = run_dir(cfg, experiment, teacher)
    train_cfg = cfg.teacher_train_config() if experiment == "teacher" else cfg.train
    trained_on = list(dict.fromkeys(extra.get("hint_trained_on", []) + result.trained_on))
    record = {
        **identity(experiment, name, role, cfg, segments(cfg, trained_on)),
        "config": asdict(cfg),
        "train_config": asdict(train_cfg),
        "data_sizes": data.sizes(),
        "params": count_parameters(model),
        **extra,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_f1": result.best_val_f1,
        "last_epoch": result.history[-1]["epoch"] if result.history else None,
        "seconds": result.seconds + extra.get("hint_seconds", 0.0),  # both stages for fitnets
        "time_to_target": time_to_accuracy(result.history, data.info.target_accuracy),
        "did_not_learn": did_not_learn(result.history, data.info.num_classes),
        "environment": environment(cfg, trained_on),
        "started": started,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if test:
        record["test"] = test_metrics(model, data, cfg)
        last = last_epoch_model(model, folder)
        record["test_last"] = test_metrics(last, data, cfg) if last is not None else record["test"]
    if teacher is not None and experiment != "teacher":
        record["teacher"] = teacher.identity()
    if experiment in ("teacher", "baseline"):
        atomic_write(folder / "run.json", strict_json(record, indent=1))
    return RunRecord.from_dict(record)


def identity(experiment: str, name: str, role: str, cfg: ExperimentConfig, trained_on: tuple[Segment, ...]) -> dict:
    """The stored identity fields of a record (``RunRecord``): what it is, how long, on which data and machines."""
    epochs = cfg.teacher_epochs if experiment == "teacher" else cfg.train.epochs
    return {
        "experiment": experiment, "name": name, "role": role, "method": experiment, "seed": cfg.train.seed,
        "split_seed": cfg.data.seed, "labeled_fraction": cfg.data.labeled_fraction, "epochs": epochs,
        "hint_epochs": cfg.distill.hint_epochs if experiment == "fitnets" else None,
        "trained_on": [vars(s).copy() for s in trained_on],
    }  # fmt: skip


def labels_suffix(name: str, labeled_fraction: float) -> str:
    """Run names carry the label budget when it is not all labels ("baseline@10%labels"), so runs of
    different budgets are never pooled or paired across budgets."""
    return name if labeled_fraction >= 1 else f"{name}@{100 * labeled_fraction:g}%labels"


def load_cached_run(experiment, cfg, data, folder, log, name, role) -> tuple[nn.Module, RunRecord]:
    """A finished teacher/baseline run from its folder; test metrics recomputed on this run's test split."""
    torch.manual_seed(cfg.train.seed)
    arch = cfg.teacher if experiment == "teacher" else cfg.student
    model = build_model(arch, data.info.in_channels, data.info.num_classes)
    try:
        load_weights(model, folder / "best.pt", experiment)
        saved = json.loads((folder / "run.json").read_text())
        trained_on = RunRecord.from_dict(saved).trained_on  # as it trained, whichever layout run.json has
    except (ValueError, UnicodeDecodeError, TypeError):  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"the cached {experiment} in {folder} is damaged; delete that folder and the {experiment} is trained again"
        ) from None
    record = {**saved, "cached": True, **identity(experiment, name, role, cfg, trained_on), "config": asdict(cfg),
              "data_sizes": data.sizes()}  # fmt: skip
    record["test"] = test_metrics(model, data, cfg)
    last = last_epoch_model(model, folder)
    record["test_last"] = test_metrics(last, data, cfg) if last is not None else record["test"]
    if log:
        log(f"{experiment}: loaded cached run from {folder.name}")
    return model, RunRecord.from_dict(record)
