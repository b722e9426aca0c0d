"""What the six notebooks share, so each notebook keeps only its story.

``setup`` turns a notebook's parameters cell (``PROFILE``, ``DATASET``, ``SEED``, ``EPOCHS``, ``PRECISION``,
``OUTPUT_DIR``, ``USE_DRIVE``, ``DATA_DIR``) into a ``Session``: the ``KD_*`` environment variables override the
parameters, Colab mounts Google Drive so results, checkpoints and figures outlive the runtime, and one run-info
line is printed. ``Session.save`` stores a run's record in ``results/<dataset>/runs.json``, replacing the record
of the same run, so re-running a notebook adds no duplicate. ``finish`` prints the wall time and saves the
run's facts in ``results/<dataset>/notebooks.json``.

Profiles: ``full`` is the study; ``smoke`` runs the same cells on a small slice in seconds and never writes
where the study writes.

``python -m kd_utils.notebook sync | check | strip`` keeps the stored notebooks' badges, install cells and widget
state in shape (``kd_utils.notebook_files``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from filelock import FileLock

from .config import ExperimentConfig, from_flags
from .datasets import DATASETS, dataset_info
from .models import build_model, count_parameters
from .records import RunRecord
from .results import LOCK_TIMEOUT_S, append_run, atomic_write, strict_json
from .study import FINAL_EPOCHS, STUDY_EPOCHS, STUDY_SEEDS, STUDY_TEACHER
from .train import PRECISIONS, device_name, resolve_device, resolve_precision

REPO_ROOT = Path(__file__).resolve().parents[1]  # a source checkout (a Colab clone included)
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BRANCH = "main"  # the branch Colab badges open

PROFILES: dict[str, dict] = {
    # the study's protocol (kd_utils.study): its teacher, lengths and seeds
    "full": {**STUDY_TEACHER, "epochs": STUDY_EPOCHS, "final_epochs": FINAL_EPOCHS, "seeds": STUDY_SEEDS},
    "smoke": {"teacher_epochs": 2, "epochs": 2, "final_epochs": 3, "train_size": 2000, "val_size": 500,
              "test_size": 1000, "seeds": (0, 1)},
}  # fmt: skip

# environment variable -> (setup argument, parser); an empty value leaves the parameter as it is
ENVIRONMENT: dict[str, tuple[str, Callable[[str], object]]] = {
    "KD_PROFILE": ("profile", str),
    "KD_DATASET": ("dataset", str),
    "KD_SEED": ("seed", int),
    "KD_EPOCHS": ("epochs", lambda text: int(text) or None),  # 0: the profile's value
    "KD_PRECISION": ("precision", str),
    "KD_OUTPUT_DIR": ("output_dir", str),
    "KD_DATA_DIR": ("data_dir", str),
}
DRIVE_MOUNT = "/content/drive"  # where Colab mounts Google Drive
DRIVE_DIR = "/content/drive/MyDrive/kd-cifar"  # the study's folder on Drive (OUTPUT_DIR's default in Colab)


# --- where a run writes -----------------------------------------------------------------------------------


@dataclass
class StudyPaths:
    results: Path  # <root>/results/<dataset>/runs.json: every run's record (a re-run replaces its own)
    pictures: Path  # figures
    checkpoints: Path  # teacher/baseline cache and run checkpoints (shared by all notebooks)
    where: str  # the root in words, for printing (never an absolute path)

    @property
    def notebooks(self) -> Path:
        """``<root>/results/<dataset>/notebooks.json``: each notebook's latest execution."""
        return self.results.parent / "notebooks.json"


def study_paths(profile: str, dataset: str, output_dir: str | None = None, drive: bool = False) -> StudyPaths:
    """Results, figures and checkpoints under one root.

    ``output_dir`` when given; else on Drive (``drive``) the study's Drive folder (its ``smoke/`` subfolder for
    a smoke run); else the repository (full) or a temporary folder (smoke): a smoke run never writes where the
    study does.
    """
    if output_dir is not None:
        root, where = Path(output_dir), "OUTPUT_DIR"
    elif drive:
        root = Path(DRIVE_DIR) / ("smoke" if profile == "smoke" else "")
        where = "Google Drive (" + str(root.relative_to(DRIVE_MOUNT)) + ")"
    elif profile == "full":
        root, where = REPO_ROOT, "the repository"
    else:
        root, where = Path(tempfile.gettempdir()) / "kd-cifar-smoke", "a temporary folder"
    pictures = root / "Pictures"
    return StudyPaths(root / "results" / dataset / "runs.json", pictures, root / "checkpoints", where)


# --- Colab ------------------------------------------------------------------------------------------------


def in_colab() -> bool:
    """True inside a Google Colab runtime (``google.colab`` loaded or importable)."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` package at all
        return False


def mount_drive(log: Callable[[str], None] | None = print) -> bool:
    """Mount Google Drive at ``DRIVE_MOUNT`` (Colab asks the user to allow it); True once it is mounted.

    A refusal or failure is reported and answered False: the run then writes to the runtime's own disk.
    """
    from google.colab import drive

    try:
        drive.mount(DRIVE_MOUNT)
    except Exception as err:  # the user declined, or the mount timed out: go on without Drive
        if log:
            log(f"Google Drive not mounted ({type(err).__name__}: {err}); outputs stay on this runtime's disk")
        return False
    return Path(DRIVE_MOUNT, "MyDrive").is_dir()


# --- the session ------------------------------------------------------------------------------------------


@dataclass
class Session:
    """One notebook execution: its settings, where it writes, and when it started."""

    notebook: str  # e.g. "00_baseline"
    profile: str  # full | smoke
    cfg: ExperimentConfig  # the students' config (the teacher's epochs in cfg.teacher_epochs)
    paths: StudyPaths
    final_epochs: int  # epochs of notebook 04's long run
    device: torch.device
    precision: str  # the autocast dtype the runs use, e.g. "bfloat16" ("float32": no autocast)
    started: str  # UTC, to the minute
    drive: bool = False  # outputs go to Google Drive
    seeds: tuple[int, ...] = (0,)  # training seeds of the multi-seed comparisons (04's final run, 05): the profile's
    start: float = field(default_factory=time.perf_counter)

    @property
    def dataset(self) -> str:
        return self.cfg.data.dataset

    def final_config(self) -> ExperimentConfig:
        """The students' config with the final run's epochs."""
        return replace(self.cfg, train=replace(self.cfg.train, epochs=self.final_epochs))

    def seed_configs(self, cfg: ExperimentConfig) -> list[ExperimentConfig]:
        """``cfg`` once per seed of the session (its own seed first)."""
        return [replace(cfg, train=replace(cfg.train, seed=seed)) for seed in self.seeds]

    def save(self, record: RunRecord | dict) -> RunRecord | dict:
        """Store a run's record in ``runs.json``, in place of the record of the same run (``same_run``) if
        there is one, else appended; returns it."""
        append_run(self.paths.results, record, replace_same_run=True)
        return record

    def run_info(self) -> str:
        return (
            f"run info | profile: {self.profile} | dataset: {self.dataset} | seed: {self.cfg.train.seed} | "
            f"device: {device_name(self.device)} | torch {torch.__version__} | precision: {self.precision} | "
            f"started: {self.started}"
        )


def environment_overrides(values: dict[str, object], environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """``values`` with every set ``KD_*`` variable (see ``ENVIRONMENT``) in place of its parameter."""
    environ = os.environ if environ is None else environ
    values = dict(values)
    for variable, (name, parse) in ENVIRONMENT.items():
        text = environ.get(variable, "").strip()
        if text:
            try:
                values[name] = parse(text)
            except ValueError:
                raise ValueError(f"{variable}={text!r}: not a valid {name}") from None
    return values


def check_choice(parameter: str, value: object, choices) -> None:
    if value not in choices:
        raise ValueError(f"{parameter} {value!r}: choose from: {', '.join(choices)}")


def setup(
    notebook: str,
    profile: str = "full",
    dataset: str = "cifar10",
    seed: int = 0,
    epochs: int | None = None,
    precision: str = "auto",
    output_dir: str | None = None,
    use_drive: bool = True,
    data_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    log: Callable[[str], None] | None = print,
) -> Session:
    """The session of one notebook execution, from its parameters cell.

    ``KD_PROFILE``, ``KD_DATASET``, ``KD_SEED``, ``KD_EPOCHS``, ``KD_PRECISION``, ``KD_OUTPUT_DIR`` and
    ``KD_DATA_DIR`` (from ``environ``, default ``os.environ``) override the parameters. In Colab with
    ``use_drive``, Google Drive is mounted and outputs go to ``output_dir`` or ``DRIVE_DIR``, so a new runtime
    resumes from its checkpoints and notebooks 01-05 reuse the teacher of 00 (the datasets stay on the
    runtime's disk unless ``data_dir`` says otherwise). Prints the run-info line and where outputs go.

    Args:
        notebook: the notebook's name, e.g. "00_baseline" (the key of its entry in notebooks.json).
        profile: "full" (the study's settings; the stored study also ran at ``precision`` fp32,
            ``study.STUDY_PRECISION``) or "smoke" (the same cells on a small slice).
        seed: the training seed (weight init, batch order, augmentation) of the teacher and of 00-03's runs; the
            compared runs (04's final pair, 05) train on the profile's ``Session.seeds`` (full: 1-5). The data
            split keeps its own.
        epochs: the students' epochs; None keeps the profile's.
        precision: autocast precision: auto | fp32 | bf16 | fp16.
        output_dir: where results/, Pictures/ and checkpoints/ go; None: see ``study_paths``.
        use_drive: in Colab, mount Google Drive and write there (ignored elsewhere).
        data_dir: where the datasets are (downloaded there when missing); None: the repository's ``data/``.
    """
    values = environment_overrides(
        {"profile": profile, "dataset": dataset, "seed": seed, "epochs": epochs, "precision": precision,
         "output_dir": output_dir, "data_dir": data_dir},
        environ,
    )  # fmt: skip
    check_choice("PROFILE", values["profile"], tuple(PROFILES))
    check_choice("DATASET", values["dataset"], tuple(DATASETS))
    check_choice("PRECISION", values["precision"], PRECISIONS)
    profile, dataset = values["profile"], values["dataset"]
    drive = bool(use_drive) and in_colab() and mount_drive(log)
    paths = study_paths(profile, dataset, values["output_dir"] or None, drive)
    knobs = dict(PROFILES[profile])
    final_epochs = knobs.pop("final_epochs")
    seeds = tuple(knobs.pop("seeds"))  # SEED is the teacher's and 00-03's; the full profile's leave the sweeps' 0 out
    if values["epochs"]:
        knobs["epochs"] = values["epochs"]
    cfg = from_flags({
        **{k.replace("_", "-"): v for k, v in knobs.items()}, "dataset": dataset, "seed": values["seed"],
        "precision": values["precision"], "data-dir": values["data_dir"] or str(REPO_ROOT / "data"),
        "checkpoint-dir": str(paths.checkpoints), "resume": True, "progress": profile == "full",
    })  # fmt: skip
    cfg.validate()
    device = resolve_device(cfg.train.device)
    dtype = str(resolve_precision(cfg.train.precision, device)).removeprefix("torch.")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    session = Session(notebook, profile, cfg, paths, final_epochs, device, dtype, started, drive, seeds)
    if log:
        log(session.run_info())
        log(
            f"teacher epochs {cfg.teacher_epochs}, student epochs {cfg.train.epochs}, final run {final_epochs} "
            f"epochs; results, checkpoints and figures -> {paths.where}"
        )
    return session


def study_summary(cfg: ExperimentConfig) -> str:
    """The dataset's classes and both architectures' parameter counts (deterministic: nbval compares it)."""
    info = dataset_info(cfg.data.dataset)
    lines = [f"{cfg.data.dataset} classes: {', '.join(info.classes)}"]
    for role, name in (("teacher", cfg.teacher), ("student", cfg.student)):
        params = count_parameters(build_model(name, info.in_channels, info.num_classes))
        lines.append(f"{role} {name}: {params:,} parameters")
    return "\n".join(lines)


def finish(session: Session, log: Callable[[str], None] | None = print) -> dict:
    """Print the notebook's wall time and save its run in ``notebooks.json`` (one entry per notebook, the
    latest wins); returns the entry.

    The wall time counts from ``setup``: cached teacher/baseline runs load in seconds, so it can be far below
    the training time the runs recorded.
    """
    seconds = time.perf_counter() - session.start
    entry = {
        "notebook": session.notebook, "profile": session.profile, "dataset": session.dataset,
        "seed": session.cfg.train.seed, "device": device_name(session.device), "torch": torch.__version__,
        "precision": session.precision, "started": session.started, "wall_seconds": round(seconds, 1),
    }  # fmt: skip
    path = session.paths.notebooks
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        runs = json.loads(path.read_text())["notebooks"] if path.exists() else {}
        runs[session.notebook] = entry
        atomic_write(path, strict_json({"notebooks": dict(sorted(runs.items()))}, indent=1) + "\n")
    if log:
        log(f"notebook wall time: {seconds:.0f} s | profile: {session.profile} | device: {entry['device']}")
    return entry


if __name__ == "__main__":  # python -m kd_utils.notebook sync | check | strip: the stored notebooks' upkeep
    from .notebook_files import main

    raise SystemExit(main())
