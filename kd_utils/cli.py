"""Command line: ``python -m kd_utils run --experiment all --dataset fashion-mnist ...``.

Every flag maps onto a field of ``ExperimentConfig`` and takes its default from there. Bad input fails
before any training with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .experiments import (
    EXPERIMENT_ALIASES,
    FINAL_EPOCHS,
    STUDENT_METHODS,
    ExperimentConfig,
    format_summary,
    run_study,
)
from .report import render_report
from .results import check_results_path

DEFAULTS = ExperimentConfig()
EXPERIMENT_CHOICES = ("teacher", "baseline", *STUDENT_METHODS, "all", "study", *EXPERIMENT_ALIASES)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage dump) and exits with code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,1,1, got '{text}'") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m kd_utils", description="Knowledge-distillation study on CIFAR-10.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = sub.add_parser("run", help="train the teacher, the baseline student and distilled students")
    d = DEFAULTS
    run.add_argument(
        "--experiment",
        default="all",
        choices=EXPERIMENT_CHOICES,
        help="what to run (1/2/3 = logit/hidden/regressor; all = every method; study = all, then the best by "
        "validation F1 again for --final-epochs, as the notebooks do); the teacher and baseline come with every method",
    )
    run.add_argument("--dataset", default=d.dataset, help="cifar10 | fashion-mnist | synthetic")
    run.add_argument(
        "--data-dir", default=d.data_dir, help="dataset folder (downloaded there on first use when online)"
    )
    run.add_argument("--epochs", type=int, default=d.epochs, help="student epochs")
    run.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs, help="teacher epochs")
    run.add_argument(
        "--final-epochs", type=int, default=FINAL_EPOCHS, help="epochs of the final run (--experiment study)"
    )
    run.add_argument("--batch-size", type=int, default=d.batch_size)
    run.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    run.add_argument("--optimizer", default=d.optimizer, help="sgd | adamw")
    run.add_argument("--weight-decay", type=float, default=d.weight_decay)
    run.add_argument("--precision", default=d.precision, help="auto | fp32 | bf16 | fp16")
    run.add_argument("--compile", action="store_true", help="torch.compile the training step (opt-in)")
    run.add_argument("--no-fuse-teacher-bn", dest="fuse_teacher_bn", action="store_false",
                     help="distil from the teacher as trained instead of its BN-folded copy")  # fmt: skip
    run.add_argument("--teacher", default=d.teacher, help="teacher architecture: teacher_cnn | resnet18 | student_cnn")
    run.add_argument("--student", default=d.student, help="student architecture")
    run.add_argument("--teacher-checkpoint", default=d.teacher_checkpoint, help="use these teacher weights (.pt)")
    run.add_argument(
        "--student-checkpoint", default=d.student_checkpoint, help="initialise students from these weights"
    )
    run.add_argument("--alpha", type=float, default=d.alpha, help="logit KD: weight of the soft-target KL, in [0, 1]")
    run.add_argument("--temperature", type=float, default=d.temperature, help="logit KD: temperature T > 0")
    run.add_argument(
        "--feature-weight", type=float, default=d.feature_weight, help="hidden/regressor: weight of the feature term"
    )
    run.add_argument(
        "--level-weights", type=_float_list, default=d.level_weights, help="one weight per matched level, e.g. 0.5,1,1"
    )
    run.add_argument("--feature-kind", default=d.feature_kind, help="hidden: cosine | mse")
    run.add_argument("--channel-match", default=d.channel_match, help="hidden: pool | truncate")
    run.add_argument("--spatial-size", type=int, default=d.spatial_size, help="hidden: pooled map size")
    run.add_argument(
        "--labeled-fraction", type=float, default=d.labeled_fraction, help="fraction of training labels used, in (0, 1]"
    )
    run.add_argument(
        "--val-size", type=int, default=d.val_size, help="validation images carved from train (default 5000)"
    )
    run.add_argument("--train-size", type=int, default=d.train_size, help="stratified training subset")
    run.add_argument("--test-size", type=int, default=d.test_size, help="stratified test subset")
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    run.add_argument(
        "--results-path", default="runs/results.json", help="results file, .json (full) or .csv (one row per run)"
    )
    run.add_argument("--checkpoint-dir", default=d.checkpoint_dir, help="teacher cache and run checkpoints")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs from their last.pt")
    run.add_argument("--allow-weak-teacher", action="store_true", help="distil even from a teacher near chance")
    run.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    report = sub.add_parser("report", help="re-render Pictures/ and the README's result tables from saved results")
    report.add_argument("--results-dir", default="results", help="folder with <dataset>/runs.json")
    report.add_argument("--pictures-dir", default="Pictures", help="where figures are written")
    report.add_argument("--readme", default="README.md", help="README whose results:<dataset> blocks are rewritten")
    report.add_argument(
        "--data-dir", default=DEFAULTS.data_dir, help="datasets for the sample grids (never downloaded)"
    )
    report.add_argument("--notebooks-dir", default="notebooks", help="notebooks whose stored wall times are tabled")
    return parser  # fmt: skip


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    values = {f.name: getattr(args, f.name) for f in fields(ExperimentConfig) if hasattr(args, f.name)}
    return ExperimentConfig(**values, progress=not args.no_progress)


def experiments_from_arg(name: str) -> list[str]:
    name = EXPERIMENT_ALIASES.get(name, name)
    return ["teacher", "baseline", *STUDENT_METHODS] if name in ("all", "study") else [name]


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        cfg = config_from_args(args)
        try:
            check_results_path(args.results_path)
            final_epochs = args.final_epochs if args.experiment == "study" else None
            records = run_study(
                experiments_from_arg(args.experiment), cfg, args.results_path, final_epochs=final_epochs
            )
        except (ValueError, FileNotFoundError) as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return 2
        print()
        print(format_summary(records))
        print(f"\nresults appended to {args.results_path}")
    elif args.command == "report":
        try:
            written = render_report(args.results_dir, args.pictures_dir, args.readme, args.data_dir, args.notebooks_dir)
        except (ValueError, FileNotFoundError) as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return 2
        print(f"rendered {len(written)} files from {args.results_dir}")
    return 0
