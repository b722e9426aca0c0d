"""Accuracy parity: the fast training path against plain fp32, same data and seeds.

    python benchmarks/parity.py --dataset fashion-mnist --train-size 10000 --epochs 3 --seeds 0 1 \\
        --json benchmarks/results/parity-cpu.json

Trains the baseline student under each setting and seed and reports test accuracy, macro F1 and training
images/s: ``fp32-plain`` (fp32, contiguous NCHW), ``auto`` (the trainer's default: channels_last and the
precision picked for this device), and ``bf16`` (forced bf16 autocast + channels_last).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_utils.data import DataConfig, TensorLoader, prepare_data  # noqa: E402
from kd_utils.distill import build_distiller  # noqa: E402
from kd_utils.models import build_model  # noqa: E402
from kd_utils.train import (  # noqa: E402
    EVAL_BATCH_SIZE,
    TrainConfig,
    device_name,
    evaluate,
    fit,
    resolve_device,
    resolve_precision,
)

SETTINGS = {
    "fp32-plain": {"precision": "fp32", "channels_last": False},
    "auto": {"precision": "auto", "channels_last": True},
    "bf16": {"precision": "bf16", "channels_last": True},
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="student_cnn")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    runs = []
    for seed in args.seeds:
        data = prepare_data(DataConfig(dataset=args.dataset, train_size=args.train_size, seed=seed))
        test = TensorLoader(data.test_x, data.test_y, data.info, EVAL_BATCH_SIZE, device)
        for name in args.settings:
            cfg = TrainConfig(epochs=args.epochs, seed=seed, device=str(device), progress=False, **SETTINGS[name])
            torch.manual_seed(seed)
            distiller = build_distiller("baseline", build_model(args.model, data.info.in_channels))
            result = fit(distiller, data, cfg)
            metrics = evaluate(distiller.student, test, data.info.classes)
            speed = statistics.median(row["images_per_s"] for row in result.history)
            dtype = str(resolve_precision(cfg.precision, device)).removeprefix("torch.")
            runs.append({"setting": name, "dtype": dtype, "seed": seed, "test_accuracy": metrics["accuracy"],
                         "test_f1": metrics["f1"], "train_images_per_s": speed, "seconds": result.seconds})  # fmt: skip
            print(f"{name:<11} {dtype:<8} seed {seed}: test acc {metrics['accuracy']:.4f} f1 {metrics['f1']:.4f} "
                  f"{speed:,.0f} img/s {result.seconds:.1f}s", flush=True)  # fmt: skip
    summary = {}
    for name in args.settings:
        accs = [r["test_accuracy"] for r in runs if r["setting"] == name]
        speeds = [r["train_images_per_s"] for r in runs if r["setting"] == name]
        summary[name] = {"mean_accuracy": statistics.mean(accs), "std_accuracy": statistics.pstdev(accs),
                         "mean_images_per_s": statistics.mean(speeds)}  # fmt: skip
        print(f"{name:<11} accuracy {summary[name]['mean_accuracy']:.4f} +- {summary[name]['std_accuracy']:.4f} "
              f"| {summary[name]['mean_images_per_s']:,.0f} img/s")  # fmt: skip
    report = {"device": device_name(device), "torch": torch.__version__, "settings": vars(args) | {"json": str(args.json)},
              "runs": runs, "summary": summary}  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
