"""Every method of one CIFAR-100 benchmark pair, all distilled from one teacher.

    python configs/cifar100/run_pair.py PAIR [--methods logit,dkd] [run flags, e.g. --seeds 0 1 2]

Runs ``python -m kd_utils run --config configs/cifar100/PAIR/METHOD.toml [run flags]`` for each method in
``METHODS`` order (``--methods``: a comma-separated subset), in this process, the pair's ``teacher.toml`` first
(from the teacher cache once it has trained). The teacher trains with the students' training settings, so a
pair whose student files set another lr than ``teacher.toml`` (resnet32x4-shufflev2: 0.01 for the ShuffleNet,
0.05 for its teacher, as in CRD's code) would train a second teacher; its student files are given
``--teacher-checkpoint`` with ``teacher.toml``'s teacher instead, so every method of a pair learns from the same
weights. The run flags go to every file and win over it; the exit code is the first failing run's.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if __name__ == "__main__" and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # a fresh clone, kd_utils not installed

from kd_utils import cli  # noqa: E402
from kd_utils.flags import config_from_args, parse_args_with_config  # noqa: E402
from kd_utils.runs import run_dir  # noqa: E402

METHODS = ("teacher", "baseline", "logit", "dkd", "dist", "regressor", "at", "rkd")  # one TOML file each
PROG = "run_pair.py"


def pairs() -> list[str]:
    """The benchmark pairs: the folders beside this script that hold a ``teacher.toml``."""
    return sorted(p.parent.name for p in HERE.glob("*/teacher.toml"))


def teacher_folder(config: Path, flags: list[str]) -> Path:
    """The checkpoint folder of the teacher that ``run --config config [flags]`` would train or load."""
    args = parse_args_with_config(cli.get_args_parser(PROG), ["run", "--config", str(config), *flags])
    cfg = config_from_args(args)
    seed = args.seeds[0] if args.seeds else cfg.train.seed  # one teacher for all seeds, trained with the first
    return run_dir(replace(cfg, train=replace(cfg.train, seed=seed)), "teacher")


def split_methods(flags: list[str]) -> tuple[list[str], list[str]]:
    """``--methods a,b`` (or ``--methods=a,b``) taken out of the run flags; the teacher always comes first."""
    chosen, rest, i = list(METHODS), [], 0
    while i < len(flags):
        if flags[i] == "--methods" and i + 1 < len(flags):
            chosen, i = flags[i + 1].split(","), i + 2
        elif flags[i].startswith("--methods="):
            chosen, i = flags[i].split("=", 1)[1].split(","), i + 1
        else:
            rest.append(flags[i])
            i += 1
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ValueError(
            f"--methods {','.join(chosen)}: unknown {', '.join(unknown)}; choose from: {', '.join(METHODS)}"
        )
    return ["teacher", *[m for m in METHODS if m in chosen and m != "teacher"]], rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in pairs():
        given = f"'{argv[0]}'" if argv else "none"
        print(f"{PROG}: error: pair {given}; choose from: {', '.join(pairs())}", file=sys.stderr)
        return 2
    pair, flags = argv[0], argv[1:]
    try:
        methods, flags = split_methods(flags)
        teacher = teacher_folder(HERE / pair / "teacher.toml", flags)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    own_checkpoint = any(f == "--teacher-checkpoint" or f.startswith("--teacher-checkpoint=") for f in flags)
    for method in methods:
        config = HERE / pair / f"{method}.toml"
        extra = []
        if method not in ("teacher", "baseline") and not own_checkpoint and teacher_folder(config, flags) != teacher:
            if "--teacher-per-seed" in flags:
                print(f"{PROG}: error: --teacher-per-seed: {pair}'s students train with other settings than its "
                      "teacher; run teacher.toml per seed and pass --teacher-checkpoint", file=sys.stderr)  # fmt: skip
                return 2
            extra = ["--teacher-checkpoint", str(teacher / "best.pt")]
            print(f"{PROG}: {pair}/{method}: distils from teacher.toml's teacher, {teacher / 'best.pt'}", flush=True)
        code = cli.main(["run", "--config", str(config), *flags, *extra])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
