"""One trainer for the teacher, the baseline student and every distillation method.

``fit`` runs epochs of ``train_one_epoch`` + ``evaluate`` on the validation split, keeps a per-epoch
history, writes ``last.pt`` every epoch and ``best.pt`` on a new best validation F1 (atomically), resumes
from ``last.pt``, and restores the best epoch's weights at the end. The test split is never seen here.

Longer than the other modules (~490 lines) because what ``fit`` needs travels with it: the device and autocast
choice (and the name of the machine each epoch trained on), the checkpoint format it writes and reads back
with ``weights_only=True``, and the finiteness checks that keep a diverged epoch off the disk.
"""

from __future__ import annotations

import io
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import added_settings as added_settings_module
from .data import DataSplits, TensorLoader
from .distill import Distiller, flag
from .metrics import classification_metrics
from .results import atomic_write, remove_stray_temporaries

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "step")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EVAL_BATCH_SIZE = 512  # images per inference batch (validation, test): no gradients, so larger than training's

MAX_SEED = 2**32 - 1  # numpy and scikit-learn seeds are 32-bit
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # the optimiser converts lr and weight decay to float32

# Fields added after the stored study, at the value that reproduces the old behaviour: left out of the run-folder
# hash there (``added_settings``), and what a ``last.pt`` written before them is resumed as (``check_resumable``).
ADDED_DEFAULTS = added_settings_module.TRAIN


@dataclass
class TrainConfig:
    epochs: int = 30  # passes over the training split (the students'; the teacher's: --teacher-epochs)
    batch_size: int = 128  # images per step
    lr: float = 0.05  # peak learning rate (SGD); use ~2e-3 with adamw
    optimizer: str = "sgd"  # sgd (momentum SGD; Nesterov unless --no-nesterov) | adamw
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # sgd: Nesterov momentum; --no-nesterov: plain momentum, as CRD's and mdistiller's CIFAR code
    weight_decay: float = 5e-4  # L2 penalty (decoupled for adamw)
    schedule: str = "cosine"  # lr schedule: cosine (linear warm-up, then cosine to 0) | onecycle | step (--milestones)
    warmup_epochs: float = 1.0  # linear warm-up length in epochs (cosine schedule)
    milestones: tuple[float, ...] = ()  # step schedule: lr x --lr-decay after each of these epochs, e.g. 150,180,210
    lr_decay: float = 0.1  # step schedule: factor in (0, 1] applied at each milestone
    precision: str = "auto"  # autocast; auto: bf16 where native, fp16 + gradient scaler on old GPUs (T4), else fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 0  # training seed: weight init, batch order and augmentation
    random_erasing: float = 0.0  # students' probability of erasing a random rectangle per image (Zhong et al. 2020)
    log_every: int = 20  # steps between progress-bar updates (and non-finite checks on GPUs)
    compile: bool = False  # torch.compile the training forward (pays a one-off compile time)
    channels_last: bool = True  # NHWC activations on CPU and CUDA: faster oneDNN / cuDNN convolutions
    deterministic: bool = False  # GPUs: deterministic kernels (CPU runs are anyway); README: what a GPU run can promise
    progress: bool = True  # tqdm.auto progress bars

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag of the first bad setting (device included)."""
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "random_erasing", "lr_decay"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"--{flag(name)} {value}: must be a finite number")
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (0 < self.lr <= FLOAT32_MAX, "lr", f"must be in (0, {FLOAT32_MAX:.3g}] (torch keeps it as a float32)"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.optimizer != "sgd" or self.momentum > 0, "momentum", "must be > 0 with sgd (Nesterov momentum)"),
            (0 <= self.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}] (numpy's seed range)"),
            (0 <= self.weight_decay <= FLOAT32_MAX, "weight_decay", f"must be in [0, {FLOAT32_MAX:.3g}] (a float32)"),
            (self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0"),
            (0 <= self.random_erasing <= 1, "random_erasing", "must be a probability in [0, 1]"),
            (self.log_every >= 1, "log_every", "must be >= 1"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"choose from: {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, "schedule", f"choose from: {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS, "precision", f"choose from: {', '.join(PRECISIONS)}"),
            (0 < self.lr_decay <= 1, "lr_decay", "must be in (0, 1] (the factor applied at each milestone)"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"--{flag(name)} {getattr(self, name)}: {rule}")
        self.validate_milestones()
        resolve_device(self.device)

    def validate_milestones(self) -> None:
        """The step schedule's milestones: given, finite, strictly increasing, each within 1..epochs."""
        shown = ",".join(f"{m:g}" for m in self.milestones)
        if self.schedule == "step" and not self.milestones:
            raise ValueError("--schedule step needs --milestones, the epochs to decay after, e.g. 150,180,210")
        if not all(math.isfinite(m) and 1 <= m <= self.epochs for m in self.milestones):
            raise ValueError(f"--milestones {shown}: each must lie within 1..--epochs {self.epochs}")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"--milestones {shown}: must be strictly increasing")


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0  # 1-based epoch with the best validation F1
    best_val_f1: float = -1.0
    seconds: float = 0.0  # wall time spent training, summed over resumed sessions
    trained_on: list[str] = field(default_factory=list)  # "device, torch version" of each session that trained
    # epochs (a run resumed elsewhere, e.g. trained on a GPU and finished or only evaluated on a CPU, names both)


def time_to_accuracy(history: list[dict], target: float) -> dict:
    """Training seconds (cumulative, validation included) until the first epoch with ``val_acc >= target``."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row["val_acc"] >= target:
            return {"target": target, "epoch": row["epoch"], "seconds": elapsed}
    return {"target": target, "epoch": None, "seconds": None}


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss (or, before a checkpoint, a weight or BatchNorm statistic) is not finite."""


DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else parsed and checked now, before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ValueError(f"--device {device}: not a device; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return dev


def device_name(device: torch.device) -> str:
    """``cuda: NVIDIA H100 ...`` or ``cpu: Intel(R) Xeon(R) ...`` (the CPU model from /proc/cpuinfo)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{device.type}: {model}, {os.cpu_count()} cores"


def machine_label(device: torch.device, dtype: torch.dtype | None = None) -> str:
    """``"<device_name>, torch <version>[, <autocast dtype>]"``: one entry of ``FitResult.trained_on`` (records
    read it as a ``records.Segment``; entries written before the dtype was added lack it)."""
    label = f"{device_name(device)}, torch {torch.__version__}"
    return label if dtype is None else f"{label}, {str(dtype).removeprefix('torch.')}"


MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what picks the CPU's fp32 and bf16 kernels


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The ``MATMUL_FLAGS`` the CPU lists: two CPUs of one model name may differ here (an EPYC with AVX2 only,
    another with AVX512-BF16), so the study's job log records them beside the machine class."""
    try:
        flags = set(next(line for line in Path(cpuinfo).read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())  # fmt: skip
    except (OSError, StopIteration):
        return []
    return [f for f in MATMUL_FLAGS if f in flags]


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (emulated bf16 is slower than fp32)."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def cuda_has_native_bf16() -> bool:
    """bf16 tensor cores (compute capability >= 8.0). ``is_bf16_supported()`` alone also counts emulation and
    answers True on a T4 (7.5), where cuDNN has no bf16 convolutions."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype (``torch.float32`` means no autocast). ``auto``: bf16 on GPUs and CPUs that run it
    natively, fp16 (with a gradient scaler, see ``fit``) on older GPUs such as the T4, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: choose from: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_has_native_bf16() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype):
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def added_settings(cfg: TrainConfig) -> dict:
    """The fields of ``ADDED_DEFAULTS`` that differ from the old behaviour: what a run-folder hash adds to the
    ``runs.TRAIN_KEYS``, so the folders of runs trained before those fields existed keep their names."""
    return {k: getattr(cfg, k) for k, old in ADDED_DEFAULTS.items() if getattr(cfg, k) != old}


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}'; choose from: {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from ~0 to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def step_factor(step: int, steps_per_epoch: int, milestones: tuple[float, ...], decay: float) -> float:
    """``decay ** k`` with ``k`` the milestones already passed: the factor of optimiser step ``step`` (from 0).

    A milestone ``m`` takes effect after ``m`` epochs' steps, so with milestones 150, 180, 210 epochs 1-150 train
    at lr, 151-180 at ``decay * lr`` and so on: mdistiller's and RepDistiller's ``adjust_learning_rate``, which
    multiplies by ``decay ** sum(epoch > milestones)`` at the start of each (1-based) epoch.
    """
    return decay ** sum(step >= round(m * steps_per_epoch) for m in milestones)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "step":  # no warm-up, as in the reference recipe
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: step_factor(step, steps_per_epoch, cfg.milestones, cfg.lr_decay)
        )
    if cfg.schedule == "cosine":
        warmup = min(total, max(1, round(cfg.warmup_epochs * steps_per_epoch)))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    raise ValueError(f"unknown schedule '{cfg.schedule}'; choose from: {', '.join(SCHEDULES)}")


@torch.no_grad()
def infer(model: nn.Module, loader: TensorLoader, dtype: torch.dtype = torch.float32) -> Tensor:
    """Logits for every image of an (unshuffled) loader, in order, as float32 on the CPU."""
    was_training = model.training
    model.eval()
    outs = []
    with autocast(loader.device, dtype):
        for x, _ in loader:
            outs.append(model(x).float())
    model.train(was_training)
    return torch.cat(outs).cpu()


def evaluate(model: nn.Module, loader: TensorLoader, class_names, dtype=torch.float32) -> dict:
    """Loss and classification metrics of ``model`` on a loader's images."""
    return logit_metrics(infer(model, loader, dtype), loader.labels.cpu(), class_names)


def logit_metrics(logits: Tensor, labels: Tensor, class_names) -> dict:
    """Classification metrics and the cross-entropy of ``logits`` against ``labels``."""
    metrics = classification_metrics(labels, logits.argmax(1), class_names)
    metrics["loss"] = nn.functional.cross_entropy(logits, labels).item()
    return metrics


def save_checkpoint(obj: dict, path: Path) -> None:
    """``torch.save`` through ``results.atomic_write``: a crash mid-write leaves the previous file whole."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def check_finite_state(module: nn.Module, where: str) -> None:
    """Refuse to save a diverged model: every parameter and buffer (BatchNorm statistics) must be finite."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteLossError(f"non-finite {name} {where}; nothing was saved for it")


def trainable_state(distiller: Distiller) -> dict:
    return {"model": distiller.student.state_dict(), "adapters": distiller.adapters.state_dict()}


def epoch_images(loader: TensorLoader) -> int:
    """Images one epoch of ``loader`` yields: full batches, and the last partial one where it is kept."""
    n = len(loader.labels)
    return sum(min(loader.batch_size, n - b * loader.batch_size) for b in range(len(loader)))


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(..., weights_only=True)``: tensors and plain containers only, no code; torch's own warnings
    (a refused pickle warns before it raises) are kept off stderr, where a refusal is one line."""
    if Path(path).exists() and not Path(path).is_file():
        raise ValueError(f"{path} is not a regular file (a FIFO, device or socket)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


RESUME_IGNORED = {"device", "log_every", "progress", "compile", "deterministic"}  # settings a resumed run may change


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume when a setting that shapes training changed; a ``last.pt`` written before a field was added
    (``ADDED_DEFAULTS``) trained as that field's old-behaviour value."""
    saved = {**{k: v for k, v in ADDED_DEFAULTS.items() if k in current}, **saved}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}  # a tuple stored as a list
    diff = [k for k in current if k not in RESUME_IGNORED and saved.get(k) != current[k]]
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in diff)
        raise ValueError(
            f"cannot resume from {path}: training settings differ ({changes}); drop --resume or use another checkpoint dir"
        )


def set_deterministic(device: torch.device, enabled: bool) -> None:
    """GPUs: deterministic cuDNN kernels, no autotuning, deterministic algorithms where torch has them.

    CPU runs are bit-reproducible without it. On a GPU even this cannot promise equality across GPU models,
    driver or library versions; it removes the run-to-run differences on one machine.
    """
    if not enabled or device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def batch_targets(epoch_targets: dict | None, batch: slice) -> dict | None:
    """One batch's slice of an epoch's stored teacher targets (lists hold one tensor per level)."""
    if epoch_targets is None:
        return None
    return {k: [t[batch] for t in v] if isinstance(v, list) else v[batch] for k, v in epoch_targets.items()}


@dataclass
class EpochContext:
    """What one training epoch needs besides the distiller and the data."""

    opt: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    dtype: torch.dtype
    cfg: TrainConfig
    step_fn: Callable | None = None  # a torch.compile'd distiller when asked for
    teacher_targets: dict | None = None  # this epoch's stored teacher targets (teacher_cache), or None


def train_one_epoch(distiller: Distiller, loader: TensorLoader, ctx: EpochContext, epoch: int, bar=None) -> dict:
    """One pass; returns mean loss parts, accuracy and macro F1 over labeled images. Syncs only at log points
    (every step on the CPU, where a sync costs nothing)."""
    distiller.train()
    device, cfg = loader.device, ctx.cfg
    sums: dict[str, Tensor] = {}
    predictions, targets = [], []  # kept on the device; one transfer at the end of the epoch
    check_every = 1 if device.type == "cpu" else cfg.log_every
    step_fn = distiller if ctx.step_fn is None else ctx.step_fn  # `or` would ask a compiled module its len()
    for step, (x, y) in enumerate(loader):
        teacher = batch_targets(ctx.teacher_targets, slice(step * loader.batch_size, (step + 1) * loader.batch_size))
        with autocast(device, ctx.dtype):
            loss, logits, parts = step_fn(x, y, teacher)
        ctx.opt.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.opt)
        ctx.scaler.update()
        ctx.scheduler.step()
        parts = {"loss": loss.detach(), **parts}
        for k, v in parts.items():
            sums[k] = sums.get(k, 0) + v.float()
        predictions.append(logits.detach().argmax(1))
        targets.append(y)
        if (step + 1) % check_every == 0 and not torch.isfinite(loss):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {step + 1}: {detail}")
        if bar is not None and (step + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{_accuracy(predictions[-1], y):.3f}")
        if bar is not None:
            bar.update(1)
    n_steps = max(1, len(loader))
    out = {k: (v / n_steps).item() for k, v in sums.items()}
    if not math.isfinite(out.get("loss", 0.0)):
        detail = ", ".join(f"{k}={v:.4g}" for k, v in out.items())
        raise NonFiniteLossError(f"non-finite loss in epoch {epoch} (mean over its steps): {detail}")
    y_true, y_pred = torch.cat(targets).cpu(), torch.cat(predictions).cpu()
    labeled = y_true >= 0  # unlabeled images (-100) have no accuracy to report
    out["train_acc"], out["train_f1"] = float("nan"), float("nan")
    if labeled.any():
        train = classification_metrics(y_true[labeled], y_pred[labeled], loader.info.classes)
        out["train_acc"], out["train_f1"] = train["accuracy"], train["f1"]
    return out


def _accuracy(pred: Tensor, y: Tensor) -> float:
    mask = y >= 0
    return (pred[mask] == y[mask]).float().mean().item() if mask.any() else float("nan")


def fit(
    distiller: Distiller,
    data: DataSplits,
    cfg: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    desc: str = "train",
    teacher_cache=None,
    on_epoch: Callable[[dict], bool | None] | None = None,
    select_best: bool = True,
) -> FitResult:
    """Train ``distiller`` (student + adapters) on ``data.train``, select by validation macro F1.

    With ``checkpoint_dir``, ``last.pt`` is written after each epoch and ``best.pt`` on improvement (never a
    non-finite state); with ``resume`` a present ``last.pt`` is loaded and training goes on from the epoch
    after it. The best epoch's weights are loaded back before returning (the last epoch's with
    ``select_best=False``). ``teacher_cache`` (a ``TeacherCache``) serves the teacher targets of each epoch
    when the method allows; ``on_epoch`` receives each history row (e.g. for TensorBoard) and stops training after
    it by returning False (a pruned sweep trial; the best epoch so far is loaded). Before each epoch the
    distiller is told it (``Distiller.start_epoch``), so methods can schedule their terms over training.
    """
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    set_deterministic(device, cfg.deterministic)
    channels_last = cfg.channels_last and device.type in ("cuda", "cpu")
    distiller.to(device)
    if channels_last:
        distiller.to(memory_format=torch.channels_last)
    names = data.info.classes
    train_loader = TensorLoader(
        data.train_x, data.train_y, data.info, cfg.batch_size, device, train=True, seed=cfg.seed,
        channels_last=channels_last, random_erasing=cfg.random_erasing,
    )  # fmt: skip
    val_loader = TensorLoader(data.val_x, data.val_y, data.info, EVAL_BATCH_SIZE, device, channels_last=channels_last)
    params = [p for p in distiller.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg)
    scheduler = build_scheduler(opt, cfg, len(train_loader))
    # fp16 needs loss scaling (its exponent range is narrow); bf16 and fp32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ctx = EpochContext(opt, scheduler, scaler, dtype, cfg, torch.compile(distiller) if cfg.compile else None)
    use_cache = teacher_cache is not None and distiller.cacheable
    result = FitResult()
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    start_epoch = 1
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt"):  # a killed writer's leftovers: only this run writes its folder
            remove_stray_temporaries(ckpt_dir / name)
        last = ckpt_dir / "last.pt"
        if resume and last.exists():
            state = load_resume_state(last, asdict(cfg), distiller.student)
            distiller.student.load_state_dict(state["model"])
            distiller.adapters.load_state_dict(state["adapters"])
            opt.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            result = FitResult(**state["result"])
            start_epoch = state["epoch"] + 1
            if log:
                log(f"resumed {desc} from {last.name} after epoch {state['epoch']}")
    best_state = None
    here = machine_label(device, dtype)
    if start_epoch <= cfg.epochs and here not in result.trained_on:
        result.trained_on.append(here)
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_loader.set_epoch(epoch)
        distiller.start_epoch(epoch, len(train_loader))  # the real epoch, resumed or not: schedules resume exactly
        t0 = time.perf_counter()
        ctx.teacher_targets = teacher_cache.epoch_targets(distiller, train_loader, dtype) if use_cache else None
        bar = tqdm(total=len(train_loader), desc=f"{desc} {epoch}/{cfg.epochs}", leave=False, disable=not cfg.progress)
        try:
            parts = train_one_epoch(distiller, train_loader, ctx, epoch, bar)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{desc}: {err}") from None
        finally:
            bar.close()
        ctx.teacher_targets = None
        train_seconds = time.perf_counter() - t0
        val = evaluate(distiller.student, val_loader, names, dtype)
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            **parts,
            "val_loss": val["loss"] if math.isfinite(val["loss"]) else None,  # None: the eval forward overflowed
            "val_acc": val["accuracy"],
            "val_f1": val["f1"],
            "lr": opt.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_s": epoch_images(train_loader) / train_seconds,  # the images trained on, not steps x batch
        }
        check_finite_state(distiller, f"after epoch {epoch} of {desc}")
        result.history.append(row)
        result.seconds += seconds
        improved = row["val_f1"] > result.best_val_f1 if select_best else True
        if improved:
            result.best_epoch, result.best_val_f1 = epoch, row["val_f1"]
        if log:
            log(format_epoch(desc, row, cfg.epochs, improved and select_best))
        stop = on_epoch is not None and on_epoch(row) is False
        if ckpt_dir is not None:
            state = {
                **trainable_state(distiller),
                "optimizer": opt.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "result": asdict(result),
                "train_config": asdict(cfg),
            }
            if improved:
                save_checkpoint({**trainable_state(distiller), "epoch": epoch}, ckpt_dir / "best.pt")
            save_checkpoint(state, ckpt_dir / "last.pt")
        elif improved:  # without a checkpoint folder the best weights stay in memory
            best_state = {k: v.detach().clone() for k, v in distiller.state_dict().items()}
        if stop:
            break
    if ckpt_dir is not None and (ckpt_dir / "best.pt").exists():
        best = load_checkpoint_file(ckpt_dir / "best.pt")
        distiller.student.load_state_dict(best["model"])
        distiller.adapters.load_state_dict(best["adapters"])
    elif best_state is not None:
        distiller.load_state_dict(best_state)
    return result


def load_checkpoint_file(path: Path) -> dict:
    """A checkpoint written by ``fit``; one ``ValueError`` line naming the file and what to do when it is not."""
    try:
        state = load_checkpoint(path)
    except Exception as err:  # truncated file, not a zip, unpickling refused by weights_only
        raise ValueError(
            f"checkpoint {path} is unreadable ({type(err).__name__}); delete it (or the whole folder "
            f"{path.parent}) to train from scratch, or use best.pt from the same folder"
        ) from None
    if not isinstance(state, dict) or not {"model", "adapters"} <= set(state):
        raise ValueError(f"checkpoint {path} was not written by kd_utils' trainer; delete it to train from scratch")
    return state


RESUME_KEYS = {"model", "adapters", "optimizer", "scheduler", "scaler", "epoch", "result", "train_config"}


def load_resume_state(path: Path, current_cfg: dict, model: nn.Module | None = None) -> dict:
    """``last.pt`` to resume from: ``checked_resume_file``, and its training settings equal to ``current_cfg``."""
    state = checked_resume_file(path, model)
    check_resumable(state["train_config"], current_cfg, path)
    return state


def checked_resume_file(path: Path, model: nn.Module | None = None) -> dict:
    """``last.pt``, checked before anything is trained: its keys, their types, and (with ``model``) that its
    weights fit ``model`` key for key and shape for shape."""
    state = load_checkpoint_file(path)
    fix = "delete it (or its folder) to train from scratch"
    missing, extra = RESUME_KEYS - set(state), set(state) - RESUME_KEYS
    if missing or extra:
        what = f"lacks {', '.join(sorted(missing))}" if missing else f"holds unknown keys {', '.join(sorted(extra))}"
        raise ValueError(f"checkpoint {path} {what}; {fix}")
    if type(state["epoch"]) is not int or state["epoch"] < 0 or not isinstance(state["train_config"], dict):
        raise ValueError(f"checkpoint {path} has a malformed epoch or train_config; {fix}")
    if not isinstance(state["result"], dict) or set(state["result"]) - {f.name for f in fields(FitResult)}:
        raise ValueError(f"checkpoint {path} has a malformed result; {fix}")
    if model is not None:
        check_fits(state["model"], model, path)
    return state


def check_fits(weights: object, model: nn.Module, path: Path) -> None:
    """``weights`` (a state dict) has exactly ``model``'s keys and shapes, else one ``ValueError`` line."""
    expected = model.state_dict()
    if not isinstance(weights, dict):
        raise ValueError(f"checkpoint {path} holds no state dict under 'model'; delete it to train from scratch")
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    shapes = [k for k in set(expected) & set(weights)
              if not hasattr(weights[k], "shape") or tuple(weights[k].shape) != tuple(expected[k].shape)]  # fmt: skip
    if missing or unexpected or shapes:
        first = sorted(missing or unexpected or shapes)[0]
        raise ValueError(
            f"checkpoint {path} does not fit this run's model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shapes)} reshaped weights, e.g. {first}): another architecture's run? delete it to train from scratch"
        )


def format_epoch(desc: str, row: dict, epochs: int, improved: bool) -> str:
    skip = {"epoch", "loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1", "lr", "seconds", "images_per_s"}
    parts = " ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in skip)
    return (
        f"{desc} epoch {row['epoch']:>3}/{epochs} loss {row['loss']:.3f} ({parts}) "
        f"train_acc {row['train_acc']:.4f} val_acc {row['val_acc']:.4f} val_f1 {row['val_f1']:.4f} "
        f"lr {row['lr']:.4f} {row['seconds']:.1f}s {row['images_per_s']:.0f} img/s{' *' if improved else ''}"
    )
