"""Throughput benchmark: the project's training path against the usual PyTorch way, side by side.

    python benchmarks/throughput.py --device cpu --json benchmarks/results/cpu.json
    python benchmarks/throughput.py --short          # a few seconds: checks that it runs (CI)

Measures images per second of (1) batch delivery: TensorLoader vs torchvision DataLoader + PIL transforms
with 0 and 2 workers, the same crop+flip+normalise on CIFAR-sized images; (2) a training step of the
student and of the teacher, and teacher inference; (3) one distillation step per method; (4) one epoch of
logit distillation the project's way vs a reference loop (DataLoader + PIL, fp32, teacher under no_grad);
(5) the shared teacher: a logit-KD ``fit`` that reads the teacher's logits from a filled ``TeacherCache``
against the baseline student's ``fit`` (labels only), same data and epochs, and the cache's size per epoch;
(6) packing: K whole student fits apart (seeds 0..K-1) against one ``fit_packed`` of the same K, for K in
``--pack-ks``: ``packed_speedup`` = seconds apart / seconds packed, and the students' aggregated images/s.
Images are random uint8 CIFAR-shaped tensors: speed does not depend on their content.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_utils.data import DataSplits, TensorLoader  # noqa: E402
from kd_utils.datasets import DATASETS
from kd_utils.distill import DistillConfig, build_distiller, each_output  # noqa: E402
from kd_utils.models import build_model, fuse_batchnorm  # noqa: E402
from kd_utils.packed_train import Member, fit_packed  # noqa: E402
from kd_utils.teacher_cache import TeacherCache, state_hash  # noqa: E402
from kd_utils.train import (  # noqa: E402
    EpochContext,
    TrainConfig,
    autocast,
    build_optimizer,
    device_name,
    fit,
    resolve_device,
    resolve_precision,
    train_one_epoch,
)

INFO = DATASETS["cifar10"]
SHARED_TEACHER_TARGET = 1.25  # CPU: logit-KD fit from stored teacher outputs <= 1.25x the baseline student's fit
VAL_FRACTION = 10  # the shared-teacher fits validate on the last 1/VAL_FRACTION of the images


class PILDataset(Dataset):
    """CIFAR-style dataset: one PIL image per item, transformed per sample (torchvision's usual recipe)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        self.labels = labels.tolist()
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(INFO.mean, INFO.std),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def epoch_rate(loader, device: torch.device) -> float:
    """Images per second over one whole epoch, from ``iter()`` to the last batch on ``device``.

    Everything an epoch costs is inside: for TensorLoader the epoch-wide shuffle and augmentation, for a
    DataLoader the per-sample PIL work (its worker start-up is paid by a previous, untimed epoch).
    """
    n, t0 = 0, time.perf_counter()
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        n += len(x)
    sync(device)
    return n / (time.perf_counter() - t0)


def bench_pipeline(images, labels, device, batch_size) -> dict:
    tensor_loader = TensorLoader(images, labels, INFO, batch_size, device, train=True)
    epoch_rate(tensor_loader, device)  # warm-up epoch
    out = {"tensor_pipeline": epoch_rate(tensor_loader, device)}
    dataset = PILDataset(images, labels)
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size, shuffle=True, num_workers=workers, drop_last=True,
                            pin_memory=device.type == "cuda", persistent_workers=workers > 0)  # fmt: skip
        epoch_rate(loader, device)  # warm-up epoch: starts the workers
        out[f"dataloader_pil_{workers}_workers"] = epoch_rate(loader, device)
    return out


def bench_steps(
    device, dtype, fast, batch_size, warmup, repeats, methods=("logit", "hidden", "regressor"), compile=False
) -> dict:
    """Images/s of training steps, teacher inference and one step of each distillation method.

    ``fast``: the project's path (channels_last, BN-folded frozen teacher); otherwise plain NCHW and the
    teacher as trained.
    """
    fmt = torch.channels_last if fast else torch.contiguous_format
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,), device=device)
    teacher = build_model("teacher_cnn").eval().requires_grad_(False)
    teacher = (fuse_batchnorm(teacher) if fast else teacher).to(device, memory_format=fmt)
    out = {}

    def step_of(distiller):
        opt = build_optimizer([p for p in distiller.parameters() if p.requires_grad], TrainConfig())
        forward = torch.compile(distiller) if compile else distiller

        def step():
            with autocast(device, dtype):
                loss, _, _ = forward(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    for role in ("student", "teacher") if not compile else ("student",):
        model = build_model(f"{role}_cnn").to(device, memory_format=fmt)
        seconds = timed(step_of(build_distiller("baseline", model)), device, warmup, repeats)
        out[f"{role}_train_step"] = batch_size / seconds

    def infer():
        with torch.no_grad(), autocast(device, dtype):
            teacher(x)

    if not compile:
        out["teacher_inference"] = batch_size / timed(infer, device, warmup, repeats)
    for method in methods:
        student = build_model("student_cnn").to(device, memory_format=fmt)
        distiller = build_distiller(method, student, teacher, DistillConfig()).to(device, memory_format=fmt)
        out[f"{method}_kd_step"] = batch_size / timed(step_of(distiller), device, warmup, repeats)
    return out


def project_epoch(images, labels, device, dtype, batch_size) -> float:
    """Seconds for one logit-KD epoch the project's way: TensorLoader + trainer step, its precision, channels_last."""
    torch.manual_seed(0)
    fmt = torch.channels_last
    teacher = fuse_batchnorm(build_model("teacher_cnn")).to(device, memory_format=fmt)
    distiller = build_distiller("logit", build_model("student_cnn"), teacher).to(device, memory_format=fmt)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, progress=False, log_every=10**9)
    opt = build_optimizer([p for p in distiller.parameters() if p.requires_grad], cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ctx = EpochContext(opt, scheduler, scaler, dtype, cfg)
    loader = TensorLoader(images, labels, INFO, batch_size, device, train=True, channels_last=True)
    sync(device)
    t0 = time.perf_counter()
    train_one_epoch(distiller, loader, ctx, 1)
    sync(device)
    return time.perf_counter() - t0


def reference_epoch(images, labels, device, batch_size, workers=2) -> float:
    """Seconds for one logit-KD epoch written the usual way: DataLoader + PIL, fp32, no_grad teacher."""
    torch.manual_seed(0)
    teacher = build_model("teacher_cnn").to(device).eval()
    student = build_model("student_cnn").to(device).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loader = DataLoader(PILDataset(images, labels), batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda")  # fmt: skip
    sync(device)
    t0 = time.perf_counter()
    temperature, alpha = 4.0, 0.9
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        kd = F.kl_div(
            F.log_softmax(s_logits / temperature, 1), F.softmax(t_logits / temperature, 1), reduction="batchmean"
        )
        loss = (1 - alpha) * F.cross_entropy(s_logits, y) + alpha * temperature**2 * kd
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def benchmark_splits(images: torch.Tensor, labels: torch.Tensor) -> DataSplits:
    """The benchmark images as a study's splits: the last 1/VAL_FRACTION validates (and stands in as the test
    split, which ``fit`` never reads)."""
    n_val = max(1, len(labels) // VAL_FRACTION)
    train_x, val_x = images[:-n_val], images[-n_val:]
    train_y, val_y = labels[:-n_val], labels[-n_val:]
    return DataSplits(INFO, train_x, train_y, val_x, val_y, val_x, val_y)


def timed_fit(method: str, teacher, data: DataSplits, cfg: TrainConfig, cache: TeacherCache | None) -> float:
    """Wall seconds of one whole ``fit`` (setup, epochs, validation) of a fresh student."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    distiller = build_distiller(method, build_model("student_cnn"), teacher)
    sync(device)
    t0 = time.perf_counter()
    fit(distiller, data, cfg, teacher_cache=cache)
    sync(device)
    return time.perf_counter() - t0


def pooled_epoch_bytes(teacher, data: DataSplits, cfg: TrainConfig, cache: TeacherCache) -> tuple[str, int]:
    """Size on disk of one epoch of the hidden method's pooled teacher maps, stored the way ``fit`` stores them."""
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    distiller = build_distiller("hidden", build_model("student_cnn"), teacher).to(device)
    distiller.to(memory_format=torch.channels_last)
    loader = TensorLoader(data.train_x, data.train_y, INFO, cfg.batch_size, device, train=True, seed=cfg.seed,
                          channels_last=True)  # fmt: skip
    loader.set_epoch(1)
    cache.epoch_targets(distiller, loader, dtype)
    shape = tuple(data.train_x.shape[1:])
    names = [o.name for o in each_output(distiller.teacher_outputs(shape))]  # one file per stage
    return distiller.target_spec(shape), sum(cache.path(1, name).stat().st_size for name in names)


def bench_shared_teacher(images, labels, device, precision, batch_size, epochs, repeats) -> dict:
    """Seconds of a logit-KD ``fit`` served by a filled teacher cache vs the baseline student's ``fit``.

    The cache is filled first by one logit-KD ``fit`` on the same stream (timed apart: ``fill_s``; it also
    warms the process up). Then ``repeats`` rounds each time a baseline fit and a cached logit-KD fit, in turn,
    so that drifts of a shared machine hit both; the medians are compared.
    """
    data = benchmark_splits(images, labels)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, device=str(device), precision=precision, progress=False)
    dtype = resolve_precision(precision, device)
    torch.manual_seed(0)
    teacher = fuse_batchnorm(build_model("teacher_cnn"))  # what the study distils from (fuse_teacher_bn)
    stream = {"teacher": state_hash(teacher), "images": len(labels), "seed": cfg.seed, "batch_size": batch_size,
              "precision": str(dtype), "device": device.type}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kd-teacher-cache-") as root:
        fill = TeacherCache(root, stream)
        fill_s = timed_fit("logit", teacher, data, cfg, fill)
        baseline_s, cached_s = [], []
        for _ in range(repeats):
            baseline_s.append(timed_fit("baseline", None, data, cfg, None))
            cache = TeacherCache(root, stream)
            cached_s.append(timed_fit("logit", teacher, data, cfg, cache))
            if (cache.hits, cache.misses) != (epochs, 0):
                raise RuntimeError(f"teacher cache served {cache.hits} of {epochs} epochs: the timing is not of reuse")
        logits_bytes = [fill.path(e, "logits").stat().st_size for e in range(1, epochs + 1)]
        pooled_spec, pooled_bytes = pooled_epoch_bytes(teacher, data, cfg, TeacherCache(root, stream))
    baseline, cached = float(np.median(baseline_s)), float(np.median(cached_s))
    return {
        "epochs": epochs,
        "train_images": len(data.train_y),
        "val_images": len(data.val_y),
        "repeats": repeats,
        "baseline_s": baseline,
        "cached_logit_kd_s": cached,
        "baseline_runs_s": baseline_s,
        "cached_logit_kd_runs_s": cached_s,
        "fill_s": fill_s,
        "ratio": cached / baseline,
        "target": SHARED_TEACHER_TARGET,
        "target_met": cached / baseline <= SHARED_TEACHER_TARGET,
        "bytes_per_epoch": {"logits": int(np.median(logits_bytes)), "hidden_pooled": pooled_bytes},
        "specs": {"logits": "logits", "hidden_pooled": pooled_spec},
    }


def packed_members(method: str, teacher, cfg: TrainConfig, k: int) -> list[Member]:
    members = []
    for seed in range(k):
        torch.manual_seed(seed)
        distiller = build_distiller(method, build_model("student_cnn"), teacher)
        members.append(Member(distiller, TrainConfig(**{**vars(cfg), "seed": seed}), desc=f"seed {seed}"))
    return members


def bench_packed(images, labels, device, precision, batch_size, epochs, ks, method) -> dict:
    """Seconds of ``k`` separate student fits (seeds 0..k-1, one after another) against one packed fit of the
    same ``k`` (``packed_train.fit_packed``), same data, epochs and machine, for each ``k``; and the students'
    aggregated training images per second (every student's images, validation included in the seconds)."""
    data = benchmark_splits(images, labels)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, device=str(device), precision=precision, progress=False)
    torch.manual_seed(0)
    teacher = fuse_batchnorm(build_model("teacher_cnn")).eval() if method != "baseline" else None
    timed_fit(method, teacher, data, cfg, None)  # warm-up: first-call allocations and kernel choices
    student_images = len(data.train_y) * epochs
    out = {"method": method, "epochs": epochs, "train_images": len(data.train_y), "k": {}}
    for k in ks:
        apart = sum(timed_fit(method, teacher, data, TrainConfig(**{**vars(cfg), "seed": s}), None) for s in range(k))
        members = packed_members(method, teacher, cfg, k)
        sync(device)
        t0 = time.perf_counter()
        fit_packed(members, data)
        sync(device)
        packed = time.perf_counter() - t0
        out["k"][str(k)] = {
            "apart_s": apart, "packed_s": packed, "packed_speedup": apart / packed,
            "apart_images_per_s": k * student_images / apart, "packed_images_per_s": k * student_images / packed,
        }  # fmt: skip
    return out


def describe(device: torch.device, dtype: torch.dtype) -> dict:
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": str(dtype).removeprefix("torch."),
        "channels_last": True,
        "teacher_bn_folded": True,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (the project's fast path)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=10_000, help="images in the benchmark dataset (one epoch)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per step benchmark")
    parser.add_argument("--short", action="store_true", help="tiny sizes: checks the benchmark runs (seconds)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd student and logit-KD steps")
    parser.add_argument("--fit-epochs", type=int, default=2, help="epochs of each shared-teacher fit")
    parser.add_argument("--fit-repeats", type=int, default=3, help="rounds of (baseline fit, cached logit-KD fit)")
    parser.add_argument("--pack-ks", type=int, nargs="+", default=[4, 8, 16], help="pack sizes K to time")
    parser.add_argument("--pack-method", default="baseline", help="the packed students' method (baseline: labels only)")
    parser.add_argument("--pack-epochs", type=int, default=1, help="epochs of each packed and separate fit")
    parser.add_argument("--only-packed", action="store_true", help="time the packing benchmark (6) alone")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.short:
        args.images, args.repeats, args.batch_size, args.fit_epochs, args.fit_repeats = 512, 2, 64, 1, 1
        args.pack_ks = [2]
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    warmup = 1 if args.short else 3

    report = describe(device, dtype)
    report["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.only_packed:
        return write_report(add_packed(report, images, labels, device, args), args, format_packed)
    report["pipeline_images_per_s"] = bench_pipeline(images, labels, device, args.batch_size)
    report["fast_path_images_per_s"] = bench_steps(device, dtype, True, args.batch_size, warmup, args.repeats)
    report["fp32_plain_images_per_s"] = bench_steps(device, torch.float32, False, args.batch_size, warmup, args.repeats)
    if args.compile:  # the first calls compile (not timed: warmup covers them)
        report["compiled_images_per_s"] = bench_steps(
            device, dtype, True, args.batch_size, warmup, args.repeats, methods=("logit",), compile=True
        )
    epoch = {"project_s": project_epoch(images, labels, device, dtype, args.batch_size)}
    epoch["reference_s"] = reference_epoch(images, labels, device, args.batch_size)
    report["logit_kd_epoch"] = epoch
    shared = bench_shared_teacher(
        images, labels, device, args.precision, args.batch_size, args.fit_epochs, args.fit_repeats
    )
    report["shared_teacher"] = shared
    add_packed(report, images, labels, device, args)

    pipe, fast = report["pipeline_images_per_s"], report["fast_path_images_per_s"]
    report["pipeline_speedup"] = pipe["tensor_pipeline"] / pipe["dataloader_pil_2_workers"]
    # seconds per image: KD step vs (student step + teacher inference)
    report["kd_step_overhead"] = (1 / fast["logit_kd_step"]) / (
        1 / fast["student_train_step"] + 1 / fast["teacher_inference"]
    )
    report["epoch_speedup"] = epoch["reference_s"] / epoch["project_s"]
    report["shared_teacher_ratio"] = shared["ratio"]
    report["teacher_cache_fill_seconds"] = shared["fill_s"]
    report["teacher_cache_bytes_per_epoch"] = shared["bytes_per_epoch"]
    return write_report(report, args, format_report)


def add_packed(report: dict, images, labels, device, args) -> dict:
    report["packed"] = bench_packed(
        images, labels, device, args.precision, args.batch_size, args.pack_epochs, args.pack_ks, args.pack_method
    )
    report["packed_speedup"] = {k: v["packed_speedup"] for k, v in report["packed"]["k"].items()}
    report["packed_images_per_s"] = {k: v["packed_images_per_s"] for k, v in report["packed"]["k"].items()}
    return report


def write_report(report: dict, args, formatter) -> dict:
    print(formatter(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


def format_report(r: dict) -> str:
    lines = [
        f"device {r['device']} | torch {r['torch']} | threads {r['threads']} | fast path: {r['precision']} + channels_last + BN-folded teacher"
    ]
    lines.append(f"{'batch delivery':<34} {'images/s':>10}")
    for k, v in r["pipeline_images_per_s"].items():
        lines.append(f"  {k:<32} {v:>10,.0f}")
    lines.append(f"{'step':<34} {'fast path':>10} {'fp32 plain':>10} {'ratio':>6}")
    for k, v in r["fast_path_images_per_s"].items():
        plain = r["fp32_plain_images_per_s"][k]
        lines.append(f"  {k:<32} {v:>10,.0f} {plain:>10,.0f} {v / plain:>6.2f}")
    for k, v in r.get("compiled_images_per_s", {}).items():
        lines.append(
            f"  {k + ' (compiled)':<32} {v:>10,.0f} {'':>10} {v / r['fast_path_images_per_s'][k]:>6.2f} vs eager"
        )
    e = r["logit_kd_epoch"]
    lines.append(
        f"logit-KD epoch: project {e['project_s']:.1f}s, reference (DataLoader+PIL, fp32) {e['reference_s']:.1f}s"
    )
    lines.append(
        f"pipeline_speedup {r['pipeline_speedup']:.2f}x | kd_step_overhead {r['kd_step_overhead']:.3f} | "
        f"epoch_speedup {r['epoch_speedup']:.2f}x"
    )
    s = r["shared_teacher"]
    lines.append(
        f"shared teacher, {s['epochs']} epoch{'s' * (s['epochs'] != 1)} of {s['train_images']:,} images (median of {s['repeats']}): baseline fit "
        f"{s['baseline_s']:.1f}s, logit-KD fit from the teacher cache {s['cached_logit_kd_s']:.1f}s "
        f"(filling the cache: a logit-KD fit of {r['teacher_cache_fill_seconds']:.1f}s)"
    )
    verdict = "met" if s["target_met"] else "NOT met"
    where = "" if r["device"].startswith("cpu") else " (the target is for the CPU)"
    b = r["teacher_cache_bytes_per_epoch"]
    lines.append(
        f"shared_teacher_ratio {r['shared_teacher_ratio']:.3f} | target <= {s['target']:.2f}: {verdict}{where} | "
        f"teacher cache per epoch: logits {b['logits']:,} B, hidden pooled maps {b['hidden_pooled']:,} B"
    )
    lines.append(format_packed(r))
    return "\n".join(lines)


def format_packed(r: dict) -> str:
    p, lines = r["packed"], [f"device {r['device']} | torch {r['torch']} | precision {r['precision']}"]
    lines.append(f"packed {p['method']} students, {p['epochs']} epoch(s) of {p['train_images']:,} images each:")
    for k, v in p["k"].items():
        lines.append(
            f"  K={k:>2}: {k} fits apart {v['apart_s']:.1f}s ({v['apart_images_per_s']:,.0f} img/s), one packed fit "
            f"{v['packed_s']:.1f}s ({v['packed_images_per_s']:,.0f} img/s): packed_speedup {v['packed_speedup']:.2f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
