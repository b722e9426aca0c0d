"""The benchmarks run in their short mode and write the JSON the README documents; gpu_check.sh parses and
refuses a missing OUTDIR; and, on a machine with CUDA (what gpu_check.sh selects with ``-k cuda``), training
on the GPU picks the precision the GPU supports and the teacher cache stays exact there."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import kd_utils.train as train_module
from kd_utils.distill import build_distiller
from kd_utils.models import build_model
from kd_utils.teacher_cache import TeacherCache
from kd_utils.train import fit, resolve_precision, time_to_accuracy

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GPU_CHECK = BENCHMARKS / "gpu_check.sh"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_throughput_short_mode_writes_valid_json(tmp_path):
    out = tmp_path / "throughput.json"
    load_script("throughput").main(["--short", "--device", "cpu", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu")
    for key in ("pipeline_speedup", "kd_step_overhead", "epoch_speedup"):
        assert math.isfinite(report[key]) and report[key] > 0, key
    assert set(report["pipeline_images_per_s"]) == {
        "tensor_pipeline",
        "dataloader_pil_0_workers",
        "dataloader_pil_2_workers",
    }
    steps = {"student_train_step", "teacher_train_step", "teacher_inference", "logit_kd_step", "hidden_kd_step"}
    assert steps | {"regressor_kd_step"} == set(report["fast_path_images_per_s"])
    assert all(v > 0 for v in report["fp32_plain_images_per_s"].values())
    assert report["logit_kd_epoch"]["project_s"] > 0 and report["logit_kd_epoch"]["reference_s"] > 0

    for key in ("shared_teacher_ratio", "teacher_cache_fill_seconds"):
        assert math.isfinite(report[key]) and report[key] > 0, key
    shared = report["shared_teacher"]
    assert shared["ratio"] == report["shared_teacher_ratio"] == shared["cached_logit_kd_s"] / shared["baseline_s"]
    assert shared["target"] == 1.25 and shared["target_met"] == (shared["ratio"] <= 1.25)
    sizes = report["teacher_cache_bytes_per_epoch"]
    # float32 logits of every training image (10 classes), plus torch.save's framing
    assert sizes["logits"] >= shared["train_images"] * 10 * 4
    assert sizes["hidden_pooled"] > sizes["logits"]  # pooled maps have more channels than there are classes


def test_parity_script_runs_on_synthetic_data(tmp_path):
    out = tmp_path / "parity.json"
    load_script("parity").main(
        [
            "--dataset",
            "synthetic",
            "--train-size",
            "300",
            "--epochs",
            "1",
            "--seeds",
            "0",
            "--device",
            "cpu",
            "--settings",
            "fp32-plain",
            "auto",
            "--json",
            str(out),
        ]  # fmt: skip
    )
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu: ")  # the processor is named, not just the device type
    assert [r["setting"] for r in report["runs"]] == ["fp32-plain", "auto"]
    assert all(0 <= r["test_accuracy"] <= 1 and r["train_images_per_s"] > 0 for r in report["runs"])


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.5, {"epoch": 1, "seconds": 2.0}),
        (0.8, {"epoch": 3, "seconds": 9.0}),
        (0.95, {"epoch": None, "seconds": None}),
    ],
)
def test_time_to_accuracy_counts_cumulative_seconds(target, expected):
    history = [
        {"epoch": 1, "val_acc": 0.6, "seconds": 2.0},
        {"epoch": 2, "val_acc": 0.7, "seconds": 3.0},
        {"epoch": 3, "val_acc": 0.85, "seconds": 4.0},
    ]
    assert time_to_accuracy(history, target) == {"target": target, **expected}


@needs_bash
def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)


@needs_bash
def test_gpu_check_without_outdir_exits_2_with_usage():
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: benchmarks/gpu_check.sh OUTDIR")


@needs_bash
@pytest.mark.parametrize(("python", "code"), [("true", 0), ("false", 1)])
def test_gpu_check_logs_every_step_and_fails_at_the_end(tmp_path, python, code):
    """With a stand-in interpreter (``true`` passes every step, ``false`` fails every one) the steps run in order,
    a failure does not stop the next ones, and the exit status says whether any failed."""
    env = {"PATH": "/usr/bin:/bin", "GPU_CHECK_DRY_RUN": "1", "PYTHON": shutil.which(python)}
    done = subprocess.run(["bash", str(GPU_CHECK), str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert done.returncode == code, done.stdout + done.stderr
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    steps = [line.split()[2] for line in log.splitlines() if " step " in line]
    steps = [name for name in steps if name != "nvidia-smi"]  # found or not, depending on the machine
    expected = ["versions", "pytest", "throughput", "study"]
    assert steps == (expected if code == 0 else ["versions", "install", *expected[1:]])
    verdict = "all steps passed" if code == 0 else "FAILED steps: versions install pytest throughput study"
    assert log.splitlines()[-1].endswith(verdict)


# --- CUDA (skipped without a GPU; gpu_check.sh runs them with -k "cuda or precision or device") ---------------


def cuda_config(tiny_train_config, **changes):
    return dataclasses.replace(tiny_train_config, **{"device": "cuda", "precision": "auto", **changes})


@needs_cuda
def test_cuda_auto_precision_follows_the_gpu_capability():
    major, _ = torch.cuda.get_device_capability()
    expected = torch.bfloat16 if major >= 8 else torch.float16  # bf16 tensor cores from Ampere (8.0) on
    assert resolve_precision("auto", torch.device("cuda")) == expected


@needs_cuda
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_cuda_fit_one_epoch_with_the_chosen_precision(small_splits, tiny_train_config, monkeypatch, precision):
    """One epoch on the GPU trains under the autocast dtype ``resolve_precision`` picks (fp16 with its scaler)."""
    used = []
    original = train_module.autocast

    def recording_autocast(device, dtype):
        used.append((device.type, dtype))
        return original(device, dtype)

    monkeypatch.setattr(train_module, "autocast", recording_autocast)
    cfg = cuda_config(tiny_train_config, precision=precision)
    torch.manual_seed(0)
    distiller = build_distiller("baseline", build_model("student_cnn"))
    result = fit(distiller, small_splits, cfg)
    expected = resolve_precision(precision, torch.device("cuda"))
    assert set(used) == {("cuda", expected)}
    assert next(distiller.student.parameters()).device.type == "cuda"
    row = result.history[0]
    assert math.isfinite(row["loss"]) and 0 <= row["val_acc"] <= 1


@needs_cuda
@pytest.mark.parametrize("method", ["logit", "hidden"])
def test_cuda_teacher_cache_gives_identical_histories(small_splits, tiny_train_config, tmp_path, method):
    """Filling the cache, reading it back and computing the targets inline train the same student on the GPU."""
    cfg = cuda_config(tiny_train_config, epochs=2, deterministic=True)
    stream = {"teacher": "cuda-test", "seed": cfg.seed, "batch_size": cfg.batch_size, "device": "cuda"}

    def run(cache):
        torch.manual_seed(1000)
        teacher = build_model("teacher_cnn")
        torch.manual_seed(0)
        distiller = build_distiller(method, build_model("student_cnn"), teacher)
        result = fit(distiller, small_splits, cfg, teacher_cache=cache)
        history = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in result.history]
        return history, copy.deepcopy(distiller.student.state_dict())

    fill, reuse = TeacherCache(tmp_path, stream), TeacherCache(tmp_path, stream)
    filled, reused, inline = run(fill), run(reuse), run(None)
    assert (fill.misses, reuse.hits, reuse.misses) == (2, 2, 0)
    assert filled[0] == reused[0] == inline[0]
    for k in filled[1]:
        assert torch.equal(filled[1][k], reused[1][k]) and torch.equal(filled[1][k], inline[1][k]), k


# --- gpu_study.py: the study's runs on a lent GPU -------------------------------------------------------------


def test_gpu_study_jobs_wait_for_what_they_read():
    from kd_utils.study import study_jobs

    methods = ("logit", "hidden", "regressor", "dkd", "dist", "at", "logit+regressor")
    jobs = {j.name: j for j in study_jobs((0, 1), ["logit+regressor"], methods, (0.1, 0.01))}
    assert jobs["04-final-1"].needs == ("teacher", "01-03")  # the final method is 01-03's best by validation F1
    assert set(jobs["05-few-0.01"].needs) == {"teacher", "05-logit", "05-dist"}  # best logit-based (DKD is none)
    assert "05-logit+regressor" not in jobs  # its sweep job trains it, once the sweep chose its setting
    assert {"sweep-logit+regressor", "04-baseline-0", "04-baseline-1", "05-at"} <= set(jobs)
    assert list(jobs)[:2] == ["teacher", "sweep-logit+regressor"]  # what all read, then the longest chain
    assert all(set(j.needs) <= set(list(jobs)[: list(jobs).index(name)]) for name, j in jobs.items())  # in order
    assert {j.notebook for j in jobs.values()} == {"00_baseline", "04_final_run", "05_method_comparison"}


def test_the_study_sweeps_run_with_the_study_teacher_and_resume():
    from kd_utils.cli import get_args_parser
    from kd_utils.study import STUDY_PRECISION, STUDY_TEACHER, SWEEP_SETTINGS, sweep_argv

    args = get_args_parser().parse_args(sweep_argv("logit+hidden"))
    assert (args.method, args.teacher_epochs, args.teacher_random_erasing) == (
        "logit+hidden", STUDY_TEACHER["teacher_epochs"], STUDY_TEACHER["teacher_random_erasing"])  # fmt: skip
    assert (args.precision, args.teacher_precision) == (STUDY_PRECISION, STUDY_TEACHER["teacher_precision"])
    assert (args.epochs, args.max_trials, args.trials, args.pruner) == tuple(SWEEP_SETTINGS.values()) and args.resume
    assert args.max_trials == 16 < args.trials  # the cap ends a sweep; a diverged trial is made up for
    assert not args.progress and args.study_name == "fashion-mnist-logit_hidden-seed0-v2"
    assert args.storage.startswith("journal:///") and args.results_dir == "results/fashion-mnist/sweeps"
    moved = get_args_parser().parse_args(sweep_argv("dkd", "/tmp/elsewhere"))
    assert moved.checkpoint_dir == "/tmp/elsewhere" and moved.storage == "journal:////tmp/elsewhere/sweeps-v2.journal"


def test_gpu_study_packs_within_the_size_and_file_limits(tmp_path, monkeypatch):
    gpu_study = load_script("gpu_study")
    monkeypatch.setattr(gpu_study, "ROOT", tmp_path)
    folders = []
    for k in range(5):
        folder = tmp_path / "checkpoints" / "runs" / f"run{k}"
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(bytes(400_000))
        folders.append(folder)
    out = tmp_path / "out"
    out.mkdir()
    left_out = gpu_study.pack(folders, out, limit_mb=0.9, max_files=2)  # two 0.4 MB folders per file
    assert sorted(p.name for p in out.iterdir()) == ["runs-1.tgz", "runs-2.tgz"]
    assert left_out == [str(folders[4])]
    with tarfile.open(out / "runs-2.tgz") as tar:
        assert sorted(tar.getnames()) == [
            "checkpoints/runs/run2", "checkpoints/runs/run2/last.pt", "checkpoints/runs/run3",
            "checkpoints/runs/run3/last.pt",
        ]  # fmt: skip
