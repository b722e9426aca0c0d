"""The benchmarks run in their short mode and write the JSON the README documents."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from kd_utils.train import time_to_accuracy

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
