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
from .config import FLAGS, from_flags, read_toml, record_to_toml
from .data import DATASETS
from .distill import CHANNEL_MATCHES, FEATURE_KINDS
from .experiments import EXPERIMENT_ALIASES, EXPERIMENTS, FINAL_EPOCHS, STUDENT_METHODS, format_summary, run_study
from .models import list_models
from .report import render_report
from .results import check_results_path, load_runs
from .sweep import add_sweep_parser, run_sweep
from .train import OPTIMIZERS, PRECISIONS, SCHEDULES, NonFiniteLossError

EXPERIMENT_CHOICES = (*EXPERIMENTS, "all", "study", *EXPERIMENT_ALIASES)
CHOICES = {
    "dataset": tuple(DATASETS),
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "precision": PRECISIONS,
    "feature-kind": FEATURE_KINDS,
    "channel-match": CHANNEL_MATCHES,
}
HELP = {
    "dataset": "dataset (CIFAR downloads through torchvision on first use)",
    "data-dir": "dataset folder",
    "download": "download a missing dataset through torchvision (needs network)",
    "val-size": "validation images carved from train, stratified; None: the dataset's (5000)",
    "train-size": "stratified training subset; None: all",
    "test-size": "stratified test subset; None: all",
    "labeled-fraction": "fraction of training labels used (teacher terms still see every image), in (0, 1]",
    "split-seed": "seed of the validation split and subsets (kept fixed across --seeds)",
    "epochs": "student epochs",
    "batch-size": "images per step",
    "lr": "peak learning rate",
    "optimizer": "optimizer",
    "momentum": "SGD momentum",
    "weight-decay": "L2 penalty (decoupled for adamw)",
    "schedule": "learning-rate schedule",
    "warmup-epochs": "linear warm-up epochs (cosine schedule)",
    "precision": "autocast: auto = bf16 where native, fp16 + gradient scaler on older GPUs (T4), else fp32",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "seed": "training seed: weight init, batch order, augmentation",
    "random-erasing": "students' random-erasing probability",
    "log-every": "steps between progress updates",
    "compile": "torch.compile the training step",
    "channels-last": "NHWC activations (faster convolutions on CPU and GPU)",
    "deterministic": "GPUs: deterministic cuDNN and algorithms (see README: what a GPU run can promise)",
    "progress": "tqdm progress bars",
    "alpha": "logit KD: weight of the soft-target KL, in [0, 1]",
    "temperature": "logit KD and DKD: temperature T > 0",
    "feature-weight": "hidden: weight of the feature term",
    "regressor-weight": "regressor / fitnets hint: weight of the MSE hint",
    "level-weights": "one weight per matched level, e.g. 0.5,1,1",
    "feature-kind": "hidden: distance between normalised maps",
    "channel-match": "hidden: how channel counts are matched",
    "spatial-size": "hidden: maps pooled to this size",
    "dkd-alpha": "DKD: target-class weight",
    "dkd-beta": "DKD: non-target-class weight",
    "dist-beta": "DIST: inter-class weight",
    "dist-gamma": "DIST: intra-class weight",
    "dist-temperature": "DIST: temperature",
    "at-weight": "attention transfer: weight of the attention term",
    "at-p": "attention transfer: exponent p of |F|^p",
    "rkd-distance-weight": "RKD: distance-wise weight",
    "rkd-angle-weight": "RKD: angle-wise weight",
    "hint-epochs": "fitnets: stage-1 (hint) epochs",
    "hint-level": "fitnets: student stage that is guided; None: the middle one",
    "teacher": f"teacher architecture: {' | '.join(list_models())} | timm:NAME | tv:NAME",
    "student": "student architecture (as --teacher)",
    "teacher-epochs": "teacher epochs",
    "teacher-random-erasing": "teacher's random-erasing probability",
    "teacher-checkpoint": "use these teacher weights (.pt) instead of training one",
    "student-checkpoint": "initialise students from these weights",
    "checkpoint-dir": "teacher/baseline cache, run checkpoints, stored teacher outputs",
    "resume": "continue interrupted runs from their last.pt",
    "allow-weak-teacher": "distil even from a teacher near chance",
    "fuse-teacher-bn": "distil from the BN-folded copy of the teacher (same outputs, faster)",
    "teacher-cache": "store each epoch's teacher logits/pooled maps once per data stream and reuse them",
    "tensorboard": "write per-epoch scalars for TensorBoard under this folder",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage dump) and exits with code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=34, width=110)


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,1,1, got '{text}'") from None


def _optional(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, in groups; the default shown is the dataclass's."""
    titles = {"data": "data", "train": "training", "distill": "distillation losses", None: "teacher, student, runs"}
    groups = {section: parser.add_argument_group(title) for section, title in titles.items()}
    for name, f in FLAGS.items():
        group, dest = groups[f.section], name.replace("-", "_")
        kwargs = {"dest": dest, "default": f.default, "help": HELP.get(name, "")}
        if f.type == "bool":
            group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.type.startswith("tuple"):
            kwargs["type"] = _float_list
        elif f.type in ("int | None", "str | None"):
            kwargs["type"] = _optional(int if f.type.startswith("int") else str)
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[f.type]
        if name in CHOICES:
            kwargs["choices"] = CHOICES[name]
        group.add_argument(f"--{name}", **kwargs)


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
    sweep = add_sweep_parser(sub)
    sweep.add_argument(
        "--config", metavar="FILE", help="TOML file of settings (keys: the long option names); flags win"
    )
    return parser  # fmt: skip


def experiments_from_arg(name: str) -> list[str]:
    name = EXPERIMENT_ALIASES.get(name, name)
    return ["teacher", "baseline", *STUDENT_METHODS] if name in ("all", "study") else [name]


def parse_args_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``run``/``sweep`` arguments with the ``--config`` file's values as defaults, so flags override it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv[1:])
    command = parser._subparsers._group_actions[0].choices[argv[0]]  # noqa: SLF001 - argparse offers no getter
    if known.config:
        values = read_toml(known.config)  # ValueError -> exit 2 in main
        command.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    return from_flags({name: getattr(args, name.replace("-", "_")) for name in FLAGS})


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def export_config(args: argparse.Namespace) -> str:
    records = [r for r in load_runs(args.results) if args.run is None or r.get("name", r["experiment"]) == args.run]
    if args.seed is not None:
        records = [r for r in records if r["config"].get("train", {}).get("seed") == args.seed]
    if not records:
        raise ValueError(f"no record named '{args.run}' in {args.results}; see its runs' 'name' fields")
    text = record_to_toml(records[-1])
    if args.output:
        Path(args.output).write_text(text)
    return text


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_args_parser(prog)
    try:
        with_config = argv[:1] in (["run"], ["sweep"])
        args = parse_args_with_config(parser, argv) if with_config else parser.parse_args(argv)
    except ValueError as err:
        return fail(parser.prog, str(err), 2)
    try:
        if args.command == "run":
            cfg = config_from_args(args)
            check_results_path(args.results_path)
            final_epochs = args.final_epochs if args.experiment == "study" else None
            records = run_study(
                experiments_from_arg(args.experiment), cfg, args.results_path, final_epochs=final_epochs,
                seeds=args.seeds, teacher_per_seed=args.teacher_per_seed,
            )  # fmt: skip
            print()
            print(format_summary(records))
            print(f"\nresults appended to {args.results_path}")
            for r in records:
                if r.get("did_not_learn"):
                    print(f"{parser.prog}: warning: {r['name']} (seed {r['config']['train']['seed']}) did not learn: "
                          "its validation accuracy stayed at chance; lower --lr or check the data", file=sys.stderr)  # fmt: skip
        elif args.command == "report":
            written = render_report(args.results_dir, args.pictures_dir, args.readme, args.data_dir)
            print(f"rendered {len(written)} files from {args.results_dir}")
        elif args.command == "config":
            text = export_config(args)
            if not args.output:
                print(text, end="")
        elif args.command == "sweep":
            run_sweep(args)
    except (ValueError, FileNotFoundError, TimeoutError) as err:
        return fail(parser.prog, str(err), 2)
    except NonFiniteLossError as err:
        return fail(parser.prog, f"run diverged: {err}; lower --lr (or the loss weights) and run again", 3)
    return 0
