"""Train the stored study's runs on a lent GPU, many at once, so that `make study` on a CPU finds them finished.

    python benchmarks/gpu_study.py --workers 8 --deadline-s 420 --archive-dir OUTDIR    # on the GPU machine
    tar -xzf OUTDIR/runs-1.tgz ...                                                      # back in the checkout
    make study                                                                          # notebooks 00-05

The jobs are the study's protocol (``kd_utils.study.study_jobs``); each makes its notebook's calls (the
functions of ``kd_utils.study``) with the config ``kd_utils.notebook.setup`` gives that notebook,
so the run folders (named by a hash of the settings, not of the device) are the ones the notebooks open: a
finished run is only evaluated there, an interrupted one resumes from its ``last.pt``. A record names every
machine that trained its run (``FitResult.trained_on``). Jobs, each a subprocess (one CUDA context each; a
small CNN leaves one GPU mostly idle, so several at once multiply its throughput):

    teacher         the teacher and the 15-epoch baselines, which every other job reads
    sweep-<m>       a sweep `make sweeps` has not finished (kd_utils.study.sweep_argv), then 05's runs of <m>
    01-03           notebooks 01-03: logit, hidden, regressor at the defaults, seed 0 (04's candidates)
    04-baseline-<s> notebook 04: the 70-epoch baseline of seed s
    04-final-<s>    notebook 04: the 70-epoch run of the best candidate by validation F1 (after 01-03)
    05-<m>          notebook 05: method m at its sweep's setting, every seed (compare_methods)
    05-ablations    notebook 05: logit KD at logit+regressor's and at fitnets' settings (study.ABLATIONS)
    05-few-<f>      notebook 05: the best logit-based method and the baseline with a fraction f of the labels, and
                    the method again from a teacher of those labels alone

At the deadline the jobs still running are stopped (their last finished epoch is on disk). The run folders
written since the start, the sweeps' results and storage are packed into ``runs-<k>.tgz`` files of at most
``--archive-mb`` each (the device tool brings back 8 files of 16 MB), most needed first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kd_utils.study import Job

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --- one job (in its own process) ------------------------------------------------------------------------------


def run_job(job, profile: str, dataset: str, output_dir: str | None) -> None:
    """``kd_utils.study_run.run_job`` (the notebook's calls); a sweep's trial folders stay out of the study's
    checkpoints/runs, so that the archive brought back holds the compared runs."""
    from kd_utils.notebook import setup
    from kd_utils.study_run import run_job as notebook_calls

    sweep_dir = None
    if job.kind == "sweep" and profile == "full":
        session = setup(job.notebook, profile, dataset, output_dir=output_dir, use_drive=False, environ={}, log=None)
        sweep_dir = Path(os.environ.get("GPU_STUDY_SWEEP_CHECKPOINTS", "/tmp/gpu-study-sweeps"))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not (sweep_dir / "teachers").exists():
            (sweep_dir / "teachers").symlink_to(Path(session.paths.checkpoints).resolve() / "teachers")
    scratch = Path(output_dir or "/tmp") / "gpu-study-records" / f"{job.name}.json"  # the notebooks remake records
    notebook_calls(job, profile, dataset, output_dir, scratch, str(sweep_dir) if sweep_dir else None)


# --- the scheduler ----------------------------------------------------------------------------------------------


def schedule(jobs: list[Job], args, log_dir: Path) -> dict[str, str]:
    """Run ``jobs`` as subprocesses, ``args.workers`` at a time, each once its needs finished; stop at the
    deadline. Returns each job's outcome (ok, failed rc N, stopped, not started, skipped: a need failed)."""
    deadline = time.monotonic() + args.deadline_s
    outcome: dict[str, str] = {}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    waiting = list(jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    while (waiting or running) and time.monotonic() < deadline:
        for job in list(waiting):
            if any(outcome.get(n, "ok") != "ok" for n in job.needs if n in outcome):
                outcome[job.name] = "skipped: a need failed"
                waiting.remove(job)
            elif len(running) < args.workers and all(outcome.get(n) == "ok" for n in job.needs if n in names(jobs)):
                cmd = [
                    sys.executable,
                    __file__,
                    "--job",
                    job.name,
                    "--profile",
                    args.profile,
                    "--dataset",
                    args.dataset,
                ]
                cmd += ["--output-dir", args.output_dir] if args.output_dir else []
                out = open(log_dir / f"{job.name}.log", "w")  # noqa: SIM115 (closed with the process)
                running[job.name] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), time.time())
                print(f"{time.strftime('%H:%M:%S')} start {job.name}", flush=True)
                waiting.remove(job)
        for name, (proc, started) in list(running.items()):
            if proc.poll() is not None:
                outcome[name] = "ok" if proc.returncode == 0 else f"failed rc {proc.returncode}"
                print(
                    f"{time.strftime('%H:%M:%S')} {outcome[name]:<12} {name} ({time.time() - started:.0f} s)",
                    flush=True,
                )
                del running[name]
        time.sleep(1)
    for name, (proc, started) in running.items():
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        outcome[name] = f"stopped at the deadline after {time.time() - started:.0f} s"
    for job in waiting:
        outcome.setdefault(job.name, "not started")
    return outcome


def names(jobs: list[Job]) -> set[str]:
    return {j.name for j in jobs}


def changed_since(folder: Path, since: float) -> list[Path]:
    return sorted(
        (d for d in folder.iterdir() if d.is_dir() and any(f.stat().st_mtime >= since for f in d.rglob("*"))),
        key=lambda d: d.name,
    ) if folder.is_dir() else []  # fmt: skip


def pack(paths: list[Path], archive_dir: Path, limit_mb: float, max_files: int) -> list[str]:
    """``paths`` (relative to the repository) into ``runs-<k>.tgz`` of at most ``limit_mb`` each, in order;
    what does not fit in ``max_files`` is left out and named."""
    groups: list[list[Path]] = [[]]
    size = 0.0
    for path in paths:
        mb = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file()) / 1e6
        if groups[-1] and size + mb > limit_mb:
            groups.append([])
            size = 0.0
        groups[-1].append(path)
        size += mb
    left_out = [str(p) for g in groups[max_files:] for p in g]
    for k, group in enumerate(groups[:max_files], 1):
        with tarfile.open(archive_dir / f"runs-{k}.tgz", "w:gz") as tar:
            for path in group:
                tar.add(path, arcname=str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name))
    return left_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", help="run one job (the scheduler's subprocesses)")
    parser.add_argument("--profile", default="full", choices=("full", "smoke"))
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--output-dir", help="results/checkpoints root (default: the repository for full)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    parser.add_argument("--deadline-s", type=float, default=420.0, help="stop the jobs still running after this")
    parser.add_argument("--no-sweeps", action="store_true", help="skip unfinished sweeps (05 uses what is there)")
    parser.add_argument("--only", help="comma-separated job names (default: all)")
    parser.add_argument("--archive-dir", type=Path, help="pack the new run folders here")
    parser.add_argument("--archive-mb", type=float, default=15.0)
    parser.add_argument("--archive-files", type=int, default=4, help="the device tool: 64 MB in all")
    args = parser.parse_args(argv)
    from kd_utils.distill import STUDENT_METHODS
    from kd_utils.notebook import setup
    from kd_utils.study import FEW_LABEL_FRACTIONS, study_jobs, sweep_done

    session = setup("gpu_study", args.profile, args.dataset, output_dir=args.output_dir, use_drive=False, environ={},
                    log=None if args.job else print)  # fmt: skip
    unfinished = [] if args.no_sweeps or args.profile != "full" else [m for m in STUDENT_METHODS if not sweep_done(m)]
    jobs = study_jobs(session.seeds, unfinished, STUDENT_METHODS, FEW_LABEL_FRACTIONS)
    if args.job:
        run_job(next(j for j in jobs if j.name == args.job), args.profile, args.dataset, args.output_dir)
        return 0
    if args.only:
        jobs = [j for j in jobs if j.name == "teacher" or j.name in args.only.split(",")]
    log_dir = Path(os.environ.get("GPU_STUDY_LOGS", "/tmp/gpu-study-logs"))  # packed with the runs
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    outcome = schedule(jobs, args, log_dir)
    print(f"jobs after {time.time() - started:.0f} s:")
    for name, result in outcome.items():
        print(f"  {name:<22} {result}")
    if args.archive_dir:
        runs = changed_since(session.paths.checkpoints / "runs", started)
        sweeps = [p for p in (session.paths.results.parent / "sweeps").glob("*") if p.stat().st_mtime >= started]
        storage = [p for p in [ROOT / "checkpoints" / "sweeps.db"] if p.exists() and p.stat().st_mtime >= started]
        logs = [log_dir]
        order = [*storage, *sweeps, *logs, *runs]
        left_out = pack([p.resolve() for p in order], args.archive_dir, args.archive_mb, args.archive_files)
        print(f"packed {len(runs)} run folders, {len(sweeps)} sweep files into {args.archive_dir}")
        for path in left_out:
            print(f"  left out (over the archive limit): {path}")
    return 0 if all(r == "ok" for r in outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
