"""The flags that ``run`` and ``sweep`` share: one per config field (``config.FLAGS``), a ``--config`` TOML
file as their defaults, and the one-line errors (exit 2) of every sub-command."""

from __future__ import annotations

import argparse
import sys

from .config import FLAGS, from_flags, read_toml
from .datasets import DATASETS
from .distill import CHANNEL_MATCHES, FEATURE_KINDS
from .models import list_models
from .train import OPTIMIZERS, PRECISIONS, SCHEDULES

CHOICES = {
    "dataset": tuple(DATASETS),
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "precision": PRECISIONS,
    "feature-kind": FEATURE_KINDS,
    "channel-match": CHANNEL_MATCHES,
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
        models = f" (kd_utils models: {', '.join(list_models())})" if name in ("teacher", "student") else ""
        kwargs = {"dest": dest, "default": f.default, "help": f.help + models}
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
        if name == "pack":
            group.add_argument(
                "--no-pack",
                dest=dest,
                action="store_const",
                const=1,
                default=argparse.SUPPRESS,
                help="the same as --pack 1",
            )


def parse_args_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``run``/``sweep`` arguments with the ``--config`` file's values as defaults, so flags override it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv[1:])
    command = parser._subparsers._group_actions[0].choices[argv[0]]  # noqa: SLF001 - argparse offers no getter
    if known.config is not None:  # --config '' too: read_toml refuses it
        values = read_toml(known.config)  # ValueError -> exit 2 in main
        command.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    return from_flags({name: getattr(args, name.replace("-", "_")) for name in FLAGS})


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code
