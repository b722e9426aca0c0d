"""The re-run's machinery: the teacher chosen on validation, the ablations, and the queue that trains the study
job by job across sessions, one machine class per comparison."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from kd_utils import study, study_run, teacher_choice
from kd_utils.config import ExperimentConfig
from kd_utils.data import DataConfig, prepare_data
from kd_utils.distill import STUDENT_METHODS
from kd_utils.records import RunRecord
from kd_utils.results import load_records
from kd_utils.runs import identity
from kd_utils.train import TrainConfig


def teacher_record(epochs: int, erasing: float, val_acc: float, test_acc: float) -> RunRecord:
    cfg = ExperimentConfig(data=DataConfig(dataset="synthetic"), teacher_epochs=epochs, teacher_random_erasing=erasing)
    history = [{"epoch": e, "val_acc": val_acc - 0.01 * (epochs - e)} for e in range(1, epochs + 1)]
    stored = {**identity("teacher", "teacher", "teacher", cfg, ()), "config": asdict(cfg), "history": history,
              "best_epoch": epochs, "test": {"accuracy": test_acc}, "epochs": epochs}  # fmt: skip
    return RunRecord.from_dict(stored)


def test_the_teacher_is_the_candidate_best_on_validation_whatever_its_test_accuracy():
    records = [teacher_record(15, 0.0, 0.96, 0.99), teacher_record(40, 0.5, 0.95, 0.90)]
    assert teacher_choice.choose_teacher(records) == {"teacher_epochs": 15, "teacher_random_erasing": 0.0}
    table = teacher_choice.teacher_choice_table(records)
    assert "| teacher_cnn, 15 epochs | 0.9600 | 0.9900 |" in table and table.count("**yes**") == 1
    with pytest.raises(ValueError, match="no teacher record"):
        teacher_choice.choose_teacher([teacher_record(7, 0.0, 0.9, 0.9)])  # not a candidate recipe


def test_the_study_teacher_is_what_the_stored_records_choose_on_validation():
    results = Path(__file__).resolve().parents[1] / "results" / "fashion-mnist"
    records = [r for path in [results / "runs.json", *sorted((results / "archive").glob("*.json"))]
               for r in load_records(path)]  # fmt: skip
    chosen = teacher_choice.choose_teacher(records)
    assert {k: study.STUDY_TEACHER[k] for k in chosen} == chosen
    assert len(teacher_choice.teacher_candidates(records)) == len(
        teacher_choice.TEACHER_CANDIDATES
    )  # every recipe was scored


def test_the_order_one_machine_takes_never_waits_and_sweeps_first(monkeypatch):
    monkeypatch.setattr(study, "sweep_done", lambda method, sweeps_dir=None: False)
    jobs = study_run.pending_jobs(set())
    names = [j.name for j in jobs]
    assert names[:4] == ["teacher", "sweep-logit", "sweep-dist", "sweep-dkd"]
    assert names.index("sweep-logit+hidden") < names.index("05-seed-1")  # a comparison starts after every sweep
    # notebook 05 compares every method: one without its jobs would train there, at `make study`; seed by seed,
    # so that a session computes one seed's teacher outputs for all of that seed's runs
    assert {f"sweep-{m}" for m in STUDENT_METHODS} <= set(names)
    seed_jobs = [j for j in jobs if j.kind == "seed"]
    assert [(j.name, j.arg) for j in seed_jobs] == [(f"05-seed-{s}", s) for s in study.STUDY_SEEDS]
    # every method's 15-epoch runs, once per seed: in the seed jobs, or (DEFERRED_METHODS: a sweep left to one
    # machine class) in a job of its own over every seed, which alone waits for that sweep
    compare_jobs = [j for j in jobs if j.kind == "compare"]
    assert [j.name for j in compare_jobs] == [f"05-{m}" for m in study.DEFERRED_METHODS] == ["05-regressor"]
    for j in seed_jobs:
        trained = study_run.tuned_methods(j) + [m for c in compare_jobs for m in study_run.tuned_methods(c)]
        assert sorted(trained) == sorted(set(STUDENT_METHODS) - {"baseline"})
        assert "sweep-regressor" not in j.needs and "sweep-logit+regressor" in j.needs
    assert compare_jobs[0].needs == ("sweep-regressor",)
    assert {study_run.job_groups(j) for j in [*seed_jobs, *compare_jobs]} == {("15-epoch",)}  # one class for all
    assert all(j.kind != "ablations" for j in jobs)  # the seed jobs train them
    # each job's needs run before it (a need of a sweep's trial at the defaults: that sweep)
    assert all({n.removesuffix(":defaults") for n in j.needs} <= set(names[:i]) for i, j in enumerate(jobs))
    assert set(jobs[names.index("05-few-0.1")].needs) == {j.name for j in seed_jobs}
    assert study_run.job_groups(jobs[1]) == ("sweep-logit",) and study_run.job_groups(jobs[0]) == ()
    assert study_run.job_groups(jobs[names.index("04-final-1")]) == ("70-epoch",)
    assert study_run.job_groups(jobs[names.index("05-few-0.01")]) == ("few-0.01",)
    assert study_run.pending_jobs({"teacher", "sweep-logit"})[0].name == "sweep-dist"
    monkeypatch.setattr(study, "sweep_done", lambda method, sweeps_dir=None: method == "dist")
    assert "sweep-dist" not in [j.name for j in study_run.pending_jobs(set())]  # a sweep that scored its choice


def test_the_queue_keeps_each_comparison_on_the_machine_class_that_started_it(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "sweep_done", lambda method, sweeps_dir=None: True)  # no sweep left
    monkeypatch.setattr(study_run, "this_machine_class", lambda: "cpu: AMD EPYC, 2 cores float32")
    monkeypatch.setattr(study_run, "cpu_features", lambda: ["avx2"])  # an EPYC without AVX-512
    progress = study_run.Progress(tmp_path / "study-v2")
    progress.save({"jobs": {}, "groups": {"70-epoch": "cuda: NVIDIA H200 float32"}})
    started = []

    def fake_run(job, deadline, progress, log):
        started.append(job.name)
        return "ok", 1.0

    monkeypatch.setattr(study_run, "run_subprocess", fake_run)
    lines = []
    assert study_run.run_queue(1.0, progress, log=lines.append) == 0
    assert started[0] == "teacher" and "05-few-0.01" in started
    assert not any(name.startswith("04-") for name in started)  # the 70-epoch pair started on the H200
    assert any("skipped, another machine class: 04-baseline-1 (70-epoch trains on cuda" in line for line in lines)
    state = progress.load()
    assert state["groups"]["15-epoch"] == "cpu: AMD EPYC, 2 cores float32" and set(started) == set(state["jobs"])
    assert state["jobs"]["teacher"]["machine"] == "cpu: AMD EPYC, 2 cores float32"
    assert state["jobs"]["teacher"]["cpu_features"] == ["avx2"] and "(CPU flags: avx2)" in lines[0]
    assert "| teacher | cpu: AMD EPYC, 2 cores float32 | avx2 |" in study_run.status(progress)
    started.clear()
    study_run.run_queue(1.0, progress, log=lines.append)
    assert started == []  # finished jobs are not run again
    assert "04-baseline-1" in study_run.status(progress).splitlines()[-1]  # still left


def test_04_trains_on_while_a_candidate_sweep_waits_for_its_machine_class(tmp_path, monkeypatch):
    """The regressor sweep, begun on an EPYC, is unfinished; its trial at the defaults (01-03's regressor run) is
    done. On the Xeon that holds the 70-epoch comparison, 04's runs go on first (a begun comparison): 04 picks among
    the defaults' runs; then notebook 05's seeds and few-label runs. 01-03's seed-0 baseline waits for the
    candidates' class, and the regressor's 15-epoch runs (``05-regressor``) for its sweep."""
    epyc, xeon = "cpu: AMD EPYC, 2 cores float32", "cpu: Intel(R) Xeon(R) Processor, 2 cores float32"
    monkeypatch.setattr(study, "sweep_done", lambda method, sweeps_dir=None: method != "regressor")
    defaults = {"regressor"}
    monkeypatch.setattr(study, "defaults_done", lambda method, *_: method != "regressor" or method in defaults)
    monkeypatch.setattr(study_run, "this_machine_class", lambda: xeon)
    progress = study_run.Progress(tmp_path / "study-v2")
    groups = {"sweep-logit": epyc, "sweep-hidden": epyc, "sweep-regressor": epyc, "70-epoch": xeon}
    progress.save({"jobs": {"teacher": {"machine": epyc, "seconds": 1}}, "groups": groups})
    started = []
    monkeypatch.setattr(study_run, "run_subprocess", lambda job, *_: started.append(job.name) or ("ok", 1.0))
    lines = []
    study_run.run_queue(1.0, progress, log=lines.append)
    seeds = [f"05-seed-{s}" for s in study.STUDY_SEEDS]
    few = [f"05-few-{f:g}" for f in study.FEW_LABEL_FRACTIONS]
    baselines = [f"04-baseline-{s}" for s in study.STUDY_SEEDS]
    finals = [f"04-final-{s}" for s in study.STUDY_SEEDS]
    assert started == baselines + finals + seeds + few  # the begun comparison first; not 05-regressor: no sweep
    assert any(line.startswith("skipped, another machine class: 01-03 (sweep-logit trains on cpu: AMD EPYC")
               for line in lines)  # fmt: skip
    assert progress.load()["groups"]["15-epoch"] == xeon
    defaults.clear()  # the trial at the defaults not finished yet: 04 has no candidates to pick from
    progress.save({"jobs": {"teacher": {"machine": epyc, "seconds": 1}}, "groups": groups})
    started.clear()
    study_run.run_queue(1.0, progress, log=lambda line: None)
    assert started == baselines + seeds + few


def test_a_sweeps_trial_at_the_defaults_counts_once_it_completed(tmp_path):
    optuna = pytest.importorskip("optuna")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = tmp_path / "sweeps.journal"
    storage = f"journal:///{path}"
    assert not study.defaults_done("regressor", storage, tmp_path)  # no journal
    journal = JournalStorage(JournalFileBackend(str(path)))
    found = optuna.create_study(study_name=study.sweep_name("regressor"), storage=journal, direction="maximize")
    assert not study.defaults_done("hidden", storage, tmp_path)  # no study of it in the journal
    found.enqueue_trial({"w": 100.0}, user_attrs={"default": True})
    cut = found.ask()
    found.tell(cut, state=optuna.trial.TrialState.FAIL)  # interrupted at a session's end
    found.tell(found.ask(), 0.93)  # another setting, complete
    assert not study.defaults_done("regressor", storage, tmp_path)
    found.enqueue_trial({"w": 100.0}, user_attrs={"default": True})  # the defaults, queued again
    again = found.ask()
    assert again.user_attrs.get("default")
    found.tell(again, 0.92)
    assert study.defaults_done("regressor", storage, tmp_path)
    (tmp_path / f"{study.sweep_name('logit')}-best.json").write_text("{}")  # a scored sweep: done, whatever the journal
    assert study.defaults_done("logit", f"journal:///{tmp_path / 'none.journal'}", tmp_path)


def test_a_job_stopped_at_the_deadline_is_not_marked_done(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "sweep_done", lambda method, sweeps_dir=None: True)
    calls = []
    monkeypatch.setattr(study_run, "run_subprocess", lambda job, *_: calls.append(job.name) or ("stopped", 5.0))
    progress = study_run.Progress(tmp_path / "study-v2")
    study_run.run_queue(0.01, progress, log=lambda line: None)
    assert calls == ["teacher"] and progress.load()["jobs"] == {}  # it resumes next session
    assert "begun, hours so far: teacher 0.00" in study_run.status(progress)


def test_a_job_counts_the_hours_of_every_session_it_ran_in(tmp_path, monkeypatch):
    """Cut at two deadlines, then finished: the job's hours are the three stretches', not the last one's."""
    monkeypatch.setattr(study, "sweep_done", lambda method, sweeps_dir=None: True)
    outcomes = iter([("stopped", 3600.0), ("stopped", 1800.0), ("ok", 900.0)])
    monkeypatch.setattr(study_run, "run_subprocess", lambda job, *_: next(outcomes) if job.name == "teacher"
                        else ("stopped", 1.0))  # fmt: skip
    progress = study_run.Progress(tmp_path / "study-v2")
    for _ in range(2):
        study_run.run_queue(1.0, progress, log=lambda line: None)
    assert "begun, hours so far: teacher 1.50" in study_run.status(progress)
    study_run.run_queue(1.0, progress, log=lambda line: None)
    state = progress.load()
    assert state["jobs"]["teacher"]["seconds"] == 6300 and state["jobs"]["teacher"]["stretches"] == 3
    assert [s["outcome"] for s in state["stretches"]["teacher"]] == ["stopped", "stopped", "ok"]
    assert "| 1.75 | 3 |" in study_run.status(progress)


def test_a_job_that_ran_on_two_cpus_shows_both_flag_sets(tmp_path, monkeypatch):
    """Cut on an EPYC with AVX2 only, finished on one with AVX512-BF16: the status names both, in order."""
    monkeypatch.setattr(study, "sweep_done", lambda method, sweeps_dir=None: True)
    outcomes = iter([("stopped", 60.0), ("ok", 60.0)])
    monkeypatch.setattr(study_run, "run_subprocess", lambda job, *_: next(outcomes) if job.name == "teacher"
                        else ("stopped", 1.0))  # fmt: skip
    progress = study_run.Progress(tmp_path / "study-v2")
    for flags in (["avx2"], ["avx2", "avx512f", "avx512_bf16"]):
        monkeypatch.setattr(study_run, "cpu_features", lambda flags=flags: flags)
        study_run.run_queue(1.0, progress, log=lambda line: None)
    state = progress.load()
    assert [s["cpu_features"] for s in state["stretches"]["teacher"]] == [["avx2"], ["avx2", "avx512f", "avx512_bf16"]]
    assert "| teacher | cpu: " in study_run.status(progress)
    assert " | avx2 / avx2 avx512f avx512_bf16 | 0.03 | 2 |" in study_run.status(progress)


def test_flags_of_stretches_kept_before_they_were_recorded_read_not_recorded():
    job = {"cpu_features": ["avx2", "avx512f", "avx512_bf16"]}  # written when the job finished: its last stretch
    assert study_run.flag_sets(job, [{}, {}]) == "not recorded / avx2 avx512f avx512_bf16"
    assert study_run.flag_sets(job, []) == "avx2 avx512f avx512_bf16"  # a job from before stretches were kept
    assert study_run.flag_sets({}, []) == "not recorded"
    assert study_run.flag_sets(job, [{"cpu_features": ["avx2"]}, {}]) == "avx2 / avx2 avx512f avx512_bf16"


def tiny_study(tmp_path, epochs: int):
    """A 200-image synthetic study with a one-epoch teacher: ``(cfg, data, teacher)``."""
    from kd_utils.teacher import prepare_teacher

    data_cfg = DataConfig(dataset="synthetic", train_size=200, val_size=50, test_size=50)
    train = TrainConfig(epochs=epochs, batch_size=32, device="cpu", precision="fp32", progress=False)
    cfg = ExperimentConfig(data=data_cfg, train=train, checkpoint_dir=str(tmp_path), teacher_epochs=1,
                           allow_weak_teacher=True)  # fmt: skip
    data = prepare_data(data_cfg)
    return cfg, data, prepare_teacher(cfg, data, log=None)


@pytest.mark.slow
def test_the_ablations_train_the_method_at_the_setting_of_the_run_they_take_apart(tmp_path, monkeypatch):
    tuned = {"temperature": 2.5, "alpha": 0.6, "regressor_weight": 3.0, "hint_epochs": 1}
    monkeypatch.setattr(study, "tuned_settings", lambda sweeps_dir, method: (tuned, f"sweep of {method}"))
    cfg, data, teacher = tiny_study(tmp_path, epochs=1)
    path = tmp_path / "runs.json"
    records = study.ablation_runs(cfg, data, teacher, study.ABLATIONS, [0, 1], None, path, log=None)
    assert [(r.name, r.seed, r.role, r.method) for r in records] == [
        ("logit+regressor-no-regressor", 0, "ablation", "logit"), ("logit+regressor-no-regressor", 1, "ablation", "logit"),
        ("fitnets-no-hint", 0, "ablation", "logit"), ("fitnets-no-hint", 1, "ablation", "logit"),
    ]  # fmt: skip
    for r in records:
        assert (r.config["distill"]["temperature"], r.config["distill"]["alpha"]) == (2.5, 0.6)
    assert [r.epochs for r in records] == [1, 1, 2, 2]  # fitnets' hint epoch becomes a logit-KD epoch
    assert records[0].extra["ablation"]["of"] == "logit+regressor-tuned"
    assert records[2].extra["ablation"]["of"] == "fitnets-tuned"
    assert len(load_records(path)) == 4


def test_a_comparison_runs_the_teacher_once_an_epoch_for_all_its_methods(tmp_path, monkeypatch):
    """``compare_methods`` tells the teacher cache every output its methods read: logit KD's teacher pass stores
    the pooled maps and attention maps too, so the later methods of the seed never run the teacher."""
    monkeypatch.setattr(study, "tuned_settings", lambda sweeps_dir, method: (None, "defaults"))
    cfg, data, teacher = tiny_study(tmp_path, epochs=2)
    records = study.compare_methods(cfg, data, teacher, ["logit", "hidden", "at", "rkd"], [0], log=None)
    caches = {r.method: (r.extra["teacher_cache"]["hits"], r.extra["teacher_cache"]["misses"]) for r in records[1:]}
    assert caches == {"logit": (0, 2), "hidden": (2, 0), "at": (2, 0), "rkd": (2, 0)}
    assert teacher.outputs_ahead == ()  # the caller's teacher is left as it was


def test_the_cli_study_runs_the_teacher_once_an_epoch_for_all_its_methods(tmp_path):
    cfg, _, _ = tiny_study(tmp_path, epochs=2)
    records = study.run_study(["logit", "rkd", "hidden"], cfg, log=None)
    caches = {r.method: (r.extra["teacher_cache"]["hits"], r.extra["teacher_cache"]["misses"])
              for r in records if "teacher_cache" in r.extra}  # fmt: skip
    assert caches == {"logit": (0, 2), "rkd": (2, 0), "hidden": (2, 0)}


@pytest.mark.slow
def test_each_kind_of_job_makes_its_notebooks_calls_and_appends_its_records(tmp_path, monkeypatch):
    from kd_utils import notebook

    small = {**notebook.PROFILES["smoke"], "train_size": 600, "val_size": 200, "test_size": 200, "seeds": (1,)}
    monkeypatch.setitem(notebook.PROFILES, "smoke", small)
    monkeypatch.setattr(study, "FEW_LABEL_FRACTIONS", (0.1,))
    monkeypatch.setattr(study, "LOGIT_METHODS", ("logit",))  # few labels: the best of one
    path = tmp_path / "records.json"
    jobs = {j.name: j for j in study_run.runner_jobs((1,), (0.1,))}
    monkeypatch.setattr(study, "SWEEP_ORDER", ("logit+regressor", "fitnets"))  # the methods the ablations take apart
    # the few-label teacher learns from 60 labels for 2 epochs: near chance on some CPUs (validation accuracy
    # 0.150 against the refusal's 1.5 x 0.1 on an AVX512-BF16 EPYC, above it on an AVX2 one). What this test asks is
    # that each job makes its calls; the refusal has its own test (test_cli.py)
    monkeypatch.setattr("kd_utils.teacher.CHANCE_FACTOR", 0.0)
    for name in ("teacher", "05-seed-1", "05-regressor", "04-baseline-1", "05-few-0.1"):  # as `study job` runs them
        study_run.run_job(jobs[name], "smoke", "fashion-mnist", str(tmp_path / "out"), path, sweep_only=True)
    names = {(r.name, r.seed) for r in load_records(path)}
    assert {("teacher", 0), ("baseline", 1), ("final-baseline", 1)} <= names  # SEED 0: the teacher's
    assert {("logit+regressor", 1), ("fitnets", 1)} <= names  # the seed job's methods (smoke: no sweep, defaults)
    assert ("regressor", 1) in names  # a deferred method's own job
    assert {("logit+regressor-no-regressor", 1), ("fitnets-no-hint", 1), ("baseline@10%labels", 1)} <= names
    assert {("logit@10%labels", 1), ("teacher@10%labels", 0), ("logit-semi@10%labels", 1)} <= names


def test_every_run_the_notebooks_open_at_seed_0_is_trained_by_a_job(tmp_path, monkeypatch):
    """Notebooks 00-04 set their SEED-0 runs beside a seed-0 baseline: the 01-03 job trains it, so that `make study`
    finds it finished (and trained on the 15-epoch comparison's machine class) rather than training it then."""
    from kd_utils import notebook
    from kd_utils.runs import run_dir

    small = {**notebook.PROFILES["smoke"], "train_size": 300, "val_size": 100, "test_size": 100, "epochs": 1}
    monkeypatch.setitem(notebook.PROFILES, "smoke", small)
    monkeypatch.setattr(study, "CANDIDATES", ("logit",))
    out = str(tmp_path / "out")
    study_run.run_job(study_run.runner_jobs()[0], "smoke", "fashion-mnist", out, None, sweep_only=True)
    [candidates] = [j for j in study_run.runner_jobs() if j.kind == "candidates"]
    study_run.run_job(candidates, "smoke", "fashion-mnist", out, None, sweep_only=True)
    for name in ("00_baseline", "01_logit_distillation", "04_final_run"):
        session = notebook.setup(name, "smoke", "fashion-mnist", output_dir=out, use_drive=False, log=None)
        assert (run_dir(session.cfg, "baseline") / "last.pt").exists(), name


def test_the_study_trains_in_fp32_everywhere_and_keeps_its_stored_teacher(monkeypatch):
    from kd_utils.config import from_flags
    from kd_utils.notebook import setup
    from kd_utils.runs import run_dir

    session = setup("05_method_comparison", "full", "fashion-mnist", environ={"KD_PRECISION": study.STUDY_PRECISION},
                    use_drive=False, log=None)  # fmt: skip
    assert session.cfg.train.precision == "fp32" and session.seeds == study.STUDY_SEEDS  # not the sweeps' seed 0
    stored = Path(__file__).resolve().parents[1] / "checkpoints" / "teachers"
    assert (stored / run_dir(session.cfg, "teacher").name / "best.pt").exists()  # the teacher trained at "auto"
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert f"KD_PRECISION={study.STUDY_PRECISION}" in makefile  # make study opens the runs `study run` trained
    assert "KD_SEED= KD_EPOCHS= KD_OUTPUT_DIR=" in makefile  # a shell's leftovers cannot point it at other runs
    with pytest.raises(ValueError, match="--teacher-precision fp64: choose from"):
        from_flags({"teacher-precision": "fp64"}).validate()


def compared_record(name, seed, machine="cpu: AMD EPYC, 2 cores", fraction=1.0, walked=None):
    from kd_utils.records import Segment

    role = "baseline" if name.startswith("baseline") else "method"
    cfg = ExperimentConfig(
        data=DataConfig(dataset="synthetic", labeled_fraction=fraction), train=TrainConfig(seed=seed)
    )
    segment = Segment(machine, "2.14.1", "float32")
    stored = {**identity(role if role == "baseline" else "logit", name, role, cfg, (segment,)), "config": asdict(cfg),
              "test": {"f1": 0.9}, "data_sizes": {"labeled": 100}, "train_images": walked}  # fmt: skip
    return RunRecord.from_dict(stored)


def test_the_audit_checks_what_the_issue_asks_of_the_stored_study(tmp_path):
    seeds = study.STUDY_SEEDS
    records = [compared_record("baseline", s) for s in seeds] + [compared_record("logit-tuned", s) for s in seeds]
    records += [compared_record("dist-tuned", s, "cuda: NVIDIA H200" if s == 5 else "cpu: AMD EPYC, 2 cores")
                for s in seeds[:-1]]  # fmt: skip
    records += [compared_record("baseline@10%labels", s, fraction=0.1, walked=100 if s > 1 else 1000) for s in seeds]
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    trials = [{"number": k, "state": "PRUNED" if k % 2 else "COMPLETE", "default": k == 0,
               "machine": "cpu: AMD EPYC, 2 cores float32"} for k in range(16)]  # fmt: skip
    (sweeps / f"{study.sweep_name('logit')}.json").write_text(json.dumps({"trials": trials}))
    (sweeps / f"{study.sweep_name('dist')}.json").write_text(json.dumps({"trials": trials[1:]}))  # no default first
    retried = [{**trials[0], "state": "FAIL"}, *trials[1:], {**trials[0], "number": 16}]  # trial 0 cut by a session end
    (sweeps / f"{study.sweep_name('dkd')}.json").write_text(json.dumps({"trials": retried}))
    checks = {what: (ok, detail) for what, ok, detail in study_run.audit(records, sweeps)}
    assert checks["one machine class: 30 epochs, 1 of the labels (14 runs)"][0] is True  # the H200 seed is seed 5: cut
    assert checks["5 seeds: logit-tuned"] == (True, "all")
    assert checks["5 seeds: dist-tuned"] == (False, "missing seeds [5]")
    assert checks["labels on every step: baseline@10%labels seed 1"][0] is False
    assert checks["labels on every step: baseline@10%labels seed 2"][0] is True
    sweep_checks = {w.split(":")[0]: (ok, d) for w, (ok, d) in checks.items() if w.startswith("sweep ")}
    assert sweep_checks[f"sweep {study.sweep_name('logit')}"][0] is True
    assert sweep_checks[f"sweep {study.sweep_name('dist')}"] == (False, "15 trials, trial 0 is not the default, "
                                                                  "cpu: AMD EPYC, 2 cores float32")  # fmt: skip
    assert sweep_checks[f"sweep {study.sweep_name('rkd')}"] == (False, "not run yet")
    assert sweep_checks[f"sweep {study.sweep_name('dkd')}"][0] is True  # 15 + the retried default
    mixed = records + [compared_record("at-tuned", s, "cuda: NVIDIA H200") for s in seeds]
    assert not dict((w, ok) for w, ok, _ in study_run.audit(mixed, sweeps))[
        "one machine class: 30 epochs, 1 of the labels (19 runs)"
    ]
    assert study_run.format_audit([]).startswith("nothing to check")
    assert "every job of the study finished" not in dict((w, ok) for w, ok, _ in study_run.audit(records, sweeps))
    left = study_run.audit(records, sweeps, jobs_left=["05-at", "04-final-1"])[0]
    assert left == ("every job of the study finished", False, "2 left: 05-at, 04-final-1")
    assert study_run.audit(records, sweeps, jobs_left=[])[0] == ("every job of the study finished", True, "all")


def test_the_report_renders_the_re_runs_progress_into_the_readme(tmp_path, monkeypatch):
    from kd_utils.report import render_report

    monkeypatch.setattr(study, "sweep_done", lambda method, sweeps_dir=None: False)  # not the checkout's journal
    progress = study_run.Progress(tmp_path / "results" / "fashion-mnist" / study_run.PROGRESS)
    progress.save({"jobs": {"teacher": {"machine": "cpu: X float32", "seconds": 7200, "finished": "2026-12-01"}},
                   "groups": {"sweep-logit": "cpu: X float32"}})  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- study-progress:start -->\nold\n<!-- study-progress:end -->\nb\n")
    render_report(tmp_path / "results", tmp_path / "Pictures", readme)
    text = readme.read_text()
    assert (
        "| teacher | cpu: X float32 | not recorded | 2.00 | last only | 2026-12-01 |" in text
        and "| sweep-logit | cpu: X float32 |" in text
    )
    assert "old" not in text and "jobs left: sweep-logit, sweep-dist" in text


def test_a_job_gives_its_sweep_process_time_to_clean_up_after_ctrl_c(tmp_path):
    """SIGINT reaches the job and its sweep (one process group); the job waits for the sweep to finish its own
    clean-up (queueing its cut trial again), where ``subprocess.run`` would kill it after 0.25 s."""
    marker, ready = tmp_path / "cleaned-up", tmp_path / "ready"
    child = (f"import pathlib, time\npathlib.Path({str(ready)!r}).touch()\n"
             f"try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
             f"    time.sleep(1.0)\n    pathlib.Path({str(marker)!r}).touch()\n    raise SystemExit(130)\n")  # fmt: skip
    job = (
        f"import sys; from kd_utils.study_run import run_to_its_end; run_to_its_end([sys.executable, '-c', {child!r}])"
    )
    log = (tmp_path / "stderr").open("w")  # not a pipe: the job's exit, not the sweep's, ends the wait below
    proc = subprocess.Popen([sys.executable, "-c", job], start_new_session=True, preexec_fn=study_run.restore_sigint,
                            stderr=log)  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    log.close()
    assert marker.exists()  # the sweep finished its clean-up before the job exited
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in (tmp_path / "stderr").read_text()


def test_the_few_label_method_is_one_whose_teacher_term_reads_every_image():
    """DKD splits the labeled class off, so on an image without a label it has no teacher term: no candidate."""
    assert "dkd" not in study.LOGIT_METHODS and {"logit", "dist"} <= set(study.LOGIT_METHODS)

    def run(method, val_f1):
        return replace(compared_record(method, 1), method=method, best_val_f1=val_f1)

    records = [run("dkd", 0.99), run("logit", 0.90), run("logit", 0.94), run("dist", 0.91)]
    assert study.best_logit_method(records) == "logit"  # mean 0.92 over its seeds; dkd's 0.99 is not read
    with pytest.raises(ValueError, match="no run of logit, dist"):
        study.best_logit_method([run("dkd", 0.99)])


def test_a_full_study_job_without_its_sweeps_choice_is_refused(tmp_path, monkeypatch):
    jobs = {j.name: j for j in study_run.runner_jobs()}
    with pytest.raises(ValueError, match=r"study job 05-seed-2: no finished sweep of logit, dist, dkd, logit\+ls, "):
        study_run.check_tuned(jobs["05-seed-2"], tmp_path)
    for name in ("01-03", "04-final-1"):  # no tuned method: 01-03 at the defaults, 04 at 01-03's best
        study_run.check_tuned(jobs[name], tmp_path)
    monkeypatch.setattr(study, "tuned_settings", lambda sweeps_dir, method: ({"temperature": 2.5}, "sweep x"))
    study_run.check_tuned(jobs["05-few-0.1"], tmp_path)


def test_the_study_commands_work_on_the_checkout_only(capsys, tmp_path, monkeypatch):
    from kd_utils import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["study", "status"]) == 2
    err = capsys.readouterr().err.strip()
    assert "study status: run it from the repository root" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written where it was started
    assert cli.main(["study", "jobs"]) == 0  # the list reads no file
