"""The study's protocol, written once: which runs it trains, in which order, at which setting, paired with which
baseline, shown in which notebook (its constants are in ``protocol.py``). Notebooks 04 and 05, ``study run``
(``study_run.py``), ``run --experiment study``, ``make sweeps`` and ``benchmarks/gpu_study.py`` all read it from
here.

Pairing is the records' (``RunRecord.pairing_key``: same data stream, student, length and label budget, then by
training seed): every method run below is compared with the labels-only run of its own length and budget; an
ablation is read against the whole run it takes a part from (``comparison.ablation_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .config import ExperimentConfig
from .data import DataSplits, prepare_data
from .datasets import dataset_info
from .distill import STUDENT_METHODS, DistillConfig
from .models import build_model
from .packs import records_of, train_runs
from .protocol import (  # noqa: F401 - the protocol's names, read through the study
    CANDIDATES,
    DEFERRED_METHODS,
    FEW_LABEL_FRACTIONS,
    FINAL_EPOCHS,
    LOGIT_METHODS,
    SEMI_SUPERVISED,
    STUDY_EPOCHS,
    STUDY_PRECISION,
    STUDY_SEEDS,
    STUDY_TEACHER,
    SWEEP_DATASET,
    SWEEP_ORDER,
    SWEEP_SEED,
    SWEEP_SETTINGS,
    SWEEP_STORAGE,
    SWEEP_VERSION,
    SWEEPS_DIR,
)
from .records import RunRecord
from .results import append_run, load_records
from .runs import run_dir, teacher_outputs_of, train_experiment, validate
from .teacher import FrozenTeacher, prepare_teacher
from .train import checked_resume_file


@dataclass(frozen=True)
class Job:
    """One piece of the study a worker can train on its own, once the jobs it ``needs`` are done."""

    name: str  # "04-final-1", "05-dist", "05-few-0.1", "sweep-logit"
    notebook: str  # the notebook that shows its runs
    kind: str  # teacher | sweep | candidates | final-baseline | compare | seed | ablations | final | few-labels
    arg: int | float | str | None = None  # the seed (final runs, seed), method (compare, sweep) or label fraction
    needs: tuple[str, ...] = ()


def study_jobs(
    seeds: Sequence[int] = STUDY_SEEDS,
    sweeps: Sequence[str] = (),
    methods: Sequence[str] = STUDENT_METHODS,
    fractions: Sequence[float] = FEW_LABEL_FRACTIONS,
) -> list[Job]:
    """Every job of the study, in the order to start them once their needs are met (longest chains first; one at
    a time, this order runs each sweep before the runs that read it); ``sweeps`` are the methods whose sweep is
    still to run (that sweep's job then trains its method's comparison, at the setting it chose)."""
    jobs = [Job("teacher", "00_baseline", "teacher")]  # the teacher's choice and load, the 15-epoch baselines
    jobs += [Job(f"sweep-{m}", "05_method_comparison", "sweep", m, ("teacher",)) for m in SWEEP_ORDER if m in sweeps]
    jobs += [Job("01-03", "04_final_run", "candidates", None, ("teacher",))]
    jobs += [Job(f"04-baseline-{s}", "04_final_run", "final-baseline", s, ("teacher",)) for s in seeds]
    ordered = [m for m in SWEEP_ORDER if m in methods] + [m for m in methods if m not in SWEEP_ORDER]
    jobs += [Job(f"05-{m}", "05_method_comparison", "compare", m, ("teacher",)) for m in ordered if m not in sweeps]

    def job_of(method: str) -> str:
        return f"sweep-{method}" if method in sweeps else f"05-{method}"

    parts = tuple(job_of(a.of) for a in ABLATIONS if a.of in methods)
    jobs += [Job("05-ablations", "05_method_comparison", "ablations", None, ("teacher", *parts))]
    jobs += [Job(f"04-final-{s}", "04_final_run", "final", s, ("teacher", "01-03")) for s in seeds]
    logit_jobs = tuple(job_of(m) for m in LOGIT_METHODS if m in methods)
    jobs += [Job(f"05-few-{f:g}", "05_method_comparison", "few-labels", f, ("teacher", *logit_jobs)) for f in fractions]
    return jobs


def sweep_argv(method: str, checkpoint_dir: str = "checkpoints") -> list[str]:
    """The ``python -m kd_utils`` arguments of one method's study sweep (``make sweeps``, the GPU study)."""
    argv = ["sweep", "--method", method, "--dataset", SWEEP_DATASET, "--seed", str(SWEEP_SEED),
            "--study-name", sweep_name(method), "--precision", STUDY_PRECISION]  # fmt: skip
    for key, value in {**STUDY_TEACHER, **SWEEP_SETTINGS}.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    storage = SWEEP_STORAGE if checkpoint_dir == "checkpoints" else f"journal:///{checkpoint_dir}/sweeps-v2.journal"
    return [*argv, "--checkpoint-dir", checkpoint_dir, "--results-dir", str(SWEEPS_DIR), "--storage", storage,
            "--no-progress", "--resume"]  # fmt: skip


def sweep_name(method: str) -> str:
    """The study's sweep of ``method``: ``fashion-mnist-logit-seed0-v2``."""
    return f"{SWEEP_DATASET}-{method.replace('+', '_')}-seed{SWEEP_SEED}-{SWEEP_VERSION}"


def stored_sweep_name(method: str) -> str:
    """The stored study's (v1) sweep of ``method``: 6 random trials of 5 epochs, never read as a tuned setting."""
    return f"{SWEEP_DATASET}-{method.replace('+', '_')}-seed{SWEEP_SEED}"


def sweep_done(method: str, sweeps_dir: Path = SWEEPS_DIR) -> bool:
    """A finished sweep has scored its choice on test (``<study>-best.json``)."""
    return (sweeps_dir / f"{sweep_name(method)}-best.json").exists()


def defaults_done(method: str, storage: str = SWEEP_STORAGE, sweeps_dir: Path = SWEEPS_DIR) -> bool:
    """The sweep of ``method`` has finished its trial at the defaults (state COMPLETE in ``storage``, a journal
    file): that trial's folder is 01-03's run of ``method`` (same settings, same folder), whose validation F1
    04 reads to pick its method, so neither waits for the rest of the sweep. Without Optuna (the ``tune`` extra)
    the journal is unread: only a scored sweep counts."""
    if sweep_done(method, sweeps_dir):
        return True
    try:
        import optuna
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        from .storage import journal_path  # imports Optuna
    except ImportError:
        return False
    path = journal_path(storage)
    if path is None or not path.is_file():
        return False
    try:
        trials = optuna.load_study(study_name=sweep_name(method), storage=JournalStorage(JournalFileBackend(str(path))),
                                   ).get_trials(deepcopy=False)  # fmt: skip
    except KeyError:  # no such study in the journal yet
        return False
    return any(t.user_attrs.get("default") and t.state == optuna.trial.TrialState.COMPLETE for t in trials)


# --- the runs -----------------------------------------------------------------------------------------------
Log = Callable[[str], None] | None


def with_seed(cfg: ExperimentConfig, seed: int, epochs: int | None = None) -> ExperimentConfig:
    return replace(cfg, train=replace(cfg.train, seed=seed, epochs=epochs or cfg.train.epochs))


def best_by_validation(records: dict[str, RunRecord] | dict[str, list[RunRecord]]) -> str:
    """The method with the highest best-epoch validation macro F1, averaged over its seeds (the test set plays
    no part)."""

    def score(name: str) -> float:
        runs = records[name] if isinstance(records[name], list) else [records[name]]
        return sum(r.best_val_f1 for r in runs) / len(runs)

    return max(records, key=score)


def train_candidates(cfg: ExperimentConfig, data: DataSplits, teacher: FrozenTeacher, log: Log = print) -> dict:
    """Notebooks 01-03's runs at the defaults, ``{method: record}`` (finished ones are only evaluated)."""
    teacher = with_outputs_ahead(teacher, [(m, cfg) for m in CANDIDATES], data)
    return {m: train_experiment(m, cfg, data, teacher, log)[1] for m in CANDIDATES}


def final_runs(
    cfg: ExperimentConfig, data: DataSplits, teacher: FrozenTeacher, method: str, seeds: Sequence[int], log: Log = print
) -> list[RunRecord]:
    """Notebook 04: ``method`` for ``cfg.train.epochs`` epochs per seed, each next to a labels-only run as long
    (``final-baseline``), so the gain is not the longer schedule's."""
    seed_cfgs = [with_seed(cfg, seed) for seed in seeds]
    records = []
    for experiment, name, run_teacher in (("baseline", "final-baseline", None), (method, "final", teacher)):
        outcomes = train_runs(experiment, seed_cfgs, data, run_teacher, log, [name] * len(seeds), [name] * len(seeds))
        records += records_of(outcomes)
    return records


def tuned_settings(sweeps_dir: str | Path | None, method: str) -> tuple[dict | None, str]:
    """The distillation settings a sweep chose for ``method`` by validation F1 (the latest tuned record of that
    method under ``sweeps_dir``, the stored study's v1 sweeps left out), and where they come from;
    ``(None, "defaults")`` without one."""
    found, source = None, "defaults"
    for path in sorted(Path(sweeps_dir).glob("*.json")) if sweeps_dir and Path(sweeps_dir).is_dir() else []:
        try:
            records = load_records(path)
        except ValueError:
            continue  # a trials file, not a results file
        latest = next((r for r in reversed(records) if r.method == method and r.get("sweep")
                       and r.get("sweep", {}).get("study") != stored_sweep_name(method)), None)  # fmt: skip
        if latest is not None:
            found, source = latest, f"sweep {path.name} ({latest.timestamp or '?'})"
    return (found.config["distill"] if found else None), source


def compare_methods(
    cfg: ExperimentConfig,
    data: DataSplits,
    teacher: FrozenTeacher,
    methods: Sequence[str],
    seeds: Sequence[int],
    sweeps_dir: str | Path | None = None,
    results_path: str | Path | None = None,
    log: Log = print,
    variant: str = "",
    baseline: bool = True,
) -> list[RunRecord]:
    """Every method at its tuned setting (``tuned_settings``, else the defaults) and the baseline, once per
    training seed, all with the same teacher; each record appended to ``results_path``. A run at a sweep's
    setting is named ``<method>-tuned``, so it never shadows a run of the same method at the defaults;
    ``variant`` is appended to the methods' names (``-semi``: distilled from a few-label teacher), and
    ``baseline=False`` leaves the labels-only runs out (a variant shares them)."""
    settings = {m: tuned_settings(sweeps_dir, m) for m in methods}
    seed_cfgs = [with_seed(cfg, seed) for seed in seeds]
    runs = [("baseline", "baseline", seed_cfgs)] if baseline else []
    for method in methods:
        tuned, _ = settings[method]
        distill = DistillConfig(**{**asdict(cfg.distill), **(tuned or {})})
        name = run_name(method, tuned is not None) + variant
        runs.append((method, name, [replace(c, distill=distill) for c in seed_cfgs]))
    if methods:
        teacher = with_outputs_ahead(teacher, [(m, cfgs[0]) for m, _, cfgs in runs if m != "baseline"], data)
    records = []

    def done(record: RunRecord) -> None:
        record.extra["settings_from"] = settings[record.method][1] if record.method in settings else "labels only"
        if results_path is not None:
            append_run(results_path, record, replace_same_run=True)  # a re-run replaces its own record
        records.append(record)

    for experiment, name, run_cfgs in runs:  # each method's seeds packed on a GPU
        run_teacher = teacher if experiment != "baseline" else None
        records_of(train_runs(experiment, run_cfgs, data, run_teacher, log, [name] * len(seeds)), done)
    return records


def with_outputs_ahead(
    teacher: FrozenTeacher, runs: Sequence[tuple[str, ExperimentConfig]], data: DataSplits
) -> FrozenTeacher:
    """``teacher`` that tells the teacher cache what each of ``runs`` (method, config) will read, so the first
    run's teacher pass an epoch computes it all (``teacher_cache``), not one pass per kind of output."""
    groups = dict.fromkeys(tuple(teacher_outputs_of(method, cfg, data, teacher.model)) for method, cfg in runs)
    return replace(teacher, outputs_ahead=tuple(g for g in groups if g))


def run_name(method: str, tuned: bool) -> str:
    """``<method>-tuned`` at a sweep's setting, so it never shadows 01-03's run of the method at the defaults."""
    return f"{method}-tuned" if tuned else method


# --- ablations: a method's run against the same run without one of its parts ---------------------------------
@dataclass(frozen=True)
class Ablation:
    """``name`` trains ``method`` at the loss settings of ``of``'s study run (its sweep's choice), so that the two
    differ by ``differs`` alone; ``longer`` adds ``of``'s hint epochs to the length (the same total epochs)."""

    name: str
    of: str
    method: str
    differs: str
    longer: bool = False


ABLATIONS = (
    Ablation("logit+regressor-no-regressor", "logit+regressor", "logit", "the regressor term (same T, alpha)"),
    Ablation("fitnets-no-hint", "fitnets", "logit",
             "the hint stage, replaced by as many logit-KD epochs (same T, alpha, same total epochs)", longer=True),
)  # fmt: skip


def ablation_runs(
    cfg: ExperimentConfig,
    data: DataSplits,
    teacher: FrozenTeacher,
    ablations: Sequence[Ablation],
    seeds: Sequence[int],
    sweeps_dir: str | Path | None = None,
    results_path: str | Path | None = None,
    log: Log = print,
) -> list[RunRecord]:
    """Each ablation once per training seed (role ``ablation``), at the setting ``compare_methods`` trains its
    ``of`` method with; the record says which run it isolates a part of (``extra["ablation"]``)."""
    records = []
    for ablation in ablations:
        tuned, source = tuned_settings(sweeps_dir, ablation.of)
        distill = DistillConfig(**{**asdict(cfg.distill), **(tuned or {})})
        epochs = cfg.train.epochs + (distill.hint_epochs if ablation.longer else 0)
        run_cfgs = [replace(with_seed(cfg, seed, epochs), distill=distill) for seed in seeds]
        n = len(run_cfgs)
        outcomes = train_runs(ablation.method, run_cfgs, data, teacher, log, [ablation.name] * n, ["ablation"] * n)

        def done(record: RunRecord, ablation: Ablation = ablation, source: str = source) -> None:
            of = run_name(ablation.of, source != "defaults")
            record.extra.update(ablation={"of": of, "differs": ablation.differs}, settings_from=source)
            if results_path is not None:
                append_run(results_path, record, replace_same_run=True)
            records.append(record)

        records_of(outcomes, done)
    return records


def few_label_runs(
    cfg: ExperimentConfig,
    teacher: FrozenTeacher,
    method: str,
    seeds: Sequence[int],
    sweeps_dir: str | Path | None = None,
    results_path: str | Path | None = None,
    log: Log = print,
    semi_supervised: bool = True,
    fractions: Sequence[float] | None = None,
) -> list[RunRecord]:
    """Notebook 05: ``method`` and the baseline with each of ``fractions`` (default ``FEW_LABEL_FRACTIONS``) of
    the training labels.

    Labels-only runs walk the labeled images alone (``runs.training_data``), validation keeps the same fraction
    of its images (``prepare_data``). ``method`` learns from the all-label ``teacher`` (named as usual) and, with
    ``semi_supervised``, from a teacher trained on the labeled fraction alone (``teacher@<f>labels``; the
    students ``<method>[-tuned]-semi@<f>labels``): the setting in which no label beyond the fraction is ever seen.
    """
    records = []
    for fraction in fractions or FEW_LABEL_FRACTIONS:
        few_cfg = replace(cfg, data=replace(cfg.data, labeled_fraction=fraction))
        few_data = prepare_data(few_cfg.data)
        records += compare_methods(few_cfg, few_data, teacher, [method], seeds, sweeps_dir, results_path, log)
        if semi_supervised:  # a new teacher trains at its students' precision (the stored one keeps its own)
            semi_cfg = replace(few_cfg, teacher_precision=None)
            few_teacher = prepare_teacher(semi_cfg, few_data, log)
            records.append(few_teacher.record)
            if results_path is not None:
                append_run(results_path, few_teacher.record, replace_same_run=True)
            records += compare_methods(semi_cfg, few_data, few_teacher, [method], seeds, sweeps_dir, results_path,
                                       log, variant=SEMI_SUPERVISED, baseline=False)  # fmt: skip
    return records


def best_logit_method(records: Sequence[RunRecord]) -> str:
    """The logit-based method (``LOGIT_METHODS``, those among ``records``) with the best mean validation F1."""
    runs = {m: [r for r in records if r.method == m] for m in LOGIT_METHODS}
    runs = {m: found for m, found in runs.items() if found}
    if not runs:
        raise ValueError(f"no run of {', '.join(LOGIT_METHODS)} to choose the few-label runs' method from")
    return best_by_validation(runs)


# --- `run --experiment ...`: teacher, baseline, methods, per seed ---------------------------------------------
def run_study(
    experiments: list[str],
    cfg: ExperimentConfig,
    results_path: str | Path | None = None,
    log: Log = print,
    final_epochs: int | None = None,
    seeds: list[int] | None = None,
    teacher_per_seed: bool = False,
) -> list[RunRecord]:
    """Teacher, baseline and the requested methods for every student seed; each record appended to ``results_path``.

    One teacher (trained with the first seed) serves every student seed unless ``teacher_per_seed``; each
    record says which teacher it learned from. With ``final_epochs``, the method with the best mean validation
    F1 is trained again for that many epochs next to a baseline as long (``final_runs``), for every seed.
    """
    from .summary import format_metrics

    validate(cfg)
    seeds = list(seeds) if seeds else [cfg.train.seed]
    if final_epochs is not None and final_epochs < 1:
        raise ValueError(f"--final-epochs {final_epochs}: must be >= 1")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: each seed once")
    for seed in seeds:
        with_seed(cfg, seed).train.validate()  # each seed in range, named by the flag
    data = prepare_data(cfg.data)
    if log:
        log(f"data: {cfg.data.dataset} {data.sizes()}")
    records: list[RunRecord] = []

    def done(record: RunRecord) -> None:
        records.append(record)
        if results_path is not None:  # a resumed or repeated study replaces its own records (a CSV only appends)
            append_run(results_path, record, replace_same_run=Path(results_path).suffix == ".json")
        if log:
            log(format_metrics(record))

    methods = [e for e in experiments if e in STUDENT_METHODS]
    needs_teacher = bool(methods) or "teacher" in experiments
    seed_cfgs = [with_seed(cfg, seed) for seed in seeds]
    teacher = None
    if needs_teacher and not teacher_per_seed:
        teacher = prepare_teacher(seed_cfgs[0], data, log)
    check_resumable_runs(cfg, seeds, ["baseline", *methods], teacher, final_epochs)  # before anything is appended
    teachers = [teacher] * len(seeds)
    if teacher is not None:
        done(teacher.record)
    if needs_teacher and teacher_per_seed:  # trained first (packed where they can be), then each loaded and checked
        records_of(train_runs("teacher", seed_cfgs, data, log=log, test=False))
        teachers = [prepare_teacher(seed_cfg, data, log) for seed_cfg in seed_cfgs]
        for t in teachers:
            done(t.record)
    if "baseline" in experiments or methods:
        records_of(train_runs("baseline", seed_cfgs, data, log=log), done)
    per_method: dict[str, list[RunRecord]] = {m: [] for m in methods}
    if methods:  # each seed's teacher pass computes every method's outputs
        teachers = [with_outputs_ahead(t, [(m, c) for m in methods], data) for t, c in zip(teachers, seed_cfgs)]
    for method in methods:  # a method's seeds are one pack on a GPU
        per_method[method] = records_of(train_runs(method, seed_cfgs, data, teachers, log), done)
    if final_epochs is not None and methods:
        best = best_by_validation(per_method)
        if log:
            log(f"final run: {best} (best mean validation F1) for {final_epochs} epochs, with a baseline as long")
        long_cfg = replace(cfg, train=replace(cfg.train, epochs=final_epochs))
        for record in final_runs(long_cfg, data, teacher, best, seeds, log):
            done(record)
    return records


def check_resumable_runs(cfg, seeds, experiments, teacher, final_epochs) -> None:
    """With ``resume``, every ``last.pt`` the study will resume from must load and fit the student (keys, shapes,
    the record's fields); a damaged or foreign one is reported now, before any record is appended, rather than
    halfway through the study."""
    if not cfg.resume:
        return
    info = dataset_info(cfg.data.dataset)
    student = build_model(cfg.student, info.in_channels, info.num_classes)
    lengths = [cfg.train.epochs] + ([final_epochs] if final_epochs else [])
    for seed in seeds:
        for epochs in lengths:
            run_cfg = with_seed(cfg, seed, epochs)
            for experiment in experiments:
                folder = run_dir(run_cfg, experiment, teacher if experiment != "baseline" else None)
                for last in (folder / "last.pt", folder / "hint" / "last.pt"):
                    if last.exists():
                        checked_resume_file(last, student)


def format_jobs() -> str:
    """The study's jobs, one line each: what a GPU session (benchmarks/gpu_study.py) would start, in order."""
    jobs = study_jobs(sweeps=[m for m in STUDENT_METHODS if not sweep_done(m)])
    return "\n".join(f"{j.name:<20} {j.notebook:<22} needs {', '.join(j.needs) or '-'}" for j in jobs)
