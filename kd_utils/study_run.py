"""The stored study, trained job by job on the machine this session has, across as many sessions as it takes:

    python -m kd_utils study run --hours 2.5     # the next jobs, stopped cleanly after 2.5 hours
    python -m kd_utils study status              # what is done, on which machine class, what is left

The jobs are ``runner_jobs``: the sweeps first, then each comparison. Each runs in its own process (``study job
NAME``) and makes the calls of its notebook (``run_job``) with that notebook's full-profile config at ``STUDY_PRECISION``, so its run folders
are the ones `make study` opens afterwards, where a finished run is only evaluated. A job's records are appended
to ``results/<dataset>/study-v2/runs.json`` as its runs finish, and a finished job is entered in
``study-v2/jobs.json`` with its machine class and seconds: both small files to commit after each session, with
the new run and teacher folders (``git add -f checkpoints/runs/... checkpoints/teachers/...``: a few-label job
trains a teacher). An interrupted job resumes from its runs' last epochs.

One machine class per comparison: every job belongs to groups (``job_groups``: the sweep of a method, the
15-epoch comparison, the 70-epoch pair, each label fraction). The first job of a group to start fixes the
group's class (hardware and precision) in ``jobs.json``; on a machine of another class that group's jobs are
skipped, with a line that says so, rather than mixed into it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import study
from .results import atomic_write
from .train import cpu_features

PROGRESS = "study-v2"  # results/<dataset>/<this>/: the re-run's records and job log


def runner_jobs(seeds=study.STUDY_SEEDS, fractions=study.FEW_LABEL_FRACTIONS) -> list[study.Job]:
    """The study's jobs in the order one machine takes them: every sweep first (each fixes only its own trials'
    machine class), then 01-03's seed-0 baseline, the 15-epoch comparison one seed at a time (``05-seed-S``: the
    baseline, each method at its sweep's setting and the ablations; ``DEFERRED_METHODS``, each in a job of its own
    over every seed, ``05-<method>``, after them), the few-label runs and 04's 70-epoch pair.
    Each job's needs come before it; ``sweep-M:defaults`` is met once sweep M's trial at the defaults finished
    (``defaults_need``): 01-03's candidates are those trials, and 04 trains the best of them by validation F1, so
    neither waits for the rest of the sweeps (on a machine class other than theirs, 04's runs go on meanwhile).

    Seed by seed, not method by method: the teacher's outputs are cached per seed (``teacher_cache``) on a disk
    that a session does not keep, so a job over one seed computes them once for all its runs, where a job over
    one method and five seeds computed five seeds' outputs again every session (75 teacher epochs: 2.5 h on the
    AVX2 EPYC, more than a method's 75 student-epochs)."""
    job = study.Job
    candidates = tuple(defaults_need(m) for m in study.CANDIDATES)
    jobs = [job("teacher", "00_baseline", "teacher")]
    jobs += [job(f"sweep-{m}", "05_method_comparison", "sweep", m, ("teacher",)) for m in study.SWEEP_ORDER]
    jobs += [job("01-03", "04_final_run", "candidates", None, ("teacher", *candidates))]
    sweeps = tuple(f"sweep-{m}" for m in seed_job_methods())
    jobs += [job(f"05-seed-{s}", "05_method_comparison", "seed", s, sweeps) for s in seeds]
    jobs += [job(f"05-{m}", "05_method_comparison", "compare", m, (f"sweep-{m}",)) for m in study.DEFERRED_METHODS]
    compared = tuple(f"05-seed-{s}" for s in seeds)
    jobs += [job(f"05-few-{f:g}", "05_method_comparison", "few-labels", f, compared) for f in fractions]
    jobs += [job(f"04-baseline-{s}", "04_final_run", "final-baseline", s, ("teacher",)) for s in seeds]
    jobs += [job(f"04-final-{s}", "04_final_run", "final", s, ("teacher", *candidates)) for s in seeds]
    return jobs


def seed_job_methods() -> list[str]:
    """The methods a seed job (``05-seed-S``) trains: every swept one but ``DEFERRED_METHODS``, which have a
    job of their own over every seed (``05-<method>``)."""
    return [m for m in study.SWEEP_ORDER if m not in study.DEFERRED_METHODS]


def defaults_need(method: str) -> str:
    """The need a job has of sweep ``method``'s trial at the defaults alone (``needs_met`` says when it is met)."""
    return f"sweep-{method}:defaults"


@dataclass
class Progress:
    """``results/<dataset>/study-v2/``: the records the jobs wrote and ``jobs.json`` (finished jobs, group
    classes)."""

    folder: Path

    @property
    def records(self) -> Path:
        return self.folder / "runs.json"

    @property
    def jobs_file(self) -> Path:
        return self.folder / "jobs.json"

    def load(self) -> dict:
        if not self.jobs_file.exists():
            return {"jobs": {}, "groups": {}}
        return json.loads(self.jobs_file.read_text())

    def save(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.jobs_file, json.dumps(state, indent=1, sort_keys=True) + "\n")


def job_groups(job: study.Job) -> tuple[str, ...]:
    """The comparisons ``job``'s runs belong to: each must train on one machine class."""
    if job.kind == "sweep":
        return (f"sweep-{job.arg}",)  # its trials (the runner trains the method's 15-epoch runs apart)
    if job.kind == "teacher":
        return ()  # chosen from records and loaded: nothing trains
    if job.kind in ("final-baseline", "final"):
        return ("70-epoch",)
    if job.kind == "candidates":  # its seed-0 baseline sits beside the candidates: the sweeps' trials at the defaults
        return tuple(f"sweep-{m}" for m in study.CANDIDATES)
    if job.kind == "few-labels":
        return (f"few-{job.arg:g}",)
    return ("15-epoch",)


def finished(done: set[str]) -> set[str]:
    """``done`` and every sweep that scored its choice (wherever it ran)."""
    return set(done) | {j.name for j in runner_jobs() if j.kind == "sweep" and study.sweep_done(j.arg)}


def needs_met(done: set[str]) -> set[str]:
    """``finished(done)`` and ``defaults_need`` of each candidate sweep whose trial at the defaults finished (read
    from the sweeps' journal)."""
    return finished(done) | {defaults_need(m) for m in study.CANDIDATES if study.defaults_done(m)}


def pending_jobs(done: set[str]) -> list[study.Job]:
    """``runner_jobs`` not ``finished`` yet."""
    done = finished(done)
    return [j for j in runner_jobs() if j.name not in done]


def this_machine_class() -> str:
    """``"cpu: AMD EPYC, 2 cores float32"``: the class ``evidence.Evidence.machine_classes`` gives the runs
    this machine trains at ``STUDY_PRECISION``."""
    from .train import device_name, resolve_device, resolve_precision

    device = resolve_device("auto")
    precision = str(resolve_precision(study.STUDY_PRECISION, device)).removeprefix("torch.")
    return f"{device_name(device)} {precision}"


# --- one job (its own process) -----------------------------------------------------------------------------------
def run_job(job: study.Job, profile: str = "full", dataset: str = study.SWEEP_DATASET, output_dir: str | None = None,
            records_path: str | Path | None = None, sweep_checkpoints: str | None = None,
            sweep_only: bool = False) -> None:  # fmt: skip
    """Make the calls of ``job``'s notebook (``kd_utils.study``'s functions, with that notebook's config);
    records go to ``records_path`` (None: nowhere; the notebooks remake them from the run folders). A sweep's
    trial folders go under ``sweep_checkpoints`` (default: the study's checkpoints, where its trial 0 at the
    defaults is also 01-03's run). ``sweep_only`` (the runner's jobs): a sweep job only sweeps and the teacher
    job trains nothing; their 15-epoch runs are jobs of their own."""
    from .data import prepare_data
    from .notebook import setup
    from .runs import train_experiment
    from .teacher import prepare_teacher
    from .teacher_choice import choose_teacher

    environ = {"KD_PRECISION": study.STUDY_PRECISION} if profile == "full" else {}
    session = setup(job.notebook, profile, dataset, output_dir=output_dir, use_drive=False, environ=environ)
    cfg, seeds = session.cfg, list(session.seeds)
    sweeps = session.paths.results.parent / "sweeps"
    if job.kind == "sweep" and profile == "full":  # in its own process: it loads the data and teacher itself
        argv = study.sweep_argv(job.arg, sweep_checkpoints or str(session.paths.checkpoints))
        run_to_its_end([sys.executable, "-m", "kd_utils", *argv])
        if sweep_only:
            return
    if profile == "full":
        check_tuned(job, sweeps)
    data = prepare_data(cfg.data)
    teacher = prepare_teacher(cfg, data)
    if job.kind == "teacher":
        if profile == "full":  # the recipe the study uses is the candidates' best on validation
            recorded = [r for path in sorted(session.paths.results.parent.rglob("*.json")) for r in _records(path)]
            chosen = choose_teacher([*recorded, teacher.record])
            if any(getattr(cfg, k) != v for k, v in chosen.items()):
                raise SystemExit(f"the teacher chosen on validation is {chosen}, not STUDY_TEACHER: update it")
        _append(records_path, teacher.record)
        if not sweep_only:
            study.compare_methods(cfg, data, teacher, [], seeds, sweeps, records_path)  # the 15-epoch baselines
    elif job.kind == "sweep":  # swept above; then its method's comparison (the GPU study's jobs)
        if not sweep_only:
            study.compare_methods(cfg, data, teacher, [job.arg], seeds, sweeps, records_path)
    elif job.kind == "compare":
        study.compare_methods(cfg, data, teacher, [job.arg], seeds, sweeps, records_path)
    elif job.kind == "seed":  # notebook 05's two calls, for one seed: every run of it reads one teacher stream
        study.compare_methods(cfg, data, teacher, seed_job_methods(), [job.arg], sweeps, records_path)
        study.ablation_runs(cfg, data, teacher, study.ABLATIONS, [job.arg], sweeps, records_path)
    elif job.kind == "ablations":
        study.ablation_runs(cfg, data, teacher, study.ABLATIONS, seeds, sweeps, records_path)
    elif job.kind == "candidates":
        train_experiment("baseline", cfg, data)  # the SEED-0 baseline notebooks 00-04 set beside their runs
        study.train_candidates(cfg, data, teacher)
    elif job.kind == "final-baseline":
        _, record = train_experiment("baseline", study.with_seed(session.final_config(), job.arg), data,
                                     name="final-baseline", role="final-baseline")  # fmt: skip
        _append(records_path, record)
    elif job.kind == "final":
        best = study.best_by_validation(study.train_candidates(cfg, data, teacher))  # finished: evaluated only
        for record in study.final_runs(session.final_config(), data, teacher, best, [job.arg]):
            _append(records_path, record)
    elif job.kind == "few-labels":
        logit = study.compare_methods(cfg, data, teacher, list(study.LOGIT_METHODS), seeds, sweeps, log=None)
        chosen = study.best_logit_method(logit)
        study.few_label_runs(cfg, teacher, chosen, seeds, sweeps, records_path, fractions=[job.arg])
    else:
        raise SystemExit(f"unknown job kind {job.kind!r} ({job.name})")


def tuned_methods(job: study.Job) -> list[str]:
    """The methods whose sweep's choice ``job`` trains at."""
    if job.kind in ("compare", "sweep"):
        return [job.arg]
    if job.kind == "seed":
        return seed_job_methods()
    if job.kind == "ablations":
        return [a.of for a in study.ABLATIONS]
    return list(study.LOGIT_METHODS) if job.kind == "few-labels" else []


def check_tuned(job: study.Job, sweeps_dir: Path) -> None:
    """The full study trains each method at its sweep's choice: a job whose sweep has not scored one is refused,
    where ``compare_methods`` would quietly train the defaults (its notebooks' way without a sweep)."""
    missing = [m for m in tuned_methods(job) if study.tuned_settings(sweeps_dir, m)[0] is None]
    if missing:
        raise ValueError(f"study job {job.name}: no finished sweep of {', '.join(missing)} under {sweeps_dir}; "
                         "`study run` sweeps first")  # fmt: skip


def _records(path: Path) -> list:
    from .results import load_records

    try:
        return load_records(path)
    except ValueError:
        return []  # a trials or jobs file, not a results file


def _append(path: str | Path | None, record) -> None:
    from .results import append_run

    if path is not None:
        append_run(path, record, replace_same_run=True)


# --- the queue ---------------------------------------------------------------------------------------------------
def run_queue(hours: float, progress: Progress, only: list[str] | None = None, log=print) -> int:
    """Start the pending jobs one at a time until ``hours`` are up (the running one is stopped then, with its
    last finished epoch on disk). Jobs of comparisons already begun go first, in ``runner_jobs`` order, so that a
    comparison is finished before another starts (a half-done one gives only interim verdicts). Returns 0 when
    every pending job it could take finished, else 1."""
    deadline = time.monotonic() + hours * 3600
    machine = this_machine_class()
    state = progress.load()
    failed: set[str] = set()
    log(
        f"study run: this machine trains as {machine!r} (CPU flags: {' '.join(cpu_features()) or 'none read'}); "
        f"stops after {hours:g} h"
    )
    while time.monotonic() < deadline:
        runnable = [j for j in pending_jobs(set(state["jobs"])) if only is None or j.name in only]
        runnable.sort(key=lambda j: not all(g in state["groups"] for g in job_groups(j)))  # begun comparisons first
        met = needs_met(set(state["jobs"]))  # once a round: it reads the sweeps' journal
        skipped = []
        job = None
        for candidate in runnable:
            if candidate.name in failed or not set(candidate.needs) <= met:
                continue
            other = [g for g in job_groups(candidate) if state["groups"].get(g, machine) != machine]
            if other:
                where = ", ".join(f"{g} trains on {state['groups'][g]}" for g in other)
                skipped.append(f"{candidate.name} ({where})")
                continue
            job = candidate
            break
        for line in skipped:
            log(f"skipped, another machine class: {line}")
        if job is None:
            break
        for group in job_groups(job):
            state["groups"].setdefault(group, machine)
        progress.save(state)
        outcome, seconds = run_subprocess(job, deadline, progress, log)
        state = progress.load()
        stretches = state.setdefault("stretches", {}).setdefault(job.name, [])
        stretches.append({"machine": machine, "seconds": round(seconds), "ended": _now(), "outcome": outcome,
                          "cpu_features": cpu_features()})  # fmt: skip
        if outcome == "ok":
            state["jobs"][job.name] = {"machine": machine, "seconds": sum(s["seconds"] for s in stretches),
                                       "stretches": len(stretches), "finished": _now(),
                                       "cpu_features": cpu_features()}  # fmt: skip
        progress.save(state)
        if outcome == "stopped":
            break
        if outcome == "failed":
            failed.add(job.name)
    left = [j.name for j in pending_jobs(set(state["jobs"]))]
    log(f"study run: {len(state['jobs'])} jobs done, {len(left)} left{': ' + ', '.join(left) if left else ''}")
    return 1 if failed else 0


def run_subprocess(job: study.Job, deadline: float, progress: Progress, log) -> tuple[str, float]:
    """``study job NAME`` in a process group of its own; at the deadline the group gets SIGINT (Ctrl-C: what
    finished is saved) and 60 s to stop."""
    started = time.monotonic()
    log(f"{_now()} start {job.name}")
    cmd = [sys.executable, "-m", "kd_utils", "study", "job", job.name, "--records", str(progress.records)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                            preexec_fn=restore_sigint)  # fmt: skip
    while proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGINT)  # the job and a sweep it started
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the job and its sweep, if either still runs
                proc.wait()
            log(f"{_now()} stopped {job.name} at the deadline ({time.monotonic() - started:.0f} s)")
            return "stopped", time.monotonic() - started
        time.sleep(2)
    seconds = time.monotonic() - started
    outcome = "ok" if proc.returncode == 0 else f"failed rc {proc.returncode}"
    log(f"{_now()} {outcome} {job.name} ({seconds:.0f} s)")
    return ("ok" if proc.returncode == 0 else "failed"), seconds


def run_to_its_end(cmd: list[str], grace_s: float = 50) -> None:
    """``subprocess.run(cmd, check=True)``, but on Ctrl-C it waits up to ``grace_s`` for ``cmd``, which got the
    SIGINT too (one process group), to finish its own clean-up (a sweep queues its cut trial again);
    ``subprocess.run`` would kill it after 0.25 s."""
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=grace_s)  # run_queue kills the whole group 60 s after its SIGINT
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def restore_sigint() -> None:
    """A job started from a background shell (``nohup ... &``) would inherit SIGINT ignored, and Python then
    never raises KeyboardInterrupt: give it the default back, so the deadline's SIGINT stops it at once."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def status(progress: Progress) -> str:
    """Markdown: the jobs done (machine class, wall hours over all their sessions, when), each comparison's machine
    class, the jobs left and the hours spent on them so far. A job begun before stretches were kept (2026-12-01:
    teacher, sweep-logit, sweep-dist) counts its later sessions only; a sweep's trials file holds every trial's
    own seconds."""
    state = progress.load()
    jobs, stretches = state["jobs"], state.get("stretches", {})
    lines = ["| job | machine class | CPU flags | wall hours | sessions | finished |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {j['machine']} | {flag_sets(j, stretches.get(name, []))} "
              f"| {j['seconds'] / 3600:.2f} | {j.get('stretches', 'last only')} | {j['finished']} |"
              for name, j in jobs.items()]  # fmt: skip
    hours = sum(j["seconds"] for j in jobs.values()) / 3600
    lines += [f"| **{len(jobs)} jobs** | | | **{hours:.2f}** | | |", ""]
    lines += ["| comparison | trains on |", "|---|---|"] + [
        f"| {g} | {c} |" for g, c in sorted(state["groups"].items())
    ]
    left = pending_jobs(set(jobs))
    lines += ["", f"{len(left)} jobs left: " + (", ".join(j.name for j in left) or "none")]
    begun = {j.name: sum(s["seconds"] for s in stretches[j.name]) for j in left if stretches.get(j.name)}
    if begun:
        lines += ["begun, hours so far: " + ", ".join(f"{n} {s / 3600:.2f}" for n, s in begun.items())]
    return "\n".join(lines)


def flag_sets(job: dict, stretches: list[dict]) -> str:
    """The CPU flags of each session a finished job ran in, distinct ones joined by " / " (a job cut at a session's
    end may finish on another EPYC). A stretch ended before they were kept with it (2026-12-05) reads "not
    recorded", except the last: the job's own record, written when it finished, holds the flags of that session."""
    recorded = [s.get("cpu_features") for s in stretches] or [None]
    recorded[-1] = recorded[-1] if recorded[-1] is not None else job.get("cpu_features")
    return " / ".join(dict.fromkeys(" ".join(f) if f is not None else "not recorded" for f in recorded))


# --- the audit: what the "done when" asks of the stored study ------------------------------------------
COMPARED_ROLES = ("baseline", "method", "ablation", "final-baseline", "final")


def audit(
    records: list, sweeps_dir: Path, seeds=study.STUDY_SEEDS, min_trials: int = 16, jobs_left: list[str] | None = None
) -> list[tuple[str, bool, str]]:
    """``(check, passed, detail)`` over the records of a study and its sweeps' trial files: every job finished
    (``jobs_left``, when given: a job not run leaves no records for the checks below to find missing), one machine
    class per comparison (records sharing a pairing key), every compared run on all ``seeds``, ``min_trials``
    trials per sweep with the default as trial 0 and one machine class, few-label baselines that walked labels
    only."""
    from .comparison import group_runs
    from .evidence import Evidence

    evidence = Evidence(records)
    compared = [r for r in records if r.role in COMPARED_ROLES and r.seed in seeds]
    checks = []
    if jobs_left is not None:
        left = f"{len(jobs_left)} left: {', '.join(jobs_left)}" if jobs_left else "all"
        checks.append(("every job of the study finished", not jobs_left, left))
    by_key: dict[tuple, list] = {}
    for r in compared:
        by_key.setdefault(r.pairing_key(), []).append(r)
    for key, group in by_key.items():
        classes = sorted({c for r in group for c in evidence.machine_classes(r)})
        what = f"{key[4]} epochs, {key[5]:g} of the labels ({len(group)} runs)"
        checks.append((f"one machine class: {what}", len(classes) == 1, "; ".join(classes)))
    for name, by_seed in group_runs(compared).items():
        missing = sorted(set(seeds) - set(by_seed))
        checks.append((f"{len(seeds)} seeds: {name}", not missing, f"missing seeds {missing}" if missing else "all"))
    for method in study.SWEEP_ORDER:
        path = Path(sweeps_dir) / f"{study.sweep_name(method)}.json"
        what = f"sweep {study.sweep_name(method)}: >= {min_trials} trials, the default first, one machine class"
        if not path.exists():
            checks.append((what, False, "not run yet"))
            continue
        rows = sorted(json.loads(path.read_text()).get("trials", []), key=lambda t: t["number"])
        rerun = {t.get("rerun_of") for t in rows}  # a trial trained again counts once, as its re-run
        trials = [t for t in rows if t.get("state") in ("COMPLETE", "PRUNED") and t["number"] not in rerun]
        # trial 0 is the default; interrupted (a session's end), it is retried under a new number, still the default
        default_first = bool(rows) and bool(rows[0].get("default")) and any(t.get("default") for t in trials)
        machines = sorted({t.get("machine") or "not recorded" for t in trials})
        checks.append((what, len(trials) >= min_trials and default_first and len(machines) == 1,
                       f"{len(trials)} trials, trial 0 {'is' if default_first else 'is not'} the default, "
                       f"{'; '.join(machines)}"))  # fmt: skip
    for r in compared:
        if r.labels_only and r.labeled_fraction < 1:
            labeled, walked = r.extra.get("data_sizes", {}).get("labeled"), r.extra.get("train_images")
            checks.append((f"labels on every step: {r.name} seed {r.seed}", walked is not None and walked == labeled,
                           f"walked {walked} images per epoch, {labeled} labeled"))  # fmt: skip
    return checks


def format_audit(checks: list[tuple[str, bool, str]]) -> str:
    if not checks:
        return "nothing to check: no compared run or sweep yet"
    failed = [c for c in checks if not c[1]]
    lines = [f"{'ok  ' if ok else 'FAIL'} {what}: {detail}" for what, ok, detail in checks]
    return "\n".join([*lines, f"{len(checks) - len(failed)} of {len(checks)} checks pass"])


def find_job(name: str) -> study.Job:
    jobs = {j.name: j for j in runner_jobs()}
    if name not in jobs:
        raise ValueError(f"no study job {name!r}; `python -m kd_utils study status` lists them")
    return jobs[name]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
