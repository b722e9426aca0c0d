"""The CIFAR-100 benchmark configs (configs/cifar100/<pair>/<method>.toml) and their runner, run_pair.py.

Every file parses and validates; a pair's files share the literature's recipe and one teacher; the settings are
the references' (mdistiller's DKD betas, KD's 0.9 / T 4, FitNet's 100 at one level); and every pair runs every
method through run_pair.py, briefly, on synthetic data and on a CIFAR-100 folder in torchvision's format.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from kd_utils.config import RUN_OPTIONS, from_flags, read_toml
from kd_utils.results import load_runs
from kd_utils.runs import EXPERIMENTS, run_dir, validate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cifar100"
PAIRS = {  # folder: (teacher, student), the pairs of CRD's and DKD's CIFAR-100 tables
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4"),
    "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2"),
    "resnet56-resnet20": ("resnet56", "resnet20"),
    "vgg13-vgg8": ("vgg13", "vgg8"),
    "resnet32x4-shufflev2": ("resnet32x4", "shufflev2"),
}
FILES = sorted(CONFIGS.glob("*/*.toml"))
RECIPE = {  # CRD's train_student.py / mdistiller's SOLVER for CIFAR-100
    "epochs": 240, "teacher-epochs": 240, "batch-size": 64, "optimizer": "sgd", "momentum": 0.9, "nesterov": False,
    "weight-decay": 5e-4, "schedule": "step", "milestones": (150.0, 180.0, 210.0), "lr-decay": 0.1,
    "dataset": "cifar100",
}  # fmt: skip
DKD_BETA = {  # mdistiller configs/cifar100/dkd/<pair>.yaml (DKD.BETA; absent: engine/cfg.py's 8.0)
    "resnet32x4-resnet8x4": 8.0, "wrn_40_2-wrn_16_2": 6.0, "resnet56-resnet20": 2.0, "vgg13-vgg8": 6.0,
    "resnet32x4-shufflev2": 8.0,
}  # fmt: skip
SMOKE = ["--train-size", "32", "--val-size", "10", "--test-size", "10", "--epochs", "1", "--teacher-epochs", "1",
         "--milestones", "1", "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--no-progress",
         "--allow-weak-teacher"]  # fmt: skip


def load_run_pair():
    spec = importlib.util.spec_from_file_location("run_pair", CONFIGS / "run_pair.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_pair = load_run_pair()


def settings(path: Path) -> tuple[dict, object]:
    """A file's run options and its ``ExperimentConfig``."""
    values = read_toml(path)
    options = {k: v for k, v in values.items() if k in RUN_OPTIONS}
    return options, from_flags({k: v for k, v in values.items() if k not in RUN_OPTIONS})


def test_every_pair_has_every_method():
    assert sorted(p.name for p in CONFIGS.iterdir() if p.is_dir()) == sorted(PAIRS)
    assert run_pair.pairs() == sorted(PAIRS)
    for pair in PAIRS:
        assert sorted(p.stem for p in (CONFIGS / pair).glob("*.toml")) == sorted(run_pair.METHODS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_file_parses_and_validates(path):
    options, cfg = settings(path)
    assert options["experiment"] == path.stem and path.stem in EXPERIMENTS
    assert options["results-path"] == f"runs/cifar100/{path.parent.name}/{path.stem}.json"
    assert (cfg.teacher, cfg.student) == PAIRS[path.parent.name]
    validate(replace(cfg, train=replace(cfg.train, device="cpu")))  # every range, the models, levels, folders
    text = path.read_text()
    assert text.startswith("# CIFAR-100 benchmark, ") and "Differs" in text  # the reference, and where it differs


@pytest.mark.parametrize("pair", PAIRS)
def test_a_pairs_files_share_the_recipe_and_one_teacher(pair):
    configs = {p.stem: settings(p)[1] for p in (CONFIGS / pair).glob("*.toml")}
    for method, cfg in configs.items():
        flags = {"epochs": cfg.train.epochs, "teacher-epochs": cfg.teacher_epochs, "batch-size": cfg.train.batch_size,
                 "optimizer": cfg.train.optimizer, "momentum": cfg.train.momentum, "nesterov": cfg.train.nesterov,
                 "weight-decay": cfg.train.weight_decay, "schedule": cfg.train.schedule,
                 "milestones": cfg.train.milestones, "lr-decay": cfg.train.lr_decay, "dataset": cfg.data.dataset}  # fmt: skip
        assert flags == RECIPE, method
    student_lr = 0.01 if pair.endswith("shufflev2") else 0.05  # train_student.py: 0.01 for ShuffleNets
    assert {m: c.train.lr for m, c in configs.items() if m != "teacher"} == dict.fromkeys(
        set(configs) - {"teacher"}, student_lr
    )
    assert configs["teacher"].train.lr == 0.05  # train_teacher.py
    students = {run_dir(c, "teacher") for m, c in configs.items() if m != "teacher"}
    assert len(students) == 1  # the student files agree on their teacher: one cache entry
    if pair.endswith("shufflev2"):  # its teacher is the resnet32x4 of resnet32x4-resnet8x4 (run_pair.py passes it)
        other = settings(CONFIGS / "resnet32x4-resnet8x4" / "teacher.toml")[1]
        assert run_dir(configs["teacher"], "teacher") == run_dir(other, "teacher") != students.pop()
    else:
        assert students == {run_dir(configs["teacher"], "teacher")}


def test_the_methods_settings_are_the_references():
    for pair in PAIRS:
        d = {m: settings(CONFIGS / pair / f"{m}.toml")[1].distill for m in run_pair.METHODS}
        assert (d["logit"].alpha, d["logit"].temperature) == (0.9, 4.0)  # CRD -r 0.1 -a 0.9; mdistiller KD
        assert (d["dkd"].dkd_alpha, d["dkd"].dkd_beta, d["dkd"].temperature, d["dkd"].dkd_warmup_epochs) == (
            1.0, DKD_BETA[pair], 4.0, 20)  # fmt: skip
        assert d["regressor"].regressor_weight == 100.0 and sorted(d["regressor"].level_weights)[-2:] == [0.0, 1.0]
        assert (d["at"].at_weight, d["at"].at_p, d["at"].level_weights) == (1000.0, 2.0, None)
        assert (d["rkd"].rkd_distance_weight, d["rkd"].rkd_angle_weight) == (25.0, 50.0)


def test_run_pair_refuses_an_unknown_pair_or_method(capsys):
    assert run_pair.main(["resnet9-resnet1"]) == 2
    assert run_pair.main(["vgg13-vgg8", "--methods", "logit,crd"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("run_pair.py: error: pair 'resnet9-resnet1'; choose from: resnet32x4-resnet8x4")
    assert err[1].startswith("run_pair.py: error: --methods logit,crd: unknown crd; choose from: teacher")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """One checkpoint folder for the module: each pair's methods share its teacher, both resnet32x4 pairs one."""
    return tmp_path_factory.mktemp("checkpoints")


def run_every_method(pair: str, flags: list[str], folder: Path, capsys) -> list[dict]:
    results = folder / f"{pair}.json"
    assert run_pair.main([pair, *flags, "--results-path", str(results)]) == 0
    out = capsys.readouterr().out
    assert ("distils from teacher.toml's teacher" in out) == pair.endswith("shufflev2")
    return load_runs(results)


def check_one_teacher(records: list[dict], pair: str) -> None:
    methods = [r["method"] for r in records]
    assert set(methods) == set(run_pair.METHODS)
    students = [r for r in records if r["method"] not in ("teacher", "baseline")]
    assert len({r["teacher"]["weights_sha256"] for r in students}) == 1, pair  # one teacher for every method
    for r in records:
        assert r["config"]["train"]["schedule"] == "step" and r["config"]["train"]["nesterov"] is False


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS)
def test_every_method_of_a_pair_trains_on_synthetic_data(pair, checkpoints, tmp_path, capsys):
    flags = ["--dataset", "synthetic", *SMOKE, "--checkpoint-dir", str(checkpoints)]
    records = run_every_method(pair, flags, tmp_path, capsys)
    check_one_teacher(records, pair)
    teacher = PAIRS[pair][0]
    assert len(list((checkpoints / "teachers").glob(f"synthetic-{teacher}-seed0-*"))) == 1  # trained once


@pytest.mark.slow
def test_a_pair_trains_on_cifar100_in_torchvisions_format(cifar100_module_root, checkpoints, tmp_path, capsys):
    """The real data path: CIFAR-100's pickled files, 100 classes, 32x32 images (the fixture: 200 training images,
    two per class, so the validation split takes 100 and training the other 100: two steps of 50)."""
    flags = ["--dataset", "cifar100", "--data-dir", str(cifar100_module_root), "--no-download", *SMOKE,
             "--train-size", "100", "--val-size", "100", "--test-size", "100", "--batch-size", "50",
             "--checkpoint-dir", str(checkpoints)]  # fmt: skip
    records = run_every_method("resnet56-resnet20", flags, tmp_path, capsys)  # the pair quickest on a CPU
    check_one_teacher(records, "resnet56-resnet20")
    assert {r["config"]["data"]["dataset"] for r in records} == {"cifar100"}
    assert {json.dumps(r["data_sizes"], sort_keys=True) for r in records} == {
        json.dumps({"labeled": 100, "test": 100, "train": 100, "val": 100}, sort_keys=True)
    }
    assert all(len(r["test"]["confusion_matrix"]) == 100 for r in records)  # 100 classes
