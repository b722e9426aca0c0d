"""The packed trainer trains each member exactly as ``fit`` trains it alone: same weights after a step (1e-5),
same histories after an epoch, BatchNorm statistics per member, checkpoints that ordinary runs resume from
(and back), one teacher forward per data stream, and a diverged or pruned member leaves the others untouched."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kd_utils.config import ExperimentConfig
from kd_utils.data import DataConfig, prepare_data
from kd_utils.distill import DistillConfig, build_distiller
from kd_utils.models import build_model
from kd_utils.packed_train import Member, fit_packed, pack_problem, resolve_pack
from kd_utils.packs import train_runs
from kd_utils.runs import run_dir, train_experiment
from kd_utils.train import TrainConfig, fit

SEEDS = (0, 1, 0)  # two members share seed 0's data stream (sweep trials), one has its own
SETTINGS = (DistillConfig(temperature=2.0, alpha=0.5), DistillConfig(temperature=4.0, alpha=0.9), DistillConfig())


@pytest.fixture(scope="module")
def data():
    return prepare_data(DataConfig(dataset="synthetic", train_size=192, val_size=50, test_size=50))


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(123)
    return build_model("teacher_cnn", data.info.in_channels, data.info.num_classes).eval()


def train_cfg(**kw) -> TrainConfig:
    base = TrainConfig(epochs=1, batch_size=64, lr=0.05, device="cpu", precision="fp32", progress=False,
                       warmup_epochs=0.5)  # fmt: skip
    return replace(base, **kw)


def distiller(method, seed, settings, teacher, data):
    torch.manual_seed(seed)  # as runs._fit_method builds a run: the seed, then the student, then its adapters
    student = build_model("student_cnn", data.info.in_channels, data.info.num_classes)
    return build_distiller(method, student, None if method == "baseline" else teacher, settings)


def apart_and_packed(method, data, teacher, cfg, folders=(None, None, None)):
    apart = []
    for seed, settings in zip(SEEDS, SETTINGS):
        d = distiller(method, seed, settings, teacher, data)
        apart.append((d, fit(d, data, replace(cfg, seed=seed))))
    members = [Member(distiller(method, s, st, teacher, data), replace(cfg, seed=s), folder, f"m{i}")
               for i, (s, st, folder) in enumerate(zip(SEEDS, SETTINGS, folders))]  # fmt: skip
    return apart, members, fit_packed(members, data)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, rtol=1e-5, atol=1e-6):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.allclose(sa[name].float(), sb[name].float(), rtol=rtol, atol=atol), name


def assert_same_history(ha: list[dict], hb: list[dict], rel=1e-4):
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb):
        assert ra.keys() == rb.keys()
        for key in ra:
            if key not in ("seconds", "images_per_s"):
                assert ra[key] == pytest.approx(rb[key], rel=rel, abs=1e-6), key


@pytest.mark.parametrize("method", ["baseline", "logit", "regressor", "dkd", "hidden"])
def test_after_one_step_every_member_equals_its_run_apart(method, data, teacher):
    cfg = train_cfg(batch_size=192)  # one step per epoch
    apart, members, outcomes = apart_and_packed(method, data, teacher, cfg)
    for (d, _), m, outcome in zip(apart, members, outcomes):
        assert outcome.finished
        assert_same_weights(d.student, m.distiller.student)  # weights and BatchNorm statistics, to 1e-5
        assert_same_weights(d.adapters, m.distiller.adapters)  # the regressor's 1x1 convs, trained with it
    bn = "stages.0.0.1.running_mean"
    stats = [m.distiller.student.state_dict()[bn] for m in members]
    assert not torch.allclose(stats[0], stats[1])  # per member: seeds 0 and 1 saw other batches


@pytest.mark.parametrize("method", ["baseline", "logit", "at"])
def test_after_an_epoch_histories_agree(method, data, teacher):
    apart, members, outcomes = apart_and_packed(method, data, teacher, train_cfg(epochs=2))
    for (d, result), m, outcome in zip(apart, members, outcomes):
        assert_same_history(result.history, outcome.result.history)
        assert outcome.result.best_epoch == result.best_epoch
        for name, w in d.student.state_dict().items():  # the best epoch's weights, loaded back; after 6 steps the
            v = m.distiller.student.state_dict()[name].float()  # float drift is norm-relative, not per element
            assert (w.float() - v).norm() <= 1e-3 * w.float().norm() + 1e-6, name


def test_packed_checkpoints_resume_apart_and_apart_ones_resume_packed(data, teacher, tmp_path):
    cfg = train_cfg(epochs=2)
    stop_after_one = lambda row: row["epoch"] < 1  # noqa: E731 - False after epoch 1: an interrupted run
    reference = []
    for seed, settings in zip(SEEDS, SETTINGS):
        reference.append(fit(distiller("logit", seed, settings, teacher, data), data, replace(cfg, seed=seed)))
    # packed for epoch 1 of 2, then each member's last.pt resumed by an ordinary fit
    folders = [tmp_path / f"a{i}" for i in range(3)]
    members = [Member(distiller("logit", s, st, teacher, data), replace(cfg, seed=s), f, f"m{i}",
                      on_epoch=stop_after_one) for i, (s, st, f) in enumerate(zip(SEEDS, SETTINGS, folders))]  # fmt: skip
    assert all(o.pruned for o in fit_packed(members, data))
    for seed, settings, folder, ref in zip(SEEDS, SETTINGS, folders, reference):
        d = distiller("logit", seed, settings, teacher, data)
        assert_same_history(fit(d, data, replace(cfg, seed=seed), folder, resume=True).history, ref.history)
    # apart for epoch 1 of 2, then the three resumed together as one pack
    folders = [tmp_path / f"b{i}" for i in range(3)]
    for seed, settings, folder in zip(SEEDS, SETTINGS, folders):
        d = distiller("logit", seed, settings, teacher, data)
        assert len(fit(d, data, replace(cfg, seed=seed), folder, on_epoch=stop_after_one).history) == 1
    members = [Member(distiller("logit", s, st, teacher, data), replace(cfg, seed=s), f, f"m{i}")
               for i, (s, st, f) in enumerate(zip(SEEDS, SETTINGS, folders))]  # fmt: skip
    for outcome, ref in zip(fit_packed(members, data, resume=True), reference):
        assert_same_history(outcome.result.history, ref.history)


def test_one_teacher_forward_per_data_stream(data, teacher, monkeypatch):
    members = [Member(distiller("at", s, st, teacher, data), train_cfg(seed=s), None, f"m{i}")
               for i, (s, st) in enumerate(zip(SEEDS, SETTINGS))]  # fmt: skip
    calls = []
    for m in members:
        original = m.distiller.teacher_targets
        monkeypatch.setattr(m.distiller, "teacher_targets", lambda x, f=original: calls.append(len(x)) or f(x))
    fit_packed(members, data)
    steps = 192 // 64
    assert len(calls) == 2 * steps  # seeds 0 and 1: two streams, whatever the number of members


def test_a_diverged_member_is_retired_and_the_others_train_as_apart(data, teacher):
    settings = (DistillConfig(), DistillConfig(feature_weight=1e38), DistillConfig(feature_weight=2.0))
    cfg = train_cfg(epochs=2)
    members = [Member(distiller("hidden", s, st, teacher, data), replace(cfg, seed=s), None, f"m{i}")
               for i, (s, st) in enumerate(zip(SEEDS, settings))]  # fmt: skip
    outcomes = fit_packed(members, data)
    assert outcomes[1].error is not None and "non-finite" in str(outcomes[1].error)
    for i in (0, 2):
        d = distiller("hidden", SEEDS[i], settings[i], teacher, data)
        assert_same_history(fit(d, data, replace(cfg, seed=SEEDS[i])).history, outcomes[i].result.history)


def test_a_pruned_member_stops_and_the_others_go_on(data, teacher):
    cfg = train_cfg(epochs=3)
    seen = []
    members = [Member(distiller("logit", s, st, teacher, data), replace(cfg, seed=s), None, f"m{i}",
                      on_epoch=(lambda row: seen.append(row["epoch"]) or False) if i == 1 else None)
               for i, (s, st) in enumerate(zip(SEEDS, SETTINGS))]  # fmt: skip
    outcomes = fit_packed(members, data)
    assert seen == [1] and outcomes[1].pruned and len(outcomes[1].result.history) == 1
    assert [len(o.result.history) for o in outcomes] == [3, 1, 3]


def test_what_cannot_pack_is_named(data, teacher):
    cfg = train_cfg()
    a = Member(distiller("logit", 0, DistillConfig(), teacher, data), cfg)
    b = Member(distiller("logit", 1, DistillConfig(), teacher, data), replace(cfg, lr=0.1, seed=1))
    assert "lr" in pack_problem([a, b])
    c = Member(distiller("dkd", 1, DistillConfig(), teacher, data), replace(cfg, seed=1))
    assert "methods" in pack_problem([a, c])
    assert resolve_pack(0, "cpu") == 1 and resolve_pack(4, "cpu") == 4
    with pytest.raises(ValueError, match="--pack -1"):
        resolve_pack(-1, "cpu")


def small_cfg(tmp_path, **kw) -> ExperimentConfig:
    data_cfg = DataConfig(dataset="synthetic", train_size=192, val_size=50, test_size=50)
    return ExperimentConfig(data=data_cfg, train=train_cfg(), checkpoint_dir=str(tmp_path / "ck"), **kw)


@pytest.mark.parametrize("experiment", ["baseline", "fitnets"])
def test_train_runs_packs_seeds_into_ordinary_records_and_run_folders(experiment, tmp_path):
    from kd_utils.teacher import prepare_teacher

    cfg = small_cfg(tmp_path, pack=2, teacher_epochs=1)
    data = prepare_data(cfg.data)
    teacher = prepare_teacher(cfg, data, log=None) if experiment != "baseline" else None
    cfgs = [replace(cfg, train=replace(cfg.train, seed=s)) for s in (0, 1)]
    packed = train_runs(experiment, cfgs, data, teacher, log=None)
    apart = [train_experiment(experiment, replace(c, pack=1, checkpoint_dir=str(tmp_path / "apart")), data, teacher,
                              log=None)[1] for c in cfgs]  # fmt: skip
    for outcome, alone, c in zip(packed, apart, cfgs):
        record = outcome.record
        assert record.extra["pack"] == {"k": 2, "seeds": [0, 1], "names": [experiment, experiment]}
        assert alone.extra["pack"] == {"k": 1}
        assert_same_history(record.history, alone.history)
        assert_same_history(record.get("hint_history", []), alone.get("hint_history", []))  # fitnets' stage 1
        assert record.test["accuracy"] == pytest.approx(alone.test["accuracy"], abs=0.021)  # 50 images: <= 1 flip
        assert (run_dir(c, experiment, teacher) / "best.pt").exists()
    if experiment == "baseline":  # the cache: a later run of the same setting loads the packed run's weights
        _, again = train_experiment("baseline", cfgs[1], data, log=None)
        assert again.extra.get("cached") and again.test == packed[1].record.test


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_packed_members_equal_their_runs_apart_on_cuda(data, teacher):
    cfg = train_cfg(batch_size=192, device="cuda", deterministic=True)  # one step; cuDNN's choice of kernels differs
    apart, members, outcomes = apart_and_packed("logit", data, teacher, cfg)  # between grouped and plain convs
    for (d, _), m, outcome in zip(apart, members, outcomes):
        assert outcome.finished
        assert_same_weights(d.student.cpu(), m.distiller.student.cpu(), rtol=1e-4, atol=1e-5)


def test_packed_attention_members_read_the_teacher_cache_like_apart_runs_compute_it(data, teacher, tmp_path):
    """Attention transfer's teacher targets come from the cache in a pack (a file per epoch and level, computed by
    the first run on the stream) and the members train as apart runs that compute them inline."""
    from kd_utils.teacher_cache import TeacherCache

    cfg = train_cfg(epochs=2)
    stream = {"teacher": "test", "seed": 0, "batch_size": cfg.batch_size}
    settings = (DistillConfig(at_weight=100.0), DistillConfig(at_weight=1000.0))
    caches = [TeacherCache(tmp_path, stream) for _ in settings]
    members = [Member(distiller("at", 0, st, teacher, data), cfg, None, f"m{i}", cache=c)
               for i, (st, c) in enumerate(zip(settings, caches))]  # fmt: skip
    outcomes = fit_packed(members, data)
    assert sorted(p.name for p in caches[0].folder.glob("epoch*.pt")) == [
        f"epoch00{e}-attention_p2_l{j}_{s}x{s}.pt" for e in (1, 2) for j, s in enumerate((8, 4, 2))
    ]
    for st, outcome in zip(settings, outcomes):
        d = distiller("at", 0, st, teacher, data)
        assert_same_history(fit(d, data, cfg).history, outcome.result.history)
