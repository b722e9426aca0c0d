"""Run profiles for the notebooks: ``full`` (the real study) and ``smoke`` (same cells, a small slice, seconds).

A notebook reads ``KD_PROFILE``, ``KD_DATASET``, ``KD_SEED`` and ``KD_EPOCHS`` from the environment (its
parameters cell) and calls ``notebook_setup``, which returns the experiment config and where to write.
A smoke run never writes into the repository's ``results/`` or ``Pictures/``: it uses a temporary folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .config import ExperimentConfig, from_flags
from .experiments import FINAL_EPOCHS

REPO_ROOT = Path(__file__).resolve().parents[1]

PROFILES: dict[str, dict] = {
    "full": {"teacher_epochs": 15, "epochs": 15, "final_epochs": FINAL_EPOCHS},
    "smoke": {
        "teacher_epochs": 2,
        "epochs": 2,
        "final_epochs": 3,
        "train_size": 2000,
        "val_size": 500,
        "test_size": 1000,
    },  # fmt: skip
}


@dataclass
class StudyPaths:
    results: Path  # results/<dataset>/runs.json: every run's record, appended
    pictures: Path  # figures
    checkpoints: Path  # teacher/baseline cache and run checkpoints (shared by all notebooks)


def study_paths(profile: str, dataset: str, output_dir: str | None = None) -> StudyPaths:
    """``full``: the repository's results/, Pictures/ and checkpoints/; ``smoke``: a scratch folder."""
    if profile == "full" and output_dir is None:
        root = REPO_ROOT
        return StudyPaths(root / "results" / dataset / "runs.json", root / "Pictures", root / "checkpoints")
    root = Path(output_dir or Path(tempfile.gettempdir()) / "kd-cifar-smoke")
    return StudyPaths(root / "results" / dataset / "runs.json", root / "Pictures", root / "checkpoints")


def notebook_setup(
    profile: str = "full", dataset: str = "cifar10", seed: int = 0, epochs: int | None = None,
    output_dir: str | None = None, device: str = "auto",
) -> tuple[ExperimentConfig, StudyPaths, int]:  # fmt: skip
    """Config, output paths and the final run's epochs for a notebook run of ``profile``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile '{profile}'; choose from: {', '.join(PROFILES)}")
    knobs = dict(PROFILES[profile])
    final_epochs = knobs.pop("final_epochs")
    if epochs:
        knobs["epochs"] = epochs
    paths = study_paths(profile, dataset, output_dir)
    values = {k.replace("_", "-"): v for k, v in knobs.items()}
    cfg = from_flags({**values, "dataset": dataset, "seed": seed, "device": device,
                      "checkpoint-dir": str(paths.checkpoints), "resume": True, "progress": profile == "full"})  # fmt: skip
    return cfg, paths, final_epochs


def final_config(cfg: ExperimentConfig, final_epochs: int) -> ExperimentConfig:
    return replace(cfg, train=replace(cfg.train, epochs=final_epochs))
