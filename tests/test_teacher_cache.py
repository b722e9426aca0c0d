"""The teacher cache: stored teacher targets train a student bit-identically to computing them inline."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from kd_utils.config import ExperimentConfig
from kd_utils.data import TensorLoader
from kd_utils.distill import build_distiller, each_output
from kd_utils.models import build_model
from kd_utils.runs import teacher_cache_for
from kd_utils.teacher import FrozenTeacher
from kd_utils.teacher_cache import TeacherCache, state_hash
from kd_utils.train import fit

EPOCHS = 2
TIMING_KEYS = {"seconds", "images_per_s"}  # wall-clock columns of the history, never reproducible
STREAM = {"teacher": "test", "seed": 0, "batch_size": 32}  # the cache hashes whatever identifies the stream


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


@pytest.fixture
def train_cfg(tiny_train_config):
    return dataclasses.replace(tiny_train_config, epochs=EPOCHS)


def make(method: str, student_seed: int = 0):
    """The same teacher every time (seed 1000) and a student initialised from ``student_seed``."""
    torch.manual_seed(1000)
    teacher = build_model("teacher_cnn")
    torch.manual_seed(student_seed)
    return build_distiller(method, build_model("student_cnn"), teacher)


def train(method: str, data, cfg, cache: TeacherCache | None):
    distiller = make(method)
    teacher_hash = state_hash(distiller.teacher)
    result = fit(distiller, data, cfg, teacher_cache=cache)
    assert state_hash(distiller.teacher) == teacher_hash  # training never touches the teacher
    return without_timing(result.history), copy.deepcopy(distiller.student.state_dict())


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method", ["logit", "hidden", "dkd", "at"])
def test_stored_targets_train_exactly_like_inline_ones(method, small_splits, train_cfg, tmp_path):
    cache = TeacherCache(tmp_path, STREAM)
    assert make(method).cacheable
    first = train(method, small_splits, train_cfg, cache)
    assert (cache.hits, cache.misses) == (0, EPOCHS)  # computed and stored
    reused = TeacherCache(tmp_path, STREAM)
    assert reused.folder == cache.folder
    second = train(method, small_splits, train_cfg, reused)
    assert (reused.hits, reused.misses) == (EPOCHS, 0)  # served from disk only
    inline = train(method, small_splits, train_cfg, None)

    assert len(first[0]) == EPOCHS
    assert first[0] == second[0] == inline[0]
    assert_same_weights(first[1], second[1])
    assert_same_weights(first[1], inline[1])
    # the weights moved: equal histories of an untrained student would prove nothing
    untrained = make(method).student.state_dict()
    assert any(not torch.equal(untrained[k], first[1][k]) for k in untrained)


def test_methods_on_one_stream_share_the_logits(small_splits, train_cfg, tmp_path):
    logit_cache = TeacherCache(tmp_path, STREAM)
    train("logit", small_splits, train_cfg, logit_cache)
    dkd_cache = TeacherCache(tmp_path, STREAM)
    dkd = train("dkd", small_splits, train_cfg, dkd_cache)
    assert (dkd_cache.hits, dkd_cache.misses) == (EPOCHS, 0)  # logit KD's stored logits serve DKD
    inline = train("dkd", small_splits, train_cfg, None)
    assert dkd[0] == inline[0]
    assert_same_weights(dkd[1], inline[1])


def test_one_teacher_pass_an_epoch_stores_what_the_runs_ahead_read(small_splits, train_cfg, tmp_path):
    """Told the outputs of the runs ahead (``also``), the first run's teacher pass computes them too: hidden-state
    imitation, attention transfer, RKD and logit+hidden then train from disk alone, as they would inline."""
    ahead = ["hidden", "at", "rkd", "logit+hidden"]
    shape = tuple(small_splits.train_x.shape[1:])
    also = [tuple(each_output(make(m).teacher_outputs(shape))) for m in ahead]  # one group per run
    first = TeacherCache(tmp_path, STREAM, also=also)
    train("logit", small_splits, train_cfg, first)
    assert (first.hits, first.misses) == (0, EPOCHS)
    names = {p.stem.split("-", 1)[1] for p in first.folder.glob("epoch001-*.pt")}
    assert names == {"logits", *(o.name for g in also for o in g)}  # RKD's pooled last stage is hidden's: one file
    assert "pooled_l2_1x1" in names and len(names) == 1 + 3 + 3  # logits, three pooled stages, three attention maps
    for method in ahead:
        cache = TeacherCache(tmp_path, STREAM)
        cached = train(method, small_splits, train_cfg, cache)
        assert (cache.hits, cache.misses) == (EPOCHS, 0), method  # the teacher never ran again
        inline = train(method, small_splits, train_cfg, None)
        assert cached[0] == inline[0], method
        assert_same_weights(cached[1], inline[1])

    known = TeacherCache(tmp_path, STREAM, also=also)  # everything stored: nothing to compute
    train("dkd", small_splits, train_cfg, known)
    assert (known.hits, known.misses) == (EPOCHS, 0)


def test_a_comparison_tells_the_cache_every_methods_outputs(tmp_path):
    """``compare_methods`` gives its teacher the outputs of all its methods (FitNets: its logit stage's; the full
    maps of the regressor methods are never stored), so a seed's first distilled run computes them all."""
    from kd_utils.config import DataConfig
    from kd_utils.data import prepare_data
    from kd_utils.runs import teacher_outputs_of

    data = prepare_data(DataConfig(dataset="synthetic", train_size=64, val_size=16, test_size=16))
    cfg = ExperimentConfig(checkpoint_dir=str(tmp_path))
    teacher = frozen_teacher().model
    names = {m: [o.name for o in teacher_outputs_of(m, cfg, data, teacher)] for m in
             ("baseline", "logit", "fitnets", "regressor", "logit+regressor", "rkd", "at")}  # fmt: skip
    assert names == {
        "baseline": [], "logit": ["logits"], "fitnets": ["logits"], "regressor": [], "logit+regressor": ["logits"],
        "rkd": ["pooled_l2_1x1"], "at": ["attention_p2_l0_8x8", "attention_p2_l1_4x4", "attention_p2_l2_2x2"],
    }  # fmt: skip
    # the teacher may sit on the GPU while the probed student is built on the CPU: each is probed on its own device
    # (the meta device stands in for another one: shapes without data)
    elsewhere = [o.name for o in teacher_outputs_of("at", cfg, data, copy.deepcopy(teacher).to("meta"))]
    assert elsewhere == names["at"]
    hidden = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, spatial_size=2))
    assert [o.name for o in teacher_outputs_of("hidden", hidden, data, teacher)] == [
        f"pooled_l{j}_2x2" for j in range(3)
    ]


def test_uncacheable_methods_leave_the_cache_alone(small_splits, train_cfg, tmp_path):
    cache = TeacherCache(tmp_path, STREAM)
    distiller = make("regressor")
    assert not distiller.cacheable
    fit(distiller, small_splits, dataclasses.replace(train_cfg, epochs=1), teacher_cache=cache)
    assert (cache.hits, cache.misses) == (0, 0)
    assert not cache.folder.exists()


def test_files_one_per_epoch_loadable_and_sized(small_splits, train_cfg, tmp_path):
    cache = TeacherCache(tmp_path, STREAM)
    distiller = make("logit")
    fit(distiller, small_splits, train_cfg, teacher_cache=cache)
    assert sorted(p.name for p in cache.folder.iterdir()) == ["epoch001-logits.pt", "epoch002-logits.pt", "stream.json"]
    assert json.loads((cache.folder / "stream.json").read_text()) == STREAM

    # the training loader drops the last partial batch: N = 6 batches of 32 of the 200 images
    n = len(TensorLoader(small_splits.train_x, small_splits.train_y, small_splits.info, 32, train=True)) * 32
    assert n == 192
    stored = [torch.load(cache.path(e, "logits"), weights_only=True) for e in (1, 2)]
    for logits in stored:
        assert logits.shape == (n, 10) and logits.dtype == torch.float32
        assert logits.untyped_storage().nbytes() == n * 10 * 4  # no larger storage saved behind a view
        assert torch.isfinite(logits).all()
    assert not torch.equal(stored[0], stored[1])  # epochs shuffle differently
    size = cache.path(1, "logits").stat().st_size
    assert n * 10 * 4 <= size < n * 10 * 4 + 4096  # the floats plus the zip container's overhead

    # epoch 1's file is the teacher's logits for epoch 1's batches, in batch order
    data = small_splits
    loader = TensorLoader(data.train_x, data.train_y, data.info, 32, train=True, seed=0, channels_last=True)
    loader.set_epoch(1)
    inline = torch.cat([distiller.teacher_targets(x)["logits"] for x, _ in loader])  # fit left it channels_last
    assert torch.equal(stored[0], inline)


def test_pooled_files_hold_float32_maps_per_level(small_splits, train_cfg, tmp_path):
    cache = TeacherCache(tmp_path, STREAM)
    distiller = make("hidden")
    fit(distiller, small_splits, dataclasses.replace(train_cfg, epochs=1), teacher_cache=cache)
    assert distiller.target_spec((1, 28, 28)) == "pooled_l0_1x1+pooled_l1_1x1+pooled_l2_1x1"
    for level, channels in enumerate(distiller.teacher.feature_channels):
        t = torch.load(cache.path(1, f"pooled_l{level}_1x1"), weights_only=True)  # one file per stage
        assert t.shape == (192, channels, 1, 1)
        assert t.dtype == torch.float32  # exactly what the distiller computes inline (no rounding)


def test_damaged_file_is_recomputed_not_trusted(small_splits, train_cfg, tmp_path):
    cache = TeacherCache(tmp_path, STREAM)
    reference = train("logit", small_splits, train_cfg, cache)
    path = cache.path(1, "logits")
    good = torch.load(path, weights_only=True)
    path.write_bytes(
        torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes()
    )

    again = TeacherCache(tmp_path, STREAM)
    result = train("logit", small_splits, train_cfg, again)
    assert (again.hits, again.misses) == (1, 1)  # epoch 1 recomputed, epoch 2 reused
    assert result[0] == reference[0]
    assert_same_weights(result[1], reference[1])
    assert torch.equal(torch.load(path, weights_only=True), good)  # rewritten whole


def frozen_teacher(seed: int = 1000) -> FrozenTeacher:
    torch.manual_seed(seed)
    model = build_model("teacher_cnn")
    return FrozenTeacher(model=model, record={}, weights_hash=state_hash(model), val_accuracy=0.9)


def test_few_label_runs_reuse_the_full_label_targets(small_splits, train_cfg, tmp_path):
    half = dataclasses.replace(small_splits, train_y=small_splits.train_y.clone())
    half.train_y[::2] = -100  # unlabeled: the teacher terms still see these images
    cache = TeacherCache(tmp_path, STREAM)
    train("logit", small_splits, train_cfg, cache)  # the full-label run stores the targets
    reused = TeacherCache(tmp_path, STREAM)
    few = train("logit", half, train_cfg, reused)
    assert (reused.hits, reused.misses) == (EPOCHS, 0)
    inline = train("logit", half, train_cfg, None)
    assert few[0] == inline[0]
    assert_same_weights(few[1], inline[1])

    cfg = ExperimentConfig(checkpoint_dir=str(tmp_path))
    few_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, labeled_fraction=0.1))
    assert teacher_cache_for(few_cfg, frozen_teacher()).folder == teacher_cache_for(cfg, frozen_teacher()).folder


def test_stream_folder_changes_with_what_shapes_the_batches(tmp_path):
    base = ExperimentConfig(checkpoint_dir=str(tmp_path))
    teacher = frozen_teacher()
    folder = teacher_cache_for(base, teacher).folder
    assert folder.parent == tmp_path / "teacher_outputs"
    assert teacher_cache_for(base, frozen_teacher()).folder == folder  # same stream, same folder

    def with_train(**changes):
        return dataclasses.replace(base, train=dataclasses.replace(base.train, **changes))

    different = {
        "seed": teacher_cache_for(with_train(seed=1), teacher).folder,
        "batch_size": teacher_cache_for(with_train(batch_size=64), teacher).folder,
        "random_erasing": teacher_cache_for(with_train(random_erasing=0.5), teacher).folder,
        "teacher": teacher_cache_for(base, frozen_teacher(seed=1001)).folder,
    }
    for what, other in different.items():
        assert other != folder, what
    assert len(set(different.values())) == len(different)
    # a sweep over loss settings stays on the stream: its runs share the stored targets
    swept = dataclasses.replace(base, distill=dataclasses.replace(base.distill, alpha=0.5, temperature=2.0))
    assert teacher_cache_for(swept, teacher).folder == folder
    assert teacher_cache_for(dataclasses.replace(base, teacher_cache=False), teacher) is None
    assert teacher_cache_for(base, None) is None


def test_teacher_cache_folder_is_a_hash_of_the_stream(tmp_path):
    a = TeacherCache(tmp_path, {"seed": 0, "batch_size": 32})
    assert a.folder == TeacherCache(tmp_path, {"batch_size": 32, "seed": 0}).folder  # key order is irrelevant
    assert a.folder != TeacherCache(tmp_path, {"seed": 1, "batch_size": 32}).folder
    assert a.folder != TeacherCache(tmp_path, {"seed": 0, "batch_size": 64}).folder
    assert a.path(3, "logits") == a.folder / "epoch003-logits.pt"


def test_state_hash_names_the_weights():
    torch.manual_seed(0)
    model = build_model("teacher_cnn")
    h = state_hash(model)
    assert len(h) == 64 and int(h, 16) >= 0
    assert state_hash(model) == h  # stable across calls
    assert state_hash(copy.deepcopy(model)) == h
    assert state_hash(copy.deepcopy(model).to(memory_format=torch.channels_last)) == h  # layout is not content

    one_weight = copy.deepcopy(model)
    with torch.no_grad():
        one_weight.head.bias[3] += 1e-6
    assert state_hash(one_weight) != h

    one_statistic = copy.deepcopy(model)
    bn = next(m for m in one_statistic.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean[0] += 1e-3
    assert state_hash(one_statistic) != h

    torch.manual_seed(1)
    assert state_hash(build_model("teacher_cnn")) != h


def test_epochs_over_the_size_cap_are_used_but_not_stored(small_splits, train_cfg, tmp_path):
    reference = train("hidden", small_splits, train_cfg, None)
    capped = TeacherCache(tmp_path, STREAM, max_epoch_bytes=192 * 10 * 4)  # below one epoch of pooled maps
    result = train("hidden", small_splits, train_cfg, capped)
    assert (capped.hits, capped.misses) == (0, EPOCHS)
    assert not capped.folder.exists()  # nothing written
    assert result[0] == reference[0]  # and training is the same as without a cache
    assert_same_weights(result[1], reference[1])

    # exactly one epoch of logits; hidden-state imitation's maps, computed ahead, are over the cap: not stored, and
    # a run's outputs are stored together or not at all, so not even the one stage that would fit alone
    hidden = tuple(each_output(make("hidden").teacher_outputs(tuple(small_splits.train_x.shape[1:]))))
    assert hidden[0].name == "pooled_l0_1x1" and 192 * 64 * 4 > 192 * 10 * 4  # teacher_cnn's 64 channels at stage 0
    logits_only = TeacherCache(tmp_path, STREAM, max_epoch_bytes=192 * 64 * 4, also=[hidden])
    train("logit", small_splits, train_cfg, logits_only)
    assert sorted(p.name for p in logits_only.folder.glob("epoch*")) == ["epoch001-logits.pt", "epoch002-logits.pt"]


def test_nothing_is_stored_where_the_disk_would_run_low(small_splits, train_cfg, tmp_path, monkeypatch):
    from kd_utils import teacher_cache

    reference = train("logit", small_splits, train_cfg, None)
    monkeypatch.setattr(teacher_cache, "MIN_FREE_BYTES", 2**62)  # more than any disk has
    cache = TeacherCache(tmp_path, STREAM)
    result = train("logit", small_splits, train_cfg, cache)
    assert (cache.hits, cache.misses) == (0, EPOCHS)
    assert not list(cache.folder.glob("epoch*"))  # used, not stored
    assert result[0] == reference[0]
    assert_same_weights(result[1], reference[1])


@pytest.mark.parametrize("damage", ["wrong shape", "not finite"])
def test_a_stored_epoch_that_does_not_fit_is_recomputed_and_replaced(damage, small_splits, train_cfg, tmp_path):
    """An epoch file of another shape, or full of NaN, loads fine but is never trusted: the epoch is computed
    again (training as if inline) and the bad file replaced, so a re-run does not diverge on it."""
    cache = TeacherCache(tmp_path, STREAM)
    first = train("logit", small_splits, train_cfg, cache)
    stored = sorted(cache.folder.glob("epoch*.pt"))
    assert len(stored) == EPOCHS
    bad = torch.load(stored[0], weights_only=True)
    bad = bad[:5] if damage == "wrong shape" else torch.full_like(bad, float("nan"))
    torch.save(bad, stored[0])
    again = TeacherCache(tmp_path, STREAM)
    second = train("logit", small_splits, train_cfg, again)
    assert (again.hits, again.misses) == (EPOCHS - 1, 1)
    assert first[0] == second[0]
    assert_same_weights(first[1], second[1])
    replaced = torch.load(stored[0], weights_only=True)
    assert torch.isfinite(replaced).all() and replaced.shape[0] > 5
