"""Hyper-parameter sweeps chosen on validation: ``python -m kd_utils sweep --method logit --trials 20 ...``.

One Optuna study per (dataset, method, seed): every trial trains the method with the sampled settings on the
same data, teacher and training seed, and scores it by its best-epoch validation macro F1; the test split is
not read by any trial. At the end the best trial's run is loaded back from its checkpoints (``resume=True``
on a finished run trains nothing) and scored on the test set once; that record is appended to the results
file, next to a JSON file of every trial and a validation-F1 map of the two most important settings.

Several workers share a study through one ``--storage``: a journal file (the default,
``<results-dir>/sweeps.journal``: processes on one machine), a SQLite file (older studies; one writer at a time)
or a PostgreSQL/MySQL URL (several machines). Trial numbers are unique and ``--max-trials`` caps the total: a
trial whose number comes after ``max_trials`` counted (complete, pruned, running or queued) trials is skipped.
Running trials send a heartbeat (Optuna's, for a database; ``JournalHeartbeatStorage``'s, for a journal file); one
whose worker died (no heartbeat for ``GRACE_S``) is failed by the next worker to open the study and queued again with
the same settings (its run resumes from its last checkpoint, when one is there).
The TPE sampler of each worker is seeded by the training seed plus the worker's process id, so concurrent
workers explore different points (a sweep is reproducible in its settings and results, not in the order TPE
proposes them). The worker that finishes last, when no trial is still running, scores the chosen setting on
the test set; any later worker finds that record and does not append it twice.

Search spaces are written in the ``--param`` syntax (``NAME=low:high``, ``low:high:log`` or ``a,b,c``); a
``--param`` given on the command line replaces the method's default space, so list every setting to tune.
Under ``--sampler grid`` a range is the three points low, middle, high (geometric middle for ``log``).
List-valued settings (``level_weights``) are not tuned; fix them with ``--level-weights``.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
from filelock import FileLock
from matplotlib.ticker import FuncFormatter
from optuna.trial import TrialState

from .config import ExperimentConfig
from .data import prepare_data
from .distill import STUDENT_METHODS
from .flags import OneLineParser, config_from_args, fail
from .packed_train import resolve_pack
from .packs import train_runs
from .plots import save_figure
from .results import append_run, atomic_write, check_results_path, load_records, strict_json
from .runs import check_folder, run_dir, train_experiment, validate
from .search import Param, add_sweep_parser, format_trials, replay_command, search_space, with_values
from .storage import check_storage, heartbeats, open_storage
from .teacher import FrozenTeacher, prepare_teacher
from .train import NonFiniteLossError

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards ``--max-trials``: complete, pruned (a trial the pruner stopped early is
    still one of the sweep's), running or queued; not failed ones (they are queued again) nor the ones skipped
    as over the cap, nor one trained again by ``rerun``. So a sweep of 16 trials is 16 however its pruner and the
    sessions' ends cut it."""
    trials = study.get_trials(deepcopy=False, states=COUNTED)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}  # a trial trained again (see ``rerun``) counts once
    return [t for t in trials if "skipped" not in t.user_attrs and t.number not in rerun]


def counted_before(study: optuna.Study, number: int) -> int:
    """How many counted trials were created before trial ``number``.

    Trial numbers follow creation order in the storage, so a trial that sees ``max_trials`` counted ones before
    it is over the cap whatever the other workers do next: the cap is exact, not racy.
    """
    return sum(1 for t in counted_trials(study) if t.number < number)


def stop_at_cap(max_trials: int):
    """``study.optimize`` callback: this worker stops once the study counts ``max_trials`` trials."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if len(counted_trials(study)) >= max_trials:
            study.stop()

    return callback


def trial_row(trial: optuna.trial.FrozenTrial) -> dict:
    """One trial as saved in the trials file (no test metrics: trials never read the test split)."""
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "best_val_f1": trial.value,
        "best_epoch": attrs.get("best_epoch"),
        "seconds": attrs.get("seconds"),
        "worker": attrs.get("worker"),
        "pack": attrs.get("pack", 1),  # trials trained together as one network (1: apart)
        "default": bool(attrs.get("default")),  # trial 0: the method's default setting
        "machine": attrs.get("machine"),  # hardware and precision that trained it ("a + b" when resumed elsewhere)
        "val_f1": attrs.get("val_f1"),  # per epoch
        **({"error": attrs["error"]} if "error" in attrs else {}),
        **({"rerun_of": attrs["rerun_of"], "rerun_why": attrs.get("rerun_why")} if "rerun_of" in attrs else {}),
    }


@dataclass
class SweepPlan:
    """Everything a worker needs to know before it loads or trains anything (built and checked by ``plan_sweep``)."""

    method: str  # one of STUDENT_METHODS
    cfg: ExperimentConfig  # the fixed settings; the trials replace the tuned ones
    space: list[Param]  # the tuned settings
    name: str  # study name, also the stem of its files
    storage: str  # what Optuna opens: journal:///<absolute path> or a database URL (check_storage)
    sampler: str  # tpe | grid
    pruner: str  # none | median
    trials: int  # this worker's trials at most
    max_trials: int  # the study's counted trials at most, all workers together
    results_dir: Path  # trials file, figure, locks, default storage (sweeps.journal)
    results_path: Path  # the tuned run's record is appended here


def make_objective(plan: SweepPlan, data, teacher: FrozenTeacher, log):
    """The trial: train the method with the sampled settings (test split unread); its value is validation F1."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    max_trials = plan.max_trials

    def objective(trial: optuna.Trial) -> float:
        if counted_before(trial.study, trial.number) >= max_trials:
            trial.set_user_attr("skipped", f"over --max-trials {max_trials}")
            trial.study.stop()
            raise optuna.TrialPruned()
        trial.set_user_attr("worker", worker)
        values = {p.name: p.suggest(trial) for p in plan.space}
        try:
            cfg = with_values(plan.cfg, values)
            _, record = train_experiment(plan.method, cfg, data, teacher, log=None, name=f"trial-{trial.number}",
                                         test=False, on_epoch=prune_hook(trial))  # fmt: skip
        except NonFiniteLossError as err:  # a diverging setting is a failed trial, not a failed sweep
            trial.set_user_attr("error", str(err))
            if log:
                log(f"trial {trial.number}: {format_values(values)} diverged")
            raise
        except KeyboardInterrupt:  # Ctrl-C or a session's deadline: Optuna fails the trial, `requeue_interrupted`
            trial.set_user_attr("interrupted", trial.number)  # queues its settings again
            raise
        if describe_trial(trial, values, record, log):
            raise optuna.TrialPruned()
        return record.best_val_f1

    return objective


def describe_trial(trial: optuna.Trial, values: dict, record, log) -> bool:
    """Store a trained trial's attributes (best epoch, seconds, per-epoch validation F1, pack, machine class) and
    log it; True when its pruner stopped it early."""
    pruned = len(record.history) < record.epochs
    trial.set_user_attr("best_epoch", record.best_epoch)
    trial.set_user_attr("seconds", record.seconds)
    trial.set_user_attr("val_f1", [row["val_f1"] for row in record.history])
    trial.set_user_attr("pack", record.get("pack", {"k": 1})["k"])
    trial.set_user_attr("machine", " + ".join(dict.fromkeys(f"{s.hardware} {s.precision}" for s in record.trained_on)))
    if log:
        how = f"pruned after epoch {len(record.history)}" if pruned else f"epoch {record.best_epoch}"
        log(f"trial {trial.number}: {format_values(values)} -> val F1 {record.best_val_f1:.4f} "
            f"({how}, {record.seconds:.1f}s)")  # fmt: skip
    return pruned


def run_packed_trials(plan: SweepPlan, study: optuna.Study, data, teacher: FrozenTeacher, log, k: int) -> None:
    """This worker's trials, ``k`` at a time: asked of Optuna, trained as one pack (``packs.train_runs``), each
    told its value, or pruned or failed. The cap (``--max-trials``) holds as in ``objective``, and each trial of a
    pack sends its heartbeat while the pack trains (Optuna beats only inside ``study.optimize``)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    left = plan.trials
    while left > 0:
        asked = []
        for _ in range(min(k, left)):
            with warnings.catch_warnings():  # "heartbeat ... supposed to be used with Study.optimize": heartbeats()
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            if counted_before(study, trial.number) >= plan.max_trials:
                trial.set_user_attr("skipped", f"over --max-trials {plan.max_trials}")
                study.tell(trial, state=TrialState.PRUNED)
                left = 0
                break
            trial.set_user_attr("worker", worker)
            asked.append((trial, {p.name: p.suggest(trial) for p in plan.space}))
        if not asked:
            return
        left = max(0, left - len(asked))
        cfgs = [with_values(plan.cfg, values) for _, values in asked]
        with heartbeats(study, [t for t, _ in asked]):
            outcomes = train_runs(plan.method, cfgs, data, teacher, log=None,
                                  names=[f"trial-{t.number}" for t, _ in asked], test=False,
                                  on_epochs=[prune_hook(t) for t, _ in asked])  # fmt: skip
        for (trial, values), outcome in zip(asked, outcomes):
            if outcome.error is not None:
                trial.set_user_attr("error", str(outcome.error))
                study.tell(trial, state=TrialState.FAIL)
                if log:
                    log(f"trial {trial.number}: {format_values(values)} diverged")
            elif describe_trial(trial, values, outcome.record, log):
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, outcome.record.best_val_f1)


def format_values(values: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


# --- study ------------------------------------------------------------------------------------------------


def open_study(plan: SweepPlan) -> optuna.Study:
    """The shared study (created by the first worker), with this worker's seeded sampler."""
    url = plan.storage
    try:  # under a lock: workers starting together would race to create the tables and the study
        with study_lock(plan):
            storage = open_storage(url)
            study = optuna.create_study(storage=storage, sampler=make_sampler(plan), pruner=make_pruner(plan),
                                        study_name=plan.name, direction="maximize", load_if_exists=True)  # fmt: skip
            if not study.trials and plan.sampler == "tpe":  # the first worker: the defaults are trial 0
                enqueue_defaults(study, plan)
    except Exception as err:  # sqlalchemy's URL, driver and connection errors; an unreadable journal
        raise ValueError(f"--storage {url}: cannot open ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    tuned = study.user_attrs.get("method", plan.method)
    if tuned != plan.method:
        raise ValueError(f"--study-name {plan.name}: that study tunes {tuned}, not {plan.method}; pick another name")
    study.set_user_attr("method", plan.method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a worker killed mid-trial (session end, crash): retry its settings
    requeue_interrupted(plan, study)  # one interrupted, then killed before it could queue its trial again
    return study


def requeue_interrupted(plan: SweepPlan, study: optuna.Study) -> list[int]:
    """Queue again, with the same settings, each trial that failed because its worker was interrupted (its run
    resumes from its last epoch): Optuna fails a trial on KeyboardInterrupt and retries only stale ones. A trial
    is queued once (it is then in its retry's ``retry_history``), however often a session's end cuts it."""
    with study_lock(plan), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        trials = study.get_trials(deepcopy=True)
        queued = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        cut = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") == t.number
               and t.number not in queued]  # fmt: skip
        again = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)  # the same copy, uncapped
        for t in cut:
            again(study, t)
    return [t.number for t in cut]


def rerun(study: optuna.Study, number: int, why: str) -> None:
    """Queue finished trial ``number``'s settings again as a trial that replaces it in the count (``rerun_of``),
    e.g. one pruned under a rule since mended; its run resumes from the epoch the first one stopped at."""
    trial = study.get_trials(deepcopy=True)[number]
    if not trial.state.is_finished() or trial.state == TrialState.FAIL:
        raise ValueError(f"trial {number} is {trial.state.name}: only a complete or pruned trial is re-run")
    user_attrs = {"default": True} if trial.user_attrs.get("default") else {}
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                                        user_attrs={**user_attrs, "rerun_of": number, "rerun_why": why}))  # fmt: skip


def study_lock(plan: SweepPlan) -> FileLock:
    """The lock (``<results-dir>/<study>.lock``) under which workers create the study and score its choice."""
    return FileLock(str(plan.results_dir / f"{plan.name}.lock"))


def default_values(plan: SweepPlan) -> dict:
    """The tuned settings at the values the sweep's fixed config gives them (the methods' defaults)."""
    return {p.name: getattr(plan.cfg.distill if hasattr(plan.cfg.distill, p.name) else plan.cfg.train, p.name)
            for p in plan.space}  # fmt: skip


def enqueue_defaults(study: optuna.Study, plan: SweepPlan) -> None:
    """Trial 0 is the default setting, so the chosen one is never worse than the default on validation; left out
    (with a note in the study) when a default lies outside its searched range."""
    values = default_values(plan)
    outside = [p.name for p in plan.space if not p.contains(values[p.name])]
    if outside:
        study.set_user_attr("default_trial", f"not enqueued: {', '.join(outside)} outside the searched range")
        return
    study.enqueue_trial(values, user_attrs={"default": True})
    study.set_user_attr("default_trial", 0)


def startup_trials(plan: SweepPlan) -> int:
    """TPE's random start: a third of the study's trials (``--max-trials``), at least 1 and at most Optuna's 10.
    With the default as trial 0, the model-based proposals begin after ``1 + startup`` trials."""
    return max(1, min(10, plan.max_trials // 3))


def make_sampler(plan: SweepPlan) -> optuna.samplers.BaseSampler:
    """TPE or grid, seeded by the training seed plus the process id (concurrent workers propose different points)."""
    seed = plan.cfg.train.seed + os.getpid()
    if plan.sampler == "grid":
        return optuna.samplers.GridSampler({p.name: list(p.grid()) for p in plan.space}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(plan))


def make_pruner(plan: SweepPlan) -> optuna.pruners.BasePruner:
    """``none``: every trial trains to the end; ``median``: a trial whose validation F1 at an epoch is below the
    median of earlier trials' at that epoch stops there, once 5 trials are complete and from ``warmup_epochs`` on."""
    if plan.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_epochs(plan.cfg.train.epochs))
    return optuna.pruners.NopPruner()


def warmup_epochs(epochs: int) -> int:
    """The first epoch a trial may be pruned at: a third of the way (epoch 5 of 15; Optuna's steps are our epochs,
    counted from 1). Early epochs rank settings badly: in the re-run's logit sweep, validation F1 after epoch 1
    ranked its 6 complete trials at Spearman -0.2 against their best (the default, best, was second lowest), after
    epoch 5 at 0.89."""
    return max(1, epochs // 3)


def prune_hook(trial: optuna.Trial):
    """``on_epoch`` of a trial's run: reports its validation F1 per epoch; False (stop) when the pruner says so."""

    def on_epoch(row: dict) -> bool:
        trial.report(row["val_f1"], row["epoch"])
        return not trial.should_prune()

    return on_epoch


def prepare_teacher_once(cfg: ExperimentConfig, data, log) -> FrozenTeacher:
    """``prepare_teacher`` under a file lock: workers sharing a checkpoint folder train the teacher once."""
    if cfg.teacher_checkpoint:
        return prepare_teacher(cfg, data, log)
    folder = run_dir(cfg, "teacher")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        return prepare_teacher(cfg, data, log)


def best_trial(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the highest validation F1 (the earliest on a tie)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def score_on_test(plan: SweepPlan, study: optuna.Study, data, teacher: FrozenTeacher, best, log) -> dict:
    """The chosen trial's run, loaded from its checkpoints and scored on the test set once; appended unless a
    worker did so already (the check and the append happen under one lock)."""
    with study_lock(plan):
        for record in reversed(load_records(plan.results_path)):
            sweep = record.get("sweep") or {}
            if sweep.get("study") == plan.name and sweep.get("trial") == best.number:
                return record
        best_cfg = replace(with_values(plan.cfg, best.params), resume=True)
        folder = run_dir(best_cfg, plan.method, teacher)
        if log and not (folder / "last.pt").exists():
            log(f"trial {best.number}'s checkpoints are not in {folder}: training its setting again")
        _, record = train_experiment(plan.method, best_cfg, data, teacher, log=log, name=f"{plan.method}-tuned")
        record.extra["sweep"] = {
            "study": plan.name, "trial": best.number, "params": best.params, "trial_val_f1": best.value,
            "complete_trials": sum(t.state == TrialState.COMPLETE for t in study.trials),
        }  # fmt: skip
        append_run(plan.results_path, record)
        return record


def important_params(study: optuna.Study, space: list[Param]) -> list[str]:
    """The tuned settings that varied, most important first (by Optuna's importance; space order as fallback)."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    varied = [p.name for p in space if len({repr(t.params.get(p.name)) for t in complete}) > 1]
    try:
        ranking = list(optuna.importance.get_param_importances(study, params=varied)) if len(varied) > 1 else varied
    except (RuntimeError, ValueError, ZeroDivisionError):  # too few trials, constant objective
        ranking = varied
    return ranking or [p.name for p in space[:1]]


def _axis(ax, param: Param, values: list, which: str) -> list:
    """Positions of ``values`` on one axis: the values (log scale for log ranges) or category indices."""
    if param.choices is None:
        if param.log:
            getattr(ax, f"set_{which}scale")("log")
            axis = getattr(ax, f"{which}axis")
            axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))  # 10, not 10^1 or 10.0
            axis.set_minor_formatter(FuncFormatter(_minor_log_label))  # a range within a decade has only minors
        return values
    ticks = list(param.choices)
    getattr(ax, f"set_{which}ticks")(range(len(ticks)), [str(v) for v in ticks])
    getattr(ax, f"set_{which}lim")(-0.5, len(ticks) - 0.5)  # every choice shown, tried or not
    return [ticks.index(v) for v in values]


def _minor_log_label(value: float, _pos=None) -> str:
    """Minor ticks of a log axis labelled at mantissas 2, 3 and 5 only: 1 2 3 5 10, not 1 2 3 4 5 6 7 8 9 10."""
    mantissa = value / 10 ** np.floor(np.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 3, 5)) else ""


def validation_map(rows: list[dict], space: list[Param], names: list[str], title: str = "", ax=None) -> plt.Figure:
    """Validation macro F1 of every complete trial over the two most important settings (one: F1 against it);
    the chosen trial is starred. Pruned trials are grey crosses at their settings (two settings) or ticks along
    the bottom (one): where the search went, without an F1 (they stopped early, so theirs is not comparable)."""
    fig, ax = plt.subplots(figsize=(6, 4.5)) if ax is None else (ax.figure, ax)
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    rows = [r for r in rows if r["state"] == "COMPLETE"]
    by_name = {p.name: p for p in space}

    def positions(trials: list[dict], axis: int) -> list:  # the trials' values of setting ``axis`` on that axis
        return _axis(ax, by_name[names[axis]], [r["params"][names[axis]] for r in trials], "xy"[axis])

    f1 = np.array([r["best_val_f1"] for r in rows])
    best = int(np.argmax(f1)) if len(rows) else None
    x = positions(rows, 0)
    ax.set_xlabel(names[0])
    label = f"pruned ({len(pruned)})"
    if len(names) > 1:
        y = positions(rows, 1)
        points = ax.scatter(x, y, c=f1, cmap="viridis", s=60, edgecolors="k", linewidths=0.5)
        fig.colorbar(points, ax=ax, label="validation macro F1")
        ax.set_ylabel(names[1])
        if pruned:
            ax.scatter(positions(pruned, 0), positions(pruned, 1), marker="x", s=40, color="0.5", label=label, zorder=1)
    else:
        y = list(f1)
        ax.scatter(x, y, s=40, color="tab:blue")
        ax.set_ylabel("validation macro F1")
        if pruned:
            ax.scatter(positions(pruned, 0), [0.03] * len(pruned), transform=ax.get_xaxis_transform(), marker="|",
                       s=120, color="0.5", label=label)  # fmt: skip
    if best is not None:
        ax.scatter([x[best]], [y[best]], marker="*", s=300, color="tab:red", label="chosen", zorder=3)
    if best is not None or pruned:
        ax.legend(loc="best")
    ax.set_title(title)
    return fig


# --- entry points -----------------------------------------------------------------------------------------


def plan_sweep(args: argparse.Namespace) -> SweepPlan:
    """The sweep's settings from the parsed flags, every one checked (one-line ValueError); creates nothing."""
    cfg = config_from_args(args)
    validate(cfg)
    if args.method not in STUDENT_METHODS:
        raise ValueError(f"--method {args.method}: choose from: {', '.join(STUDENT_METHODS)}")
    if args.trials < 0:
        raise ValueError(f"--trials {args.trials}: must be >= 0 (0: only save, score and draw what the study holds)")
    if args.max_trials is not None and args.max_trials < 1:
        raise ValueError(f"--max-trials {args.max_trials}: must be >= 1")
    space = search_space(args.method, cfg, args.param)
    name = args.study_name or f"{cfg.data.dataset}-{args.method.replace('+', '_')}-seed{cfg.train.seed}"
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--study-name '{name}': must be a plain file name")
    results_dir = Path(args.results_dir)
    results_path = check_results_path(args.results_path or results_dir / f"{name}-best.json")
    storage = check_storage(args.storage or str(results_dir.resolve() / "sweeps.journal"))
    check_folder("--results-dir", results_dir)
    max_trials = args.trials if args.max_trials is None else args.max_trials
    return SweepPlan(args.method, cfg, space, name, storage, args.sampler, args.pruner, args.trials, max_trials,
                     results_dir, results_path)  # fmt: skip


def run_sweep(args: argparse.Namespace, log=print) -> dict:
    """Check the flags, run this worker's trials, then save the trials, draw the map and score the chosen setting
    on the test set (when no trial is still running elsewhere).

    Returns:
        ``{"study", "trials", "best", "record", "trials_path", "results_path", "figure", "replay"}``; ``record``
        (the tuned run, with test metrics) is None while other workers' trials are still running.
    """
    plan = plan_sweep(args)
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(
        optuna.logging.ERROR
    )  # one line per trial (and per diverged trial) comes from the objective
    study = open_study(plan)
    data = prepare_data(plan.cfg.data)
    teacher = prepare_teacher_once(plan.cfg, data, log)
    pack = resolve_pack(plan.cfg.pack, plan.cfg.train.device)
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # retries and re-runs: always trained
    if plan.trials and (queued or len(counted_trials(study)) < plan.max_trials):
        if pack > 1:  # trials trained K at a time as one network (a GPU's default); cut, they go stale and retry
            run_packed_trials(plan, study, data, teacher, log, pack)
        else:
            try:
                study.optimize(
                    make_objective(plan, data, teacher, log), n_trials=plan.trials, catch=(NonFiniteLossError,),
                    callbacks=[stop_at_cap(plan.max_trials)],
                )  # fmt: skip
            except KeyboardInterrupt:
                requeue_interrupted(plan, study)
                raise
    summary = finish_sweep(plan, study, data, teacher, log)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    if (
        summary["best"] is None
        and TrialState.FAIL in states
        and not set(states) & {TrialState.RUNNING, TrialState.COMPLETE, TrialState.WAITING}  # WAITING: a retry
    ):
        raise NonFiniteLossError(
            f"every trial of study '{plan.name}' failed ({states.count(TrialState.FAIL)} diverged); lower --lr or "
            "narrow the searched ranges (--param)"
        )
    return summary


def finish_sweep(plan: SweepPlan, study: optuna.Study, data, teacher: FrozenTeacher, log=print) -> dict:
    """Save every trial, draw the validation map and, when no trial is running, score the chosen one on test.

    Idempotent: every worker calls it at its end; files are rewritten whole and the record is appended once.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if "skipped" not in t.user_attrs]
    rows = [trial_row(t) for t in trials]
    best = best_trial(trials)
    trials_path = atomic_write(plan.results_dir / f"{plan.name}.json", strict_json({
        "study": plan.name, "method": plan.method, "sampler": plan.sampler, "pruner": plan.pruner,
        "startup_trials": startup_trials(plan) if plan.sampler == "tpe" else None,
        "default_trial": study.user_attrs.get("default_trial"),
        "space": {p.name: p.spec for p in plan.space}, "config": asdict(plan.cfg),
        "best_trial": best.number if best else None, "trials": rows, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, indent=1) + "\n")  # fmt: skip
    if log:
        log(format_trials(rows, plan.space, best.number if best else None))
    summary = {"study": plan.name, "trials": rows, "best": None, "record": None, "trials_path": trials_path,
               "results_path": plan.results_path, "figure": None, "replay": None}  # fmt: skip
    if best is None:
        if log:
            log(f"no trial of study '{plan.name}' has completed yet")
        return summary
    summary.update(best=trial_row(best), replay=replay_command(plan.method, with_values(plan.cfg, best.params)))
    names = important_params(study, plan.space)
    complete, pruned = (sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED"))
    title = f"{plan.name}: validation macro F1 of {complete} complete trials, {pruned} pruned"
    fig = validation_map(rows, plan.space, names[:2], title)
    summary["figure"] = save_figure(fig, plan.results_dir / f"{plan.name}.png")
    plt.close(fig)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if running:
        if log:
            log(f"{len(running)} trial(s) still running or queued (a retry, a re-run): the worker that finishes the "
                "last scores the chosen one")  # fmt: skip
        return summary
    record = summary["record"] = score_on_test(plan, study, data, teacher, best, log)
    if log:
        t = record.test
        log(f"\nchosen: trial {best.number} ({format_values(best.params)}), validation F1 {best.value:.4f}; "
            f"test accuracy {t['accuracy']:.4f} F1 {t['f1']:.4f} (appended to {plan.results_path})")  # fmt: skip
        log(f"replay: {summary['replay']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """``sweep ...`` on its own (``main(["sweep", "--method", "logit", ...])``); exit codes as ``kd_utils.cli``."""
    parser = OneLineParser(prog="python -m kd_utils")
    add_sweep_parser(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    args = parser.parse_args(argv)
    try:
        run_sweep(args)
    except (ValueError, FileNotFoundError, TimeoutError) as err:
        return fail(parser.prog, str(err), 2)
    return 0
