"""Experiments end to end: data -> cached teacher and baseline -> distilled students -> test reports.

The teacher and the baseline student are cached under ``checkpoint_dir`` by a hash of the settings that
shape them, so later runs (and notebooks) reuse them; a run is resumable from its ``last.pt``. Every student
record names the teacher it learned from (weights hash, test accuracy) and keeps the test metrics of both
the selected (best validation F1) epoch and the last epoch.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import ExperimentConfig
from .data import DataSplits, TensorLoader, dataset_info, prepare_data
from .distill import DISTILLERS, DistillConfig, build_distiller
from .metrics import classification_metrics
from .models import build_model, check_model_name, count_parameters, fuse_batchnorm
from .results import append_run, atomic_write, load_runs
from .teacher_cache import TeacherCache, state_hash
from .train import (
    FitResult,
    device_name,
    evaluate,
    fit,
    infer,
    load_checkpoint,
    load_checkpoint_file,
    machine_label,
    resolve_device,
    resolve_precision,
    time_to_accuracy,
)

STUDENT_METHODS = (
    "logit", "hidden", "regressor", "dkd", "dist", "at", "rkd", "logit+hidden", "logit+regressor", "fitnets",
)  # fmt: skip
EXPERIMENTS = ("teacher", "baseline", *STUDENT_METHODS)
EXPERIMENT_ALIASES = {"1": "logit", "2": "hidden", "3": "regressor"}
FINAL_EPOCHS = 70  # the long run of the best method (notebook 04, --experiment study)
CHANCE_FACTOR = 1.5  # a validation accuracy within 1.5x of chance: a teacher refused, a student "did not learn"


@dataclass
class FrozenTeacher:
    """The teacher as distillation uses it: frozen, eval mode, BatchNorm folded when asked; and its identity."""

    model: nn.Module
    record: dict
    weights_hash: str  # sha256 of the trained weights (before BN folding)
    val_accuracy: float

    def identity(self) -> dict:
        return {
            "arch": self.record["config"]["teacher"],
            "weights_sha256": self.weights_hash,
            "test_accuracy": self.record["test"]["accuracy"],
            "val_accuracy": self.val_accuracy,
        }


def validate(cfg: ExperimentConfig) -> None:
    """Raise ``ValueError`` naming the first bad setting, before any data is loaded or trained."""
    cfg.validate()
    for role, name in (("teacher", cfg.teacher), ("student", cfg.student)):
        try:
            check_model_name(name)
        except ValueError as err:
            raise ValueError(f"--{role} {name}: {err}") from None
    info = dataset_info(cfg.data.dataset)
    for role, path, arch in (("teacher", cfg.teacher_checkpoint, cfg.teacher), ("student", cfg.student_checkpoint, cfg.student)):  # fmt: skip
        if path is not None:
            load_weights(build_model(arch, info.in_channels, info.num_classes), path, role)
    if cfg.distill.level_weights is not None:
        n_levels = min(
            len(build_model(m, info.in_channels, info.num_classes).feature_channels) for m in (cfg.teacher, cfg.student)
        )
        if len(cfg.distill.level_weights) != n_levels:
            raise ValueError(
                f"--level-weights {','.join(map(str, cfg.distill.level_weights))}: {len(cfg.distill.level_weights)} "
                f"weights for {n_levels} matched levels; give one per level"
            )
    if cfg.tensorboard is not None:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package; pip install tensorboard") from None


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


def shaping(section: object, keys: tuple[str, ...]) -> dict:
    """The named settings of a config section: those that change what training produces (listed explicitly,
    so a new field elsewhere does not orphan the cached runs)."""
    return {k: getattr(section, k) for k in keys}


def run_dir(cfg: ExperimentConfig, experiment: str, teacher: FrozenTeacher | None = None) -> Path:
    """Checkpoint folder of one run, named by the settings that shape it (so a changed setting never resumes)."""
    seed, data = cfg.train.seed, shaping(cfg.data, DATA_KEYS)
    if experiment == "teacher":
        keys = {"data": data, "train": shaping(cfg.teacher_train_config(), TRAIN_KEYS), "arch": cfg.teacher}
        return (
            Path(cfg.checkpoint_dir) / "teachers" / f"{cfg.data.dataset}-{cfg.teacher}-seed{seed}-{config_hash(keys)}"
        )
    keys = {"data": data, "train": shaping(cfg.train, TRAIN_KEYS), "arch": cfg.student, "init": cfg.student_checkpoint}
    if experiment != "baseline":
        keys.update(distill=asdict(cfg.distill), teacher=teacher.weights_hash if teacher else None)
        keys.update(fuse=cfg.fuse_teacher_bn)
    name = f"{cfg.data.dataset}-{cfg.student}-{experiment.replace('+', '_')}-seed{seed}-{config_hash(keys)}"
    return Path(cfg.checkpoint_dir) / "runs" / name


def encode_predictions(predictions: torch.Tensor) -> str:
    """Test predictions as base64 of uint8 (or uint16 past 255 classes): 10,000 images in ~13 kB of JSON."""
    dtype = np.uint8 if len(predictions) == 0 or int(predictions.max()) < 256 else np.uint16
    return base64.b64encode(predictions.numpy().astype(dtype).tobytes()).decode()


def encode_correct(correct: torch.Tensor) -> str:
    """Per-image correctness as base64 of packed bits (10,000 images in ~1.7 kB): what McNemar's test needs."""
    return base64.b64encode(np.packbits(correct.numpy().astype(bool)).tobytes()).decode()


def decode_correct(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def test_metrics(model: nn.Module, data: DataSplits, cfg: ExperimentConfig) -> dict:
    """Test-set metrics of ``model`` (the only place the test split is read), with its predictions."""
    device = resolve_device(cfg.train.device)
    loader = TensorLoader(data.test_x, data.test_y, data.info, 512, device)
    predictions = infer(model.to(device), loader, resolve_precision(cfg.train.precision, device)).argmax(1)
    metrics = classification_metrics(data.test_y, predictions, data.info.classes)
    metrics["predictions"] = encode_predictions(predictions)
    metrics["correct"] = encode_correct(predictions == data.test_y)
    return metrics


def environment(cfg: ExperimentConfig, trained_on: list[str] | None = None) -> dict:
    """Where this record was made; ``trained_on`` (``FitResult.trained_on``), when it names another machine,
    replaces ``hardware`` (the training's hardware is what a reader compares) and this one becomes ``evaluated_on``."""
    device = resolve_device(cfg.train.device)
    precision = str(resolve_precision(cfg.train.precision, device)).removeprefix("torch.")
    env = {"torch": torch.__version__, "hardware": device_name(device), "threads": torch.get_num_threads(),
           "precision": precision}  # fmt: skip
    here = machine_label(device)
    if trained_on and trained_on != [here]:
        env.update(hardware=" + ".join(trained_on), evaluated_on=here)
    return env


def did_not_learn(history: list[dict], num_classes: int) -> bool:
    """Validation accuracy never left chance level (within ``CHANCE_FACTOR`` of ``1 / num_classes``)."""
    return bool(history) and max(r["val_acc"] for r in history) <= CHANCE_FACTOR / num_classes


def tensorboard_logger(cfg: ExperimentConfig, name: str) -> tuple[Callable[[dict], None] | None, Callable[[], None]]:
    """``(on_epoch, close)``: per-epoch scalars (every loss part, accuracy, F1, lr, images/s) for TensorBoard."""
    if cfg.tensorboard is None:
        return None, lambda: None
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(Path(cfg.tensorboard) / f"{name}-seed{cfg.train.seed}"))

    def on_epoch(row: dict) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                group = "val" if key.startswith("val_") else "train" if key.startswith("train_") else "loss"
                group = "run" if key in ("lr", "seconds", "images_per_s") else group
                writer.add_scalar(f"{group}/{key}", value, row["epoch"])
        writer.flush()

    return on_epoch, writer.close


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
    return TeacherCache(Path(cfg.checkpoint_dir) / "teacher_outputs", stream)


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
    if method == "fitnets":  # stage 1: hint; stage 2: logit KD of the whole student
        hint = build_distiller("hint", model, teacher_model, cfg.distill)
        hint_cfg = replace(train_cfg, epochs=cfg.distill.hint_epochs)
        stage1 = fit(hint, data, hint_cfg, folder / "hint", cfg.resume, log, f"{name} hint", select_best=False)
        for p in hint.frozen:
            p.requires_grad_(True)
        extra = {"hint_history": stage1.history, "hint_seconds": stage1.seconds, "hint_trained_on": stage1.trained_on}
        method = "logit"
    distiller = build_distiller("baseline" if method == "teacher" else method, model, teacher_model, cfg.distill)
    result = fit(distiller, data, train_cfg, folder, cfg.resume, log, name, cache, on_epoch)
    if cache is not None and distiller.cacheable:
        extra["teacher_cache"] = {"hits": cache.hits, "misses": cache.misses, "folder": cache.folder.name}
    extra["adapter_params"] = count_parameters(distiller.adapters)
    return model, result, extra


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
) -> tuple[nn.Module, dict]:
    """Train one experiment (teacher, baseline or a distillation method); returns the model and its record.

    A teacher or baseline whose run finished before (same settings) is loaded from its cache instead.
    ``name`` labels the record (default: the experiment), e.g. "final" for the long run of a method.
    ``test=False`` leaves the test set unread (sweep trials: selection sees validation only).
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment '{experiment}'; choose from: {', '.join(EXPERIMENTS)}")
    if experiment not in ("teacher", "baseline") and teacher is None:
        raise ValueError(f"experiment '{experiment}' needs a teacher (prepare_teacher)")
    name = labels_suffix(name or experiment, cfg.data.labeled_fraction)
    folder = run_dir(cfg, experiment, teacher)
    record_path = folder / "run.json"
    if experiment in ("teacher", "baseline") and record_path.exists() and (folder / "best.pt").exists():
        return load_cached_run(experiment, cfg, data, folder, log, name)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    train_cfg = cfg.teacher_train_config() if experiment == "teacher" else cfg.train
    on_epoch, close = tensorboard_logger(cfg, name)
    try:
        model, result, extra = _fit_method(experiment, cfg, data, teacher, folder, log, name, train_cfg, on_epoch)
    finally:
        close()
    record = {
        "experiment": experiment,
        "name": name,
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
        "environment": environment(cfg, list(dict.fromkeys(extra.get("hint_trained_on", []) + result.trained_on))),
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
        atomic_write(record_path, json.dumps(record, indent=1))
    return model, record


def labels_suffix(name: str, labeled_fraction: float) -> str:
    """Run names carry the label budget when it is not all labels ("baseline@10%labels"), so runs of
    different budgets are never pooled or paired across budgets."""
    return name if labeled_fraction >= 1 else f"{name}@{100 * labeled_fraction:g}%labels"


def load_cached_run(experiment, cfg, data, folder, log, name) -> tuple[nn.Module, dict]:
    """A finished teacher/baseline run from its folder; test metrics recomputed on this run's test split."""
    torch.manual_seed(cfg.train.seed)
    arch = cfg.teacher if experiment == "teacher" else cfg.student
    model = build_model(arch, data.info.in_channels, data.info.num_classes)
    try:
        load_weights(model, folder / "best.pt", experiment)
        saved = json.loads((folder / "run.json").read_text())
    except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"the cached {experiment} in {folder} is damaged; delete that folder and the {experiment} is trained again"
        ) from None
    record = {**saved, "cached": True, "name": name, "config": asdict(cfg), "data_sizes": data.sizes()}
    record["test"] = test_metrics(model, data, cfg)
    last = last_epoch_model(model, folder)
    record["test_last"] = test_metrics(last, data, cfg) if last is not None else record["test"]
    if log:
        log(f"{experiment}: loaded cached run from {folder.name}")
    return model, record


def teacher_from_checkpoint(cfg: ExperimentConfig, data: DataSplits) -> tuple[nn.Module, dict]:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.teacher, data.info.in_channels, data.info.num_classes)
    load_weights(model, cfg.teacher_checkpoint, "teacher")
    record = {"experiment": "teacher", "name": "teacher", "config": asdict(cfg), "params": count_parameters(model),
              "history": [], "best_epoch": None, "seconds": 0.0, "test": test_metrics(model, data, cfg),
              "cached": True, "source": str(cfg.teacher_checkpoint), "environment": environment(cfg),
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    record["test_last"] = record["test"]
    return model, record


def teacher_val_accuracy(teacher: nn.Module, data: DataSplits, cfg: ExperimentConfig) -> float:
    device = resolve_device(cfg.train.device)
    loader = TensorLoader(data.val_x, data.val_y, data.info, 512, device)
    return evaluate(teacher.to(device), loader, data.info.classes)["accuracy"]


def prepare_teacher(
    cfg: ExperimentConfig, data: DataSplits, log: Callable[[str], None] | None = print
) -> FrozenTeacher:
    """The teacher for distillation, the same way for the CLI and the notebooks: from ``--teacher-checkpoint``,
    the cache or a fresh run; refused when near chance (unless ``allow_weak_teacher``); frozen, eval mode,
    BatchNorm folded into its convs when ``fuse_teacher_bn`` (same outputs, a faster forward)."""
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


def best_by_validation(records: dict[str, dict] | dict[str, list[dict]]) -> str:
    """Name of the method with the highest best-epoch validation macro F1, averaged over its seeds (the test
    set plays no part)."""

    def score(name: str) -> float:
        runs = records[name] if isinstance(records[name], list) else [records[name]]
        return sum(r["best_val_f1"] for r in runs) / len(runs)

    return max(records, key=score)


def run_study(
    experiments: list[str],
    cfg: ExperimentConfig,
    results_path: str | Path | None = None,
    log: Callable[[str], None] | None = print,
    final_epochs: int | None = None,
    seeds: list[int] | None = None,
    teacher_per_seed: bool = False,
) -> list[dict]:
    """Teacher, baseline and the requested methods for every student seed; each record appended to ``results_path``.

    One teacher (trained with the first seed) serves every student seed unless ``teacher_per_seed``; each
    record says which teacher it learned from. With ``final_epochs``, the method with the best mean validation
    F1 is trained again for that many epochs ("final"), next to a baseline of the same length
    ("final-baseline"), for every seed.
    """
    validate(cfg)
    seeds = list(seeds) if seeds else [cfg.train.seed]
    if final_epochs is not None and final_epochs < 1:
        raise ValueError(f"--final-epochs {final_epochs}: must be >= 1")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: each seed once")
    data = prepare_data(cfg.data)
    if log:
        log(f"data: {cfg.data.dataset} {data.sizes()}")
    records: list[dict] = []

    def done(record: dict) -> None:
        records.append(record)
        if results_path is not None:
            append_run(results_path, record)
        if log:
            log(format_metrics(record))

    methods = [e for e in experiments if e in STUDENT_METHODS]
    needs_teacher = bool(methods) or "teacher" in experiments
    teacher = None
    if needs_teacher and not teacher_per_seed:
        teacher = prepare_teacher(replace(cfg, train=replace(cfg.train, seed=seeds[0])), data, log)
    check_resumable_runs(cfg, seeds, ["baseline", *methods], teacher, final_epochs)  # before anything is appended
    if teacher is not None:
        done(teacher.record)
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in seeds:
        seed_cfg = replace(cfg, train=replace(cfg.train, seed=seed))
        if needs_teacher and teacher_per_seed:
            teacher = prepare_teacher(seed_cfg, data, log)
            done(teacher.record)
        if "baseline" in experiments or methods:
            done(train_experiment("baseline", seed_cfg, data, log=log)[1])
        for method in methods:
            _, record = train_experiment(method, seed_cfg, data, teacher, log)
            per_method[method].append(record)
            done(record)
    if final_epochs is not None and methods:
        best = best_by_validation(per_method)
        if log:
            log(f"final run: {best} (best mean validation F1) for {final_epochs} epochs, with a baseline as long")
        for seed in seeds:
            long_cfg = replace(cfg, train=replace(cfg.train, seed=seed, epochs=final_epochs))
            done(train_experiment("baseline", long_cfg, data, log=log, name="final-baseline")[1])
            done(train_experiment(best, long_cfg, data, teacher, log, name="final")[1])
    return records


def tuned_settings(sweeps_dir: str | Path | None, method: str) -> tuple[dict | None, str]:
    """The distillation settings a sweep chose for ``method`` by validation F1 (the latest ``<method>-tuned``
    record under ``sweeps_dir``), and where they come from; ``(None, "defaults")`` without one."""
    found, source = None, "defaults"
    for path in sorted(Path(sweeps_dir).glob("*.json")) if sweeps_dir and Path(sweeps_dir).is_dir() else []:
        try:
            runs = load_runs(path)
        except ValueError:
            continue  # a trials file, not a results file
        latest = next((r for r in reversed(runs) if r.get("name") == f"{method}-tuned"), None)
        if latest is not None:
            found, source = latest, f"sweep {path.name} ({latest.get('timestamp', '?')})"
    return (found["config"]["distill"] if found else None), source


def compare_methods(
    cfg: ExperimentConfig,
    data: DataSplits,
    teacher: FrozenTeacher,
    methods: list[str],
    seeds: list[int],
    sweeps_dir: str | Path | None = None,
    results_path: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """Every method at its tuned setting (``tuned_settings``, else the defaults) and the baseline, once per
    training seed, all with the same teacher; each record appended to ``results_path``. A run at a sweep's
    setting is named ``<method>-tuned``, so it never shadows a run of the same method at the defaults."""
    settings = {m: tuned_settings(sweeps_dir, m) for m in methods}
    records = []
    for seed in seeds:
        seed_cfg = replace(cfg, train=replace(cfg.train, seed=seed))
        runs = [("baseline", "baseline", seed_cfg, None)]
        for method in methods:
            tuned, _ = settings[method]
            distill = DistillConfig(**{**asdict(cfg.distill), **(tuned or {})})
            name = f"{method}-tuned" if tuned else method  # apart from notebooks 01-03's runs at the defaults
            runs.append((method, name, replace(seed_cfg, distill=distill), teacher))
        for experiment, name, run_cfg, run_teacher in runs:
            _, record = train_experiment(experiment, run_cfg, data, run_teacher, log, name=name)
            record["settings_from"] = settings[experiment][1] if experiment in settings else "labels only"
            if results_path is not None:
                append_run(results_path, record)
            records.append(record)
    return records


def check_resumable_runs(cfg, seeds, experiments, teacher, final_epochs) -> None:
    """With ``resume``, every ``last.pt`` the study will resume from must load; a damaged one is reported now,
    before any record is appended, rather than halfway through the study."""
    if not cfg.resume:
        return
    lengths = [cfg.train.epochs] + ([final_epochs] if final_epochs else [])
    for seed in seeds:
        for epochs in lengths:
            run_cfg = replace(cfg, train=replace(cfg.train, seed=seed, epochs=epochs))
            for experiment in experiments:
                folder = run_dir(run_cfg, experiment, teacher if experiment != "baseline" else None)
                for last in (folder / "last.pt", folder / "hint" / "last.pt"):
                    if last.exists():
                        load_checkpoint_file(last)


def format_metrics(record: dict) -> str:
    t = record["test"]
    cached = " (cached)" if record.get("cached") else ""
    warning = " | DID NOT LEARN (validation accuracy stayed at chance)" if record.get("did_not_learn") else ""
    return (
        f"{record.get('name', record['experiment'])}{cached} seed {record['config']['train']['seed']} test: accuracy "
        f"{t['accuracy']:.4f} precision {t['precision']:.4f} recall {t['recall']:.4f} f1 {t['f1']:.4f} | params "
        f"{record['params']:,} | {record['seconds']:.1f}s{warning}"
    )


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per run with the F1 gain over the student baseline of the same seed and length."""
    baselines = {}
    for r in records:
        if r["experiment"] == "baseline":
            baselines[(r["config"]["train"]["seed"], r["config"]["train"]["epochs"])] = r["test"]["f1"]
    rows = []
    for r in records:
        t, train = r["test"], r["config"]["train"]
        base = baselines.get((train["seed"], train["epochs"]))
        gain = t["f1"] - base if base is not None and r["experiment"] not in ("teacher", "baseline") else None
        rows.append({
            "run": r.get("name", r["experiment"]), "seed": train["seed"], "accuracy": t["accuracy"],
            "precision": t["precision"], "recall": t["recall"], "f1": t["f1"], "gain_f1": gain,
            "best_epoch": r.get("best_epoch"), "params": r["params"], "seconds": r["seconds"],
            "note": "did not learn" if r.get("did_not_learn") else "",
        })  # fmt: skip
    return rows


def format_summary(records: list[dict]) -> str:
    header = (
        f"{'run':<16} {'seed':>4} {'accuracy':>8} {'precision':>9} {'recall':>7} {'f1':>7} {'gain f1':>8} "
        f"{'best ep':>7} {'params':>10} {'seconds':>8}  note"
    )
    lines = [header, "-" * len(header)]
    for row in summary_rows(records):
        gain = f"{row['gain_f1']:+.4f}" if row["gain_f1"] is not None else "-"
        best = str(row["best_epoch"]) if row["best_epoch"] is not None else "-"
        lines.append(
            f"{row['run']:<16} {row['seed']:>4} {row['accuracy']:>8.4f} {row['precision']:>9.4f} "
            f"{row['recall']:>7.4f} {row['f1']:>7.4f} {gain:>8} {best:>7} {row['params']:>10,} "
            f"{row['seconds']:>8.1f}  {row['note']}"
        )
    return "\n".join(lines)


__all__ = ["DISTILLERS", "EXPERIMENTS", "STUDENT_METHODS", "FrozenTeacher", "prepare_teacher", "run_study"]
