"""The run record: one typed value per trained run, and the one reader of every stored layout.

A results file holds each run as a JSON object (``RunRecord.to_dict``). Readers never look inside that object:
``RunRecord.from_dict`` turns any layout this project has written into fields (role, method, label fraction,
training and split seed, epochs, where it trained), and ``pairing_key`` says which runs a comparison may pair.
Three layouts exist:

- current: the identity fields stored beside ``config`` (``role``, ``seed``, ``trained_on``, ...);
- nested (2026-11-25 to 2026-11-30): ``config`` is ``asdict(ExperimentConfig)`` with ``data`` / ``train`` /
  ``distill`` sections, the role only in ``name`` ("final", "final-baseline") and ``experiment``, the label
  budget as a ``@10%labels`` suffix of ``name``, the machines in ``environment["hardware"]``;
- flat (the archive of 2026-11-24): one flat ``config`` whose ``seed`` seeded both the split and training.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from . import added_settings

ROLES = ("teacher", "baseline", "method", "final-baseline", "final", "ablation")  # a run's part in the study
LABELS_ONLY = ("baseline", "final-baseline")  # the roles trained without a teacher
UNKNOWN = "unknown hardware"
# Config fields that do not change what a run produces: where files live, resuming, logging, speed and safety
# switches (the train ones are those runs.TRAIN_KEYS leaves out of a run's checkpoint folder name). Two records
# that differ only in these are one run. Listed explicitly, so that a field added later counts as shaping: a
# duplicate record at worst, never a record lost.
NOT_SHAPING: dict[str, tuple[str, ...]] = {
    "": ("checkpoint_dir", "resume", "tensorboard", "teacher_cache", "allow_weak_teacher", "pack"),  # ExperimentConfig
    "data": ("data_dir", "download"),
    "train": ("device", "log_every", "compile", "deterministic", "progress"),
}


@dataclass(frozen=True)
class Segment:
    """One stretch of a run's training on one machine (a run resumed elsewhere has several)."""

    hardware: str  # device_name(): "cpu: AMD EPYC, 2 cores" | "cuda: NVIDIA H200"
    torch: str | None = None  # torch version; None: not recorded
    precision: str | None = None  # autocast dtype ("bfloat16", "float32"); None: not recorded

    def label(self) -> str:
        """``"<hardware>, torch <version>"`` (the machine, without the precision)."""
        return self.hardware if self.torch is None else f"{self.hardware}, torch {self.torch}"


def parse_segment(label: str, torch_version: str | None = None, precision: str | None = None) -> Segment:
    """A ``Segment`` from a ``"<device>, torch <version>, <dtype>"`` label (``train.machine_label``); labels of
    older records lack the dtype (then ``precision``) or the version too (then ``torch_version``)."""
    hardware, sep, rest = label.partition(", torch ")
    version, _, dtype = rest.partition(", ")
    return Segment(hardware, version if sep else torch_version, dtype or precision)


@dataclass
class RunRecord:
    """Everything a reader asks of one trained run; ``extra`` keeps every other stored key as it was."""

    name: str  # the run's label: "logit", "dist-tuned", "baseline@10%labels", "final"
    role: str  # one of ROLES
    method: str  # what trained: "teacher", "baseline", "logit", ... (a final run's method)
    dataset: str
    teacher_arch: str
    student_arch: str
    seed: int  # training seed: weight init, batch order, augmentation
    split_seed: int  # seed of the validation split and subsets
    labeled_fraction: float  # fraction of training labels the run used
    epochs: int  # epochs trained (a teacher's own; fitnets: its second stage)
    hint_epochs: int | None  # fitnets' first (hint) stage; None for other methods
    config: dict  # asdict(ExperimentConfig) (the flat layout of the archive as stored)
    test: dict | None  # test metrics of the best-validation epoch (per class, confusion, predictions)
    test_last: dict | None = None  # the same for the last epoch
    best_val_f1: float | None = None
    best_epoch: int | None = None
    params: int = 0
    seconds: float = 0.0  # training seconds (both stages for fitnets)
    history: list[dict] = field(default_factory=list)  # one row per epoch
    trained_on: tuple[Segment, ...] = ()  # every machine that trained epochs, in order
    teacher: dict | None = None  # the teacher a student learned from: arch, weights hash, accuracies
    timestamp: str | None = None  # when the record was made
    extra: dict = field(default_factory=dict)  # data_sizes, environment, sweep, cached, did_not_learn, ...

    # --- what readers ask ------------------------------------------------------------------------------------
    @property
    def labels_only(self) -> bool:
        return self.role in LABELS_ONLY

    def pairing_key(self) -> tuple:
        """Runs compared with each other share this: the data stream (dataset, split seed, split sizes), the
        student, the length and the label budget. Within it, runs pair by training ``seed``."""
        data = self.config.get("data", self.config)
        sizes = tuple(data.get(k) for k in ("train_size", "val_size", "test_size"))
        return (self.dataset, self.split_seed, sizes, self.student_arch, self.epochs, self.labeled_fraction)

    def run_identity(self) -> tuple[str, str, int, str]:
        """What names one run: method, name, training seed and the settings that shape it (canonical JSON, so a
        tuple and the list it was stored as compare equal). A re-run of a notebook has its record's identity."""
        return self.method, self.name, self.seed, json.dumps(run_settings(self.config), sort_keys=True)

    def correct(self) -> np.ndarray | None:
        """Per-test-image correctness of the selected epoch (None when the record predates storing it)."""
        if not self.test or "correct" not in self.test:
            return None
        n = sum(map(sum, self.test["confusion_matrix"]))
        return decode_correct(self.test["correct"], n)

    def predictions(self) -> np.ndarray | None:
        """The selected epoch's class predictions on the test images, in test-set order (None when not stored)."""
        if not self.test or "predictions" not in self.test:
            return None
        return decode_predictions(self.test["predictions"], sum(map(sum, self.test["confusion_matrix"])))

    def test_labels(self) -> np.ndarray | None:
        """The test images' true labels, when the record stores them (records since 2026-12-01)."""
        if not self.test or "labels" not in self.test:
            return None
        return decode_predictions(self.test["labels"], sum(map(sum, self.test["confusion_matrix"])))

    def get(self, key: str, default: Any = None) -> Any:
        """A stored key outside the typed fields (``data_sizes``, ``environment``, ``time_to_target``, ...)."""
        return self.extra.get(key, default)

    # --- storage ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON object stored in a results file: the identity fields, then the payload."""
        record = {
            "experiment": self.method,
            "name": self.name,
            "role": self.role,
            "method": self.method,
            "seed": self.seed,
            "split_seed": self.split_seed,
            "labeled_fraction": self.labeled_fraction,
            "epochs": self.epochs,
            "hint_epochs": self.hint_epochs,
            "trained_on": [vars(s).copy() for s in self.trained_on],
            "config": self.config,
            **self.extra,
        }
        for key in ("params", "history", "best_epoch", "best_val_f1", "seconds", "teacher", "timestamp"):
            value = getattr(self, key)
            if value is not None or key in ("best_epoch", "best_val_f1"):
                record[key] = value
        if self.test is not None:
            record["test"] = self.test
        if self.test_last is not None:
            record["test_last"] = self.test_last
        return record

    @classmethod
    def from_dict(cls, stored: Mapping) -> RunRecord:
        """Read a record of any stored layout (see the module docstring); raises ``ValueError`` naming what is
        missing when ``stored`` is not a run record."""
        if not isinstance(stored, Mapping) or not isinstance(stored.get("experiment"), str):
            raise ValueError("not a run record: no 'experiment' string")
        config = stored.get("config")
        if not isinstance(config, Mapping):
            raise ValueError(f"run '{stored.get('name', stored['experiment'])}' has no 'config' mapping")
        nested = isinstance(config.get("train"), Mapping)
        data = config.get("data", {}) if nested else config
        train = config.get("train", {}) if nested else config
        distill = config.get("distill", {}) if nested else config
        experiment, name = stored["experiment"], stored.get("name") or stored["experiment"]
        role = stored.get("role") or _legacy_role(experiment, name)
        epochs = stored.get("epochs")
        if not isinstance(epochs, int):
            epochs = config.get("teacher_epochs", train.get("epochs")) if role == "teacher" else train.get("epochs")
        hint = stored.get("hint_epochs", distill.get("hint_epochs") if experiment == "fitnets" else None)
        known = {f.name for f in fields(cls)} | {"experiment", "role", "method", "split_seed"}
        extra = {k: v for k, v in stored.items() if k not in known}
        return cls(
            name=name,
            role=role,
            method=stored.get("method") or experiment,
            dataset=data.get("dataset", "?"),
            teacher_arch=config.get("teacher", "?"),
            student_arch=config.get("student", "?"),
            seed=_int(stored.get("seed"), train.get("seed", 0)),
            split_seed=_int(stored.get("split_seed"), data.get("seed", 0)),
            labeled_fraction=float(stored.get("labeled_fraction", data.get("labeled_fraction", 1.0))),
            epochs=epochs,
            hint_epochs=hint,
            config=dict(config),
            test=stored.get("test"),
            test_last=stored.get("test_last"),
            best_val_f1=stored.get("best_val_f1"),
            best_epoch=stored.get("best_epoch"),
            params=stored.get("params", 0),
            seconds=stored.get("seconds", 0.0),
            history=stored.get("history") or [],
            trained_on=_segments(stored),
            teacher=stored.get("teacher"),
            timestamp=stored.get("timestamp"),
            extra=extra,
        )


def _int(value: Any, fallback: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else int(fallback)


def _legacy_role(experiment: str, name: str) -> str:
    """The role of a record that predates the ``role`` field: the notebooks named the long runs."""
    base = name.split("@")[0]  # the label-budget suffix, "@10%labels"
    if base in ("final", "final-baseline"):
        return base
    return experiment if experiment in ("teacher", "baseline") else "method"


def _segments(stored: Mapping) -> tuple[Segment, ...]:
    """Where a run trained: the stored ``trained_on`` list, else ``environment["hardware"]`` ("a + b" for a run
    resumed elsewhere). An old record's precision is that of the machine that made it (``evaluated_on`` when it
    is not the one that trained), so it is given only to the segments that trained on that machine."""
    if isinstance(stored.get("trained_on"), list):
        return tuple(Segment(**s) for s in stored["trained_on"])
    env = stored.get("environment") or {}
    labels = env.get("hardware", UNKNOWN).split(" + ")
    maker = parse_segment(env.get("evaluated_on", labels[-1])).hardware  # the machine whose precision is recorded
    segments = [parse_segment(label, env.get("torch")) for label in labels]
    return tuple(replace(s, precision=env.get("precision")) if s.hardware == maker else s for s in segments)


def run_settings(config: Mapping) -> dict:
    """A record's ``config`` without its ``NOT_SHAPING`` fields (an old flat config loses them all at the top)."""
    nested = any(isinstance(config.get(section), Mapping) for section in NOT_SHAPING if section)
    top = NOT_SHAPING[""] if nested else tuple(name for names in NOT_SHAPING.values() for name in names)
    settings = {k: v for k, v in config.items() if k not in top}
    for section, names in NOT_SHAPING.items():
        if section and isinstance(settings.get(section), Mapping):
            settings[section] = {k: v for k, v in settings[section].items() if k not in names}
    for section, added in (("train", added_settings.TRAIN), ("distill", added_settings.DISTILL)):
        if isinstance(settings.get(section), Mapping):  # a field added later, at its old value: the run it was
            settings[section] = {k: v for k, v in settings[section].items()
                                 if not (k in added and added_settings.at_old_value(v, added[k]))}  # fmt: skip
    return settings


def same_run(a: RunRecord | Mapping, b: RunRecord | Mapping) -> bool:
    """True when two records (typed or stored) are of one run: a notebook run again, its cached teacher too."""
    return read_records([a])[0].run_identity() == read_records([b])[0].run_identity()


def read_records(runs: list[Mapping]) -> list[RunRecord]:
    """``RunRecord`` of every stored run, in order (``results.load_runs`` gives the stored objects)."""
    return [r if isinstance(r, RunRecord) else RunRecord.from_dict(r) for r in runs]


# --- per-image test outputs, compact in JSON --------------------------------------------------------------


def encode_predictions(predictions: torch.Tensor) -> str:
    """Test predictions as base64 of uint8 (or uint16 past 255 classes): 10,000 images in ~13 kB of JSON."""
    dtype = np.uint8 if len(predictions) == 0 or int(predictions.max()) < 256 else np.uint16
    return base64.b64encode(predictions.numpy().astype(dtype).tobytes()).decode()


def encode_correct(correct: torch.Tensor) -> str:
    """Per-image correctness as base64 of packed bits (10,000 images in ~1.7 kB): what McNemar's test needs."""
    return base64.b64encode(np.packbits(correct.numpy().astype(bool)).tobytes()).decode()


def decode_predictions(text: str, n: int) -> np.ndarray:
    """The inverse of ``encode_predictions`` (uint8, or uint16 when the bytes say so)."""
    raw = base64.b64decode(text)
    dtype = np.uint8 if len(raw) == n else np.uint16
    return np.frombuffer(raw, dtype=dtype)[:n].astype(np.int64)


def decode_correct(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)
