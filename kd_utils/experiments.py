"""Experiments end to end: data -> cached teacher and baseline -> distilled students -> test reports.

``ExperimentConfig`` is the one source of defaults for the CLI flags and the notebooks' parameters.
The teacher and the baseline student are cached under ``checkpoint_dir`` by a hash of the settings that
shape them, so later runs (and notebooks) reuse them; a run is resumable from its ``last.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from .data import DATASETS, DataConfig, DataSplits, TensorLoader, prepare_data
from .distill import DISTILLERS, DistillConfig, build_distiller
from .losses import CHANNEL_MATCHES, FEATURE_KINDS
from .models import MODELS, build_model, count_parameters, fuse_batchnorm
from .results import append_run
from .train import (
    OPTIMIZERS,
    PRECISIONS,
    TrainConfig,
    device_name,
    evaluate,
    fit,
    load_checkpoint,
    resolve_device,
    resolve_precision,
    time_to_accuracy,
)

STUDENT_METHODS = tuple(m for m in DISTILLERS if m != "baseline")
EXPERIMENT_ALIASES = {"1": "logit", "2": "hidden", "3": "regressor"}
FINAL_EPOCHS = 70  # the long run of the best method (notebook 04, --experiment study)
WEAK_TEACHER_FACTOR = 1.5  # a teacher whose val accuracy is within 1.5x of chance is refused


@dataclass
class ExperimentConfig:
    dataset: str = "cifar10"  # cifar10 | fashion-mnist | synthetic
    data_dir: str = "./data"  # datasets live (or are downloaded) here
    teacher: str = "teacher_cnn"  # teacher architecture (models.MODELS)
    student: str = "student_cnn"  # student architecture
    epochs: int = 30  # student epochs (baseline and every distillation method)
    teacher_epochs: int = 30  # teacher epochs
    batch_size: int = 128  # images per step
    lr: float = 0.05  # peak learning rate
    optimizer: str = "sgd"  # sgd | adamw
    weight_decay: float = 5e-4  # L2 penalty
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the training step (opt-in; compile time is paid once per run)
    fuse_teacher_bn: bool = True  # distil from a BN-folded copy of the teacher: same outputs, faster forward
    alpha: float = 0.9  # logit KD: weight of the soft-target term
    temperature: float = 4.0  # logit KD: softmax temperature
    feature_weight: float = 1.0  # hidden / regressor: weight of the feature term next to CE
    level_weights: tuple[float, ...] | None = None  # hidden / regressor: one weight per matched level
    feature_kind: str = "cosine"  # hidden: cosine (O(1) like CE) | mse (of L2-normalised maps, ~1/dim)
    channel_match: str = "pool"  # hidden: pool | truncate
    spatial_size: int = 1  # hidden: maps pooled to this size before matching
    labeled_fraction: float = 1.0  # fraction of training labels used (stratified)
    val_size: int | None = None  # validation images carved from train; None: dataset default
    train_size: int | None = None  # stratified training subset; None: all
    test_size: int | None = None  # stratified test subset; None: all
    seed: int = 0  # splits, init, batch order
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_dir: str = "checkpoints"  # teacher/baseline cache and per-run checkpoints
    teacher_checkpoint: str | None = None  # use these teacher weights instead of training one
    student_checkpoint: str | None = None  # start students from these weights instead of random init
    resume: bool = False  # continue interrupted runs from their last.pt
    allow_weak_teacher: bool = False  # distil even from a teacher near chance level
    progress: bool = True  # tqdm.auto bars

    def data_config(self) -> DataConfig:
        keys = ("dataset", "data_dir", "val_size", "train_size", "test_size", "labeled_fraction", "seed")
        return DataConfig(**{k: getattr(self, k) for k in keys})

    def train_config(self, epochs: int) -> TrainConfig:
        keys = ("batch_size", "lr", "optimizer", "weight_decay", "precision", "compile", "device", "seed", "progress")
        return TrainConfig(epochs=epochs, **{k: getattr(self, k) for k in keys})

    def distill_config(self) -> DistillConfig:
        return DistillConfig(**{f.name: getattr(self, f.name) for f in fields(DistillConfig)})


def validate(cfg: ExperimentConfig) -> None:
    """Raise ``ValueError`` naming the first bad setting, before any data is loaded or trained."""
    checks = [
        (cfg.dataset in DATASETS, f"unknown dataset '{cfg.dataset}'; choose from: {', '.join(DATASETS)}"),
        (cfg.teacher in MODELS, f"unknown teacher '{cfg.teacher}'; choose from: {', '.join(MODELS)}"),
        (cfg.student in MODELS, f"unknown student '{cfg.student}'; choose from: {', '.join(MODELS)}"),
        (cfg.optimizer in OPTIMIZERS, f"unknown optimizer '{cfg.optimizer}'; choose from: {', '.join(OPTIMIZERS)}"),
        (cfg.precision in PRECISIONS, f"unknown precision '{cfg.precision}'; choose from: {', '.join(PRECISIONS)}"),
        (
            cfg.feature_kind in FEATURE_KINDS,
            f"unknown feature kind '{cfg.feature_kind}'; choose from: {', '.join(FEATURE_KINDS)}",
        ),
        (
            cfg.channel_match in CHANNEL_MATCHES,
            f"unknown channel match '{cfg.channel_match}'; choose from: {', '.join(CHANNEL_MATCHES)}",
        ),
        (0 <= cfg.alpha <= 1, f"alpha must be in [0, 1], got {cfg.alpha}"),
        (cfg.temperature > 0, f"temperature must be > 0, got {cfg.temperature}"),
        (cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
        (cfg.teacher_epochs >= 1, f"teacher epochs must be >= 1, got {cfg.teacher_epochs}"),
        (cfg.batch_size >= 1, f"batch size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0, f"learning rate must be > 0, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"weight decay must be >= 0, got {cfg.weight_decay}"),
        (0 < cfg.labeled_fraction <= 1, f"labeled fraction must be in (0, 1], got {cfg.labeled_fraction}"),
        (cfg.feature_weight >= 0, f"feature weight must be >= 0, got {cfg.feature_weight}"),
        (all(w >= 0 for w in cfg.level_weights or ()), f"level weights must be >= 0, got {cfg.level_weights}"),
        (cfg.spatial_size >= 1, f"spatial size must be >= 1, got {cfg.spatial_size}"),
        (cfg.val_size is None or cfg.val_size >= 1, f"val size must be >= 1, got {cfg.val_size}"),
        (cfg.train_size is None or cfg.train_size >= 1, f"train size must be >= 1, got {cfg.train_size}"),
        (cfg.test_size is None or cfg.test_size >= 1, f"test size must be >= 1, got {cfg.test_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    resolve_device(cfg.device)
    info_channels = DATASETS[cfg.dataset].in_channels
    n_classes = DATASETS[cfg.dataset].num_classes
    for role, path, arch in (
        ("teacher", cfg.teacher_checkpoint, cfg.teacher),
        ("student", cfg.student_checkpoint, cfg.student),
    ):
        if path is not None:
            load_weights(build_model(arch, info_channels, n_classes), path, role)
    if cfg.level_weights is not None:
        n_levels = min(
            len(build_model(m, info_channels, n_classes).feature_channels) for m in (cfg.teacher, cfg.student)
        )
        if len(cfg.level_weights) != n_levels:
            raise ValueError(
                f"got {len(cfg.level_weights)} level weights for {n_levels} matched levels; give one per level"
            )


def load_weights(model: torch.nn.Module, path: str | Path, role: str) -> torch.nn.Module:
    """Load a kd_utils checkpoint (``{"model": state_dict, ...}``) or a bare state dict into ``model``."""
    try:
        state = load_checkpoint(path)
    except FileNotFoundError:
        raise ValueError(f"{role} checkpoint {path} does not exist") from None
    except Exception as err:  # unpickling errors, truncated files, non-weights content
        raise ValueError(
            f"{role} checkpoint {path} is unreadable ({type(err).__name__}); pass a .pt written by kd_utils"
        ) from None
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{role} checkpoint {path} does not fit the {role} architecture: {first}") from None
    return model


def config_hash(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


SUPERVISED_KEYS = ("dataset", "val_size", "train_size", "labeled_fraction", "seed", "batch_size", "lr", "optimizer", "weight_decay", "precision")  # fmt: skip


def run_dir(cfg: ExperimentConfig, experiment: str) -> Path:
    """Checkpoint folder of one run, named by the settings that shape it (so a changed setting never resumes)."""
    keys = {k: getattr(cfg, k) for k in SUPERVISED_KEYS}
    if experiment == "teacher":
        keys.update(arch=cfg.teacher, epochs=cfg.teacher_epochs)
        return Path(cfg.checkpoint_dir) / "teachers" / f"{cfg.dataset}-{cfg.teacher}-seed{cfg.seed}-{config_hash(keys)}"
    keys.update(arch=cfg.student, epochs=cfg.epochs, init=cfg.student_checkpoint)
    if experiment != "baseline":
        keys.update(asdict(cfg.distill_config()), teacher=cfg.teacher, teacher_epochs=cfg.teacher_epochs)
        keys.update(teacher_checkpoint=cfg.teacher_checkpoint)
    name = f"{cfg.dataset}-{cfg.student}-{experiment}-seed{cfg.seed}-{config_hash(keys)}"
    return Path(cfg.checkpoint_dir) / "runs" / name


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def test_report(model: torch.nn.Module, data: DataSplits, cfg: ExperimentConfig) -> dict:
    device = resolve_device(cfg.device)
    loader = TensorLoader(data.test_x, data.test_y, data.info, 512, device)
    model.to(device)
    metrics = evaluate(model, loader, data.info.classes, resolve_precision(cfg.precision, device))
    metrics.pop("loss")
    return metrics


def environment(cfg: ExperimentConfig) -> dict:
    device = resolve_device(cfg.device)
    return {"torch": torch.__version__, "hardware": device_name(device), "threads": torch.get_num_threads()}


def train_experiment(
    experiment: str,
    cfg: ExperimentConfig,
    data: DataSplits,
    teacher: torch.nn.Module | None = None,
    log: Callable[[str], None] | None = print,
    name: str | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train one experiment (teacher, baseline or a distillation method); returns the model and its record.

    A teacher or baseline whose run finished before (same settings) is loaded from its cache instead.
    ``name`` labels the record (default: the experiment), e.g. "final" for the long run of a method.
    """
    folder = run_dir(cfg, experiment)
    arch = cfg.teacher if experiment == "teacher" else cfg.student
    torch.manual_seed(cfg.seed)
    model = build_model(arch, data.info.in_channels, data.info.num_classes)
    record_path = folder / "run.json"
    if experiment in ("teacher", "baseline") and record_path.exists() and (folder / "best.pt").exists():
        load_weights(model, folder / "best.pt", experiment)
        # weights come from the cache; the test report is always made on this run's test split
        record = {**json.loads(record_path.read_text()), "cached": True, "config": asdict(cfg)}
        record.update(data_sizes=data.sizes(), test=test_report(model, data, cfg))
        if log:
            log(f"{experiment}: loaded cached run from {folder}")
        return model, record
    if experiment != "teacher" and cfg.student_checkpoint:
        load_weights(model, cfg.student_checkpoint, "student")
    distiller = build_distiller(
        "baseline" if experiment == "teacher" else experiment, model, teacher, cfg.distill_config()
    )
    epochs = cfg.teacher_epochs if experiment == "teacher" else cfg.epochs
    train_cfg = cfg.train_config(epochs)
    fit_result = fit(distiller, data, train_cfg, folder, resume=cfg.resume, log=log, desc=experiment)
    record = {
        "experiment": experiment,
        "name": name or experiment,
        "config": asdict(cfg),
        "train_config": asdict(train_cfg),
        "data_sizes": data.sizes(),
        "params": count_parameters(model),
        "adapter_params": count_parameters(distiller.adapters),
        "history": fit_result.history,
        "best_epoch": fit_result.best_epoch,
        "best_val_f1": fit_result.best_val_f1,
        "seconds": fit_result.seconds,
        "time_to_target": time_to_accuracy(fit_result.history, data.info.target_accuracy),
        "test": test_report(model, data, cfg),
        "environment": environment(cfg),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if experiment in ("teacher", "baseline"):
        _write_json(record_path, record)
    return model, record


def load_or_train_teacher(cfg: ExperimentConfig, data: DataSplits, log=print) -> tuple[torch.nn.Module, dict]:
    """The teacher from ``--teacher-checkpoint``, the cache, or a fresh run; frozen, in eval mode."""
    if cfg.teacher_checkpoint:
        torch.manual_seed(cfg.seed)
        teacher = load_weights(
            build_model(cfg.teacher, data.info.in_channels, data.info.num_classes), cfg.teacher_checkpoint, "teacher"
        )
        record = {"experiment": "teacher", "config": asdict(cfg), "params": count_parameters(teacher), "history": [],
                  "best_epoch": None, "seconds": 0.0, "test": test_report(teacher, data, cfg), "cached": True,
                  "source": str(cfg.teacher_checkpoint), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    else:
        teacher, record = train_experiment("teacher", cfg, data, log=log)
    return teacher.requires_grad_(False).eval(), record


def check_teacher_strength(teacher: torch.nn.Module, data: DataSplits, cfg: ExperimentConfig) -> float:
    """Validation accuracy of the teacher; refuses one within 1.5x of chance unless allowed."""
    device = resolve_device(cfg.device)
    loader = TensorLoader(data.val_x, data.val_y, data.info, 512, device)
    accuracy = evaluate(teacher.to(device), loader, data.info.classes)["accuracy"]
    chance = 1 / data.info.num_classes
    if accuracy <= WEAK_TEACHER_FACTOR * chance and not cfg.allow_weak_teacher:
        raise ValueError(
            f"teacher validation accuracy {accuracy:.3f} is near chance ({chance:.3f}); train it longer "
            "(--teacher-epochs) or pass --allow-weak-teacher"
        )
    return accuracy


def best_by_validation(records: dict[str, dict]) -> str:
    """Name of the record with the highest best-epoch validation macro F1 (the test set plays no part)."""
    return max(records, key=lambda name: records[name]["best_val_f1"])


def run_study(
    experiments: list[str],
    cfg: ExperimentConfig,
    results_path: str | Path | None = None,
    log: Callable[[str], None] | None = print,
    final_epochs: int | None = None,
) -> list[dict]:
    """Teacher, baseline and the requested distillation methods; each record appended to ``results_path``.

    With ``final_epochs`` the method with the best validation F1 among those run is trained again for that
    many epochs and recorded as "final" (what notebook 04 does).
    """
    validate(cfg)
    if final_epochs is not None and final_epochs < 1:
        raise ValueError(f"final epochs must be >= 1, got {final_epochs}")
    data = prepare_data(cfg.data_config())
    if log:
        log(f"data: {cfg.dataset} {data.sizes()}")
    records = []

    def done(record: dict) -> None:
        records.append(record)
        if results_path is not None:
            append_run(results_path, record)
        if log:
            log(format_metrics(record))

    teacher = None
    if any(e in STUDENT_METHODS for e in experiments) or "teacher" in experiments:
        teacher, record = load_or_train_teacher(cfg, data, log)
        if any(e in STUDENT_METHODS for e in experiments):
            check_teacher_strength(teacher, data, cfg)  # before anything is recorded or distilled
        done(record)
        if cfg.fuse_teacher_bn:
            teacher = fuse_batchnorm(teacher)
    _, record = train_experiment("baseline", cfg, data, log=log)
    done(record)
    methods = {}
    for experiment in experiments:
        if experiment in STUDENT_METHODS:
            _, methods[experiment] = train_experiment(experiment, cfg, data, teacher, log)
            done(methods[experiment])
    if final_epochs is not None and methods:
        best = best_by_validation(methods)
        if log:
            log(f"final run: {best} (best validation F1 {methods[best]['best_val_f1']:.4f}) for {final_epochs} epochs")
        _, record = train_experiment(best, replace(cfg, epochs=final_epochs), data, teacher, log, name="final")
        done(record)
    return records


def format_metrics(record: dict) -> str:
    t = record["test"]
    cached = " (cached)" if record.get("cached") else ""
    return (
        f"{record['experiment']}{cached} test: accuracy {t['accuracy']:.4f} precision {t['precision']:.4f} "
        f"recall {t['recall']:.4f} f1 {t['f1']:.4f} | params {record['params']:,} | {record['seconds']:.1f}s"
    )


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per run with the F1 gain over the student baseline (in points of macro F1)."""
    baseline = next((r["test"]["f1"] for r in records if r["experiment"] == "baseline"), None)
    rows = []
    for r in records:
        t = r["test"]
        is_student = r["experiment"] != "teacher"
        gain = t["f1"] - baseline if baseline is not None and is_student else None
        rows.append({
            "experiment": r["experiment"], "accuracy": t["accuracy"], "precision": t["precision"],
            "recall": t["recall"], "f1": t["f1"], "gain_f1": gain, "best_epoch": r.get("best_epoch"),
            "params": r["params"], "seconds": r["seconds"],
        })  # fmt: skip
    return rows


def format_summary(records: list[dict]) -> str:
    header = f"{'experiment':<11} {'accuracy':>8} {'precision':>9} {'recall':>7} {'f1':>7} {'gain f1':>8} {'best ep':>7} {'params':>10} {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for row in summary_rows(records):
        gain = f"{row['gain_f1']:+.4f}" if row["gain_f1"] is not None else "-"
        best = str(row["best_epoch"]) if row["best_epoch"] is not None else "-"
        lines.append(
            f"{row['experiment']:<11} {row['accuracy']:>8.4f} {row['precision']:>9.4f} {row['recall']:>7.4f} "
            f"{row['f1']:>7.4f} {gain:>8} {best:>7} {row['params']:>10,} {row['seconds']:>8.1f}"
        )
    return "\n".join(lines)
