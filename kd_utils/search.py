"""What a sweep searches, and the ``sweep`` command's flags: no Optuna needed to read or parse them.

Search spaces are written in the ``--param`` syntax (``NAME=low:high``, ``low:high:log`` or ``a,b,c``); a
``--param`` given on the command line replaces the method's default space, so list every setting to tune.
Under ``--sampler grid`` a range is the three points low, middle, high (geometric middle for ``log``).
List-valued settings (``level_weights``) are not tuned; fix them with ``--level-weights``.
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import dataclass, replace

from .config import FLAGS, ExperimentConfig, to_flags
from .distill import STUDENT_METHODS
from .flags import HelpFormatter, add_config_flags

SEARCH_SPACES = {
    "logit": {"temperature": "1:10:log", "alpha": "0.1:1.0"},
    "hidden": {"feature_weight": "0.1:30:log", "feature_kind": "cosine,mse", "spatial_size": "1,2,4"},
    "regressor": {"regressor_weight": "1:300:log"},
    "dkd": {"dkd_beta": "1:16:log", "temperature": "1:8:log"},
    "dist": {"dist_beta": "0.5:4", "dist_gamma": "0.5:4", "dist_temperature": "1:8:log"},
    "at": {"at_weight": "50:5000:log"},
    "rkd": {"rkd_distance_weight": "1:100:log", "rkd_angle_weight": "2:200:log"},
    "logit+hidden": {"temperature": "1:10:log", "alpha": "0.1:1.0", "feature_weight": "0.1:30:log"},
    "logit+regressor": {"temperature": "1:10:log", "alpha": "0.1:1.0", "regressor_weight": "1:300:log"},
    "fitnets": {"hint_epochs": "1,2,3,5", "regressor_weight": "1:300:log", "temperature": "1:10:log"},
    "logit+ls": {"temperature": "1:10:log", "alpha": "0.1:1.0"},  # logit standardization: as the base methods
    "dkd+ls": {"dkd_beta": "1:16:log", "temperature": "1:8:log"},
    "dist+ls": {"dist_beta": "0.5:4", "dist_gamma": "0.5:4", "dist_temperature": "1:8:log"},
}  # around the papers' defaults (DistillConfig); fitnets' hint_epochs are capped at the run's --epochs
TUNABLE_TRAIN = ("lr", "momentum", "weight_decay", "warmup_epochs", "random_erasing", "batch_size", "optimizer",
                 "schedule")  # fmt: skip
SAMPLERS = ("tpe", "grid")
PRUNERS = ("none", "median")
DEFAULT_TRIALS = 20  # per worker


# --- search space -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One tuned setting: a range (``low``, ``high``, ``log``) or a list of ``choices``."""

    name: str  # config field, e.g. "feature_weight"
    spec: str  # as written, e.g. "0.1:30:log"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> object:
        """The value an ``optuna.Trial`` proposes for this setting."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if isinstance(self.low, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value: object) -> bool:
        """Whether ``value`` lies in this setting's searched range (or is one of its choices)."""
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high

    def grid(self) -> tuple:
        """The values a grid sampler visits: the choices, or low, middle and high of a range."""
        if self.choices is not None:
            return self.choices
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if isinstance(self.low, int):
            return tuple(sorted({self.low, round(mid), self.high}))
        return (self.low, float(f"{mid:.3g}"), self.high)


def _flag_of(name: str):
    """The ``config.Flag`` of a tunable setting, or a ValueError listing the tunable ones."""
    f = FLAGS.get(name.replace("_", "-"))
    tunable = f is not None and (f.section == "distill" or (f.section == "train" and f.attr in TUNABLE_TRAIN))
    if not tunable:
        names = [g.attr for g in FLAGS.values() if g.section == "distill" and not g.type.startswith("tuple")]
        raise ValueError(f"unknown setting '{name}'; choose from: {', '.join([*names, *TUNABLE_TRAIN])}")
    if f.type.startswith("tuple"):
        raise ValueError(f"{f.attr} is a list and is not tuned; fix it with --{f.name}")
    return f


def _number(text: str, kind: str) -> float | int | str:
    """``text`` as a value of a setting of type ``kind`` ("float", "int" or "str")."""
    if kind.startswith("str"):
        return text
    try:
        value = int(text) if kind.startswith("int") else float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not {'an int' if kind.startswith('int') else 'a number'}") from None
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is not a finite number")
    return value


def parse_param(text: str) -> Param:
    """``NAME=low:high``, ``NAME=low:high:log`` or ``NAME=a,b,c`` as a ``Param``; ValueError names what is wrong."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise ValueError("expected NAME=SPEC, e.g. temperature=1:10:log or feature_kind=cosine,mse")
    f = _flag_of(name.strip())
    kind = "int" if f.type == "int | None" else f.type  # hint_level: an int when tuned
    if ":" not in spec:
        return Param(f.attr, spec, choices=tuple(dict.fromkeys(_number(v.strip(), kind) for v in spec.split(","))))
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log") or kind == "str":
        raise ValueError("a range is low:high or low:high:log (a text setting takes a list: a,b,c)")
    low, high = _number(parts[0], kind), _number(parts[1], kind)
    if not low < high:
        raise ValueError(f"the range needs low < high (got {low} and {high})")
    if len(parts) == 3 and low <= 0:
        raise ValueError(f"a log range needs low > 0 (got {low})")
    return Param(f.attr, spec, low, high, log=len(parts) == 3)


def with_values(cfg: ExperimentConfig, values: dict[str, object]) -> ExperimentConfig:
    """``cfg`` with config fields (``{"temperature": 2.0, "lr": 0.1}``) replaced."""
    for name, value in values.items():
        f = FLAGS[name.replace("_", "-")]
        cfg = replace(cfg, **{f.section: replace(getattr(cfg, f.section), **{f.attr: value})})
    return cfg


def search_space(method: str, cfg: ExperimentConfig, specs: list[str] | None = None) -> list[Param]:
    """The tuned settings: ``specs`` (``--param`` texts) when given, else the method's default space.

    Every bound and choice is checked against the config's own validation, so a bad ``--param`` fails here,
    in one line naming it, before anything is loaded or trained.
    """
    given = bool(specs)
    texts = list(specs) if given else [f"{k}={v}" for k, v in SEARCH_SPACES[method].items()]
    space: list[Param] = []
    for text in texts:
        try:
            param = parse_param(text)
            if any(p.name == param.name for p in space):
                raise ValueError(f"{param.name} is given twice")
            if not given and param.name == "hint_epochs":  # stage 1 no longer than the whole run
                capped = tuple(dict.fromkeys(min(v, cfg.train.epochs) for v in param.choices))
                param = replace(param, choices=capped)
            for value in param.choices or (param.low, param.high):
                with_values(cfg, {param.name: value}).validate()
        except ValueError as err:
            raise ValueError(f"--param {text}: {err}") from None
        space.append(param)
    return space


# --- trials -----------------------------------------------------------------------------------------------


def replay_command(method: str, cfg: ExperimentConfig) -> str:
    """The ``run`` command line that trains ``cfg`` again: every flag that differs from its default."""
    parts = ["python", "-m", "kd_utils", "run", "--experiment", method]
    defaults = to_flags(ExperimentConfig())
    for name, value in to_flags(cfg).items():
        if value == defaults[name]:
            continue
        if isinstance(value, bool):
            parts.append(f"--{name}" if value else f"--no-{name}")
        else:
            text = "none" if value is None else ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            parts += [f"--{name}", text]
    return shlex.join(parts)


def format_trials(rows: list[dict], space: list[Param], best: int | None) -> str:
    """A table of the trials, one row each; the chosen one is starred."""
    widths = {p.name: max(len(p.name), 8) for p in space}
    header = f"{'trial':>5} {'state':<8} {'val f1':>7} {'epoch':>5} {'seconds':>7}  " + "  ".join(
        f"{n:>{w}}" for n, w in widths.items()
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        f1 = f"{r['best_val_f1']:.4f}" if r["best_val_f1"] is not None else "-"
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        values = [r["params"].get(n, "-") for n in widths]
        cells = "  ".join(f"{f'{v:.4g}' if isinstance(v, float) else v:>{w}}" for v, w in zip(values, widths.values()))
        mark = " *" if r["number"] == best else ""
        epoch = r["best_epoch"] or "-"
        lines.append(f"{r['number']:>5} {r['state']:<8} {f1:>7} {epoch:>5} {seconds:>7}  {cells}{mark}")
    return "\n".join(lines)


# --- figure -----------------------------------------------------------------------------------------------


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``sweep`` (the ``run`` config flags plus the sweep's own) to the CLI's subparsers."""
    sweep = subparsers.add_parser(
        "sweep",
        help="tune a method's settings on validation (Optuna), then test the best once",
        formatter_class=HelpFormatter,
    )
    sweep.add_argument("--method", required=True, choices=STUDENT_METHODS, help="the distillation method to tune")
    sweep.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        help="trials this worker runs at most (0: only save, score and draw the study)",
    )
    sweep.add_argument("--max-trials", type=int, help="trials of the whole study, all workers (default: --trials)")
    sweep.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="tpe (seeded: --seed + process id) | grid")
    sweep.add_argument(
        "--pruner", default="none", choices=PRUNERS,
        help="stop trials early on their per-epoch validation F1: none | median (Optuna's MedianPruner, from a "
             "third of the epochs on, after 5 complete trials)",
    )  # fmt: skip
    sweep.add_argument(
        "--param",
        action="append",
        metavar="NAME=SPEC",
        help="a tuned setting, repeatable; replaces the method's default space. SPEC: low:high (uniform), "
        "low:high:log, or a,b,c (choices; a grid takes low, middle, high of a range)",
    )
    sweep.add_argument(
        "--storage",
        help="where the workers share the study (default: the journal file <results-dir>/sweeps.journal). A journal "
        "file (processes on one machine): a path ending in .journal or .log, or journal:///relative/path, "
        "journal:////absolute/path; a database: sqlite:///PATH (one writer at a time: older studies), "
        "postgresql://USER@HOST/DB (several machines; pip install 'kd_utils[postgres]'), mysql://USER@HOST/DB",
    )
    sweep.add_argument("--study-name", help="study name (default: <dataset>-<method>-seed<seed>)")
    sweep.add_argument("--results-dir", default="runs/sweeps", help="trials file, figure and default storage")
    sweep.add_argument(
        "--results-path", help="the tuned run's record is appended here (default: <results-dir>/<study>-best.json)"
    )
    add_config_flags(sweep)
    return sweep
