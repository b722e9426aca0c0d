"""What a comparison of two runs over seeds may conclude, from the records alone: the paired gain with both
intervals (seeds only; seeds and test images), and whether the two trained on one kind of machine at all.

A pair whose runs trained on different hardware or precision gets no verdict: a machine effect the size of
the gains being read cannot be told apart from the method's ("confounded: cpu ... bfloat16 vs cuda ...").
Old records name the precision only of the machine that evaluated them; a segment without one takes the
precision that another record on the same hardware, torch version and precision setting recorded (the
autocast choice is a function of those three), else it counts as a class of its own ("auto, not recorded").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .intervals import REPLICATES, TwoLevelGain, bootstrap_weights, two_level_gain, weighted_macro_f1
from .records import RunRecord, decode_predictions, encode_predictions
from .results import atomic_write, strict_json
from .stats import PairedGain, paired_gain


@dataclass
class PairGain:
    """``a - b`` in test macro F1 over the seeds both ran."""

    seeds: list[int]
    t: PairedGain  # the seed-only t-interval (conditions on this test set)
    combined: TwoLevelGain | None  # seeds and test images (None when the records lack per-image predictions)
    confound: str | None  # "confounded: X vs Y" when the runs trained on different machine classes

    @property
    def primary(self) -> PairedGain:
        """The gain a verdict reads: the interval over seeds and test images when there is one."""
        return self.combined if self.combined is not None else self.t


@dataclass
class Evidence:
    """Test-image resamples shared by every comparison of one report, and the machine classes of its runs."""

    records: Sequence[RunRecord]
    fallback_labels: np.ndarray | None = None  # the test labels, for records that predate storing them
    replicates: int = REPLICATES
    _f1: dict[int, np.ndarray | None] = field(default_factory=dict)
    _weights: dict[int, np.ndarray] = field(default_factory=dict)
    _precision: dict[tuple, str] | None = None

    # --- test images -----------------------------------------------------------------------------------------
    def labels(self, record: RunRecord) -> np.ndarray | None:
        """The record's test labels, or the fallback when it agrees with the record's stored correctness."""
        own = record.test_labels()
        if own is not None:
            return own
        predictions, correct = record.predictions(), record.correct()
        fallback = self.fallback_labels
        if fallback is None or predictions is None or correct is None or len(fallback) != len(predictions):
            return None
        return fallback if np.array_equal(predictions == fallback, correct) else None

    def resampled_f1(self, record: RunRecord) -> np.ndarray | None:
        """Macro F1 of ``record`` on each resample of the test images, ``(replicates,)``."""
        key = id(record)
        if key not in self._f1:
            labels, predictions = self.labels(record), record.predictions()
            if labels is None or predictions is None:
                self._f1[key] = None
            else:
                n = len(labels)
                if n not in self._weights:
                    self._weights[n] = bootstrap_weights(n, self.replicates)
                classes = len(record.test["per_class"])
                self._f1[key] = weighted_macro_f1(labels, predictions, classes, self._weights[n])
        return self._f1[key]

    # --- machines ----------------------------------------------------------------------------------------------
    def machine_classes(self, record: RunRecord) -> tuple[str, ...]:
        """The hardware-and-precision classes that trained ``record``, e.g. ``("cpu: AMD EPYC, 2 cores bfloat16",)``."""
        if self._precision is None:
            self._precision = {
                (s.hardware, s.torch, precision_setting(r)): s.precision
                for r in self.records
                for s in r.trained_on
                if s.precision
            }
        classes = []
        for s in record.trained_on:
            setting = precision_setting(record)
            precision = s.precision or self._precision.get((s.hardware, s.torch, setting)) or f"{setting}, not recorded"
            classes.append(f"{s.hardware} {precision}")
        return tuple(dict.fromkeys(classes))

    def confound(self, *groups: Sequence[RunRecord]) -> str | None:
        """``"confounded: X vs Y"`` when the runs of ``groups`` trained on more than one machine class."""
        classes = sorted({c for group in groups for r in group for c in self.machine_classes(r)})
        return None if len(classes) <= 1 else "confounded: " + " vs ".join(classes)

    # --- a pair ------------------------------------------------------------------------------------------------
    def gain(self, a: dict[int, RunRecord], b: dict[int, RunRecord]) -> PairGain | None:
        """``a - b`` over their common seeds (``{seed: record}`` each); None without a common seed."""
        seeds = [s for s in a if s in b]
        if not seeds:
            return None
        fa, fb = [a[s].test["f1"] for s in seeds], [b[s].test["f1"] for s in seeds]
        boots = [self.resampled_f1(a[s]) for s in seeds], [self.resampled_f1(b[s]) for s in seeds]
        combined = None
        if all(x is not None for x in (*boots[0], *boots[1])):
            combined = two_level_gain(np.array(fa), np.array(fb), np.stack(boots[0]), np.stack(boots[1]))
        confound = self.confound([a[s] for s in seeds], [b[s] for s in seeds])
        return PairGain(seeds, paired_gain(fa, fb), combined, confound)


def precision_setting(record: RunRecord) -> str:
    """The run's ``--precision`` setting ("auto", "bf16", ...)."""
    train = record.config.get("train", record.config)
    return str(train.get("precision", "auto"))


def test_labels_path(results_dir: str | Path, dataset: str) -> Path:
    return Path(results_dir) / dataset / "test-labels.json"


def stored_test_labels(results_dir: str | Path, dataset: str) -> np.ndarray | None:
    """The labels ``store_test_labels`` wrote for this dataset's results, if any."""
    path = test_labels_path(results_dir, dataset)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return decode_predictions(saved["labels"], saved["n"])


def store_test_labels(dataset: str, results_dir: str | Path, data_dir: str | Path, test_size: int | None = None,
                      split_seed: int = 0) -> Path:  # fmt: skip
    """Write the test split's labels (as the runs saw it: ``--test-size``, ``--split-seed``) beside the dataset's
    results, for records that predate storing them; the report uses them only where they agree with each
    record's stored per-image correctness."""
    from .data import DataConfig, prepare_data

    cfg = DataConfig(dataset=dataset, data_dir=str(data_dir), download=False, test_size=test_size, seed=split_seed)
    labels = prepare_data(cfg).test_y
    saved = {"dataset": dataset, "test_size": test_size, "split_seed": split_seed, "n": len(labels),
             "labels": encode_predictions(labels)}  # fmt: skip
    return atomic_write(test_labels_path(results_dir, dataset), strict_json(saved, indent=1) + "\n")
