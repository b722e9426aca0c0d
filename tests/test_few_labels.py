"""Few labels done right: with a fraction f of the labels, labels-only runs (baseline, teacher) walk the labeled
images alone, so none of their steps is without labels; validation keeps f of its images, stratified; runs of
this protocol never reuse a folder of the earlier one; a teacher of the labeled fraction alone is a variant."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kd_utils.config import ExperimentConfig
from kd_utils.data import DataConfig, data_shaping, prepare_data
from kd_utils.runs import DATA_KEYS, run_dir, train_experiment, training_data
from kd_utils.train import TrainConfig


def test_validation_keeps_the_label_fraction_stratified():
    full = prepare_data(DataConfig(dataset="synthetic"))
    few = prepare_data(DataConfig(dataset="synthetic", labeled_fraction=0.1))
    assert few.sizes() == {"train": 1000, "labeled": 100, "val": 20, "test": 400}
    assert torch.bincount(few.val_y, minlength=10).tolist() == [2] * 10  # stratified: 2 per class
    assert all(any(torch.equal(v, w) for w in full.val_x) for v in few.val_x[:3])  # a subset of the full split's
    assert torch.equal(few.test_y, full.test_y)  # the test set is the same for every fraction
    tiny = prepare_data(DataConfig(dataset="synthetic", labeled_fraction=0.01))
    assert tiny.sizes()["val"] == 10  # never fewer than one image per class


def test_labels_only_runs_walk_the_labeled_images_and_students_every_image():
    few = prepare_data(DataConfig(dataset="synthetic", labeled_fraction=0.1))
    for method in ("baseline", "teacher"):
        labeled = training_data(method, few)
        assert len(labeled.train_y) == 100 and bool((labeled.train_y >= 0).all())
    assert training_data("logit", few) is few  # the teacher's terms need no label: all 1,000 images
    full = prepare_data(DataConfig(dataset="synthetic"))
    assert training_data("baseline", full) is full


def test_a_few_label_run_names_its_protocol_and_full_label_runs_keep_their_folders():
    few, full = DataConfig(dataset="synthetic", labeled_fraction=0.1), DataConfig(dataset="synthetic")
    assert data_shaping(few, DATA_KEYS)["few_label_protocol"] == 2
    assert data_shaping(full, DATA_KEYS) == {k: getattr(full, k) for k in DATA_KEYS}  # as before: stored runs found


def test_a_few_label_baseline_steps_only_on_labels(tmp_path):
    data_cfg = DataConfig(dataset="synthetic", train_size=400, val_size=100, test_size=50, labeled_fraction=0.1)
    train = TrainConfig(epochs=1, batch_size=16, device="cpu", precision="fp32", progress=False)
    cfg = ExperimentConfig(data=data_cfg, train=train, checkpoint_dir=str(tmp_path))
    data = prepare_data(data_cfg)
    _, record = train_experiment("baseline", cfg, data, log=None)
    assert record.name == "baseline@10%labels" and record.extra["train_images"] == 40
    assert record.extra["data_sizes"]["val"] == 10  # selection on the fraction's validation images
    full_cfg = replace(cfg, data=replace(data_cfg, labeled_fraction=1.0))
    assert run_dir(cfg, "baseline") != run_dir(full_cfg, "baseline")


@pytest.mark.slow
def test_few_label_runs_train_the_semi_supervised_variant(tmp_path, monkeypatch):
    from kd_utils import study
    from kd_utils.teacher import prepare_teacher

    monkeypatch.setattr(study, "FEW_LABEL_FRACTIONS", (0.1,))
    data_cfg = DataConfig(dataset="synthetic", train_size=400, val_size=100, test_size=50)
    train = TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp32", progress=False)
    cfg = ExperimentConfig(data=data_cfg, train=train, checkpoint_dir=str(tmp_path), teacher_epochs=1,
                           teacher_precision="bf16", allow_weak_teacher=True)  # fmt: skip
    teacher = prepare_teacher(cfg, prepare_data(data_cfg), log=None)  # bf16: as the stored teacher kept its own
    records = study.few_label_runs(cfg, teacher, "logit", [0], log=None)
    names = [r.name for r in records]
    assert names == ["baseline@10%labels", "logit@10%labels", "teacher@10%labels", "logit-semi@10%labels"]
    few_teacher = records[2]
    assert few_teacher.extra["train_images"] == 40  # trained on the 10% of labeled images alone
    assert teacher.record.trained_on[-1].precision == "bfloat16"
    assert {s.precision for r in records[2:] for s in r.trained_on} == {"float32"}  # a new teacher: as its students
    assert records[3].teacher["weights_sha256"] != records[1].teacher["weights_sha256"]
