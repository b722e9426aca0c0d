"""The trainer: sane start, can overfit, deterministic, resumable, and loud about non-finite losses."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

import kd_utils.train as train_mod
from kd_utils.config import ExperimentConfig
from kd_utils.data import TensorLoader
from kd_utils.distill import DistillConfig, Distiller, build_distiller
from kd_utils.models import build_model
from kd_utils.train import NonFiniteLossError, TrainConfig, check_resumable, evaluate, fit, lr_factor

TIMING_KEYS = {"seconds", "images_per_s"}  # wall-clock columns of the history, never reproducible


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def make_distiller(method: str = "baseline", seed: int = 0, cfg: DistillConfig | None = None) -> Distiller:
    """A student initialised from ``seed``; the teacher (if any) is always the same one, as from a cache."""
    teacher = None
    if method != "baseline":
        torch.manual_seed(1000)
        teacher = build_model("teacher_cnn")
    torch.manual_seed(seed)
    return build_distiller(method, build_model("student_cnn"), teacher, cfg)


def test_initial_loss_is_near_log_num_classes(synthetic_splits):
    data = synthetic_splits
    x, y = next(iter(TensorLoader(data.train_x, data.train_y, data.info, 128)))
    for seed in (0, 1):
        loss, logits, _ = make_distiller(seed=seed).train()(x, y)
        assert abs(loss.item() - math.log(10)) < 0.5
        assert logits.shape == (128, 10)


def test_student_overfits_one_small_batch(synthetic_splits):
    data = synthetic_splits
    x, y = next(iter(TensorLoader(data.train_x, data.train_y, data.info, 32)))
    distiller = make_distiller().train()
    opt = torch.optim.Adam(distiller.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _, _ = distiller(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    distiller.eval()
    with torch.no_grad():
        accuracy = (distiller.student(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


def test_same_seed_gives_same_history(small_splits, tiny_train_config, tmp_path):
    cfg = dataclasses.replace(tiny_train_config, epochs=2)
    a, b = make_distiller(), make_distiller()
    result_a = fit(a, small_splits, cfg, tmp_path / "a")
    result_b = fit(b, small_splits, cfg)  # no checkpoint dir: best weights kept in memory instead
    assert len(result_a.history) == 2
    assert without_timing(result_a.history) == without_timing(result_b.history)
    assert (result_a.best_epoch, result_a.best_val_f1) == (result_b.best_epoch, result_b.best_val_f1)
    for (k, va), (_, vb) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert torch.equal(va, vb), k
    other = fit(make_distiller(), small_splits, dataclasses.replace(cfg, seed=1))
    assert without_timing(other.history) != without_timing(result_a.history)  # the seed does matter


def test_history_rows_and_learning(small_splits, tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, epochs=2)
    lines = []
    result = fit(make_distiller("logit"), small_splits, cfg, log=lines.append)
    row = result.history[0]
    expected = {"epoch", "loss", "ce", "kd", "train_acc", "val_loss", "val_acc", "val_f1", "lr"} | TIMING_KEYS
    assert expected <= set(row)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all(math.isfinite(v) for r in result.history for v in r.values())
    assert result.best_epoch in (1, 2) and result.best_val_f1 == max(r["val_f1"] for r in result.history)
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine decays to 0 at the end
    assert len(lines) == 2 and "epoch   1/2" in lines[0]


def test_fit_trains_the_regressor_adapters_but_not_the_teacher(small_splits, tiny_train_config):
    distiller = make_distiller("regressor")
    adapters_before = {k: v.clone() for k, v in distiller.adapters.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    fit(distiller, small_splits, tiny_train_config)
    for name, p in distiller.adapters.named_parameters():
        assert not torch.equal(p.detach(), adapters_before[name]), f"adapter {name} was not optimised"
    for k, v in distiller.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher {k} changed during fit"
    assert not distiller.teacher.training


def test_resume_matches_an_uninterrupted_run(small_splits, tiny_train_config, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny_train_config, epochs=3)
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    a = make_distiller("regressor")  # adapters and their BatchNorm must survive the resume too
    result_a = fit(a, small_splits, cfg, dir_a)

    real_train_one_epoch = train_mod.train_one_epoch

    def interrupted(*args, **kwargs):
        if inspect.signature(real_train_one_epoch).bind(*args, **kwargs).arguments["epoch"] == 3:
            raise KeyboardInterrupt  # as if Ctrl-C hit during epoch 3, after epoch 2 was saved
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(make_distiller("regressor"), small_splits, cfg, dir_b)
    monkeypatch.setattr(train_mod, "train_one_epoch", real_train_one_epoch)
    saved = train_mod.load_checkpoint(dir_b / "last.pt")
    assert saved["epoch"] == 2

    lines = []
    b = make_distiller("regressor", seed=123)  # other student init: its weights must come from last.pt
    result_b = fit(b, small_splits, cfg, dir_b, resume=True, log=lines.append)
    assert any(line.startswith("resumed") and "after epoch 2" in line for line in lines)
    assert without_timing(result_b.history) == without_timing(result_a.history)
    assert (result_b.best_epoch, result_b.best_val_f1) == (result_a.best_epoch, result_a.best_val_f1)
    for name in ("best.pt", "last.pt"):
        ca, cb = train_mod.load_checkpoint(dir_a / name), train_mod.load_checkpoint(dir_b / name)
        assert ca["epoch"] == cb["epoch"]
        for part in ("model", "adapters"):
            assert ca[part].keys() == cb[part].keys()
            for k in ca[part]:
                assert torch.equal(ca[part][k], cb[part][k]), f"{name} {part}.{k}"
    test_loader = TensorLoader(small_splits.test_x, small_splits.test_y, small_splits.info, 512)
    metrics_a = evaluate(a.student, test_loader, small_splits.info.classes)
    metrics_b = evaluate(b.student, test_loader, small_splits.info.classes)
    assert metrics_a == metrics_b


def test_resume_of_a_finished_run_trains_nothing(small_splits, tiny_train_config, tmp_path, monkeypatch):
    first = fit(make_distiller(), small_splits, tiny_train_config, tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_mod, "train_one_epoch", fail)
    again = fit(make_distiller(seed=5), small_splits, tiny_train_config, tmp_path, resume=True)
    assert without_timing(again.history) == without_timing(first.history)


def test_a_run_names_every_machine_that_trained_it(small_splits, tiny_train_config, tmp_path, monkeypatch):
    """A run trained elsewhere (a lent GPU) and finished or only evaluated here keeps that machine in its record."""
    from kd_utils.runs import environment

    here = f"{train_mod.device_name(torch.device(tiny_train_config.device))}, torch {torch.__version__}, float32"
    first = fit(make_distiller(), small_splits, dataclasses.replace(tiny_train_config, epochs=2), tmp_path)
    assert first.trained_on == [here]
    elsewhere = "cuda: Some Other GPU, torch 0.0"
    state = train_mod.load_checkpoint(tmp_path / "last.pt")
    state["result"]["trained_on"] = [elsewhere]
    train_mod.save_checkpoint(state, tmp_path / "last.pt")
    finished = fit(make_distiller(), small_splits, dataclasses.replace(tiny_train_config, epochs=2), tmp_path, True)
    assert finished.trained_on == [elsewhere]  # nothing trained here: evaluated only
    longer = dataclasses.replace(tiny_train_config, epochs=3)
    monkeypatch.setitem(state["train_config"], "epochs", 3)
    train_mod.save_checkpoint(state, tmp_path / "last.pt")
    resumed = fit(make_distiller(), small_splits, longer, tmp_path, resume=True)
    assert resumed.trained_on == [elsewhere, here]

    cfg = ExperimentConfig()
    env = environment(cfg)
    this_machine = f"{env['hardware']}, torch {env['torch']}"
    assert environment(cfg, [elsewhere]) == env | {"hardware": elsewhere, "evaluated_on": this_machine}
    assert environment(cfg, [elsewhere, this_machine])["hardware"] == f"{elsewhere} + {this_machine}"
    assert environment(cfg, [this_machine]) == env
    assert environment(cfg, [f"{this_machine}, bfloat16"]) == env  # the label's precision names no other machine

    from kd_utils.records import Segment
    from kd_utils.runs import segments

    assert segments(cfg, [elsewhere, here]) == (
        Segment("cuda: Some Other GPU", "0.0", None),  # an entry from before labels carried the precision
        Segment(train_mod.device_name(torch.device("cpu")), torch.__version__, "float32"),
    )


def test_resume_refuses_changed_settings(small_splits, tiny_train_config, tmp_path):
    fit(make_distiller(), small_splits, tiny_train_config, tmp_path)
    changed = dataclasses.replace(tiny_train_config, lr=0.01)
    with pytest.raises(ValueError, match="lr: 0.05 -> 0.01"):
        fit(make_distiller(), small_splits, changed, tmp_path, resume=True)
    # settings that do not shape training may change
    fit(make_distiller(), small_splits, dataclasses.replace(tiny_train_config, log_every=7), tmp_path, resume=True)


def test_check_resumable():
    saved = {"lr": 0.05, "epochs": 3, "device": "cuda", "progress": True}
    check_resumable(saved, {"lr": 0.05, "epochs": 3, "device": "cpu", "progress": False}, "x.pt")
    with pytest.raises(ValueError, match="epochs: 3 -> 4"):
        check_resumable(saved, {"lr": 0.05, "epochs": 4, "device": "cpu"}, "x.pt")


class NaNFromCall(Distiller):
    """The baseline, but every loss from the ``start``-th call on is NaN; snapshots last.pt when it starts."""

    def __init__(self, student, start: int, watch):
        super().__init__(student)
        self.start, self.calls, self.watch, self.snapshot = start, 0, watch, None

    def forward(self, x, y, targets=None):
        loss, logits, parts = super().forward(x, y, targets)
        self.calls += 1
        if self.calls >= self.start:
            if self.snapshot is None:
                self.snapshot = self.watch.read_bytes()
            loss = loss * float("nan")
        return loss, logits, parts


def test_non_finite_loss_stops_training_and_keeps_last_checkpoint(small_splits, tiny_train_config, tmp_path):
    cfg = dataclasses.replace(tiny_train_config, epochs=3)
    steps_per_epoch = len(small_splits.train_y) // cfg.batch_size
    torch.manual_seed(0)
    distiller = NaNFromCall(build_model("student_cnn"), start=steps_per_epoch + 2, watch=tmp_path / "last.pt")
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2\b"):
        fit(distiller, small_splits, cfg, tmp_path)
    assert distiller.snapshot is not None
    assert (tmp_path / "last.pt").read_bytes() == distiller.snapshot  # untouched by the failing epoch
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["result"]["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not list(tmp_path.glob("*.tmp"))


def test_huge_learning_rate_raises_non_finite_loss(small_splits, tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, lr=1e30, epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
        fit(make_distiller(), small_splits, cfg)


def test_checkpoints_load_with_weights_only(small_splits, tiny_train_config, tmp_path):
    fit(make_distiller("regressor"), small_splits, tiny_train_config, tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "adapters", "epoch"} <= set(best)
    expected = {"model", "adapters", "optimizer", "scheduler", "scaler", "epoch", "result", "train_config"}
    assert expected <= set(last)
    assert last["train_config"] == dataclasses.asdict(tiny_train_config)
    student = build_model("student_cnn")
    student.load_state_dict(best["model"])  # a bare student can be rebuilt from best.pt
    assert len(best["adapters"]) > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_fit_on_an_unlabeled_training_set(small_splits, tiny_train_config):
    # masked_cross_entropy returns 0 for an all-unlabeled batch, so logit KD with alpha=1 needs no labels at all.
    data = dataclasses.replace(small_splits, train_y=torch.full_like(small_splits.train_y, -100))
    torch.manual_seed(1000)
    teacher = build_model("teacher_cnn")
    torch.manual_seed(0)
    distiller = build_distiller("logit", build_model("student_cnn"), teacher, DistillConfig(alpha=1.0))
    result = fit(distiller, data, tiny_train_config)
    assert math.isfinite(result.history[0]["kd"]) and result.history[0]["ce"] == 0.0


# --- precision: what "auto" picks on each kind of hardware ------------------------------------------------


def fake_cuda(monkeypatch, major: int, emulated_bf16: bool = True):
    """Pretend to be a CUDA device of compute capability ``major``.x (T4: 7.5, A100: 8.0); torch's own
    ``is_bf16_supported`` runs against it, so its emulation rule is what is tested."""
    props = type("Props", (), {"major": major, "minor": 5 if major == 7 else 0})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: emulated_bf16, raising=False)


def test_auto_precision_on_a_t4_is_fp16_even_though_bf16_is_emulated(monkeypatch):
    fake_cuda(monkeypatch, major=7)
    assert torch.cuda.is_bf16_supported()  # torch says yes by default (emulation): the trap
    assert train_mod.resolve_precision("auto", torch.device("cuda")) == torch.float16


def test_auto_precision_on_an_a100_is_bf16(monkeypatch):
    fake_cuda(monkeypatch, major=8)
    assert train_mod.resolve_precision("auto", torch.device("cuda")) == torch.bfloat16


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_on_a_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: native)
    assert train_mod.resolve_precision("auto", torch.device("cpu")) == expected


def test_cpu_features_reads_whole_flags_of_the_cpuinfo_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert train_mod.cpu_features(cpuinfo) == ["avx2", "avx512f", "avx512_bf16"]
    cpuinfo.write_text("model name\t: AMD EPYC avx512_bf16 edition\nflags\t\t: fpu avx2 amx_bf16x\n")
    assert train_mod.cpu_features(cpuinfo) == ["avx2"]  # the model name is no flag; amx_bf16x is not amx_bf16
    assert train_mod.cpu_features(tmp_path / "missing") == []


def test_explicit_precisions_and_a_bad_one():
    cpu = torch.device("cpu")
    assert [train_mod.resolve_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == [
        torch.float32, torch.bfloat16, torch.float16,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="--precision fp8: choose from"):
        train_mod.resolve_precision("fp8", cpu)


def test_fp16_trains_through_a_gradient_scaler(small_splits, tiny_train_config, monkeypatch):
    """fp16 (what a T4 gets) runs with an enabled GradScaler: the loss is scaled before backward and the
    optimiser step goes through the scaler (which skips steps whose gradients overflowed)."""
    scaled, stepped = [], []
    real_scaler = torch.amp.GradScaler

    class SpyScaler(real_scaler):
        def scale(self, outputs):
            scaled.append(self.is_enabled())
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            stepped.append(self.is_enabled())
            return super().step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", SpyScaler)
    cfg = dataclasses.replace(tiny_train_config, precision="fp16")
    result = fit(make_distiller(), small_splits, cfg)
    assert scaled and all(scaled) and len(stepped) == len(scaled)
    assert math.isfinite(result.history[0]["loss"]) and result.best_val_f1 > 0
    cfg32 = dataclasses.replace(tiny_train_config, precision="fp32")
    scaled.clear()
    fit(make_distiller(), small_splits, cfg32)
    assert scaled and not any(scaled)  # fp32: the scaler is a pass-through


def test_device_strings_are_checked_up_front():
    assert train_mod.resolve_device("cpu") == torch.device("cpu")
    for bad in ("nonsense", "gpu", "cuda:x"):
        with pytest.raises(ValueError, match=f"--device {bad}"):
            train_mod.resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train_mod.resolve_device("cuda")


def test_train_config_refuses_non_finite_numbers_naming_the_flag():
    for field, value in (("lr", float("inf")), ("weight_decay", float("nan")), ("random_erasing", 1.5)):
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} "):
            TrainConfig(**{field: value}).validate()
    TrainConfig().validate()


# --- distillers see the epoch -------------------------------------------------------------------------------


def crash_in_epoch(monkeypatch, crash: int) -> None:
    """Make ``train_one_epoch`` raise as Ctrl-C would in epoch ``crash``, after the epoch before was saved."""
    real = train_mod.train_one_epoch

    def interrupted(distiller, loader, ctx, epoch, bar=None):
        if epoch == crash:
            raise KeyboardInterrupt
        return real(distiller, loader, ctx, epoch, bar)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)


def test_fit_tells_the_distiller_each_real_epoch_also_on_resume(small_splits, tiny_train_config, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny_train_config, epochs=3)
    steps = 200 // cfg.batch_size  # small_splits: 200 training images; training drops the last partial batch
    seen = []
    distiller = make_distiller()
    distiller.start_epoch = lambda epoch, steps_per_epoch: seen.append((epoch, steps_per_epoch))
    with monkeypatch.context() as patch:
        crash_in_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            fit(distiller, small_splits, cfg, tmp_path)
    assert seen == [(1, steps), (2, steps), (3, steps)]  # told before each epoch's first step
    seen.clear()
    resumed = make_distiller()
    resumed.start_epoch = lambda epoch, steps_per_epoch: seen.append((epoch, steps_per_epoch))
    fit(resumed, small_splits, cfg, tmp_path, resume=True)
    assert seen == [(3, steps)]  # the real epoch after last.pt's, not 1


def test_dkd_warmup_logs_a_smaller_kd_term_in_epoch_1_and_keeps_the_teacher_frozen(small_splits, tiny_train_config):
    plain = fit(make_distiller("dkd"), small_splits, tiny_train_config).history[0]
    distiller = make_distiller("dkd", cfg=DistillConfig(dkd_warmup_epochs=20))
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    warm = fit(distiller, small_splits, tiny_train_config).history[0]
    assert 0 < warm["kd"] < 0.5 * plain["kd"]  # scaled by 1/20 in epoch 1 (the raw term moves a little too)
    for k, v in distiller.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher {k} changed during fit"
    assert all(not m.training for m in distiller.teacher.modules())
    assert all(not p.requires_grad for p in distiller.teacher.parameters())


def test_resumed_dkd_warmup_matches_an_uninterrupted_run(small_splits, tiny_train_config, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny_train_config, epochs=3)
    distill = DistillConfig(dkd_warmup_epochs=4)
    full = fit(make_distiller("dkd", cfg=distill), small_splits, cfg, tmp_path / "a")
    with monkeypatch.context() as patch:
        crash_in_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            fit(make_distiller("dkd", cfg=distill), small_splits, cfg, tmp_path / "b")
    distiller = make_distiller("dkd", seed=7, cfg=distill)
    resumed = fit(distiller, small_splits, cfg, tmp_path / "b", resume=True)
    assert distiller.warmup.item() == 0.75  # epoch 3 of a 4-epoch warm-up, not epoch 1 of the resumed session
    assert without_timing(resumed.history) == without_timing(full.history)


# --- the step schedule (CRD / mdistiller CIFAR-100 recipe), Nesterov off, and runs stored before them -------------


def reference_step_lr(epoch: int, lr: float, milestones: list[int], decay: float) -> float:
    """mdistiller's ``adjust_learning_rate`` (RepDistiller's is the same), typed from its source: called at the start
    of every 1-based epoch, ``lr * decay ** sum(epoch > milestones)``."""
    return lr * decay ** sum(epoch > m for m in milestones)


def lrs_per_step(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate each optimiser step of a run trains with."""
    opt = train_mod.build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    scheduler = train_mod.build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def test_step_schedule_is_the_references_adjust_learning_rate():
    cfg = TrainConfig(epochs=240, lr=0.05, schedule="step", milestones=(150, 180, 210), lr_decay=0.1)
    lrs = lrs_per_step(cfg, steps_per_epoch=3)
    expected = [reference_step_lr(e, 0.05, [150, 180, 210], 0.1) for e in range(1, 241) for _ in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[150 * 3 - 1] == pytest.approx(0.05) and lrs[150 * 3] == pytest.approx(0.005)  # epoch 151 decays
    assert lrs[-1] == pytest.approx(0.05e-3)  # epochs 211-240
    factors = [train_mod.step_factor(step, 2, (1.5, 3.0), 0.5) for step in range(8)]
    assert factors == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]  # a fractional milestone: after round(1.5 * 2) steps


def test_fit_with_the_step_schedule_decays_after_each_milestone(small_splits, tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, epochs=3, schedule="step", milestones=(1, 2), lr_decay=0.5)
    history = fit(make_distiller(), small_splits, cfg).history
    assert [row["lr"] for row in history] == pytest.approx([0.025, 0.0125, 0.0125])  # the lr after each epoch


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schedule": "step"}, "--schedule step needs --milestones"),
        (
            {"schedule": "step", "milestones": (150.0, 180.0, 250.0)},
            "--milestones 150,180,250: each must lie within 1..--epochs 240",
        ),
        ({"schedule": "step", "milestones": (0.0,)}, "--milestones 0: each must lie within 1..--epochs 240"),
        ({"schedule": "step", "milestones": (180.0, 150.0)}, "--milestones 180,150: must be strictly increasing"),
        ({"schedule": "step", "milestones": (150.0, 150.0)}, "--milestones 150,150: must be strictly increasing"),
        ({"milestones": (float("nan"),)}, "--milestones nan: each must lie within"),
        ({"lr_decay": 0.0}, r"--lr-decay 0.0: must be in \(0, 1\]"),
        ({"lr_decay": 1.5}, r"--lr-decay 1.5: must be in \(0, 1\]"),
        ({"lr_decay": float("inf")}, "--lr-decay inf: must be a finite number"),
    ],
)
def test_step_schedule_settings_are_checked(changes, message):
    cfg = dataclasses.replace(TrainConfig(epochs=240, device="cpu"), **changes)
    with pytest.raises(ValueError, match=message):
        cfg.validate()
    dataclasses.replace(TrainConfig(epochs=240, device="cpu"), schedule="step", milestones=(150, 180, 210)).validate()
    dataclasses.replace(TrainConfig(epochs=2, device="cpu"), schedule="step", milestones=(1, 2), lr_decay=1).validate()


def test_nesterov_is_a_setting():
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert train_mod.build_optimizer(params, TrainConfig()).defaults["nesterov"] is True  # the old behaviour
    assert train_mod.build_optimizer(params, TrainConfig(nesterov=False)).defaults["nesterov"] is False


def test_new_training_settings_at_their_defaults_leave_run_folders_named_as_before():
    """A run folder is named by a hash of ``runs.TRAIN_KEYS``; milestones, lr_decay and nesterov join the hash only
    off the old behaviour, so every folder named before they existed is still found (test_structure checks the
    stored study's)."""
    from kd_utils.runs import TRAIN_KEYS, run_dir, shaping, train_shaping

    assert train_shaping(TrainConfig()) == shaping(TrainConfig(), TRAIN_KEYS)
    step = TrainConfig(epochs=240, schedule="step", milestones=(150, 180, 210))
    assert train_shaping(step) == {**shaping(step, TRAIN_KEYS), "milestones": (150, 180, 210)}
    assert train_shaping(TrainConfig(nesterov=False))["nesterov"] is False
    folders = {
        run_dir(ExperimentConfig(train=t), "baseline")
        for t in (TrainConfig(), step, dataclasses.replace(step, lr_decay=0.2), TrainConfig(nesterov=False))
    }
    assert len(folders) == 4


def test_a_last_pt_from_before_the_new_settings_resumes(small_splits, tiny_train_config, tmp_path):
    fit(make_distiller(), small_splits, tiny_train_config, tmp_path)
    state = train_mod.load_checkpoint(tmp_path / "last.pt")
    for key in train_mod.ADDED_DEFAULTS:  # as written before the fields existed
        del state["train_config"][key]
    state["train_config"]["epochs"] = 2
    train_mod.save_checkpoint(state, tmp_path / "last.pt")
    longer = dataclasses.replace(tiny_train_config, epochs=2)
    lines = []
    resumed = fit(make_distiller(), small_splits, longer, tmp_path, resume=True, log=lines.append)
    assert any("after epoch 1" in line for line in lines) and len(resumed.history) == 2
    train_mod.save_checkpoint(state, tmp_path / "last.pt")  # it trained with Nesterov: plain momentum is a change
    with pytest.raises(ValueError, match="nesterov: True -> False"):
        fit(make_distiller(), small_splits, dataclasses.replace(longer, nesterov=False), tmp_path, resume=True)


def test_the_stored_study_checkpoints_resume_under_todays_training_config():
    """Every stored ``last.pt`` (the stored study's written before milestones, lr_decay and nesterov existed)
    passes the resume check against its own settings read as today's ``TrainConfig`` (the new fields at their
    defaults)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stored = sorted((root / "checkpoints" / "runs").glob("*/last.pt"))
    assert stored
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    older = 0
    for last in stored:  # the stored study's, and the re-run's (written with the fields) beside them
        saved = train_mod.load_checkpoint(last)["train_config"]
        older += not set(train_mod.ADDED_DEFAULTS) & set(saved)
        today = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names})
        check_resumable(saved, dataclasses.asdict(today), last)
    assert older  # some were written before the fields existed


def test_a_teacher_shorter_than_the_step_schedule_is_refused():
    from kd_utils.config import ExperimentConfig

    train = TrainConfig(epochs=240, schedule="step", milestones=(150.0, 180.0, 210.0))
    with pytest.raises(ValueError, match="--teacher-epochs 200: fewer than the step schedule's milestone 210"):
        ExperimentConfig(train=train, teacher_epochs=200).validate()
    ExperimentConfig(train=train, teacher_epochs=240).validate()


def test_compile_trains_with_the_compiled_module(small_splits, tiny_train_config, monkeypatch):
    """A torch.compile'd module has no truth value (``bool()`` asks its ``len()``, which raises): the training
    step must test it against None."""
    calls = []

    class Compiled:
        def __init__(self, module):
            self.module = module

        def __call__(self, *args, **kwargs):
            calls.append(1)
            return self.module(*args, **kwargs)

        def __len__(self):
            raise TypeError("Distiller does not support len()")

    monkeypatch.setattr(torch, "compile", Compiled)
    fit(make_distiller(), small_splits, dataclasses.replace(tiny_train_config, compile=True))
    assert calls  # every training step went through it
