"""Command line: ``python -m kd_utils run --experiment all --dataset fashion-mnist ...`` (or ``kd-utils ...``).

Every ``run`` flag is a field of ``ExperimentConfig`` (kd_utils.config) and takes its default from there;
``--config FILE.toml`` sets any of them, flags on the command line win. Exit codes: 0 done; 2 bad input or a
bad file (one line on stderr, nothing trained or written); 3 a run diverged (non-finite loss or weights).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .config import FLAGS, from_dict, to_flags, to_toml
from .datasets import DATASETS
from .distill import STUDENT_METHODS
from .flags import HelpFormatter, OneLineParser, add_config_flags, config_from_args, fail, parse_args_with_config
from .results import check_results_path, load_records
from .runs import EXPERIMENTS
from .search import add_sweep_parser
from .study import FINAL_EPOCHS, SWEEP_ORDER, format_jobs, run_study, sweep_argv, sweep_done
from .summary import format_run_table
from .train import NonFiniteLossError

INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C (128 + SIGINT)

EXPERIMENT_ALIASES = {"1": "logit", "2": "hidden", "3": "regressor"}  # the homework's numbering
EXPERIMENT_CHOICES = (*EXPERIMENTS, "all", "study", *EXPERIMENT_ALIASES)


def default_prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m kd_utils" if name in ("__main__.py", "", "-c") or name.endswith(".py") else name


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog or default_prog(), description="Knowledge-distillation study on CIFAR-10.",
                           formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = sub.add_parser("run", help="train the teacher, the baseline student and distilled students",
                         formatter_class=HelpFormatter)  # fmt: skip
    run.add_argument("--config", metavar="FILE", help="TOML file of settings (keys: the long option names); flags win")
    run.add_argument(
        "--experiment", default="all", choices=EXPERIMENT_CHOICES,
        help="what to run: a method (1/2/3 = logit/hidden/regressor), all = every method, study = all, then the "
        "best by validation F1 again for --final-epochs next to a baseline as long; teacher and baseline come "
        "with every method",
    )  # fmt: skip
    run.add_argument(
        "--seeds", type=int, nargs="+", help="run every experiment once per training seed; None: --seed alone"
    )
    run.add_argument(
        "--teacher-per-seed", action="store_true", help="train one teacher per seed instead of sharing one"
    )
    run.add_argument(
        "--final-epochs", type=int, default=FINAL_EPOCHS, help="epochs of the final run (--experiment study)"
    )
    run.add_argument(
        "--results-path", default="runs/results.json", help="results file, .json (full) or .csv (a row per run)"
    )
    add_config_flags(run)

    report = sub.add_parser("report", help="re-render Pictures/ and the README's result tables from saved results",
                            formatter_class=HelpFormatter)  # fmt: skip
    report.add_argument("--results-dir", default="results", help="folder with <dataset>/runs.json")
    report.add_argument("--pictures-dir", default="Pictures", help="where figures are written")
    report.add_argument("--readme", default="README.md", help="README whose results blocks are rewritten")
    report.add_argument(
        "--data-dir", default=FLAGS["data-dir"].default, help="datasets for the sample grids (never downloaded)"
    )

    export = sub.add_parser("config", help="write a results record's settings as a --config TOML file that replays it",
                            formatter_class=HelpFormatter)  # fmt: skip
    export.add_argument("results", help="results file (.json)")
    export.add_argument("--run", default=None, help="run name (e.g. logit, final); default: the last record")
    export.add_argument("--seed", type=int, default=None, help="the record of this training seed")
    export.add_argument("--output", "-o", default=None, help="write here instead of stdout")
    labels = sub.add_parser("test-labels", help="store a dataset's test labels beside its results, for the report's "
                            "bootstrap over test images (records before 2026-12-01 lack them)",
                            formatter_class=HelpFormatter)  # fmt: skip
    labels.add_argument("--dataset", required=True, choices=tuple(DATASETS))
    labels.add_argument("--results-dir", default="results", help="writes <results-dir>/<dataset>/test-labels.json")
    labels.add_argument("--data-dir", default=FLAGS["data-dir"].default, help="where the dataset is (never downloaded)")
    labels.add_argument("--test-size", type=int, default=None, help="the runs' --test-size (None: the whole test set)")
    labels.add_argument("--split-seed", type=int, default=0, help="the runs' --split-seed")
    protocol = sub.add_parser("study", help="the stored study: its jobs, their progress, and training them here",
                              formatter_class=HelpFormatter)  # fmt: skip
    protocol.add_argument("action", choices=("jobs", "sweeps", "run", "status", "job", "check"),
                          help="jobs: one line each; sweeps: `make sweeps`; run: the pending jobs, one at a time, "
                          "for --hours (resumable; kd_utils/study_run.py); status: what is done and where; "
                          "job NAME: one job (what `run` starts); check: the protocol's audit of --records (exit 1 "
                          "if a check fails)")  # fmt: skip
    protocol.add_argument("name", nargs="?", help="study job: the job's name (`study jobs`)")
    protocol.add_argument("--hours", type=float, default=2.5, help="study run: stop the running job after this")
    protocol.add_argument("--only", default=None, help="study run: comma-separated job names (default: all)")
    protocol.add_argument(
        "--records",
        default=None,
        help="study job: append the job's records to this .json; "
        "study check: the records to audit (default: the re-run's, results/<dataset>/study-v2/)",
    )
    sweep = add_sweep_parser(sub)
    sweep.add_argument(
        "--config", metavar="FILE", help="TOML file of settings (keys: the long option names); flags win"
    )
    return parser  # fmt: skip


def experiments_from_arg(name: str) -> list[str]:
    name = EXPERIMENT_ALIASES.get(name, name)
    return ["teacher", "baseline", *STUDENT_METHODS] if name in ("all", "study") else [name]


def export_config(args: argparse.Namespace) -> str:
    """The ``--config`` TOML text that replays a stored run (the last one of ``--run`` and ``--seed``)."""
    records = [r for r in load_records(args.results) if args.run is None or r.name == args.run]
    if args.seed is not None:
        records = [r for r in records if r.seed == args.seed]
    if not records:
        raise ValueError(f"no record named '{args.run}' in {args.results}; see its runs' 'name' fields")
    record = records[-1]
    text = f"# replays run '{record.name}' of {record.timestamp or '?'}\n" + to_toml(
        {"experiment": record.method, **to_flags(from_dict(record.config))}
    )
    if args.output:
        Path(args.output).write_text(text)
    return text


def run_command(args: argparse.Namespace, prog: str) -> None:
    if args.experiment not in EXPERIMENT_CHOICES:  # a --config file's value passes argparse's choices unchecked
        raise ValueError(f"--experiment {args.experiment!r}: choose from: {', '.join(EXPERIMENT_CHOICES)}")
    cfg = config_from_args(args)
    check_results_path(args.results_path)
    final_epochs = args.final_epochs if args.experiment == "study" else None
    records = run_study(
        experiments_from_arg(args.experiment), cfg, args.results_path, final_epochs=final_epochs,
        seeds=args.seeds, teacher_per_seed=args.teacher_per_seed,
    )  # fmt: skip
    print()
    print(format_run_table(records))
    print(f"\nresults appended to {args.results_path}")
    for r in records:
        if r.get("did_not_learn"):
            print(f"{prog}: warning: {r.name} (seed {r.seed}) did not learn: its validation accuracy stayed at "
                  "chance; lower --lr or check the data", file=sys.stderr)  # fmt: skip


def sweep_command(args: argparse.Namespace) -> None:
    try:
        from .sweep import run_sweep
    except ImportError as err:
        raise ValueError(missing_extra(err, "optuna", "tune")) from None
    run_sweep(args)


def run_study_sweeps(prog: str | None = None) -> int:
    """``study sweeps`` (``make sweeps``): every study sweep not finished yet, in ``SWEEP_ORDER``; stops at the
    first that fails, with its exit code."""
    for method in SWEEP_ORDER:
        if not sweep_done(method):
            print(f"sweep {method}: python -m kd_utils {' '.join(sweep_argv(method))}", flush=True)
            code = main(sweep_argv(method), prog)
            if code:
                return code
    return 0


def study_command(args: argparse.Namespace, prog: str | None) -> int:
    from . import study_run
    from .notebook import REPO_ROOT

    if args.action != "jobs" and Path.cwd().resolve() != REPO_ROOT:  # results/, checkpoints/ and the sweeps
        raise ValueError(f"study {args.action}: run it from the repository root (cd {REPO_ROOT}): the study's "
                         "records, checkpoints and sweeps are the checkout's")  # fmt: skip
    progress = study_run.Progress(Path("results") / study_run.study.SWEEP_DATASET / study_run.PROGRESS)
    if args.action == "jobs":
        print(format_jobs())
    elif args.action == "sweeps":
        return run_study_sweeps(prog)
    elif args.action == "status":
        print(study_run.status(progress))
    elif args.action == "check":
        path = Path(args.records) if args.records else progress.records
        if not path.exists():
            raise ValueError(f"--records {path}: no such file; `study run` writes it as its jobs finish")
        left = [j.name for j in study_run.pending_jobs(set(progress.load()["jobs"]))]
        checks = study_run.audit(load_records(path), study_run.study.SWEEPS_DIR, jobs_left=left)
        print(study_run.format_audit(checks))
        return 0 if checks and all(ok for _, ok, _ in checks) else 1
    elif args.action == "job":
        if not args.name:
            raise ValueError("study job: give the job's name (`python -m kd_utils study jobs` lists them)")
        study_run.run_job(study_run.find_job(args.name), records_path=args.records, sweep_only=True)
    else:
        if not args.hours > 0:
            raise ValueError(f"--hours {args.hours}: must be > 0")
        return study_run.run_queue(args.hours, progress, args.only.split(",") if args.only else None)
    return 0


def missing_extra(err: ImportError, package: str, extra: str) -> str:
    """The one line for a feature whose optional package is not installed."""
    return (f"this needs the optional package '{getattr(err, 'name', None) or package}'; "
            f"pip install 'kd_utils[{extra}]' (or pip install {package})")  # fmt: skip


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Exit codes: 0 done; 2 bad input (one line on stderr, nothing trained or written); 3 a run diverged;
    130 stopped by Ctrl-C (what finished is saved: every write is atomic)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_args_parser(prog)
    try:
        with_config = argv[:1] in (["run"], ["sweep"])
        args = parse_args_with_config(parser, argv) if with_config else parser.parse_args(argv)
    except ValueError as err:
        return fail(parser.prog, str(err), 2)
    try:
        if args.command == "run":
            run_command(args, parser.prog)
        elif args.command == "report":
            from .report import render_report

            written = render_report(args.results_dir, args.pictures_dir, args.readme, args.data_dir)
            print(f"rendered {len(written)} files from {args.results_dir}")
        elif args.command == "config":
            text = export_config(args)
            if not args.output:
                print(text, end="")
        elif args.command == "sweep":
            sweep_command(args)
        elif args.command == "test-labels":
            from .evidence import store_test_labels

            path = store_test_labels(args.dataset, args.results_dir, args.data_dir, args.test_size, args.split_seed)
            print(f"test labels written to {path}")
        elif args.command == "study":
            return study_command(args, prog)
    except (ValueError, FileNotFoundError, TimeoutError) as err:
        return fail(parser.prog, str(err), 2)
    except NonFiniteLossError as err:
        return fail(parser.prog, f"run diverged: {err}; lower --lr (or the loss weights) and run again", 3)
    except OSError as err:  # a full disk, a folder that vanished or turned read-only mid-run
        return fail(parser.prog, f"could not write or read {err.filename or 'a file'}: {err.strerror or err}; "
                    "nothing half-written was kept (every write is atomic)", 2)  # fmt: skip
    except KeyboardInterrupt:
        return fail(parser.prog, "interrupted; finished runs are saved, --resume continues the others", INTERRUPTED)
    return 0
